"""Benchmark: the /events websocket fan-out.
The code is `k3lab.bench.events` (scripts/lab/k3lab/bench/events.py); `--help` lists the options."""

import sys

from k3lab.bench.events import main

if __name__ == "__main__":
    sys.exit(main())

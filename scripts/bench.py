"""Benchmark: one agent tracking P simulated peers (`nox -s bench`).
The code is `k3lab.bench.peers` (scripts/lab/k3lab/bench/peers.py); `--help` lists the options."""

import sys

from k3lab.bench.peers import main

if __name__ == "__main__":
    sys.exit(main())

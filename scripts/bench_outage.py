"""Benchmark: store outages (`nox -s bench-outage`).
The code is `k3lab.bench.outage` (scripts/lab/k3lab/bench/outage.py); `--help` lists the options."""

import sys

from k3lab.bench.outage import main

if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: one agent following 10,000 Nodes (`nox -s bench-store`).
The code is `k3lab.bench.store` (scripts/lab/k3lab/bench/store.py); `--help` lists the options."""

import sys

from k3lab.bench.store import main

if __name__ == "__main__":
    sys.exit(main())

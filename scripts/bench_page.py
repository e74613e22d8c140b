"""Benchmark: the cluster page in headless chromium (`nox -s bench-page`).
The code is `k3lab.bench.page` (scripts/lab/k3lab/bench/page.py); `--help` lists the options."""

import sys

from k3lab.bench.page import main

if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: a newcomer's start to "confirmed by another agent" on a 5-host namespace LAN, and
where that time goes. The code is `k3lab.bench.startup` (scripts/lab/k3lab/bench/startup.py);
`--help` lists the options."""

import sys

from k3lab.bench.startup import main

if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: how long `import k3net.agent` takes.
The code is `k3lab.bench.import_time` (scripts/lab/k3lab/bench/import_time.py); `--help` lists the options."""

import sys

from k3lab.bench.import_time import main

if __name__ == "__main__":
    sys.exit(main())

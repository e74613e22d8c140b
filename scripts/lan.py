"""The simulated multi-host LAN and its scenarios (`nox -s lan`).
The code is `k3lab.lan` (scripts/lab/k3lab/lan.py); `--help` lists the options."""

import sys

from k3lab.lan import main

if __name__ == "__main__":
    sys.exit(main())

"""Hostile and careless hosts against real agents on a netns LAN (`nox -s hostile`).
The code is `k3lab.hostile` (scripts/lab/k3lab/hostile.py); `--help` lists the options."""

import sys

from k3lab.hostile import main

if __name__ == "__main__":
    sys.exit(main())

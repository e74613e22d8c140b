"""How long `import k3net.agent` takes in a fresh interpreter (the agent's start-up cost before
it can do anything), as the median of several runs. Prints one line and appends it to
docs/import-time.md when --record is given.

    python scripts/bench_import.py --runs 15
    python scripts/bench_import.py --what run --store etcd   # all `k3net run` imports first

`--what run` times what `python -m k3net run` imports before its first log line and until its
port is bound (the command line and settings, mDNS, the agent, the store backend in use,
zeroconf and trio-asyncio): the part of a newcomer's start-up spent importing (see
scripts/bench_startup.py for the rest).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

PROBE = "import time; t = time.perf_counter(); import {}; print(time.perf_counter() - t)"
MODULES = {
    "agent": "k3net.agent",
    "run": ("k3net.cli, k3net.mdns, k3net.logs, k3net.agent, k3net.store.{store}, "
            "k3net.tasks.presence, trio_asyncio, zeroconf.asyncio"),
}


def measure(runs: int, what: str = "agent", store: str = "memory") -> list[float]:
    probe = PROBE.format(MODULES[what].format(store=store))
    out = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              check=True, timeout=60)
        out.append(float(done.stdout))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--label", default="current")
    parser.add_argument("--what", choices=sorted(MODULES), default="agent",
                        help="agent: import k3net.agent; run: everything `k3net run` imports")
    parser.add_argument("--store", choices=("memory", "etcd", "mysql"), default="memory",
                        help="the store backend imported with --what run")
    parser.add_argument("--record", type=Path, default=None,
                        help="append the result line to this file (e.g. docs/import-time.md)")
    args = parser.parse_args()
    times = measure(max(1, min(args.runs, 100)), args.what, args.store)
    line = (f"| {args.label} | {statistics.median(times) * 1000:.0f} ms | "
            f"{min(times) * 1000:.0f} ms | {max(times) * 1000:.0f} ms | {len(times)} |")
    print("| code | median | min | max | runs |")
    print(line)
    if args.record:
        with args.record.open("a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

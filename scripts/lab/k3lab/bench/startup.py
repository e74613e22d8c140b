"""Start-up: from a newcomer's process start to "confirmed by another agent", and where the time
goes. On a 5-host namespace LAN (default timings), agents run on hosts 0-3; a newcomer is started
on host 4 again and again (a new name each time, stopped after each run), and agent 0's /peers is
polled (every 10 ms) until it follows the newcomer confirmed. Printed: the p50 and max of that,
how agent 0 had heard of the newcomer, and the newcomer's own timeline from its JSON log (wall
clock, the bench's clock at spawn = 0):

    imports   the first log line of `k3net run` (interpreter, imports, settings, logging)
    http      "serving HTTP": the store object made, the table started, the port bound
    write     its own Node written (the store connected; through the store, peers hear of it
              only after this and their watch)
    hello     the first hello answered (a peer found, probed and confirmed first)
    confirmed agent 0 shows the newcomer confirmed (the hello taken, the newcomer probed)

and the parts apart, in fresh interpreters on an idle core: `python -c pass`, the imports the
start needs (k3net.cli, the agent, trio-asyncio, zeroconf, the store), hypercorn's (made in a
worker thread after the bind, in parallel with the rest).

    python scripts/bench_startup.py --store memory --runs 10
    python scripts/bench_startup.py --store etcd --runs 10

Needs root (network namespaces) and, for etcd, Debian's etcd-server. Every namespace is removed
at the end, also on failure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from k3lab.agents import AgentProc
from k3lab.netns import Lan
from k3lab.sim.stores import SimStore

SUBNET = "10.77.0.0/24"
POLL = 0.01
# Each run is bounded: a newcomer not confirmed within this is counted as missed.
RUN_TIMEOUT = 10.0
# Between runs, the peers settle (the goodbye handled, the probes done), and the hellos from
# host 4 stay within limits.INTRODUCTIONS_PER_CLIENT per window (4 per 10 s).
SETTLE = 2.5

START_IMPORTS = ("import k3net.cli, k3net.agent, trio_asyncio, zeroconf.asyncio, "
                 "k3net.tasks.presence, k3net.store.{store}")


def _fresh(code: str, runs: int) -> float:
    """Median seconds of `code`'s own measurement (it prints one number), fresh interpreters."""
    out = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, timeout=60)
        out.append(float(done.stdout))
    return statistics.median(out)


def _interpreter(runs: int) -> float:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=60)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def parts(store: str, runs: int = 7) -> dict[str, float]:
    timed = "import time; t = time.perf_counter(); {}; print(time.perf_counter() - t)"
    return {
        "interpreter (python -c pass)": _interpreter(runs),
        "imports the start needs": _fresh(timed.format(START_IMPORTS.format(store=store)), runs),
        "hypercorn (worker thread, after the bind)": _fresh(
            "import k3net.agent; " + timed.format("import k3net.web.serve"), runs),
    }


def _peer(agent: AgentProc, name: str) -> dict[str, Any] | None:
    try:
        peers = agent.get_json("/peers")["peers"]
    except (OSError, AssertionError, ValueError):
        return None
    return next((p for p in peers if p["name"] == name), None)


def _timeline(log: str, name: str, spawned_wall: float) -> dict[str, float | None]:
    """Seconds from the spawn to the newcomer's first log line, "serving HTTP", its own Node's
    first write, its first hello answered."""
    marks: dict[str, float | None] = {"imports": None, "http": None, "write": None,
                                      "hello": None}
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        t = dt.datetime.fromisoformat(entry["ts"]).timestamp() - spawned_wall
        msg = str(entry.get("msg", ""))
        if marks["imports"] is None:
            marks["imports"] = t
        if marks["http"] is None and msg.startswith("serving HTTP"):
            marks["http"] = t
        if marks["write"] is None and msg.startswith(f"wrote {name} (alive)"):
            marks["write"] = t
        if marks["hello"] is None and msg.startswith("hello to "):
            marks["hello"] = t
    return marks


def run(store_kind: str, runs: int, logs: Path | None = None) -> dict[str, Any]:
    samples: list[float] = []
    missed = 0
    found_by: dict[str, int] = {}
    timelines: list[dict[str, float | None]] = []
    with tempfile.TemporaryDirectory(prefix="k3net-startup-") as tmp, Lan(5, SUBNET) as lan:
        workdir = logs or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        store = SimStore(store_kind, workdir, lan, SUBNET)
        agents: list[AgentProc] = []
        try:
            config = store.config
            for i in range(4):
                agents.append(AgentProc(lan[i], f"node-{i}", 7946, workdir,
                                        "--log-format", "json", config=config))
            for agent in agents:
                agent.wait_ready()
            time.sleep(3)  # the four found each other
            for r in range(runs):
                name = f"new-{r}"
                spawned_wall = time.time()
                newcomer = AgentProc(lan[4], name, 7946, workdir, "--log-format", "json",
                                     config=config)
                took = None
                try:
                    deadline = newcomer.started_at + RUN_TIMEOUT
                    seen = None
                    while time.monotonic() < deadline:
                        seen = _peer(agents[0], name)
                        if seen is not None and seen["confirmed"]:
                            took = time.monotonic() - newcomer.started_at
                            break
                        time.sleep(POLL)
                    time.sleep(0.5)  # its own first write may come later: in the log
                finally:
                    newcomer.signal(signal.SIGTERM)
                    newcomer.close()
                if took is None or seen is None:
                    missed += 1
                    print(f"run {r}: not confirmed within {RUN_TIMEOUT} s", flush=True)
                else:
                    samples.append(took)
                    found_by[seen["foundBy"]] = found_by.get(seen["foundBy"], 0) + 1
                    marks = _timeline(newcomer.log(), name, spawned_wall)
                    marks["confirmed"] = took
                    timelines.append(marks)
                    print(f"run {r}: {took:.3f} s ({seen['foundBy']}) "
                          + " ".join(f"{k} {v:.3f}" for k, v in marks.items()
                                     if v is not None), flush=True)
                time.sleep(SETTLE)
        finally:
            for agent in agents:
                agent.close()
            store.close()

    def p50(key: str) -> float | None:
        values = [m[key] for m in timelines if m.get(key) is not None]
        return statistics.median(values) if values else None  # type: ignore[type-var]

    return {
        "store": store_kind, "runs": runs, "missed": missed,
        "p50": statistics.median(samples) if samples else None,
        "max": max(samples) if samples else None,
        "found_by": found_by,
        "timeline_p50": {k: p50(k) for k in ("imports", "http", "write", "hello", "confirmed")},
    }


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("memory", "etcd"), default="memory")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--logs", type=Path, default=None,
                        help="keep the agents' logs in this directory")
    parser.add_argument("--no-parts", action="store_true", help="skip the fresh-interpreter parts")
    args = parser.parse_args()
    result = run(args.store, max(1, min(args.runs, 50)), args.logs)
    print(f"\nstart -> confirmed by a peer ({result['store']}, {result['runs']} runs, "
          f"{result['missed']} missed): p50 {_s(result['p50'])}, max {_s(result['max'])}; "
          f"found by {result['found_by']}")
    print("newcomer timeline p50 (from spawn): " + ", ".join(
        f"{k} {_s(v)}" for k, v in result["timeline_p50"].items()))
    if not args.no_parts:
        for what, seconds in parts(args.store).items():
            print(f"  {what}: {seconds * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

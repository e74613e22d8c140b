"""Benchmark: how fast the shared store holds the truth again after an outage.

    nox -s bench-outage -- [--store etcd mysql] [--rounds 5] [--outage 3] [--out PATH]

The sequence of tests/test_agent_stores.py (which checks that it ends right, not how fast), timed:
two agents (node-a, node-b) on one namespace host (multicast on `lo`) share a private etcd or
MariaDB at --peer-ttl 3s, without self-registration, so each Node is written by the other agent.
Each round: both Ready; the store stops; node-b leaves (SIGTERM) while it is down; after
--outage seconds the store starts again. Measured from the moment the store answers again:

- true state: node-b is False/PeerLeft in the store (read raw: etcdctl, SQL), i.e. node-a's
  queued write landed;
- ready again: node-a's /readyz answers 200.

node-b is started again for the next round. Prints p50/p95/max per store and writes JSON
(default results/bench-outage.json). Nothing is asserted; every namespace, server and process
is removed at the end, also on failure, SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from k3lab.agents import AgentFactory, AgentProc
from k3lab.netns import LoopbackHost
from k3lab.nsclient import wait_for
from k3lab.raw import ETCD_PEER_PORT, ETCD_PORT, RawEtcd, RawMariaDB, write_config
from k3lab.services import EtcdServer, MariaDBServer
from k3lab.sim.common import (
    Reported,
    begin_run,
    fmt_s,
    k3net_revision,
    log,
    print_table,
    summary,
    write_json,
)

TTL = "3s"
MAX_ROUNDS = 20
# Bounds of every wait: an agent or store that takes longer is broken, and the round fails.
READY_WITHIN = 15.0
TRUTH_WITHIN = 30.0


class Store:
    """A private store on the host: config, stop/start, and a raw reader of Ready."""

    def __init__(self, kind: str, host: LoopbackHost, workdir: Path,
                 stack: contextlib.ExitStack) -> None:
        self.kind = kind
        self.server: EtcdServer | MariaDBServer
        self.ready: Callable[[str], tuple[str, str] | None]
        if kind == "etcd":
            etcd = stack.enter_context(EtcdServer(workdir / "etcd", client_port=ETCD_PORT,
                                                  peer_port=ETCD_PEER_PORT, netns=host.name))
            self.server = etcd
            self.ready = RawEtcd(host, etcd.address).ready
            storage: dict[str, Any] = {"type": "etcd", "etcd": {"endpoints": [etcd.endpoint]}}
        else:
            db = stack.enter_context(MariaDBServer(workdir / "db"))
            db.sql("CREATE DATABASE k3")
            self.server = db
            self.ready = RawMariaDB(db.sql, "k3").ready
            storage = {"type": "mysql", "mysql": {"socket": db.socket, "database": "k3",
                                                  "poll_interval": "200ms"}}
        self.config = write_config(workdir / f"k3-{kind}.yaml", storage)


def _start_b(agents: AgentFactory, host: LoopbackHost, store: Store) -> AgentProc:
    b = agents.start(host, "node-b", "--peer-ttl", TTL, "--register-self=false", port=7102,
                     config=store.config)
    b.wait_ready(READY_WITHIN)
    return b


def run_store(kind: str, rounds: int, outage: float, workdir: Path,
              keep_logs: Path | None) -> dict[str, Any]:
    truth: list[float | None] = []
    readyz: list[float | None] = []
    errors: list[str] = []
    with contextlib.ExitStack() as stack:
        host = stack.enter_context(LoopbackHost())
        store = Store(kind, host, workdir / kind, stack)
        (workdir / kind / "logs").mkdir(parents=True, exist_ok=True)
        agents = AgentFactory(workdir / kind / "logs")
        stack.callback(agents.close)
        a = agents.start(host, "node-a", "--peer-ttl", TTL, "--register-self=false",
                         port=7101, config=store.config)
        a.wait_ready(READY_WITHIN)
        b = _start_b(agents, host, store)
        for r in range(rounds):
            try:
                wait_for(lambda: store.ready("node-a") == ("True", "PeerAlive")
                         and store.ready("node-b") == ("True", "PeerAlive"), READY_WITHIN,
                         what="both Ready")
                store.server.stop()
                b.signal(signal.SIGTERM)
                b.proc.wait(10)
                time.sleep(outage)  # the outage itself: the store stays down this long
                store.server.start()
                t0 = time.monotonic()
                wait_for(lambda: store.ready("node-b") == ("False", "PeerLeft"), TRUTH_WITHIN,
                         interval=0.02, what="node-b PeerLeft")
                truth.append(time.monotonic() - t0)
                wait_for(lambda: a.client.get(a.url + "/readyz")[0] == 200, TRUTH_WITHIN,
                         interval=0.02, what="/readyz 200")
                readyz.append(time.monotonic() - t0)
            except AssertionError as exc:  # a wait ran out: note it, go on with the next round
                with contextlib.suppress(Exception):
                    exc.add_note(f"node-b in the store: {store.ready('node-b')}")
                errors.append(f"round {r}: {exc} ({'; '.join(getattr(exc, '__notes__', []))})")
                if keep_logs:
                    keep_logs.mkdir(parents=True, exist_ok=True)
                    (keep_logs / f"{kind}-round{r}-node-a.log").write_text(a.log())
                truth.append(None)
                readyz.append(None)
                if not store.server.running:
                    store.server.start()
            log(f"{kind} round {r + 1}/{rounds}: true state {fmt_s(truth[-1])}, "
                f"/readyz {fmt_s(readyz[-1])}")
            b.close()
            b = _start_b(agents, host, store)
    return {"store": kind, "rounds": rounds, "outage_seconds": outage,
            "true_state_after_store_back": summary(truth),
            "readyz_after_store_back": summary(readyz), "errors": errors}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nox -s bench-outage --",
                                     description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--store", nargs="+", choices=["etcd", "mysql"],
                        default=["etcd", "mysql"])
    parser.add_argument("--rounds", type=int, default=5,
                        help=f"outages per store (1..{MAX_ROUNDS}, default 5)")
    parser.add_argument("--outage", type=float, default=3.0,
                        help="seconds the store stays down (0.5..60, default 3)")
    parser.add_argument("--out", default="results/bench-outage.json", help="JSON results")
    parser.add_argument("--keep-logs", default="results/bench-outage-logs",
                        help="node-a's log of every failed round goes here")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= MAX_ROUNDS:
        parser.error(f"--rounds must be between 1 and {MAX_ROUNDS}")
    if not 0.5 <= args.outage <= 60:
        parser.error("--outage must be between 0.5 and 60 seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = begin_run("k3outage-")
    results: dict[str, Any] = {"k3net": k3net_revision(), "peer_ttl": TTL, "stores": []}
    with Reported(results, workdir) as run:
        for kind in args.store:
            log(f"{kind}: {args.rounds} outages of {args.outage:g}s")
            results["stores"].append(run_store(kind, args.rounds, args.outage, workdir,
                                               Path(args.keep_logs) if args.keep_logs else None))
    rows = []
    for s in results["stores"]:
        for label, key in (("store back -> true state", "true_state_after_store_back"),
                           ("store back -> /readyz 200", "readyz_after_store_back")):
            v = s[key]
            rows.append([s["store"], label, v["n"], fmt_s(v["p50"]), fmt_s(v["p95"]),
                         fmt_s(v["max"]), len(s["errors"])])
    print(f"\nk3net {results['k3net']}: store outages of {args.outage:g}s, peer-ttl {TTL}",
          flush=True)
    results["table"] = print_table(["store", "measured", "n", "p50", "p95", "max", "failed"],
                                   rows)
    path = write_json(args.out, results)
    log(f"results in {path}")
    return run.code


if __name__ == "__main__":
    sys.exit(main())

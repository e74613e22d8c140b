"""Benchmark (not a test): latency from a store commit to its /events message at each client.

Serves the real app with hypercorn on 127.0.0.1, connects `--clients` websocket subscribers,
then makes `--commits` commits through a MemoryStore at `--interval`, each one flipping a Node's
Ready condition with a unique reason (so every commit is exactly one message). The hub is driven
by a store-watch loop, as in the agent. For every (commit, client) pair it measures the time from
the commit returning to the client receiving the message, and prints p50 / p99 / max.

Clients and server share one process and one CPU, so the numbers include the clients' own work.

    .venv/bin/python scripts/bench_events.py [--clients 100] [--commits 500] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, wrap_client_stream

from k3net import limits
from k3net.current import Current
from k3net.events import EventHub
from k3net.health import StoreHealth
from k3net.metrics import Metrics
from k3net.model import LABEL_MANAGED, Node, NodeAddress, NodeCondition, NodeStatus, ObjectMeta
from k3net.settings import Settings
from k3net.store.memory import MemoryStore
from k3net.web import serve
from k3net.web.app import AppState, make_app

# The agent serves at most limits.SUBSCRIBERS, and SUBSCRIBERS_PER_CLIENT per client address:
# each client connects from a loopback address of its own.
MAX_CLIENTS = limits.SUBSCRIBERS
MAX_COMMITS = 10_000
NODES = 10  # commits cycle over this many Nodes


def bench_node(name: str, ready: bool, reason: str) -> Node:
    return Node(
        metadata=ObjectMeta(name=name, labels={LABEL_MANAGED: "true"}),
        status=NodeStatus(
            phase="Running",
            addresses=[NodeAddress("Hostname", name), NodeAddress("InternalIP", "10.77.0.9")],
            conditions=[NodeCondition("Ready", "True" if ready else "False", reason=reason)],
        ),
    )


async def pump(store: MemoryStore, hub: EventHub, *, task_status: Any) -> None:
    async with store.watch() as events:
        task_status.started()
        async for event in events:
            hub.observe(event)


async def client(port: int, n: int, expected: int, received: dict[str, float],
                 closed: list[int], *, task_status: Any) -> None:
    """Record when each benchmark reason arrives; stop after `expected` of them. Client `n`
    connects from 127.1.0.n+1 (all of 127/8 is loopback)."""
    sock = trio.socket.socket()
    await sock.bind((f"127.1.{n // 250}.{n % 250 + 1}", 0))
    await sock.connect(("127.0.0.1", port))
    async with trio.open_nursery() as nursery, await wrap_client_stream(
            nursery, trio.SocketStream(sock), "127.0.0.1", "/events") as ws:
        await ws.get_message()  # the snapshot
        task_status.started()
        try:
            while len(received) < expected:
                message = json.loads(await ws.get_message())
                now = trio.current_time()
                reason = message.get("reason") or ""
                if reason.startswith("bench-"):
                    received[reason] = now
        except ConnectionClosed as exc:
            closed.append(exc.reason.code if exc.reason else 0)


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    store, metrics = MemoryStore(), Metrics()
    hub = EventHub(metrics, queue_size=args.queue_size)
    state = AppState(
        settings=Current(Settings(node_name="bench")), store=Current(store), hub=hub,
        metrics=metrics, health=StoreHealth(), started_at=time.time(),
    )
    versions = {}
    for i in range(NODES):
        stored = await store.create(bench_node(f"bench-{i}", True, "setup"))
        versions[stored.name] = stored.version

    committed: dict[str, float] = {}
    received: list[dict[str, float]] = [{} for _ in range(args.clients)]
    closed: list[int] = []
    with trio.move_on_after(args.timeout) as deadline:
        async with trio.open_nursery() as nursery:
            await nursery.start(pump, store, hub)
            server = trio.CancelScope()

            async def serve_app(*, task_status: Any) -> None:
                with server:
                    await serve.run(make_app(state), "127.0.0.1", 0, task_status=task_status)

            port = await nursery.start(serve_app)
            async with trio.open_nursery() as clients:
                for i in range(args.clients):
                    await clients.start(client, port, i, args.commits, received[i], closed)
                start = trio.current_time()
                for n in range(args.commits):
                    name = f"bench-{n % NODES}"
                    reason = f"bench-{n}"
                    node = bench_node(name, ready=n % 2 == 1, reason=reason)
                    stored = await store.update(node, versions[name])
                    committed[reason] = trio.current_time()
                    versions[name] = stored.version
                    await trio.sleep(args.interval)
                commit_seconds = trio.current_time() - start
            elapsed = trio.current_time() - start
            server.cancel()
            nursery.cancel_scope.cancel()

    latencies = sorted(
        (got[reason] - committed[reason]) * 1000
        for got in received for reason in got if reason in committed
    )
    expected = args.clients * args.commits
    return {
        "benchmark": "events",
        "clients": args.clients,
        "commits": args.commits,
        "interval_s": args.interval,
        "queue_size": args.queue_size,
        "messages_expected": expected,
        "messages_received": len(latencies),
        "dropped_subscribers": metrics.registry.get_sample_value(
            "k3net_event_subscribers_dropped_total"),
        "close_codes": sorted(set(closed)),
        "timed_out": deadline.cancelled_caught,
        "commit_seconds": round(commit_seconds, 3) if not deadline.cancelled_caught else None,
        "elapsed_seconds": round(elapsed, 3) if not deadline.cancelled_caught else None,
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 3),
            "p99": round(percentile(latencies, 99), 3),
            "max": round(latencies[-1], 3) if latencies else None,
            "mean": round(statistics.fmean(latencies), 3) if latencies else None,
        },
        "python": platform.python_version(),
        "machine": platform.machine(),
        "note": "clients and server in one process on loopback",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--commits", type=int, default=500)
    parser.add_argument("--interval", type=float, default=0.01,
                        help="seconds between commits (default: %(default)s)")
    parser.add_argument("--queue-size", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="the whole run stops after this many seconds")
    parser.add_argument("--out", default="results/bench-events.json")
    args = parser.parse_args()
    if not (0 < args.clients <= MAX_CLIENTS and 0 < args.commits <= MAX_COMMITS):
        parser.error(f"--clients must be 1..{MAX_CLIENTS}, --commits 1..{MAX_COMMITS}")

    result = trio.run(bench, args)
    lat = result["latency_ms"]
    print(f"{result['clients']} clients x {result['commits']} commits every "
          f"{args.interval * 1000:g} ms: received {result['messages_received']}/"
          f"{result['messages_expected']}, dropped subscribers {result['dropped_subscribers']:g}")
    print(f"commit -> client latency: p50 {lat['p50']} ms, p99 {lat['p99']} ms, "
          f"max {lat['max']} ms")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if result["messages_received"] == result["messages_expected"] else 1


if __name__ == "__main__":
    sys.exit(main())

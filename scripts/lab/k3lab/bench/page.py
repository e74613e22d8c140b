"""Benchmark (not a test): the cluster page's weight and how fast it renders a big cluster.

Serves the real app (hypercorn on 127.0.0.1, a MemoryStore holding `--nodes` Nodes, the hub
driven by a store-watch loop as in the agent) and opens the page in Debian's headless chromium,
`--repeats` times per case, each a fresh page load:

- weight: the bytes of HTML + JS + CSS as served (and gzipped, for reference). Goal <= 100 KB.
- first render, snapshot: the agent's history no longer covers its start, so the page's first
  frame is a snapshot of every Node. Time from that message arriving (before it is parsed) to
  the end of the update that put every row in the table ("render"), and to the next animation
  frame, i.e. after style, layout and paint of that update ("frame"). Goal <= 300 ms.
- first render, replay: the history still covers the agent's whole run, so the page gets every
  message since seq 0 (one `joined` per Node, which also fills the timeline). Time from the first
  message to the end of the update that rendered the last row.
- burst: `--burst` Nodes turn not Ready at once on an open page; the slowest single update.

The page measures itself (performance.now, in `window.k3page.stats`): the numbers exclude the
browser's start and the page load before the websocket's first message. Browser and server share
the machine's cores with whatever else runs, so take the max column with a grain of salt.

    .venv/bin/python scripts/bench_page.py [--nodes 500] [--repeats 5] [--out docs/page-sample.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import trio

from k3lab.browser import CHROMIUM, Browser, available
from k3net.current import Current
from k3net.events import EventHub
from k3net.health import StoreHealth
from k3net.metrics import Metrics
from k3net.model import (
    ANN_LAST_SEEN,
    ANN_PORT,
    LABEL_MANAGED,
    Node,
    NodeAddress,
    NodeCondition,
    NodeStatus,
    ObjectMeta,
)
from k3net.settings import Settings
from k3net.store.memory import MemoryStore
from k3net.web import serve
from k3net.web.app import AppState, make_app
from k3net.web.page import ASSETS

MAX_NODES = 5000
WEIGHT_GOAL = 100 * 1024
RENDER_GOAL_MS = 300.0
WAIT = 60.0  # seconds any one page load or burst may take before the run is abandoned


def bench_node(i: int, ready: str = "True", reason: str = "PeerAlive") -> Node:
    name = f"node-{i:04d}"
    now = dt.datetime.now(dt.UTC)
    return Node(
        metadata=ObjectMeta(
            name=name, uid=f"node-{name}", labels={LABEL_MANAGED: "true"},
            annotations={ANN_LAST_SEEN: now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), ANN_PORT: "7946"},
        ),
        status=NodeStatus(
            phase="Running",
            addresses=[NodeAddress("Hostname", name),
                       NodeAddress("InternalIP", f"10.{77 + i // 65000}.{i // 250 % 256}.{i % 250 + 2}"),
                       NodeAddress("InternalIP", f"2001:db8::{i:x}")],
            conditions=[NodeCondition("Ready", ready, reason=reason,
                                      message="peer answered a probe")],
        ),
    )


class Server:
    """The app on 127.0.0.1 in a thread of its own (its own trio run), over a MemoryStore."""

    def __init__(self, nodes: int, history: int) -> None:
        self.nodes, self.history = nodes, history
        self._ready: queue.Queue[int | BaseException] = queue.Queue()
        self._stop = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self.store = MemoryStore()
        self._thread = threading.Thread(target=lambda: trio.run(self._main), daemon=True)

    def __enter__(self) -> Server:
        self._thread.start()
        got = self._ready.get(timeout=WAIT)
        if isinstance(got, BaseException):
            raise got
        self.port = got
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(WAIT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def run(self, fn: Any, *args: Any) -> Any:
        """Call an async function of the server's trio run from this thread."""
        assert self._token is not None
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    async def _pump(self, hub: EventHub, *, task_status: Any) -> None:
        """The agent's store-watch task; started once the store's first Snapshot (every Node)
        is in the hub."""
        async with self.store.watch() as events:
            started = False
            async for event in events:
                hub.observe(event)
                if not started:
                    task_status.started()
                    started = True

    async def _main(self) -> None:
        try:
            self._token = trio.lowlevel.current_trio_token()
            for i in range(self.nodes):
                await self.store.create(bench_node(i))
            metrics, health = Metrics(), StoreHealth()
            health.up()
            hub = EventHub(metrics, history=self.history)
            async with trio.open_nursery() as nursery:
                with trio.fail_after(WAIT):
                    await nursery.start(self._pump, hub)
                assert hub.seq == self.nodes, hub.seq  # one `joined` per Node
                state = AppState(
                    settings=Current(Settings(node_name="node-0000", listen_port=7946)),
                    store=Current(self.store), hub=hub, metrics=metrics, health=health,
                    started_at=time.time(), addrs=lambda: ["10.77.0.2"], self_up=lambda: True,
                )
                port = await nursery.start(serve.run, make_app(state), "127.0.0.1", 0)
                self._ready.put(port)
                await trio.to_thread.run_sync(self._stop.wait)
                nursery.cancel_scope.cancel()
        except BaseException as exc:
            self._ready.put(exc)
            raise


def weight(url: str) -> dict[str, Any]:
    sizes: dict[str, int] = {}
    gzipped = 0
    for path in ASSETS:
        with urllib.request.urlopen(url.rstrip("/") + path, timeout=10) as resp:
            body = resp.read()
        sizes[path] = len(body)
        gzipped += len(gzip.compress(body, 9))
    return {"files": sizes, "total": sum(sizes.values()), "gzip": gzipped}


def load(browser: Browser, url: str, nodes: int) -> dict[str, Any]:
    """One fresh page load; the page's own stats once every row is rendered and painted."""
    browser.get("about:blank")
    browser.get(url)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        stats = browser.js("""
            const s = window.k3page;
            return s && s.nodes.size === arguments[0] && s.stats.firstFrameAt !== null
                && !s.scheduled && document.querySelectorAll('#rows tr').length === arguments[0]
                ? s.stats : null;""", nodes)
        if stats:
            return stats  # type: ignore[no-any-return]
        time.sleep(0.02)
    raise TimeoutError(f"the page did not render {nodes} rows within {WAIT:g}s")


def burst(browser: Browser, server: Server, count: int) -> dict[str, Any]:
    browser.js("window.k3page.stats.maxRenderMs = 0")

    async def flip() -> None:
        for i in range(count):
            stored = await server.store.get(f"node-{i:04d}")
            await server.store.update(bench_node(i, "False", "PeerLeft"), stored.version)

    server.run(flip)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        stats = browser.js("""
            const s = window.k3page;
            const down = document.querySelectorAll('#rows tr[data-ready="False"]').length;
            return down === arguments[0] && !s.scheduled ? s.stats : null;""", count)
        if stats:
            return {"maxUpdateMs": stats["maxRenderMs"],
                    "afterLastMessageMs": stats["lastFlushAt"] - stats["lastMessageAt"]}
        time.sleep(0.02)
    raise TimeoutError(f"the page did not show the burst within {WAIT:g}s")


def ms(values: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(values), "max": max(values), "n": len(values)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"nodes": args.nodes, "repeats": args.repeats}
    with Browser(width=1280, height=900) as browser:
        # Snapshot case: a history shorter than the Node count, so since=0 gets a snapshot.
        with Server(args.nodes, history=16) as server:
            result["weight"] = weight(server.url)
            render, frame = [], []
            for _ in range(args.repeats):
                s = load(browser, server.url, args.nodes)
                render.append(s["firstRenderAt"] - s["firstMessageAt"])
                frame.append(s["firstFrameAt"] - s["firstMessageAt"])
                assert s["snapshots"] == 1, s
            result["snapshot"] = {"render": ms(render), "frame": ms(frame)}
            result["burst"] = burst(browser, server, min(args.burst, args.nodes))
        # Replay case: the whole history since seq 0.
        with Server(args.nodes, history=max(1024, args.nodes)) as server:
            replay = []
            for _ in range(args.repeats):
                s = load(browser, server.url, args.nodes)
                assert s["snapshots"] == 0 and s["messages"] >= args.nodes, s
                replay.append(s["lastFlushAt"] - s["firstMessageAt"])
            result["replay"] = {"render": ms(replay)}
    return result


def chromium_version() -> str:
    try:
        out = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def report(result: dict[str, Any]) -> str:
    w = result["weight"]
    snap, rep, b = result["snapshot"], result["replay"], result["burst"]
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    lines = [
        "| measure | p50 | max | n | goal | result |",
        "|---|---|---|---|---|---|",
        f"| page weight (HTML+JS+CSS) | {w['total'] / 1024:.1f} KB | - | 1 | <= 100 KB | "
        f"{met(w['total'] <= WEIGHT_GOAL)} ({w['gzip'] / 1024:.1f} KB gzipped) |",
        f"| first render, snapshot of {result['nodes']} Nodes: message -> rows in the table | "
        f"{snap['render']['p50']:.0f} ms | {snap['render']['max']:.0f} ms | {snap['render']['n']} "
        f"| - | - |",
        f"| first render, snapshot of {result['nodes']} Nodes: message -> painted frame | "
        f"{snap['frame']['p50']:.0f} ms | {snap['frame']['max']:.0f} ms | {snap['frame']['n']} | "
        f"<= {RENDER_GOAL_MS:.0f} ms | {met(snap['frame']['max'] <= RENDER_GOAL_MS)} |",
        f"| first render, replay of {result['nodes']} `joined` messages: first message -> last "
        f"row | {rep['render']['p50']:.0f} ms | {rep['render']['max']:.0f} ms | "
        f"{rep['render']['n']} | - | - |",
        f"| burst: {result['burst_count']} Nodes not Ready at once, slowest single update | "
        f"{b['maxUpdateMs']:.1f} ms | - | 1 | - | - |",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=500, help=f"Nodes in the store (<= {MAX_NODES})")
    parser.add_argument("--repeats", type=int, default=5, help="page loads per case (1-50)")
    parser.add_argument("--burst", type=int, default=100, help="Nodes flipped at once")
    parser.add_argument("--out", default="docs/page-sample.md",
                        help="markdown file the table is written to ('' for none)")
    args = parser.parse_args()
    if not 1 <= args.nodes <= MAX_NODES or not 1 <= args.repeats <= 50 or args.burst < 1:
        print(f"bench_page: --nodes 1..{MAX_NODES}, --repeats 1..50, --burst >= 1",
              file=sys.stderr)
        return 2
    if not available():
        print("bench_page: needs Debian's chromium and chromium-driver "
              "(apt-get install chromium chromium-driver)", file=sys.stderr)
        return 2
    result = run(args)
    result["burst_count"] = min(args.burst, args.nodes)
    table = report(result)
    machine = (f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, Python "
               f"{platform.python_version()}, {chromium_version()} headless")
    print(table)
    print(json.dumps(result, indent=2))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            "# Cluster page: a sample of `nox -s bench-page`\n\n"
            f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {machine}. Produced by "
            "`scripts/bench_page.py` (see its docstring for what each line measures); the page "
            "measures itself with `performance.now()`, from the websocket message's arrival, "
            "before parsing.\n\n" + table + "\n\n"
            "- *rows in the table*: the end of the update that put every row in the DOM.\n"
            "- *painted frame*: the next animation frame after that update, i.e. after the "
            "browser's style, layout and paint of that update (rows off screen are skipped: "
            "`content-visibility: auto`).\n"
            "- *replay*: a page opened while the agent still holds its whole history gets every "
            "message since seq 0 instead of a snapshot (that also fills the last-hour "
            "timeline); the rows are batched per animation frame.\n"
            "- Browser and server share the machine's 2 cores with whatever else runs.\n"
        )
        print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

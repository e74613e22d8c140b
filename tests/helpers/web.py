"""The ASGI app served by real hypercorn on 127.0.0.1, over a MemoryStore whose watch drives
the event hub as in the agent; and an HTTP GET run in a thread, so the app keeps serving."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from typing import Any

import attrs
import trio
from trio_websocket import open_websocket_url

from k3net.current import Current
from k3net.events import EventHub
from k3net.health import StoreHealth
from k3net.metrics import Metrics
from k3net.model import Node
from k3net.settings import Settings
from k3net.store.memory import MemoryStore
from k3net.web import serve
from k3net.web.app import AppState, make_app


@attrs.define
class Web:
    """One served app and what it reads."""

    port: int
    store: MemoryStore
    hub: EventHub
    metrics: Metrics
    health: StoreHealth
    state: AppState
    server: Server

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def ws(self, query: str = "", **kwargs: Any) -> Any:
        return open_websocket_url(self.url(f"/events{query}", "ws"), **kwargs)

    async def stop(self) -> None:
        """Stop the listener and wait until `serve.run` returned."""
        self.server.scope.cancel()
        await self.server.done.wait()


async def pump(store: MemoryStore, hub: EventHub, *, task_status: Any = trio.TASK_STATUS_IGNORED
               ) -> None:
    """The agent's store-watch task, in small."""
    async with store.watch() as events:
        task_status.started()
        async for event in events:
            hub.observe(event)


@attrs.define
class Server:
    port: int
    scope: trio.CancelScope
    done: trio.Event


async def start_server(nursery: trio.Nursery, state: AppState, port: int = 0) -> Server:
    """Serve a new app over `state` until `scope` is cancelled; `done` is set when it stopped."""
    scope, done = trio.CancelScope(), trio.Event()

    async def serve_until_cancelled(*, task_status: Any) -> None:
        try:
            with scope:
                await serve.run(make_app(state), "127.0.0.1", port, task_status=task_status)
        finally:
            done.set()

    return Server(await nursery.start(serve_until_cancelled), scope, done)


async def start_web(nursery: trio.Nursery, *, store: MemoryStore | None = None, port: int = 0,
                    **hub_kwargs: Any) -> Web:
    """A served app whose hub follows the store, as in the agent."""
    store = store or MemoryStore()
    metrics, health = Metrics(), StoreHealth()
    hub = EventHub(metrics, **hub_kwargs)
    await nursery.start(pump, store, hub)
    state = AppState(
        settings=Current(Settings(node_name="node-a", listen_port=7946)), store=Current(store),
        hub=hub, metrics=metrics, health=health, started_at=time.time(),
        addrs=lambda: ["10.77.0.2"],
        self_up=lambda: True,
    )
    server = await start_server(nursery, state, port)
    return Web(server.port, store, hub, metrics, health, state, server)


def _get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers), err.read()


async def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await trio.to_thread.run_sync(_get, url, method)


async def connect_from(source: str, port: int) -> trio.SocketStream:
    """A TCP stream to the app at 127.0.0.1:port from the loopback address `source` (all of
    127/8 is loopback on Linux): a client address of its own, for the caps per client."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def write_nodes(store: MemoryStore, *nodes: Node) -> None:
    for node in nodes:
        await store.create(node)

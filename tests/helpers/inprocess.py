"""The agent in-process: everything that touches the machine replaced by a recorder (the LAN,
the HTTP server) and the store a memory store with its writes recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from k3net.agent import Agent
from k3net.core.addresses import MachineAddresses
from k3net.core.messages import PeerSeen
from k3net.core.table import Message
from k3net.current import Current
from k3net.model import Node
from k3net.settings import Settings
from k3net.store.base import Stored, StoreUnavailable
from k3net.store.memory import MemoryStore

ME = "node-a"
HERE = MachineAddresses(("192.168.1.2",), frozenset())


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []

    def add(self, what: str) -> None:
        self.events.append(what)

    def index(self, prefix: str) -> int:
        for i, event in enumerate(self.events):
            if event.startswith(prefix):
                return i
        raise AssertionError(f"{prefix!r} never happened: {self.events}")


class RecordingStore(MemoryStore):
    def __init__(self, log: Recorder) -> None:
        super().__init__()
        self.log = log
        self.down = False

    def _record(self, node: Node) -> None:
        cond = node.condition()
        self.log.add(f"write {node.name} {cond.status if cond else '-'}/{cond.reason if cond else '-'}")

    async def create(self, node: Node) -> Stored:
        if self.down:
            raise StoreUnavailable("injected outage")
        stored = await super().create(node)
        self._record(node)
        return stored

    async def update(self, node: Node, version: str) -> Stored:
        if self.down:
            raise StoreUnavailable("injected outage")
        stored = await super().update(node, version)
        self._record(node)
        return stored


class FakeLan:
    def __init__(self, log: Recorder, peers: Sequence[PeerSeen] = ()) -> None:
        self.log = log
        self.peers = peers

    async def advertise(
        self, here: Current[MachineAddresses], *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        seen, announced = here.version, here.value.advertised
        self.log.add(f"advertise {','.join(announced)}")
        task_status.started()
        try:
            while True:
                now = await here.wait_changed(seen)
                seen = here.version
                if now.advertised != announced:
                    announced = now.advertised
                    self.log.add(f"readdress {','.join(announced)}")
        finally:
            self.log.add("goodbye")

    async def browse(
        self, out: trio.MemorySendChannel[Message], *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with out:
            task_status.started()
            for peer in self.peers:
                await out.send(peer)
            await trio.sleep_forever()


def fake_http(log: Recorder) -> Callable[..., Any]:
    async def serve(app: Any, host: str, port: int, *, task_status: Any) -> None:
        log.add(f"http up {port}")
        task_status.started(port)
        try:
            await trio.sleep_forever()
        finally:
            log.add("http down")

    return serve


def settings() -> Settings:
    return Settings(node_name=ME, listen_port=7946, peer_ttl=9.0, probe_interval=1.5)


def agent(log: Recorder, store: RecordingStore) -> Agent:
    return Agent(settings(), store=store, lan=FakeLan(log), addresses=HERE, serve=fake_http(log))


async def own_status(store: MemoryStore) -> str | None:
    for stored in await store.list():
        if stored.name == ME:
            return stored.node.ready_status
    return None


async def wait_for_own(store: MemoryStore, status: str, limit: float = 30.0) -> None:
    """Until this agent's own Node has that Ready status, followed through the store's watch."""
    with trio.fail_after(limit):
        async with store.watch() as events:
            async for _ in events:
                if await own_status(store) == status:
                    return


@asynccontextmanager
async def running(a: Agent, store: MemoryStore) -> AsyncIterator[None]:
    """`a` started, with its own Node Ready in `store`; the body ends with `a.stop()` (or its
    own); the block returns once `a.run` has."""
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await wait_for_own(store, "True")
        yield
        a.stop()

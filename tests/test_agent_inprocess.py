"""The whole agent in-process, on trio's fake clock: the start-up and shutdown order.

Everything that touches the machine is replaced by a recorder: the LAN (mDNS advertise and
browse), the HTTP server, and the store (the memory store, with its writes recorded). What is
checked is what a peer or an operator would see: HTTP up before the advertisement, and on stop
HTTP down, then the mDNS goodbye, then this agent's own Node False/AgentShutdown, then exit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from k3net.agent import SHUTDOWN_DEADLINE, Agent
from k3net.core.addresses import MachineAddresses
from k3net.core.messages import PeerSeen
from k3net.core.nodes import Alive, render
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


async def test_start_up_order_http_before_the_advertisement(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Recorder()
    store = RecordingStore(log)
    async with running(agent(log, store), store):
        pass
    assert log.index("http up") < log.index("advertise 192.168.1.2")
    assert log.index("advertise") < log.index(f"write {ME} True/AgentReady")


async def test_shutdown_order_http_goodbye_own_node_exit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Recorder()
    store = RecordingStore(log)
    async with running(agent(log, store), store):
        log.add("stop")
    log.add("exit")
    order = [log.index(e) for e in
             ("stop", "http down", "goodbye", f"write {ME} False/AgentShutdown", "exit")]
    assert order == sorted(order), log.events
    assert await own_status(store) == "False"


async def test_shutdown_with_the_store_down_ends_within_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Recorder()
    store = RecordingStore(log)
    async with running(agent(log, store), store):
        store.down = True
        stopped_at = trio.current_time()
    took = trio.current_time() - stopped_at
    assert SHUTDOWN_DEADLINE - 0.01 <= took <= SHUTDOWN_DEADLINE + 0.01
    assert "goodbye" in log.events  # the goodbye does not wait for the store
    assert await own_status(store) == "True"  # the last write could not be made


async def test_a_crashing_task_ends_the_agent_with_its_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class BrokenLan(FakeLan):
        async def browse(
            self, out: trio.MemorySendChannel[Message], *, task_status: Any = trio.TASK_STATUS_IGNORED
        ) -> None:
            async with out:
                task_status.started()
                await trio.sleep(1.0)
                raise OSError("interface vanished")

    log = Recorder()
    a = Agent(settings(), store=RecordingStore(log), lan=BrokenLan(log), addresses=HERE,
              serve=fake_http(log))
    with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="interface vanished"), flatten_subgroups=True):
        await a.run()
    assert "goodbye" in log.events and "http down" in log.events


async def test_a_move_to_another_store_carries_the_own_node_over_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Recorder()
    first, second = RecordingStore(log), RecordingStore(log)
    a = agent(log, first)
    async with running(a, first):
        moved_at = trio.current_time()
        assert await a.use_store(second) is first
        # Ready in the new store before use_store returns: no heartbeat interval waited for.
        assert await own_status(second) == "True"
        assert trio.current_time() - moved_at < 0.1
        assert a.web.store.value is second  # what /nodes, /info and /readyz read
        # The new store is the one followed now: someone else's Node there is seen.
        node_z = render(None, Alive("node-z", ("192.168.1.9",), 7946, None),
                        dt.datetime.now(dt.UTC))
        assert node_z is not None
        await second.create(node_z)
        await trio.sleep(1)
        assert "node-z" in {n["node"] for n in a.hub.snapshot()["nodes"]}
    assert "goodbye" in log.events and log.events.count("advertise 192.168.1.2") == 1
    assert await own_status(second) == "False"  # the shutdown goes to the new store
    assert await own_status(first) == "True"  # and the old one is left as it was

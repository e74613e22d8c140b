"""The writer against the real memory store: serialized CAS writes, coalescing, conflicts,
outages with backoff, draining on close. Time is trio's autojump MockClock."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from k3net.backoff import Backoff
from k3net.core.nodes import (
    PEER_ALIVE,
    Alive,
    Expired,
    Left,
    Readiness,
    Shutdown,
    last_seen,
    render,
)
from k3net.core.table import Write
from k3net.current import Current
from k3net.health import ROUND_TRIPS, StoreHealth
from k3net.metrics import Metrics
from k3net.model import Node
from k3net.store.base import Put, Stored, StoreUnavailable, WatchEvent
from k3net.store.memory import MemoryStore
from k3net.tasks.writer import Writer

SEED = 1234


class FaultyStore:
    """The memory store behind a fault injector: every call fails with StoreUnavailable while
    `down` is set, and waits while `hold` is set (a slow store). Records failing call times."""

    kind = "memory"

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.down = False
        self.hold: trio.Event | None = None
        self.failed_at: list[float] = []

    async def _gate(self) -> None:
        await trio.lowlevel.checkpoint()
        if self.hold is not None:
            await self.hold.wait()
        if self.down:
            self.failed_at.append(trio.current_time())
            raise StoreUnavailable("injected outage")

    async def get(self, name: str) -> Stored:
        await self._gate()
        return await self.inner.get(name)

    async def list(self) -> list[Stored]:
        await self._gate()
        return await self.inner.list()

    async def create(self, node: Node) -> Stored:
        await self._gate()
        return await self.inner.create(node)

    async def update(self, node: Node, version: str) -> Stored:
        await self._gate()
        return await self.inner.update(node, version)

    async def delete(self, name: str) -> None:
        await self._gate()
        await self.inner.delete(name)

    def watch(self):  # type: ignore[no-untyped-def]
        return self.inner.watch()

    async def aclose(self) -> None:
        await self.inner.aclose()


def alive(name: str, **changes: object) -> Alive:
    fields: dict[str, object] = {
        "name": name, "addresses": ("192.168.1.10",), "port": 7946, "pid": 42,
        "reason": PEER_ALIVE, "refresh": True,
    }
    fields.update(changes)
    return Alive(**fields)  # type: ignore[arg-type]


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def until(predicate: Callable[[], bool], limit: float = 600.0) -> None:
    """Wait (in mock time) until `predicate` holds."""
    with trio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 (polls in mock time; the writer has no hook)
            await trio.sleep(0.01)


async def settle() -> None:
    """Let the writer do everything it can (mock time)."""
    await trio.sleep(60)


@asynccontextmanager
async def running(
    store: object, *, backoff: Backoff | None = None
) -> AsyncIterator[tuple[Writer, trio.MemorySendChannel[Write]]]:
    send, recv = trio.open_memory_channel[Write](0)
    writer = Writer(Current(store), Metrics(), StoreHealth(),  # type: ignore[arg-type]
                    backoff=backoff or Backoff(),
                    rng=random.Random(SEED))
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run, recv)
        async with send:
            yield writer, send
        # closing the inbox lets run() return once everything pending is written


async def seed(store: MemoryStore, name: str) -> Stored:
    node = render(None, alive(name), now())
    assert node is not None
    return await store.create(node)


async def test_writes_a_new_node(autojump_clock: trio.testing.MockClock) -> None:
    mem = MemoryStore()
    async with running(mem) as (writer, inbox):
        assert not writer.health.ok
        await inbox.send(Write(alive("peer-a"), None))
        await settle()
        stored = await mem.get("peer-a")
        assert stored.node.ready_status == "True"
        assert stored.node.metadata.uid == "node-peer-a"
        assert writer.health.ok


class _FarStore(MemoryStore):
    """A store 150 ms away each way: every call takes 0.3 s."""

    async def create(self, node: Node) -> Stored:
        await trio.sleep(0.3)
        return await super().create(node)


async def test_the_stores_round_trip_is_measured_on_its_writes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """What the prober gives a suspect's answer through the store when it did not time a mark
    of its own (`StoreHealth.round_trip`): the slowest of the last few calls."""
    async with running(_FarStore()) as (writer, inbox):
        assert writer.health.round_trip == 0.0
        await inbox.send(Write(alive("peer-a"), None))
        await settle()
        assert writer.health.round_trip == pytest.approx(0.3)
    health = StoreHealth()
    for took in (0.01, 0.5, *[0.02] * (ROUND_TRIPS - 1)):
        health.up(took)
    assert health.round_trip == 0.5  # the slowest of the last ROUND_TRIPS
    health.up(0.02)
    assert health.round_trip == 0.02


async def test_writes_are_serialized_in_order(autojump_clock: trio.testing.MockClock) -> None:
    mem = MemoryStore()
    seen: list[str] = []

    async def record(events: AsyncIterator[WatchEvent]) -> None:
        async for event in events:
            if isinstance(event, Put):
                seen.append(event.stored.name)

    async with mem.watch() as events, trio.open_nursery() as nursery:
        nursery.start_soon(record, events)
        async with running(mem) as (_, inbox):
            for name in ("n3", "n1", "n2"):
                await inbox.send(Write(alive(name), None))
            await until(lambda: len(seen) == 3)
        nursery.cancel_scope.cancel()
    assert seen == ["n3", "n1", "n2"]


async def test_update_keeps_the_stored_node_and_bumps_the_version(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mem = MemoryStore()
    base = await seed(mem, "peer-a")
    async with running(mem) as (_, inbox):
        await inbox.send(Write(Left("peer-a"), base))
        await settle()
    after = await mem.get("peer-a")
    assert after.node.ready_status == "False"
    assert int(after.version) == int(base.version) + 1


async def test_no_write_when_nothing_changed(autojump_clock: trio.testing.MockClock) -> None:
    mem = MemoryStore()
    base = await seed(mem, "peer-a")
    async with running(mem) as (_, inbox):
        await inbox.send(Write(alive("peer-a", refresh=False), base))
        await inbox.send(Write(Left("peer-b"), None))  # absent: nothing to mark
        await settle()
    assert (await mem.get("peer-a")).version == base.version
    assert [s.name for s in await mem.list()] == ["peer-a"]


# --- compare-and-swap -------------------------------------------------------------------------


async def test_conflict_with_a_fresher_refresh_writes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mem = MemoryStore()
    base = await seed(mem, "peer-a")
    # another agent refreshed lastSeen after we read `base`
    theirs = render(base.node, alive("peer-a", refresh_from=last_seen(base.node)),
                    now() + dt.timedelta(seconds=1))
    assert theirs is not None
    winner = await mem.update(theirs, base.version)
    async with running(mem) as (writer, inbox):
        await inbox.send(Write(alive("peer-a", refresh_from=last_seen(base.node)), base))
        await settle()
        assert writer.backlog == 0
    after = await mem.get("peer-a")
    assert after.version == winner.version
    assert last_seen(after.node) == last_seen(winner.node)


async def test_conflict_rerenders_against_the_winner_and_keeps_its_change(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mem = MemoryStore()
    base = await seed(mem, "peer-a")
    labelled = (await mem.get("peer-a")).node
    labelled.metadata.labels["team"] = "blue"  # someone else's change, made after our read
    await mem.update(labelled, base.version)
    async with running(mem) as (_, inbox):
        await inbox.send(Write(Left("peer-a"), base))
        await settle()
    after = (await mem.get("peer-a")).node
    assert after.ready_status == "False"
    assert after.metadata.labels["team"] == "blue"  # no lost update


async def test_conflict_on_a_stale_expiry_writes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    mem = MemoryStore()
    base = await seed(mem, "peer-a")
    fresh = render(base.node, alive("peer-a", refresh_from=last_seen(base.node)),
                   now() + dt.timedelta(seconds=2))
    assert fresh is not None
    winner = await mem.update(fresh, base.version)
    async with running(mem) as (_, inbox):
        await inbox.send(Write(Expired("peer-a", last_seen(base.node)), base))
        await settle()
    after = await mem.get("peer-a")
    assert after.version == winner.version
    assert after.node.ready_status == "True"


async def test_create_race_creates_the_node_once(autojump_clock: trio.testing.MockClock) -> None:
    mem = MemoryStore()
    theirs = await seed(mem, "peer-a")  # another agent created it first
    async with running(mem) as (_, inbox):
        await inbox.send(Write(alive("peer-a"), None))
        await settle()
    assert (await mem.get("peer-a")).version == theirs.version


async def test_node_deleted_meanwhile_is_recreated_when_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mem = MemoryStore()
    base = await seed(mem, "peer-a")
    await mem.delete("peer-a")
    async with running(mem) as (_, inbox):
        await inbox.send(Write(alive("peer-a", port=8000), base))
        await inbox.send(Write(Left("peer-b"), base))
        await settle()
    assert (await mem.get("peer-a")).node.metadata.annotations["k3.network/port"] == "8000"
    assert [s.name for s in await mem.list()] == ["peer-a"]


# --- coalescing -------------------------------------------------------------------------------


async def test_latest_intent_wins_while_the_store_is_down(autojump_clock: trio.testing.MockClock) -> None:
    mem = MemoryStore()
    base = await seed(mem, "peer-a")
    store = FaultyStore(mem)
    store.down = True
    async with running(store) as (writer, inbox):
        await inbox.send(Write(Left("peer-a"), base))
        await until(lambda: len(store.failed_at) >= 1)
        await inbox.send(Write(Expired("peer-a", last_seen(base.node)), base))
        await trio.sleep(3)
        store.down = False
        await until(lambda: writer.backlog == 0)
        await settle()
    after = await mem.get("peer-a")
    # Left then Expired would end False/PeerLeft (Expired only applies to a Ready node)
    ready = after.node.condition()
    assert ready is not None
    assert (ready.status, ready.reason) == ("Unknown", "PeerExpired")
    assert int(after.version) == int(base.version) + 1  # one write


async def test_latest_intent_wins_while_the_store_is_slow(autojump_clock: trio.testing.MockClock) -> None:
    mem = MemoryStore()
    base = await seed(mem, "peer-a")
    store = FaultyStore(mem)
    store.hold = trio.Event()
    async with running(store) as (_, inbox):
        await inbox.send(Write(alive("peer-a", port=1), base))  # stuck in the slow store
        await inbox.send(Write(alive("peer-a", port=2), base))
        await inbox.send(Write(alive("peer-a", port=3), base))
        await trio.sleep(1)
        store.hold.set()
        store.hold = None
        await settle()
    after = await mem.get("peer-a")
    assert after.node.metadata.annotations["k3.network/port"] == "3"
    # port=1 (already on its way) and port=3; port=2 was replaced before it was written
    assert int(after.version) == int(base.version) + 2


async def test_came_and_left_while_down_is_never_created(autojump_clock: trio.testing.MockClock) -> None:
    store = FaultyStore(MemoryStore())
    store.down = True
    async with running(store) as (writer, inbox):
        await inbox.send(Write(alive("peer-a"), None))
        await inbox.send(Write(Left("peer-a"), None))
        await trio.sleep(10)
        store.down = False
        await until(lambda: writer.backlog == 0)
        await settle()
    assert await store.inner.list() == []


# --- outages ----------------------------------------------------------------------------------


async def test_outage_retries_with_growing_capped_backoff(autojump_clock: trio.testing.MockClock) -> None:
    backoff = Backoff(base=0.1, cap=2.0)
    store = FaultyStore(MemoryStore())
    store.down = True
    async with running(store, backoff=backoff) as (writer, inbox):
        for name in ("a", "b", "c"):
            await inbox.send(Write(alive(name), None))
        await until(lambda: len(store.failed_at) >= 12)
        assert not writer.health.ok
        assert "injected outage" in writer.health.reason
        assert writer.backlog == 3  # nothing dropped
        store.down = False
        await until(lambda: writer.backlog == 0)
        assert writer.health.ok
    assert [s.name for s in await store.inner.list()] == ["a", "b", "c"]

    waits = [b - a for a, b in zip(store.failed_at, store.failed_at[1:], strict=False)]
    rng = random.Random(SEED)
    expected = [backoff.delay(n, rng) for n in range(len(waits))]
    assert waits == pytest.approx(expected)
    for n, wait in enumerate(waits):
        ceiling = min(2.0, 0.1 * 2**n)
        assert ceiling / 2 <= wait <= ceiling
    assert max(waits) <= 2.0
    assert waits[-1] > waits[0]


async def test_health_goes_down_and_up(autojump_clock: trio.testing.MockClock) -> None:
    store = FaultyStore(MemoryStore())
    async with running(store) as (writer, inbox):
        await inbox.send(Write(alive("a"), None))
        await until(lambda: writer.health.ok)
        store.down = True
        await inbox.send(Write(Left("a"), (await store.inner.get("a"))))
        await until(lambda: not writer.health.ok)
        store.down = False
        await until(lambda: writer.health.ok)
        await until(lambda: writer.backlog == 0)
    assert (await store.inner.get("a")).node.ready_status == "False"


def test_backoff_never_overflows() -> None:
    rng = random.Random(SEED)
    backoff = Backoff(base=0.1, cap=5.0)
    for attempt in (1023, 1024, 1100, 10_000):
        assert 2.5 <= backoff.delay(attempt, rng) <= 5.0


async def test_writer_survives_a_long_outage(autojump_clock: trio.testing.MockClock) -> None:
    store = FaultyStore(MemoryStore())
    store.down = True
    async with running(store) as (writer, inbox):
        await inbox.send(Write(alive("a"), None))
        await trio.sleep(3 * 3600)
        store.down = False
        await until(lambda: writer.backlog == 0)
    assert [s.name for s in await store.inner.list()] == ["a"]


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.6), (5, 3.2), (6, 5.0), (7, 5.0), (30, 5.0)],
)
def test_backoff_delay_grows_then_caps(attempt: int, ceiling: float) -> None:
    rng = random.Random(SEED)
    delays = [Backoff(base=0.1, cap=5.0).delay(attempt, rng) for _ in range(200)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert max(delays) - min(delays) > ceiling / 4  # jittered, not constant


def test_backoff_is_reproducible_with_a_seed() -> None:
    a = [Backoff().delay(n, random.Random(7)) for n in range(8)]
    b = [Backoff().delay(n, random.Random(7)) for n in range(8)]
    assert a == b
    assert len(set(a)) > 1


# --- closing ----------------------------------------------------------------------------------


async def test_closing_the_inbox_returns_after_pending_writes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FaultyStore(MemoryStore())
    store.down = True
    send, recv = trio.open_memory_channel[Write](0)
    writer = Writer(Current(store), Metrics(), StoreHealth(), rng=random.Random(SEED))  # type: ignore[arg-type]
    returned_at: list[float] = []

    async def run_writer() -> None:
        await writer.run(recv)
        returned_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_writer)
        async with send:
            for name in ("a", "b"):
                await send.send(Write(alive(name), None))
            await send.send(Write(Shutdown("a"), None))
        await trio.sleep(5)
        assert returned_at == []  # still owes writes
        up_at = trio.current_time()
        store.down = False
    assert returned_at and returned_at[0] >= up_at
    assert [s.name for s in await store.inner.list()] == ["b"]  # a: came and shut down


async def test_closing_an_idle_writer_returns_at_once(autojump_clock: trio.testing.MockClock) -> None:
    send, recv = trio.open_memory_channel[Write](0)
    writer = Writer(Current(MemoryStore()), Metrics(), StoreHealth())
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run, recv)
            await send.aclose()


async def test_a_departure_judged_on_a_stale_copy_is_checked_against_the_store(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The table's copy still shows the peer's last departure (False) while our own Alive write
    since (or another agent's) made it Ready again: the goodbye must still be written, not
    dropped as 'recorded already'."""
    mem = MemoryStore()
    first = await seed(mem, "peer-a")
    left = render(first.node, Left("peer-a"), now())
    assert left is not None
    stale = await mem.update(left, first.version)  # the table saw this: False/PeerLeft
    back = render(stale.node, alive("peer-a", seen_ready=Readiness.FALSE), now())
    assert back is not None
    await mem.update(back, stale.version)  # the peer came back: Ready, not yet seen by the table
    async with running(mem) as (_, inbox):
        await inbox.send(Write(Left("peer-a"), stale))
        await settle()
    stored = await mem.get("peer-a")
    assert stored.node.ready_status == "False"
    assert stored.node.condition() is not None and stored.node.condition().reason == "PeerLeft"  # type: ignore[union-attr]

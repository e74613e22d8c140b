"""The browser's queue of pending mDNS changes: never blocks zeroconf's callback, keeps the
latest change of each instance, and only a flood of distinct instances is dropped."""

from __future__ import annotations

import trio
import trio.lowlevel
import trio.testing
from zeroconf import DNSPointer, RecordUpdate, ServiceStateChange
from zeroconf.const import _CLASS_IN, _TYPE_PTR

from k3net.tasks.browse import (
    Change,
    Goodbyes,
    PendingChanges,
    Retries,
    SecondLooks,
    _resolve_changes,
)

ADDED, UPDATED, REMOVED = (
    ServiceStateChange.Added, ServiceStateChange.Updated, ServiceStateChange.Removed,
)


async def drain(pending: PendingChanges) -> list[tuple[str, Change]]:
    out = []
    while len(pending):
        instance, change = await pending.get()
        pending.done(instance)
        out.append((instance, change))
    return out


async def test_a_burst_larger_than_any_buffer_is_kept_whole() -> None:
    pending = PendingChanges(limit=4096)
    for i in range(1000):
        assert pending.put(f"node-{i}._k3._tcp.local.", ADDED)
    got = await drain(pending)
    assert [name for name, _ in got] == [f"node-{i}._k3._tcp.local." for i in range(1000)]


async def test_latest_change_wins_and_keeps_its_place() -> None:
    pending = PendingChanges(limit=10)
    pending.put("a", ADDED)
    pending.put("b", ADDED)
    pending.put("a", REMOVED)  # a goodbye before its Added was handled
    pending.put("b", UPDATED)
    assert await drain(pending) == [("a", REMOVED), ("b", UPDATED)]


async def test_only_new_instances_beyond_the_limit_are_dropped() -> None:
    pending = PendingChanges(limit=2)
    assert pending.put("a", ADDED) and pending.put("b", ADDED)
    assert not pending.put("c", ADDED)
    assert pending.put("a", REMOVED)  # known instances still update
    assert await drain(pending) == [("a", REMOVED), ("b", ADDED)]


async def test_get_waits_for_a_change() -> None:
    pending = PendingChanges(limit=10)
    got: list[tuple[str, Change]] = []

    async def consumer() -> None:
        got.append(await pending.get())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        pending.put("a", ADDED)
    assert got == [("a", ADDED)]


async def test_a_second_look_never_replaces_a_waiting_change() -> None:
    pending = PendingChanges(limit=10)
    pending.put("a", REMOVED)
    pending.put("a", "second look")  # the goodbye must not turn into a look at the cache
    pending.put("b", "second look")
    assert await drain(pending) == [("a", REMOVED), ("b", "second look")]


async def test_second_looks_come_once_each_after_the_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pending = PendingChanges(limit=10)
    looks = SecondLooks(pending, delay=1.2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(looks.run)
        looks.schedule("a")
        await trio.sleep(0.5)
        looks.schedule("b")
        looks.schedule("a")  # changed again: its look moves to 1.2 s from now
        await trio.sleep(1.0)
        assert await drain(pending) == []
        await trio.sleep(0.3)  # 1.8 s: both were due at 1.7 s, b first (a moved behind it)
        assert await drain(pending) == [("b", "second look"), ("a", "second look")]
        looks.schedule("c")
        looks.cancel("c")  # removed before its look
        await trio.sleep(5)
        assert await drain(pending) == [] and len(looks) == 0
        nursery.cancel_scope.cancel()


async def test_retries_back_off_and_never_replace_a_waiting_change(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An entry that does not resolve is tried again after 2, 4, 8, ... s, at most every 30 s,
    until it resolves or goes; a retry never replaces a change of zeroconf's still waiting."""
    pending = PendingChanges(limit=10)
    retries = Retries(pending, first=2.0, last=30.0, tries=10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(retries.run)
        start = trio.current_time()
        times = []
        for _ in range(6):  # it keeps failing
            retries.schedule("a")
            while not len(pending):  # noqa: ASYNC110 (the retry's time, in mock time)
                await trio.sleep(0.1)
            assert await drain(pending) == [("a", "retry")]
            times.append(round(trio.current_time() - start))
        assert [b - a for a, b in zip([0, *times], times, strict=False)] == [2, 4, 8, 16, 30, 30]
        retries.schedule("b")
        pending.put("b", REMOVED)
        await trio.sleep(5)
        assert await drain(pending) == [("b", REMOVED)]  # the retry did not replace it
        retries.schedule("c")
        retries.cancel("c")  # resolved, or removed, before its retry
        await trio.sleep(60)
        assert await drain(pending) == []
        nursery.cancel_scope.cancel()


async def test_an_entry_that_keeps_failing_is_dropped_after_a_few_tries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pending = PendingChanges(limit=10)
    retries = Retries(pending, first=2.0, last=30.0, tries=3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(retries.run)
        assert retries.schedule("a") == 2.0  # failed once
        await trio.sleep(2.5)
        assert await drain(pending) == [("a", "retry")]
        assert retries.schedule("a") == 4.0  # twice
        await trio.sleep(4.5)
        assert await drain(pending) == [("a", "retry")]
        assert retries.schedule("a") is None  # three times: dropped, no more tries
        assert len(retries) == 0
        await trio.sleep(120)
        assert await drain(pending) == []
        # Announced again later, it gets its tries anew.
        assert retries.schedule("a") == 2.0
        nursery.cancel_scope.cancel()


class SlowResolver:
    """Handles an entry named `stuck-*` only when the test lets it (an entry whose records
    never come, holding its resolver for the whole timeout); any other at once."""

    def __init__(self) -> None:
        self.handled: list[tuple[str, Change]] = []
        self.release = trio.Event()

    async def handle(self, instance: str, change: Change) -> None:
        if instance.startswith("stuck-"):
            await self.release.wait()
        else:
            await trio.lowlevel.checkpoint()
        self.handled.append((instance, change))


async def test_entries_that_hang_hold_one_resolver_each_not_all() -> None:
    pending = PendingChanges(limit=100)
    resolver = SlowResolver()
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(_resolve_changes, pending, resolver)
        for i in range(3):
            pending.put(f"stuck-{i}", ADDED)
        pending.put("node-a", ADDED)
        await trio.testing.wait_all_tasks_blocked()
        assert resolver.handled == [("node-a", ADDED)]  # past the three that hang
        assert pending.busy == 3

        # A change of an instance a resolver has waits for it: never two at once, in order.
        pending.put("stuck-0", REMOVED)
        pending.put("node-b", ADDED)
        await trio.testing.wait_all_tasks_blocked()
        assert resolver.handled == [("node-a", ADDED), ("node-b", ADDED)]
        resolver.release.set()
        await trio.testing.wait_all_tasks_blocked()
        stuck0 = [c for i, c in resolver.handled if i == "stuck-0"]
        assert stuck0 == [ADDED, REMOVED]
        assert len(resolver.handled) == 6
        nursery.cancel_scope.cancel()


def _ptr(instance: str, ttl: int, service: str = "_k3._tcp.local.") -> RecordUpdate:
    return RecordUpdate(DNSPointer(service, _TYPE_PTR, _CLASS_IN, ttl, instance), None)


def test_only_a_ptr_with_ttl_0_of_our_service_is_a_goodbye() -> None:
    goodbyes = Goodbyes("_k3._tcp.local.")
    goodbyes.async_update_records(None, 0.0, [  # type: ignore[arg-type]
        _ptr("node-a._k3._tcp.local.", 0),  # a goodbye
        _ptr("node-b._k3._tcp.local.", 4500),  # an announcement (its expiry comes this way too)
        _ptr("printer._ipp._tcp.local.", 0, "_ipp._tcp.local."),  # another service's goodbye
    ])
    assert goodbyes.take("Node-A._k3._tcp.local.")
    assert not goodbyes.take("node-a._k3._tcp.local.")  # taken: the next Removed is an expiry
    assert not goodbyes.take("node-b._k3._tcp.local.")
    assert not goodbyes.take("printer._ipp._tcp.local.")

"""The browser's queue of pending mDNS changes: never blocks zeroconf's callback, keeps the
latest change of each instance, and only a flood of distinct instances is dropped."""

from __future__ import annotations

import trio
from zeroconf import ServiceStateChange

from k3net.tasks.browse import PendingChanges

ADDED, UPDATED, REMOVED = (
    ServiceStateChange.Added, ServiceStateChange.Updated, ServiceStateChange.Removed,
)


async def drain(pending: PendingChanges) -> list[tuple[str, ServiceStateChange]]:
    out = []
    while len(pending):
        out.append(await pending.get())
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
    got: list[tuple[str, ServiceStateChange]] = []

    async def consumer() -> None:
        got.append(await pending.get())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        pending.put("a", ADDED)
    assert got == [("a", ADDED)]

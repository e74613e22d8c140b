"""One owner per value (k3net.current): waking on a change, and `follow` restarting what depends
on it. On trio's fake clock: every wait below is exact."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from k3net.current import Current, follow, wait_any


async def test_set_wakes_every_waiter_with_the_new_value(
    autojump_clock: trio.testing.MockClock,
) -> None:
    here = Current("a")
    woken: list[tuple[str, float]] = []

    async def waiter() -> None:
        woken.append((await here.wait_changed(0), trio.current_time()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        nursery.start_soon(waiter)
        await trio.sleep(5)
        assert woken == []
        here.set("b")
    assert woken == [("b", 5.0), ("b", 5.0)]
    assert (here.value, here.version) == ("b", 1)


async def test_an_equal_value_is_no_change(autojump_clock: trio.testing.MockClock) -> None:
    here = Current((1, 2))
    with trio.move_on_after(10) as waited:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(here.wait_changed, 0)
            await trio.sleep(1)
            here.set((1, 2))
    assert waited.cancelled_caught
    assert here.version == 0


async def test_a_change_missed_meanwhile_is_seen_at_once() -> None:
    """A reader that looked at version 0 and was busy while the value changed twice does not
    wait for a third change."""
    here = Current(0)
    seen = here.version
    here.set(1)
    here.set(2)
    with trio.fail_after(1):
        assert await here.wait_changed(seen) == 2
    assert here.version == 2


async def test_wait_for_returns_once_the_condition_holds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    here = Current(0)
    async with trio.open_nursery() as nursery:

        async def count() -> None:
            for n in range(1, 6):
                await trio.sleep(1)
                here.set(n)

        nursery.start_soon(count)
        assert await here.wait_for(lambda n: n >= 3) == 3
        assert trio.current_time() == 3.0
    assert await here.wait_for(lambda n: n > 0) == 5  # holds already: no wait


async def test_wait_any_returns_at_the_first_change_of_either(
    autojump_clock: trio.testing.MockClock,
) -> None:
    addresses, registered = Current("a"), Current(0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_set_later, registered, 1, 2.0)
        nursery.start_soon(_set_later, addresses, "b", 5.0)
        await wait_any((addresses, 0), (registered, 0))
        assert trio.current_time() == 2.0  # the second one, the first to change
        await wait_any((addresses, 0), (registered, 0))  # one changed already: no wait
        assert trio.current_time() == 2.0
        await wait_any((addresses, 0), (registered, 1))
        assert trio.current_time() == 5.0
    assert not nursery.child_tasks  # nothing left waiting


async def _set_later(current: Current[Any], value: Any, at: float) -> None:
    await trio.sleep_until(at)
    current.set(value)


class Runs:
    """What `follow` started, and when each run ended."""

    def __init__(self) -> None:
        self.log: list[str] = []

    async def run(self, value: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(0.5)  # ready only after a while, as a watch that connects first
        self.log.append(f"start {value} at {trio.current_time():g}")
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self.log.append(f"stop {value} at {trio.current_time():g}")


async def test_follow_restarts_the_run_on_every_change(
    autojump_clock: trio.testing.MockClock,
) -> None:
    here = Current("store-1")
    runs = Runs()
    async with trio.open_nursery() as nursery:
        await nursery.start(follow, here, runs.run)
        assert runs.log == ["start store-1 at 0.5"]  # started: the first run is ready
        await trio.sleep(2)
        here.set("store-2")
        await trio.sleep(2)
        here.set("store-2")  # no change: nothing restarts
        await trio.sleep(2)
        here.set("store-3")
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert runs.log == [
        "start store-1 at 0.5", "stop store-1 at 2.5",
        "start store-2 at 3", "stop store-2 at 6.5",
        "start store-3 at 7", "stop store-3 at 7.5",
    ]


async def test_follow_takes_a_change_made_while_a_run_starts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The value changes while the run for the old one is still starting: that run is stopped
    as soon as it is up, and the new value is followed; no change is lost."""
    here = Current("a")
    runs = Runs()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow, here, runs.run)
        await trio.sleep(0.25)
        here.set("b")
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert runs.log == ["start a at 0.5", "stop a at 0.5", "start b at 1", "stop b at 2.25"]


async def test_a_run_that_ends_by_itself_starts_again_at_the_next_change(
    autojump_clock: trio.testing.MockClock,
) -> None:
    here = Current(1)
    started: list[tuple[int, float]] = []

    async def once(value: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        started.append((value, trio.current_time()))
        task_status.started()

    async with trio.open_nursery() as nursery:
        await nursery.start(follow, here, once)
        await trio.sleep(10)
        here.set(2)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert started == [(1, 0.0), (2, 10.0)]


async def test_a_run_that_fails_ends_follow_with_its_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    here = Current(1)

    async def fails_on_two(value: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if value == 2:
            raise OSError("interface gone")
        await trio.sleep_forever()

    with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="interface gone"),
                            flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await nursery.start(follow, here, fails_on_two)
            here.set(2)

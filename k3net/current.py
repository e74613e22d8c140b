"""current: one owner for a value that several tasks read, and tasks that follow it.

    here = Current(first)                    # held once: this machine's addresses, the store
    here.value                               # what it is now (no copy kept anywhere else)
    here.set(new)                            # wakes every task waiting for a change
    await here.wait_for(lambda v: ...)       # until the value satisfies a condition
    await wait_any((here, seen), (other, o)) # until either changes past the version seen
    await nursery.start(follow, here, run)   # run(value) while value is current

A `Current` holds a value and wakes whoever waits when it changes; readers take `.value` when they
need it instead of keeping a copy that someone must remember to update. `set` with an equal value
changes nothing and wakes nobody. `version` counts the changes so far, so that a reader can tell
whether the value changed since it last looked (`wait_changed(since)`).

`follow` is the one way to "run this while that resource is the current one, restart it when it
changes": a store's watch on the current store, the mDNS advertisement on the current zeroconf.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import trio

T = TypeVar("T")


class Current(Generic[T]):
    """The one place a value is held; `set` it, read `.value`, or wait for a change."""

    def __init__(self, value: T) -> None:
        self._value = value
        self._version = 0
        self._changed = trio.Event()  # set (and replaced) at every change

    def __repr__(self) -> str:
        return f"Current({self._value!r}, version={self._version})"

    @property
    def value(self) -> T:
        return self._value

    @property
    def version(self) -> int:
        """Changes of the value so far (0: still the first)."""
        return self._version

    def set(self, value: T) -> None:
        """Hold `value` from now on; wakes every waiter if it differs from the one held."""
        if value == self._value:
            return
        self._value = value
        self._version += 1
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def wait_changed(self, since: int) -> T:
        """The value, once its version is past `since` (at once if it is already)."""
        while self._version == since:
            await self._changed.wait()
        return self._value

    async def wait_for(self, ready: Callable[[T], bool]) -> T:
        """The value, once `ready(value)` holds (at once if it does already)."""
        while not ready(self._value):
            await self._changed.wait()
        return self._value


async def follow(
    current: Current[T],
    run: Callable[..., Awaitable[Any]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run `run(value)` (started with `nursery.start`, so it says when it is ready) on
    `current`'s value; when the value changes, cancel that run and start `run` again on the new
    value. Reports started once the first run has. A run that returns by itself is started again
    at the next change; one that raises ends `follow` with its error. Runs until cancelled."""
    while True:
        version = current.version
        async with trio.open_nursery() as nursery:
            await nursery.start(run, current.value)
            task_status.started()
            task_status = trio.TASK_STATUS_IGNORED
            await current.wait_changed(version)
            nursery.cancel_scope.cancel()


async def wait_any(*seen: tuple[Current[Any], int]) -> None:
    """Until any of the `(current, since)` pairs has changed past `since` (at once if one
    has already)."""
    if any(current.version != since for current, since in seen):
        return
    async with trio.open_nursery() as nursery:

        async def one(current: Current[Any], since: int) -> None:
            await current.wait_changed(since)
            nursery.cancel_scope.cancel()

        for current, since in seen:
            nursery.start_soon(one, current, since)

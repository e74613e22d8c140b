"""The clock k3net runs trio on.

trio's default clock adds a random offset (10^4 to 2x10^5 s) to the monotonic clock, to flush
out code that mixes clocks. Under trio-asyncio that clock is also asyncio's `loop.time()`, and
zeroconf mixes them: it schedules its timers with `loop.call_at()` at times computed from
`time.monotonic()`. With the offset, every such timer is due at once; the browser re-arms its
query timer at once, forever, and the agent spins at 100% of a core. On this clock
`loop.time() == time.monotonic()`, as under a plain asyncio loop, and the timers fire on time.
"""

from __future__ import annotations

import time

import trio


class MonotonicClock(trio.abc.Clock):
    """`time.monotonic()`, with no offset."""

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return time.monotonic()

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return deadline - time.monotonic()


def run(async_fn, *args):  # type: ignore[no-untyped-def]
    """`trio.run` on the MonotonicClock: use it for anything that runs zeroconf."""
    return trio.run(async_fn, *args, clock=MonotonicClock())

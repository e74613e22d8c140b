"""`k3net` with trio's clock at offset 0, for a diagnosis only (bench.py --zero-clock).

trio's default clock adds a random offset of 10^4..2*10^5 s to the monotonic clock, and under
trio-asyncio that clock is asyncio's `loop.time()`. zeroconf schedules its query timer with
`loop.call_at(<time.monotonic() based>)`, so under that offset every such timer is already due:
the browser's scheduler re-arms itself at once, forever, and the agent spins at 100% of a core
from about 14 s after start. This launcher runs the unchanged agent with a clock whose offset is
0 (then loop.time() == time.monotonic()), to measure what the agent costs without that bug.

    ip netns exec NS python scripts/sim/zero_clock.py run --node-name x ...
"""

from __future__ import annotations

import sys

import trio
from trio._core._run import SystemClock

_run = trio.run


def _run_zero_offset(*args, **kwargs):  # type: ignore[no-untyped-def]
    kwargs.setdefault("clock", SystemClock(offset=0.0))
    return _run(*args, **kwargs)


trio.run = _run_zero_offset

if __name__ == "__main__":
    from k3net.cli import main

    sys.exit(main())

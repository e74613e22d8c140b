"""store watch: follows every committed change to the Nodes, whoever wrote it, and hands it to
the peer table and the event hub. Starts at once, even while the store is down."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import trio

from k3net.backoff import DEFAULT_BACKOFF, Backoff
from k3net.health import StoreHealth
from k3net.store.base import Lost, Snapshot, Store, StoreUnavailable, WatchEvent

log = logging.getLogger("k3net.watch")


async def run(
    store: Store,
    out: trio.MemorySendChannel[WatchEvent],
    observe: Callable[[WatchEvent], None],
    health: StoreHealth,
    *,
    backoff: Backoff = DEFAULT_BACKOFF,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    rng = random.Random()
    task_status.started()
    failures = 0
    async with out:
        while True:
            try:
                async with store.watch() as events:
                    async for event in events:
                        if isinstance(event, Lost):
                            health.down(event.reason)
                        else:
                            if isinstance(event, Snapshot):
                                health.up()
                                if failures:
                                    log.info("store watch resumed (%d nodes)", len(event.items))
                                failures = 0
                            observe(event)
                        await out.send(event)
            except StoreUnavailable as exc:
                health.down(str(exc))
                await out.send(Lost(str(exc)))
                delay = backoff.delay(failures, rng)
                failures += 1
                log.warning("store watch failed (%s); retrying in %.1fs", exc, delay)
                await trio.sleep(delay)

"""store watch: follows every committed change to the Nodes, whoever wrote it, and hands it to
the peer table and the event hub. Starts at once, even while the store is down: the backends'
watches reconnect by themselves, reporting `Lost` while the store is away and a fresh
`Snapshot` once it is back (see `k3net.store.base`), so this task only passes events on and
keeps the store's health (read by /readyz and /metrics) up to date."""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from k3net.health import StoreHealth
from k3net.store.base import Lost, Snapshot, Store, WatchEvent

log = logging.getLogger("k3net.watch")


async def run(
    store: Store,
    out: trio.MemorySendChannel[WatchEvent],
    observe: Callable[[WatchEvent], None],
    health: StoreHealth,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    task_status.started()
    lost = False
    async with out, store.watch() as events:
        async for event in events:
            if isinstance(event, Lost):
                health.down(event.reason)
                lost = True
            else:
                if isinstance(event, Snapshot):
                    health.up()
                    if lost:
                        log.info("store watch resumed (%d nodes)", len(event.items))
                    lost = False
                observe(event)
            await out.send(event)

"""prune: with `--prune-after DUR` (at least an hour), the agent removes managed Nodes that are
not Ready and have not been seen for longer than DUR, as `k3net prune --older-than DUR` would
without `--force` (see `k3net.commands.prune`: only k3net's Nodes, age from the latest of
lastSeen and the Ready condition's times, a Node that carries what k3net does not own is kept,
each delete a compare-and-swap, so a Node brought back meanwhile stays).

It looks every DUR/10, at least once a minute and at most once an hour: a Node is removed at
most 10% of DUR (or an hour) late, and a large store is not listed more often than that. Several
agents may prune the same store: the first delete wins, the others find the Node gone.
"""

from __future__ import annotations

import datetime as dt
import logging

import trio

from k3net.commands.prune import prune
from k3net.durations import format_duration
from k3net.store.base import Store, StoreError

log = logging.getLogger(__name__)


def interval(prune_after: float) -> float:
    return min(3600.0, max(60.0, prune_after / 10))


async def run(
    store: Store, prune_after: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    task_status.started()
    # Old Nodes kept for what others put on them, as last logged: said once, not every pass.
    held: dict[str, tuple[str, ...]] = {}
    while True:
        try:
            outcomes = await prune(store, dt.datetime.now(dt.UTC), prune_after, dry_run=False)
        except (StoreError, trio.TooSlowError) as exc:
            log.warning("prune: the store did not answer (%s); next try in %s", exc,
                        format_duration(interval(prune_after)))
        else:
            now_held = {o.verdict.name: o.verdict.foreign for o in outcomes if o.verdict.foreign}
            for o in outcomes:
                if o.result == "deleted":
                    log.info("pruned Node %s (%s)", o.verdict.name, o.verdict.why)
                elif o.result == "changed":
                    log.info("kept Node %s: it changed since it was read", o.verdict.name)
                elif o.verdict.foreign and held.get(o.verdict.name) != o.verdict.foreign:
                    log.info("kept Node %s: %s", o.verdict.name, o.verdict.why)
            held = now_held
        await trio.sleep(interval(prune_after))

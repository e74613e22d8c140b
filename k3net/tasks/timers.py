"""expire and self: the two clocks of the agent. Each sends one message into the table's
channel every `interval`; the table decides what, if anything, is due."""

from __future__ import annotations

from typing import TypeVar

import trio

T = TypeVar("T")


async def tick(
    out: trio.MemorySendChannel[T],
    message: T,
    interval: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with out:
        task_status.started()
        while True:
            await out.send(message)
            await trio.sleep(interval)


def expire_interval(peer_ttl: float) -> float:
    """How often stale Nodes are looked for: a thirtieth of the TTL, between 0.1 s and 1 s, so
    expiry lands within a second of the TTL without busy work on a short one."""
    return min(1.0, max(0.1, peer_ttl / 30))


def heartbeat_interval(peer_ttl: float) -> float:
    """How often this agent checks its own Node. Frequent and cheap (the table writes only when
    the refresh is due), so that the owner of a Node refreshes it before its peers need to."""
    return min(1.0, max(0.1, peer_ttl / 30))

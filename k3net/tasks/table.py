"""table: the loop around the pure peer table. Takes every message from the producers, asks the
table what to do (`PeerTable.handle`), and carries the actions out: writes go to the writer,
probes to the prober, the rest to the metrics, the event hub and the log.

Every change of a Node's Ready status seen in the store is one log line on `k3net.nodes`
(`core.transitions`): info for arrivals and planned departures, warning for failures, with the
evidence this agent holds and, in JSON lines, the fields node, peer, reason, status, addresses.

When the last producer closes its end of the inbox (the agent is stopping), the table is told
`Stopping` and hands the writer this agent's last write (its own Node False/AgentShutdown);
then the loop closes the writer's and the prober's channels, which ends them in turn.

A move to another store (`StoreChanged`) is counted in `moves` once every write it asked for
is in the writer's hands: the agent waits for that before the new store's watch starts.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TypeVar

import trio

from k3net.core.messages import (
    Deleted,
    PeerGone,
    PeerSeen,
    ProbeResult,
    Put,
    Snapshot,
    Stopping,
    StoreChanged,
)
from k3net.core.table import (
    Action,
    Forget,
    JoinLatency,
    MarkSeen,
    Message,
    NameConflict,
    Paused,
    PeerTable,
    ProbeNow,
    ProberOrder,
    Reject,
    Retarget,
    Write,
)
from k3net.core.transitions import INFO, Transitions
from k3net.current import Current
from k3net.durations import format_duration
from k3net.events import EventHub
from k3net.metrics import Metrics

log = logging.getLogger("k3net.table")
nodes_log = logging.getLogger("k3net.nodes")


async def run(
    table: PeerTable,
    inbox: trio.MemoryReceiveChannel[Message],
    writes: trio.MemorySendChannel[Write],
    probes: trio.MemorySendChannel[ProberOrder],
    metrics: Metrics,
    hub: EventHub,
    *,
    moves: Current[int] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    transitions = Transitions(table.me.name)

    async def carry_out(actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Write():
                    transitions.decided(action.intent)
                    await _send(writes, action)
                case ProbeNow() | Retarget() | Forget() | MarkSeen():
                    try:
                        await _send(probes, action)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass  # the prober has stopped: we are shutting down
                case JoinLatency(name=name, seconds=seconds):
                    metrics.join_latency.observe(seconds)
                    log.info("peer %s Ready %s after its first sighting", name,
                             format_duration(seconds))
                case Paused(seconds=seconds):
                    metrics.paused.inc(seconds)
                    log.warning("this agent did not run for %s (a stopped process, a paused "
                                "VM, an overloaded host): nothing expires for that time",
                                format_duration(seconds))
                case NameConflict(name=name, address=address, port=port, pid=pid):
                    metrics.name_conflict.set(1)
                    log.error("node name %s is held by another live agent at %s:%d (pid %s), "
                              "a host cloned with this name?: this agent stands down and does "
                              "not write Node %s; give one of them another --node-name",
                              name, address, port, pid or "?", name)
                case Reject(instance=instance, reason=reason, detail=detail):
                    metrics.rejected.labels(reason=reason).inc()
                    if reason == "too-many-peers":
                        metrics.limit_hit("peers")
                    hub.rejected(instance, reason, detail)

    async with writes, probes:
        async with inbox:
            task_status.started()
            async for first in inbox:
                for msg in _with_waiting(first, inbox):
                    now = trio.current_time()
                    if isinstance(msg, PeerSeen | PeerGone | ProbeResult):
                        transitions.seen(msg, now)
                    if isinstance(msg, PeerGone):
                        log.info("peer %s %s", msg.name, "said goodbye" if msg.goodbye
                                 else "is no longer announced (its mDNS record expired)",
                                 extra={"node": msg.name})
                    await carry_out(table.handle(msg, now))
                    if isinstance(msg, Snapshot | Put | Deleted):
                        for line in transitions.store(msg, now, dt.datetime.now(dt.UTC)):
                            nodes_log.log(logging.INFO if line.level == INFO else logging.WARNING,
                                          "%s", line.text, extra=line.fields)
                    if isinstance(msg, StoreChanged):
                        transitions.store_changed()
                        if moves is not None:
                            moves.set(moves.value + 1)
        await carry_out(table.handle(Stopping(), trio.current_time()))


# Messages handled in one go (`_with_waiting`): bounds the time between two checkpoints.
BATCH = 256


def _with_waiting(first: Message, inbox: trio.MemoryReceiveChannel[Message],
                  limit: int = BATCH) -> list[Message]:
    """`first` and the messages whose senders are waiting already (`limit` in all at most), to
    be handled without a checkpoint between them. Every receive and send is a checkpoint that
    puts this task at the back of trio's run queue, and while 2,000 peers join that queue is
    long: one message per round capped the join at some 340 peers a second."""
    batch = [first]
    while len(batch) < limit:
        try:
            batch.append(inbox.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return batch


_T = TypeVar("_T")


async def _send(channel: trio.MemorySendChannel[_T], item: _T) -> None:
    """Hand `item` over at once if the receiver is waiting (no checkpoint), else wait for it."""
    try:
        channel.send_nowait(item)
    except trio.WouldBlock:
        await channel.send(item)

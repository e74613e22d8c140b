"""The event hub: committed Node changes, classified and fanned out to `/events` subscribers.

The agent's store-watch task hands every `WatchEvent` to `EventHub.observe()`. Those events are
committed by definition, whoever wrote them (this agent or another one). The hub keeps the
latest Node of each name, turns each change into one message with a strictly increasing `seq`,
keeps the last `history` Node changes for resuming (and, apart, the last `rejected_history`
`rejected` messages: a flood of bad announcements must not push real transitions out), and pushes each message into every subscriber's
bounded queue without ever waiting: a subscriber whose queue is full is dropped (its websocket is
closed with 4008 and it may resume with `?since=`).

Messages (one JSON object per websocket text frame)
---------------------------------------------------

Every change message has all of these keys:

| key | value |
|---|---|
| `seq` | integer, strictly increasing, 1 for the first message of this agent |
| `type` | `joined`, `ready`, `not_ready`, `updated`, `removed` or `rejected` |
| `node` | the Node name (for `rejected`: the mDNS instance name as received) |
| `ready` | `"True"`, `"False"` or `"Unknown"`: the Ready condition (`null` for `rejected`) |
| `reason` | the Ready condition's reason, e.g. `PeerAlive`, `PeerLeft`, `PeerRefused`, `PeerExpired`, `AgentShutdown` (for `rejected`: `invalid-name`, `bad-port`, `bad-txt`, `no-address`, `overflow`, `unauthenticated`, `too-many-peers`) |
| `message` | the Ready condition's message (for `rejected`: the detail), or `null` |
| `addresses` | the Node's addresses except `Hostname`, IPv4 first, as stored |
| `port` | the agent port (annotation `k3.network/port`) as an integer, or `null` |
| `managed` | `true` if the Node is k3net's (label `k3.network/managed=true`) |
| `lastSeen` | annotation `k3.network/lastSeen` (RFC 3339), or `null` |
| `ts` | when this agent observed the change (RFC 3339 UTC with fraction) |

Types:

- `joined`: a Node of that name is seen for the first time. Its `ready` tells its state; no
  separate `ready` message follows for the same change.
- `ready`: the Ready condition became `True`.
- `not_ready`: the Ready condition became `False` or `Unknown` (`reason` says why).
- `updated`: the Node is still as ready as it was, but its reason, addresses, port or `managed`
  changed. Pure `lastSeen` / heartbeat refreshes (about two per node per minute) produce NO
  message: they would drown the interesting events. The condition's `message` alone changing
  does not produce one either.
- `removed`: the Node was deleted; the other keys describe it as it was last known.
- `rejected`: an mDNS entry was dropped and never written (see `reason`). One instance
  rejected again for the same reason while its last rejection is still kept gives no new
  message.

A subscriber first gets either the messages it missed or a snapshot:

    {"type": "snapshot", "seq": 41, "epoch": "5f0c2a9e", "ts": "...",
     "nodes": [{"node": ..., "ready": ..., "reason": ..., "message": ..., "addresses": [...],
                "port": ..., "managed": ..., "lastSeen": ...}, ...]}

`seq` of a snapshot is the seq of the last message it includes; the next live message has
`seq + 1`. `epoch` names this agent run (seqs restart at 1 when the agent restarts).

Resuming: `/events?since=N&epoch=E` sends exactly the messages after `N` when they are still in
the history and `E` (optional) is this run's epoch; otherwise a fresh snapshot. Node changes are
resumed exactly; `rejected` messages are kept in a smaller ring of their own
(`limits.REJECTED_HISTORY`), and older ones are skipped without a snapshot (a snapshot has no
rejected entries either).
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from k3net import limits
from k3net.convert import format_time_precise
from k3net.core import parse
from k3net.core.nodes import Readiness, readiness
from k3net.metrics import Metrics
from k3net.model import ANN_LAST_SEEN, ANN_PORT, Node
from k3net.store.base import Deleted, Put, Snapshot, WatchEvent

Message = dict[str, Any]

# Why a subscription ended.
END_DROPPED = "dropped"  # its queue was full: the subscriber fell behind
END_SHUTDOWN = "shutdown"  # the hub was closed: the agent is stopping
END_CLOSED = "closed"  # the subscriber itself went away


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _port(node: Node) -> int | None:
    """The port annotation (`core.parse`: the table notes a foreign one); None if foreign."""
    port = parse.port(node.metadata.annotations.get(ANN_PORT))
    return port if isinstance(port, int) else None


# The longest Ready reason and message a message carries (k3net's own are far shorter).
MAX_REASON = 128
MAX_MESSAGE = 1024
# The most addresses a message lists (a Node of k3net's has a few).
MAX_ADDRESSES = 16


def _bounded(text: str | None, limit: int) -> str | None:
    taken = parse.text(text, limit)
    return taken if isinstance(taken, str) else None


def node_entry(node: Node) -> Message:
    """The fields of a message (and of a snapshot entry) that describe a Node. Addresses, port,
    lastSeen, reason and message are read by `core.parse`: a foreign one is left out (None, or
    not listed), so that a subscriber never receives what the Node's writer did not mean, nor
    a value of any length."""
    cond = node.condition()
    ips = (parse.address(a.address) for a in node.status.addresses if a.type != "Hostname")
    return {
        "node": node.name,
        "ready": node.ready_status,
        "reason": _bounded(cond.reason, MAX_REASON) if cond is not None else None,
        "message": _bounded(cond.message, MAX_MESSAGE) if cond is not None else None,
        "addresses": [str(ip) for ip in ips if not isinstance(ip, parse.Foreign)][:MAX_ADDRESSES],
        "port": _port(node),
        "managed": node.managed,
        "lastSeen": _last_seen(node),
    }


def _last_seen(node: Node) -> str | None:
    """The lastSeen annotation if it is an RFC 3339 time (`core.parse`), as it is written."""
    text = node.metadata.annotations.get(ANN_LAST_SEEN)
    return text if isinstance(parse.timestamp(text), dt.datetime) else None


# The entry fields whose change is worth an `updated` message (not lastSeen, not message).
_WATCHED = ("reason", "addresses", "port", "managed")


def classify(old: Node | None, new: Node) -> str | None:
    """The message type for a Node going from `old` (None: never seen) to `new`, or None when
    nothing k3net reports changed. Pure: the table-driven tests call it directly."""
    if old is None:
        return "joined"
    before, after = node_entry(old), node_entry(new)
    if before["ready"] != after["ready"]:
        return "ready" if readiness(new) is Readiness.TRUE else "not_ready"
    if any(before[key] != after[key] for key in _WATCHED):
        return "updated"
    return None


class Subscription:
    """One subscriber's view: first its backlog (a snapshot or the missed messages), then live
    messages from a bounded queue. `async for message in sub` ends when the hub drops it or
    closes; `ended` then says why."""

    def __init__(self, hub: EventHub, backlog: list[Message], queue_size: int) -> None:
        self._hub = hub
        self._backlog = deque(backlog)
        self._send, self._receive = trio.open_memory_channel[Message](queue_size)
        self.ended: str | None = None

    @property
    def dropped(self) -> bool:
        return self.ended == END_DROPPED

    def _offer(self, message: Message) -> bool:
        """Queue a live message without waiting; False (and the subscription is dropped) when
        the queue is full."""
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            self._end(END_DROPPED)
            return False
        return True

    def _end(self, why: str) -> None:
        if self.ended is None:
            self.ended = why
        self._send.close()

    def shutdown(self) -> None:
        """End this subscription as at agent shutdown (queued messages still go out first)."""
        self._hub._unsubscribe(self)
        self._end(END_SHUTDOWN)

    def close(self) -> None:
        """The subscriber is gone. Safe to call more than once."""
        self._hub._unsubscribe(self)
        self._end(END_CLOSED)
        self._receive.close()

    def take_queued(self) -> list[Message]:
        """Every message already waiting (backlog first), without waiting for more."""
        out = list(self._backlog)
        self._backlog.clear()
        while True:
            try:
                out.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return out

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        if self.ended in (END_DROPPED, END_CLOSED):
            # A dropped subscriber resumes with ?since=; draining its stale queue helps no one.
            raise StopAsyncIteration
        if self._backlog:
            await trio.lowlevel.checkpoint()
            return self._backlog.popleft()
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None


class EventHub:
    """See the module docstring. `observe` and `rejected` never block; one hub per agent."""

    def __init__(
        self,
        metrics: Metrics,
        history: int = 1024,
        queue_size: int = 256,
        *,
        rejected_history: int = limits.REJECTED_HISTORY,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self._metrics = metrics
        self._queue_size = queue_size
        self._clock = clock
        self._nodes: dict[str, Node] = {}
        self._history: deque[Message] = deque(maxlen=history)  # Node changes
        self._rejected: deque[Message] = deque(maxlen=rejected_history)
        # (instance, reason) of the messages in `_rejected`: a repeat of one gives no message.
        self._rejected_keys: set[tuple[str, str]] = set()
        # The seq of the last Node change that fell out of `_history` (0: none did).
        self._forgotten = 0
        self._subs: set[Subscription] = set()
        self._closed = False
        self.seq = 0
        self.epoch = secrets.token_hex(4)

    # --- producers ---------------------------------------------------------------------------

    def observe(self, event: WatchEvent) -> None:
        """Take one committed store event (the agent's store-watch task calls this).

        A Snapshot is diffed against the hub's view (the first one after start gives a `joined`
        per Node; one after an outage gives exactly what changed meanwhile). Other events (a
        watch that lost the store) change nothing: the view stands until the next Snapshot."""
        if isinstance(event, Snapshot):
            fresh = {s.name: s.node for s in event.items}
            for name in sorted(self._nodes.keys() - fresh.keys()):
                self._remove(name)
            for name in sorted(fresh):
                self._put(fresh[name])
        elif isinstance(event, Put):
            self._put(event.stored.node)
        elif isinstance(event, Deleted):
            self._remove(event.name)

    def rejected(self, instance: str, reason: str, detail: str = "") -> None:
        """An mDNS entry was dropped, never written (the peer table calls this). A repeat of
        a rejection still kept (same instance and reason) publishes nothing."""
        key = (instance, reason)
        if key in self._rejected_keys:
            return
        if len(self._rejected) == self._rejected.maxlen:
            oldest = self._rejected[0]
            self._rejected_keys.discard((oldest["node"], oldest["reason"]))
            self._metrics.limit_hit("rejected-history")
        self._rejected_keys.add(key)
        self._publish({
            "type": "rejected", "node": instance, "ready": None, "reason": reason,
            "message": detail or None, "addresses": [], "port": None, "managed": False,
            "lastSeen": None,
        })

    def _put(self, node: Node) -> None:
        kind = classify(self._nodes.get(node.name), node)
        self._nodes[node.name] = node
        if kind is not None:
            self._publish({"type": kind, **node_entry(node)})

    def _remove(self, name: str) -> None:
        node = self._nodes.pop(name, None)
        if node is not None:
            self._publish({"type": "removed", **node_entry(node)})

    def _publish(self, body: Message) -> None:
        self.seq += 1
        message = {"seq": self.seq, **body, "ts": format_time_precise(self._clock())}
        if body["type"] == "rejected":
            self._rejected.append(message)
        else:
            if len(self._history) == self._history.maxlen:
                self._forgotten = self._history[0]["seq"]
            self._history.append(message)
        for sub in list(self._subs):
            if not sub._offer(message):
                self._subs.discard(sub)
                self._metrics.dropped_subscribers.inc()
        self._metrics.subscribers.set(len(self._subs))

    # --- consumers ---------------------------------------------------------------------------

    def snapshot(self) -> Message:
        return {
            "type": "snapshot", "seq": self.seq, "epoch": self.epoch,
            "ts": format_time_precise(self._clock()),
            "nodes": [node_entry(self._nodes[name]) for name in sorted(self._nodes)],
        }

    def missed(self, since: int) -> list[Message] | None:
        """The messages after `since`, or None if a Node change among them is no longer in the
        history (or `since` is from the future: another agent run). `rejected` messages no
        longer kept are skipped (module docstring)."""
        if since > self.seq or since < self._forgotten:
            return None
        changes = [m for m in self._history if m["seq"] > since]
        rejected = [m for m in self._rejected if m["seq"] > since]
        return sorted(changes + rejected, key=lambda m: m["seq"]) if rejected else changes

    def subscribe(self, since: int | None = None, epoch: str | None = None) -> Subscription:
        """A new subscriber; see the module docstring for what it gets first."""
        backlog: list[Message] | None = None
        if since is not None and epoch in (None, self.epoch):
            backlog = self.missed(since)
        sub = Subscription(self, backlog if backlog is not None else [self.snapshot()],
                           self._queue_size)
        if self._closed:
            sub._end(END_SHUTDOWN)
        else:
            self._subs.add(sub)
            self._metrics.subscribers.set(len(self._subs))
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.discard(sub)
            self._metrics.subscribers.set(len(self._subs))

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def close(self) -> None:
        """The agent is stopping: every subscription ends (websockets close with 1001).
        Later subscriptions end at once. Safe to call more than once."""
        self._closed = True
        for sub in self._subs:
            sub._end(END_SHUTDOWN)
        self._subs.clear()
        self._metrics.subscribers.set(0)

    @property
    def closed(self) -> bool:
        return self._closed

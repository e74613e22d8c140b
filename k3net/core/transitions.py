"""What the log says when a Node's Ready status changes. Pure: no trio, no clock, no logging.

Every Ready transition is one log line, whoever wrote it: this agent's own writes come back
through the store's watch like everybody else's, so the line is made where the watch is read
(`Transitions.store`), once per change of a Node's stored Ready status. It says what changed
and the evidence this agent holds, which comes from the messages the peer table handles (probe
results, mDNS sightings and goodbyes) and from the writes it decided:

    node b NotReady (PeerRefused): 10.0.0.5:7946 refused twice, last answer 1.0 s ago
    node b Unknown (PeerUnreachable): 10.0.0.5:7946 went silent, nobody reached it, last answer 2.6 s ago
    node b Unknown (PeerExpired): no agent refreshed its lastSeen for 90.2 s; our last probe: 10.0.0.5: timed out after 0.7s
    node b Ready (PeerAlive): answered at 10.0.0.5:7946, last answer 0.0 s ago
    node b NotReady (PeerLeft): said goodbye over mDNS 0.2 s ago, then 10.0.0.5:7946 refused once

"last answer" is the time since this agent last had an answer from the peer, on its own clock;
when it never had one, the age of the stored lastSeen (another machine's clock: approximate) is
given as "last seen". Failures (refused, expired) are warnings; arrivals and planned departures
(a goodbye, an agent's own clean shutdown) are info, so that the warnings are exactly the
failures. The first snapshot of the store is the state the agent starts from, not a change:
it is not logged.
"""

from __future__ import annotations

import datetime as dt

import attrs

from k3net.convert import parse_time
from k3net.core import parse
from k3net.core.messages import (
    Deleted,
    PeerGone,
    PeerSeen,
    ProbeResult,
    Put,
    Snapshot,
    Stored,
    WatchEvent,
)
from k3net.core.nodes import (
    AGENT_READY,
    AGENT_SHUTDOWN,
    PEER_EXPIRED,
    PEER_LEFT,
    PEER_REFUSED,
    PEER_UNREACHABLE,
    READY_WORDS,
    Intent,
    Readiness,
    readiness,
)
from k3net.model import ANN_LAST_SEEN, ANN_PORT, Node

# Not-Ready reasons that are planned, not failures: logged at info.
PLANNED = {PEER_LEFT, AGENT_SHUTDOWN}

INFO, WARNING = "info", "warning"
# Nodes whose evidence is kept: the peer table follows fewer peers than this (its caps), so
# the bound only matters against a flood of names, which then costs evidence, never memory.
MAX_EVIDENCE = 4096
# The write this agent decides for each not-Ready reason (an intent's class name).
_DECIDES = {PEER_REFUSED: "Refused", PEER_LEFT: "Left", PEER_EXPIRED: "Expired",
            PEER_UNREACHABLE: "Unreachable"}


@attrs.frozen
class Line:
    """One log line: `level`, the text, and the fields a JSON line carries."""

    level: str
    text: str
    node: str
    reason: str
    status: str  # Ready, NotReady or Unknown
    peer: str | None  # the endpoint the evidence is about ("10.0.0.5:7946"), if any
    addresses: tuple[str, ...]
    last_answer: float | None  # seconds since this agent's last answer from it, if any

    @property
    def fields(self) -> dict[str, object]:
        """The `extra=` of the log call (k3net.logs puts them into JSON lines)."""
        return {"node": self.node, "peer": self.peer, "reason": self.reason,
                "status": self.status, "addresses": list(self.addresses),
                "last_answer": None if self.last_answer is None else round(self.last_answer, 3)}


@attrs.define
class _Evidence:
    """What this agent knows of one node beyond the store."""

    addresses: tuple[str, ...] = ()
    port: int | None = None
    answered_at: float | None = None  # our clock, the last answer (confirmed/unverified)
    answered_by: str | None = None  # the address that answered
    refused: int = 0  # refused probes since the last answer
    failure: str = ""  # the last failed probe's error since the last answer
    goodbye_at: float | None = None  # our clock, its mDNS goodbye (None: none since it answered)
    decided: str | None = None  # the kind of the last write this agent decided for it


def _endpoint(address: str, port: int | None) -> str:
    host = f"[{address}]" if ":" in address else address
    return host if port is None else f"{host}:{port}"


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def _node_addresses(node: Node) -> tuple[str, ...]:
    return tuple(a.address for a in node.status.addresses if a.type == "InternalIP")


class Transitions:
    """Turns the table's messages and the store's watch into transition lines (module
    docstring). `me` is this agent's node name."""

    def __init__(self, me: str) -> None:
        self.me = me
        self._status: dict[str, Readiness] = {}  # the stored Ready status of every Node seen
        self._evidence: dict[str, _Evidence] = {}
        self._started = False  # the first Snapshot came

    def _of(self, name: str) -> _Evidence:
        ev = self._evidence.get(name)
        if ev is None:
            if len(self._evidence) >= MAX_EVIDENCE:
                del self._evidence[next(iter(self._evidence))]  # the longest known goes first
            ev = self._evidence[name] = _Evidence()
        return ev

    # --- evidence -------------------------------------------------------------------------

    def seen(self, msg: PeerSeen | PeerGone | ProbeResult, now: float) -> None:
        """A message the peer table handles: what it tells of a peer."""
        ev = self._of(msg.name)
        match msg:
            case PeerSeen():
                ev.addresses, ev.port = msg.addresses, msg.port
            case PeerGone(goodbye=True):
                ev.goodbye_at = now
            case ProbeResult(outcome="confirmed" | "unverified"):
                ev.answered_at, ev.answered_by = now, msg.address
                ev.refused, ev.failure, ev.goodbye_at = 0, "", None
            case ProbeResult(outcome="refused"):
                ev.refused += 1
                ev.failure = msg.error
            case ProbeResult():
                ev.failure = msg.error

    def decided(self, intent: Intent) -> None:
        """This agent handed the writer a write for a Node."""
        self._of(intent.name).decided = type(intent).__name__

    # --- the store -------------------------------------------------------------------------

    def store_changed(self) -> None:
        """The agent moved to another store: its first snapshot is a new start, not a change."""
        self._started = False

    def store(self, event: WatchEvent, now: float, wall: dt.datetime) -> list[Line]:
        """The lines for a watch event: one per Node whose Ready status changed."""
        match event:
            case Snapshot(items=items):
                lines = []
                if self._started:  # a new snapshot after the store was lost: what changed
                    lines = [line for s in items if (line := self._changed(s, now, wall))]
                self._started = True
                self._status = {s.name: readiness(s.node) for s in items}
                return lines
            case Put(stored=stored):
                line = self._changed(stored, now, wall)
                self._status[stored.name] = readiness(stored.node)
                return [line] if line else []
            case Deleted(name=name):
                self._status.pop(name, None)
                self._evidence.pop(name, None)
        return []

    def _changed(self, stored: Stored, now: float, wall: dt.datetime) -> Line | None:
        node = stored.node
        status = readiness(node)
        if self._status.get(stored.name) == status:
            return None
        if stored.name not in self._status and status is not Readiness.TRUE:
            # A Node first seen not Ready (an old one, written so elsewhere): no change to tell.
            return None
        cond = node.condition()
        reason = (cond.reason if cond is not None else None) or ""
        ev = self._evidence.get(stored.name) or _Evidence()
        addresses = ev.addresses or _node_addresses(node)
        port = ev.port
        if port is None:  # (a foreign port annotation is left out: `core.parse`)
            stored_port = parse.port(node.metadata.annotations.get(ANN_PORT))
            port = stored_port if isinstance(stored_port, int) else None
        text, peer = self._evidence_text(stored.name, status, reason, ev, addresses, port, now)
        since = None if ev.answered_at is None else max(0.0, now - ev.answered_at)
        if stored.name != self.me:
            if since is not None:
                text += f", last answer {since:.1f} s ago"
            elif (age := self._stored_age(node, wall)) is not None:
                text += f", last seen {age:.1f} s ago (its stored lastSeen)"
        word = READY_WORDS[status]
        level = INFO if status is Readiness.TRUE or reason in PLANNED else WARNING
        return Line(level=level, text=f"node {stored.name} {word} ({reason}): {text}",
                    node=stored.name, reason=reason, status=word, peer=peer,
                    addresses=tuple(addresses), last_answer=since)

    def _evidence_text(
        self, name: str, status: Readiness, reason: str, ev: _Evidence,
        addresses: tuple[str, ...],
        port: int | None, now: float,
    ) -> tuple[str, str | None]:
        """The evidence part of the line, and the endpoint it is about."""
        where = ", ".join(_endpoint(a, port) for a in addresses) or "its addresses"
        by_us = "" if ev.decided == _DECIDES.get(reason) else " (written by another agent)"
        if name == self.me:
            return ("this agent" + (" is running" if status is Readiness.TRUE else " stopped cleanly"),
                    None)
        if status is Readiness.TRUE:
            if reason == AGENT_READY and ev.answered_at is None:
                return "its own agent wrote it Ready", None
            if ev.answered_by is not None:
                endpoint = _endpoint(ev.answered_by, port)
                return f"answered at {endpoint}", endpoint
            return f"reached by another agent at {where}", None
        if reason == PEER_REFUSED:
            if ev.refused:
                return f"{where} refused {_times(ev.refused)}{by_us}", where
            return f"another agent found nothing listening at {where}", where
        if reason == PEER_LEFT:
            text = "said goodbye over mDNS"
            if ev.goodbye_at is not None:
                text += f" {max(0.0, now - ev.goodbye_at):.1f} s ago"
            if ev.failure:
                text += f", then {ev.failure}"
            return text + by_us, where
        if reason == PEER_UNREACHABLE:
            if ev.decided == "Unreachable":
                return f"{where} went silent, nobody reached it", where
            return f"another agent found {where} silent, nobody reached it", where
        if reason == PEER_EXPIRED:
            text = "no agent refreshed its lastSeen within the peer TTL"
            if ev.failure:
                text += f"; our last probe: {ev.failure}"
            return text, where
        if reason == AGENT_SHUTDOWN:
            return "its agent stopped cleanly", None
        return (ev.failure or "written by another agent"), where

    @staticmethod
    def _stored_age(node: Node, wall: dt.datetime) -> float | None:
        value = node.metadata.annotations.get(ANN_LAST_SEEN)
        if not value:
            return None
        try:
            return max(0.0, (wall - parse_time(value)).total_seconds())
        except ValueError:
            return None

"""The peer table: everything the agent knows, and every decision it makes. Pure: no trio, no
sockets, no clock. Each `on_*` method takes the event and `now` (this agent's monotonic clock,
in seconds) and returns the actions the tasks must carry out.

Theory of operation
-------------------
Two sources of knowledge meet here:

- the LAN: mDNS says which peers exist (`on_seen`) and which said goodbye (`on_gone`); probes
  say which of them answer (`on_probe`);
- the store: the watch says what every Node looks like now (`on_store`), whoever wrote it.

Liveness is shared through the store. A Node's `k3.network/lastSeen` is refreshed by whichever
agent reaches the node first once the refresh is due (peer-ttl/3 after the stored value last
changed); every other agent then sees it fresh and writes nothing. A Node stops being Ready only
when its stored lastSeen has not changed for peer-ttl (`on_tick`), i.e. when no agent reached it.
Ages are measured on this agent's monotonic clock from the moment it saw the stored value change,
never by comparing another machine's wall clock with ours, so clock skew cannot expire a live
node or keep a dead one Ready.

While the watch has lost the store (`Lost`, until the next `Snapshot`) nothing expires: the
view is stale, and after the outage every age starts again, so a store outage longer than the
TTL does not mark every peer Unknown.

A goodbye is acted on at once, but only if the peer also fails a probe: a restarted peer that
sent a goodbye for its old instance stays Ready.

Actions: `ProbeNow` (probe this peer now, and keep probing it every round), `Forget` (stop
probing it), `Write` (hand an intent to the writer, with the Node as last seen in the store),
`JoinLatency` (a peer's first mDNS sighting to its Node seen Ready, for the metrics).
"""

from __future__ import annotations

import attrs

from k3net.core.messages import (
    Deleted,
    Lost,
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
    PEER_ALIVE,
    Alive,
    Expired,
    Intent,
    Left,
    Shutdown,
    last_seen,
    ordered_addresses,
)
from k3net.model import ANN_PID, ANN_PORT, Node


@attrs.frozen
class ProbeTarget:
    name: str
    addresses: tuple[str, ...]
    port: int


@attrs.frozen
class ProbeNow:
    target: ProbeTarget


@attrs.frozen
class Forget:
    name: str


@attrs.frozen
class Write:
    intent: Intent
    base: Stored | None  # the Node as this agent last saw it in the store


@attrs.frozen
class JoinLatency:
    name: str
    seconds: float


Action = ProbeNow | Forget | Write | JoinLatency


@attrs.frozen
class SelfInfo:
    """What this agent writes into its own Node."""

    name: str
    addresses: tuple[str, ...]
    port: int
    pid: int


@attrs.define
class _Peer:
    name: str
    addresses: tuple[str, ...]
    port: int
    pid: int | None
    first_seen: float
    gone: bool = False
    gone_at: float = 0.0  # when the goodbye arrived
    joined: bool = False

    @property
    def target(self) -> ProbeTarget:
        return ProbeTarget(self.name, self.addresses, self.port)


@attrs.define
class _View:
    stored: Stored
    last_seen: str | None
    changed_at: float  # when this agent saw `last_seen` take its current value
    expiry_sent: bool = False
    # A Left write was asked for: expiry must not overtake it with a vaguer Unknown.
    left_sent: bool = False
    # When this agent last asked for a lastSeen refresh of this value; not asked again while
    # the write is on its way (unless it takes longer than a refresh interval).
    refresh_asked_at: float | None = None


def _internal_ips(node: Node) -> tuple[str, ...]:
    return tuple(a.address for a in node.status.addresses if a.type == "InternalIP")


class PeerTable:
    def __init__(
        self, *, peer_ttl: float, refresh_interval: float, me: SelfInfo, register_self: bool
    ) -> None:
        self.peer_ttl = peer_ttl
        self.refresh_interval = refresh_interval
        self.me = me
        self.register_self = register_self
        self.shutting_down = False
        # False until the watch's first Snapshot, and from a Lost until the next Snapshot: while
        # the view cannot be trusted, no age is judged from it.
        self.store_live = False
        self._peers: dict[str, _Peer] = {}
        self._views: dict[str, _View] = {}

    # --- the LAN ----------------------------------------------------------------------------

    def on_seen(self, msg: PeerSeen, now: float) -> list[Action]:
        peer = self._peers.get(msg.name)
        if peer is None:
            peer = self._peers[msg.name] = _Peer(
                msg.name, msg.addresses, msg.port, msg.pid, first_seen=now
            )
            view = self._views.get(msg.name)
            peer.joined = view is not None and view.stored.node.ready_status == "True"
        else:
            peer.addresses, peer.port, peer.pid, peer.gone = msg.addresses, msg.port, msg.pid, False
        return [ProbeNow(peer.target)]

    def on_gone(self, msg: PeerGone, now: float) -> list[Action]:
        peer = self._peers.get(msg.name)
        if peer is None:
            view = self._views.get(msg.name)
            port = view.stored.node.metadata.annotations.get(ANN_PORT, "") if view else ""
            if view is None or not port.isdigit():
                return []  # nothing known to probe, nothing stored to mark
            node = view.stored.node
            pid_text = node.metadata.annotations.get(ANN_PID, "")
            pid = int(pid_text) if pid_text.isdigit() else None
            peer = self._peers[msg.name] = _Peer(
                msg.name, _internal_ips(node), int(port), pid, first_seen=now, joined=True
            )
        peer.gone, peer.gone_at = True, now
        return [ProbeNow(peer.target)]

    def on_probe(self, result: ProbeResult, now: float) -> list[Action]:
        peer = self._peers.get(result.name)
        if peer is None:
            return []  # forgotten while the probe ran
        if result.outcome in ("confirmed", "unverified"):
            if peer.gone and result.started >= peer.gone_at:
                peer.gone = False  # it answered after its goodbye: it restarted, it stays
            return self._alive(peer.name, peer.addresses, peer.port, peer.pid, PEER_ALIVE, now)
        if not peer.gone:
            return []  # one failed probe proves nothing; expiry decides, from the store
        del self._peers[peer.name]
        view = self._views.get(peer.name)
        if view is None:
            # Its Node may be in the store already, not yet in our view (the watch lags our own
            # writes by a poll): the writer reads it before marking it.
            return [Forget(peer.name), Write(Left(peer.name), None)]
        if not view.stored.node.managed:
            return [Forget(peer.name)]
        view.left_sent = True
        return [Forget(peer.name), Write(Left(peer.name), view.stored)]

    # --- the store --------------------------------------------------------------------------

    def on_store(self, event: WatchEvent, now: float) -> list[Action]:
        if isinstance(event, Lost):
            self.store_live = False
            return []
        if isinstance(event, Snapshot):
            fresh = {s.name for s in event.items}
            for name in list(self._views):
                if name not in fresh:
                    del self._views[name]
            if not self.store_live:
                # Back from an outage: nobody could refresh a lastSeen meanwhile, so every age
                # starts again now rather than expiring every peer at once.
                for view in self._views.values():
                    view.changed_at = now
                    view.refresh_asked_at = None
                self.store_live = True
            changed = [self._observe(s, now) for s in event.items]
            return [a for actions in changed for a in actions]
        if isinstance(event, Put):
            return self._observe(event.stored, now)
        if isinstance(event, Deleted):
            self._views.pop(event.name, None)
        return []

    def _observe(self, stored: Stored, now: float) -> list[Action]:
        seen = last_seen(stored.node)
        view = self._views.get(stored.name)
        if view is None or view.last_seen != seen:
            self._views[stored.name] = _View(stored, seen, changed_at=now)
        else:
            view.stored = stored
            view.expiry_sent = view.expiry_sent and stored.node.ready_status == "True"
        actions: list[Action] = []
        peer = self._peers.get(stored.name)
        if peer is not None and not peer.joined and stored.node.ready_status == "True":
            peer.joined = True
            actions.append(JoinLatency(peer.name, now - peer.first_seen))
        if stored.name == self.me.name and stored.node.ready_status != "True":
            actions += self.on_heartbeat(now)  # someone marked us down while we run: correct it
        return actions

    # --- timers -----------------------------------------------------------------------------

    def on_tick(self, now: float) -> list[Action]:
        """Nodes whose stored lastSeen did not change for peer-ttl become Unknown."""
        actions: list[Action] = []
        if not self.store_live:
            return actions
        for name, view in self._views.items():
            node = view.stored.node
            if (
                name == self.me.name
                or view.expiry_sent
                or view.left_sent
                or not node.managed
                or node.ready_status != "True"
                or now - view.changed_at < self.peer_ttl
            ):
                continue
            view.expiry_sent = True
            actions.append(Write(Expired(name, view.last_seen), view.stored))
        return actions

    def on_heartbeat(self, now: float) -> list[Action]:
        """This agent is alive: keep its own Node Ready and its lastSeen fresh."""
        if not self.register_self or self.shutting_down:
            return []
        me = self.me
        return self._alive(me.name, me.addresses, me.port, me.pid, AGENT_READY, now)

    def shutdown(self) -> list[Action]:
        """This agent stops: its own Node goes False/AgentShutdown."""
        self.shutting_down = True
        if not self.register_self:
            return []
        view = self._views.get(self.me.name)
        return [Write(Shutdown(self.me.name), view.stored if view else None)]

    # --- decisions --------------------------------------------------------------------------

    def _alive(
        self,
        name: str,
        addresses: tuple[str, ...],
        port: int,
        pid: int | None,
        reason: str,
        now: float,
    ) -> list[Action]:
        view = self._views.get(name)
        if view is None:
            return [Write(Alive(name, addresses, port, pid, reason, refresh=True), None)]
        node = view.stored.node
        if not node.managed:
            return []
        annotations = node.metadata.annotations
        ready = node.condition()
        differs = (
            ready is None
            or ready.status != "True"
            or (ready.reason != reason and reason != PEER_ALIVE)  # see nodes.render
            or _internal_ips(node) != ordered_addresses(addresses)
            or annotations.get(ANN_PORT) != str(port)
            or (pid is not None and annotations.get(ANN_PID) != str(pid))
        )
        due = now - view.changed_at >= self.refresh_interval and (
            view.refresh_asked_at is None
            or now - view.refresh_asked_at >= self.refresh_interval
        )
        if not (differs or due):
            return []
        if due:
            view.refresh_asked_at = now
        intent = Alive(
            name, addresses, port, pid, reason, refresh_from=view.last_seen, refresh=due,
            seen_ready=node.ready_status,
        )
        return [Write(intent, view.stored)]

    # --- views for metrics and /info -------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Stored Nodes by Ready status: {"ready": n, "not_ready": n, "unknown": n}."""
        out = {"ready": 0, "not_ready": 0, "unknown": 0}
        for view in self._views.values():
            status = view.stored.node.ready_status
            out["ready" if status == "True" else "not_ready" if status == "False" else "unknown"] += 1
        return out

    def self_up(self) -> bool:
        view = self._views.get(self.me.name)
        return view is not None and view.stored.node.ready_status == "True"

    def targets(self) -> list[ProbeTarget]:
        return [p.target for p in self._peers.values()]

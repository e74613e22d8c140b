"""The peer table: everything the agent knows, and every decision it makes. Pure: no trio, no
sockets, no clock. `handle(message, now)` takes one message and `now` (this agent's monotonic
clock, in seconds) and returns the actions the tasks must carry out. Every transition is here.

Theory of operation
-------------------
Two sources of knowledge meet here:

- the LAN: mDNS says which peers exist (`PeerSeen`) and which said goodbye (`PeerGone`); probes
  say who answers on a peer's port (`ProbeResult`);
- the store: the watch says what every Node looks like now (`Snapshot`, `Put`, `Deleted`,
  `Lost`), whoever wrote it.

Liveness is shared through the store. A Node's `k3.network/lastSeen` is refreshed by whichever
agent reaches the node first once the refresh is due (peer-ttl/3 after the stored value last
changed); every other agent then sees it fresh and writes nothing. A Node stops being Ready when
its stored lastSeen has not changed for peer-ttl (`Tick`), i.e. when no agent reached it. Ages
are measured on this agent's monotonic clock from the moment it saw the stored value change,
never by comparing another machine's wall clock with ours, so clock skew cannot expire a live
node or keep a dead one Ready.

While the watch has lost the store (`Lost`, until the next `Snapshot`) nothing expires: the view
is stale. The same holds while this agent itself did not run (a stopped process, a paused or
migrated VM, a host swapping hard): when a `Tick` comes more than `PAUSE` later than due, every
age is shifted by the time lost (`Paused`), so that on waking up the agent does not expire peers
it only failed to look at; its probes and the watch catch up within seconds. When the store is
back within peer-ttl, every age is shifted by the time lost (nobody could refresh a lastSeen
meanwhile, but the time before the outage still counts); after a longer
outage every age starts again, so that an outage does not mark every peer Unknown at once.
When the agent moves to another store (`StoreChanged`, a reload) the view is emptied the same
way and what this agent knows is written there at once (`_store_changed`).

Positive evidence is fast, absence is slow. A probe answers with one outcome (see
`ProbeResult`); what each means for a peer, by the peer's state:

    state      confirmed      unverified*    refused              wrong-node, timeout
    ---------  -------------  -------------  -------------------  -------------------
    NEW        ALIVE, write   ALIVE, write   SUSPECT, re-probe    -
    ALIVE      ALIVE, write   ALIVE, write   SUSPECT, re-probe    -
    SUSPECT    ALIVE, write   ALIVE, write   REFUSED, write False -
    REFUSED    ALIVE, write   ALIVE, write   -                    -
    LEAVING    LEAVING, write LEAVING, write forget, write Left   forget, write Left

    * unverified (something accepted the connection but no agent answered) counts as alive only
      for a peer that was never confirmed and only without a cluster key; otherwise it is a
      failure like a timeout. "write" means: ask the writer for what the Node lacks, usually
      nothing (see `_alive`).

- A refusal is confirmed by a quick re-probe (`REPROBE_DELAY` later) before anything is written:
  then the Node goes False/PeerRefused at once, whatever peer-ttl is. A second refusal sooner
  than that (a scheduled probe right after one that a held connection's close started)
  confirms nothing: an agent restarting in place must have its second (and the re-probe is asked
  for again, at its time, in case the prober dropped it for a newer target). A timeout proves
  nothing (a lost packet, a busy host): only expiry at peer-ttl decides.
- One agent that cannot reach a node others reach (a firewall that rejects only it) must not make
  the Node flap: if the Node is Ready again after this agent wrote its refusal while its own
  probes still fail, the peer is `contradicted`, and this agent writes no refusal for it until it
  confirms the peer itself. At most one such transition, however long the firewall stays.
- A goodbye (`PeerGone`) makes the peer LEAVING until it announces itself again: its next failed
  probe, of any kind, is decisive (False/PeerLeft), in whichever order its listener and its mDNS
  record went away (PeerLeft replaces a PeerRefused written when the listener went first). While
  it still answers it is re-probed quickly, a few times. An mDNS record that expired unanswered
  (`PeerGone(goodbye=False)`) is no goodbye: the peer is LEAVING the same way, but its failed
  probe only ends our following it; nothing is written (a crashed node's record expires long
  after its Node went not-Ready, and must not turn it into PeerLeft).
- `unauthenticated` (the peer answers but cannot prove the cluster key): never written; reported
  once per peer as a rejected entry.

Peers are found over mDNS on this segment, from `--join` and `--scan` (`PeerSeen.found_by`), and
in the shared store: a managed Node that is Ready and carries a port annotation and addresses is
a peer too, so that agents on other subnets (mDNS stops at the router) are probed and judged like
local ones, and a crash there is seen as fast. A store-found peer is followed only while its Node
is Ready: a dead node costs no probes, and when its agent comes back it writes itself Ready and is
found again. A Node the Go side wrote (unmanaged, no port) is never probed; nothing is probed
twice, whichever ways it was found.

Actions: `ProbeNow` (probe this peer, now or after a delay, and keep probing it every round),
`Forget` (stop probing it), `Write` (hand an intent to the writer, with the Node as last seen in
the store), `JoinLatency` (a peer's first mDNS sighting to its Node seen Ready), `Reject` (an
entry dropped, never written), `Paused` (this agent did not run for a while).
"""

from __future__ import annotations

import enum
import math

import attrs

from k3net.core.messages import (
    Deleted,
    Lost,
    OwnAddresses,
    PeerGone,
    PeerRejected,
    PeerSeen,
    ProbeResult,
    Put,
    SelfHeartbeat,
    Snapshot,
    Stopping,
    StoreChanged,
    Stored,
    Tick,
    WatchEvent,
)
from k3net.core.nodes import (
    AGENT_READY,
    PEER_ALIVE,
    Alive,
    Expired,
    Intent,
    Left,
    Refused,
    Shutdown,
    last_seen,
    ordered_addresses,
)
from k3net.model import ANN_PID, ANN_PORT, Node

# A refused probe is checked again this much later before it is acted on: an agent restarting
# in place is back within it, a dead one is not.
REPROBE_DELAY = 1.0
# A Tick this much later than due means this agent did not run meanwhile (module docstring).
PAUSE = 1.0
# How a peer was found, most direct first: a peer found several ways shows the most direct.
FOUND_BY = ("mdns", "join", "scan", "store")
# How many quick re-probes a peer that said goodbye but still answers gets before it is left to
# the ordinary rounds (an mDNS record that expired while its agent runs).
LEAVING_REPROBES = 5

Message = (
    PeerSeen | PeerGone | PeerRejected | ProbeResult | Tick | SelfHeartbeat | OwnAddresses
    | StoreChanged | Stopping | WatchEvent
)


@attrs.frozen
class ProbeTarget:
    name: str
    addresses: tuple[str, ...]
    port: int


@attrs.frozen
class ProbeNow:
    target: ProbeTarget
    delay: float = 0.0  # seconds to wait first (a re-probe)


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


@attrs.frozen
class Paused:
    """This agent did not run for `seconds` (a stopped process, a paused VM): every age was
    shifted by that much."""

    seconds: float


@attrs.frozen
class Reject:
    """An mDNS entry or a peer dropped and never written; `reason` is a short slug."""

    instance: str
    reason: str
    detail: str = ""


Action = ProbeNow | Forget | Write | JoinLatency | Reject | Paused


@attrs.frozen
class SelfInfo:
    """What this agent writes into its own Node."""

    name: str
    addresses: tuple[str, ...]
    port: int
    pid: int


@attrs.frozen
class PeerView:
    """One peer as the table knows it (for /peers and the page)."""

    name: str
    addresses: tuple[str, ...]
    port: int
    state: str
    found_by: str
    confirmed: bool
    pid: int | None = None
    last_probe: ProbeResult | None = None  # the last probe's result, None before the first


class PeerState(enum.Enum):
    NEW = "new"  # announced, not reached yet
    ALIVE = "alive"  # its last probe reached it
    SUSPECT = "suspect"  # refused once: a re-probe decides
    REFUSED = "refused"  # refused twice in a row: its Node was marked False/PeerRefused
    LEAVING = "leaving"  # said goodbye: the next failed probe is decisive
    UNAUTHENTICATED = "unauthenticated"  # answers, but cannot prove the cluster key


@attrs.define
class _Peer:
    name: str
    addresses: tuple[str, ...]
    port: int
    pid: int | None
    first_seen: float
    found_by: str = "mdns"
    state: PeerState = PeerState.NEW
    confirmed: bool = False  # an agent proved to be this peer at least once
    contradicted: bool = False  # others saw it Ready after we wrote its refusal
    left_at: float = -math.inf  # when its goodbye arrived
    reprobes: int = 0  # quick re-probes left while LEAVING
    goodbye: bool = True  # LEAVING after a goodbye (False: its mDNS record expired)
    suspect_at: float = -math.inf  # when its first refusal made it SUSPECT
    joined: bool = False  # its Node was seen Ready (join latency reported)
    last_probe: ProbeResult | None = None  # for /peers

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
        self,
        *,
        peer_ttl: float,
        refresh_interval: float,
        me: SelfInfo,
        register_self: bool,
        keyed: bool = False,
    ) -> None:
        self.peer_ttl = peer_ttl
        self.refresh_interval = refresh_interval
        self.me = me
        self.register_self = register_self
        self.keyed = keyed  # a cluster key is set: only proven peers count
        self.shutting_down = False
        # False until the watch's first Snapshot, and from a Lost until the next Snapshot: while
        # the view cannot be trusted, no age is judged from it.
        self.store_live = False
        self._lost_at: float | None = None
        self._ticked_at: float | None = None  # the last Tick (`_paused`)
        self._peers: dict[str, _Peer] = {}
        self._views: dict[str, _View] = {}

    def handle(self, msg: Message, now: float) -> list[Action]:
        match msg:
            case PeerSeen():
                return self._seen(msg, now)
            case PeerGone():
                return self._gone(msg, now)
            case PeerRejected():
                return [Reject(msg.instance, msg.reason, msg.detail)]
            case ProbeResult():
                return self._probed(msg, now)
            case Tick(interval=interval):
                return self._paused(now, interval) + self._expire(now)
            case SelfHeartbeat():
                return self._heartbeat(now)
            case OwnAddresses():
                self.me = attrs.evolve(self.me, addresses=msg.addresses)
                return self._heartbeat(now)
            case StoreChanged():
                return self._store_changed(now)
            case Stopping():
                return self._stop()
            case _:
                return self._store(msg, now)

    # --- the LAN ----------------------------------------------------------------------------

    def _seen(self, msg: PeerSeen, now: float) -> list[Action]:
        if msg.name == self.me.name:
            return []  # ourselves, reached through a join address or a scan
        peer = self._peers.get(msg.name)
        if peer is None:
            peer = self._peers[msg.name] = _Peer(
                msg.name, msg.addresses, msg.port, msg.pid, first_seen=now, found_by=msg.found_by
            )
            view = self._views.get(msg.name)
            peer.joined = view is not None and view.stored.node.ready_status == "True"
        elif FOUND_BY.index(msg.found_by) > FOUND_BY.index(peer.found_by):
            # Followed already through a more direct source (mDNS here, over what another
            # agent or a scan reports): its word on addresses and port stands, its probes go on.
            return []
        else:
            peer.addresses, peer.port, peer.pid = msg.addresses, msg.port, msg.pid
            peer.found_by = msg.found_by
            if peer.state is PeerState.LEAVING and msg.found_by == "mdns":
                peer.state = PeerState.NEW  # announced again: the goodbye is void
        return [ProbeNow(peer.target)]

    def _gone(self, msg: PeerGone, now: float) -> list[Action]:
        peer = self._peers.get(msg.name)
        if not msg.goodbye and (peer is None or peer.found_by != "mdns"):
            return []  # an expired record says nothing of a peer mDNS did not find here
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
        peer.state, peer.left_at, peer.reprobes = PeerState.LEAVING, now, LEAVING_REPROBES
        peer.goodbye = msg.goodbye
        return [ProbeNow(peer.target)]

    def _probed(self, result: ProbeResult, now: float) -> list[Action]:
        peer = self._peers.get(result.name)
        if peer is None:
            return []  # forgotten while the probe ran
        peer.last_probe = result
        outcome = result.outcome
        if outcome == "unverified" and not (peer.confirmed or self.keyed):
            outcome = "confirmed"  # a foreign advertiser that never proved anything: as before
        if outcome == "confirmed":
            return self._answered(peer, result, now)
        if outcome == "unauthenticated":
            if peer.state is PeerState.UNAUTHENTICATED:
                return []
            peer.state = PeerState.UNAUTHENTICATED
            return [Reject(peer.name, "unauthenticated",
                           f"{result.address or '?'} cannot prove the cluster key")]
        if peer.state is PeerState.LEAVING:
            return self._left(peer)
        if outcome != "refused":
            return []  # one failed probe proves nothing; expiry decides, from the store
        if peer.state is not PeerState.SUSPECT:
            if peer.state is PeerState.REFUSED:
                return []
            peer.state, peer.suspect_at = PeerState.SUSPECT, now
            return [ProbeNow(peer.target, delay=REPROBE_DELAY)]
        if now - peer.suspect_at < REPROBE_DELAY:
            # Too soon to confirm (an agent restarting in place): a re-probe decides, asked
            # again for its time in case the first was dropped (the peer's target changed).
            return [ProbeNow(peer.target, delay=peer.suspect_at + REPROBE_DELAY - now)]
        peer.state = PeerState.REFUSED
        view = self._views.get(peer.name)
        if (
            peer.contradicted
            or view is None
            or not view.stored.node.managed
            or view.stored.node.ready_status != "True"
        ):
            return []
        return [Write(Refused(peer.name, view.last_seen), view.stored)]

    def _answered(self, peer: _Peer, result: ProbeResult, now: float) -> list[Action]:
        if result.outcome == "confirmed":
            peer.confirmed, peer.contradicted = True, False
        actions: list[Action] = []
        if peer.state is PeerState.LEAVING:
            if result.started < peer.left_at:
                return []  # decided before the goodbye: says nothing about after it
            if peer.reprobes > 0:
                peer.reprobes -= 1
                actions.append(ProbeNow(peer.target, delay=REPROBE_DELAY))
        else:
            peer.state = PeerState.ALIVE
        return actions + self._alive(
            peer.name, peer.addresses, peer.port, peer.pid, PEER_ALIVE, now
        )

    def _left(self, peer: _Peer) -> list[Action]:
        del self._peers[peer.name]
        if not peer.goodbye:
            # Its record expired and it does not answer: no longer followed, and no departure
            # written (nobody said goodbye; expiry and refusals judge the Node).
            return [Forget(peer.name)]
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

    def _store(self, event: WatchEvent, now: float) -> list[Action]:
        if isinstance(event, Lost):
            if self.store_live:
                self.store_live, self._lost_at = False, now
            return []
        if isinstance(event, Snapshot):
            return self._snapshot(event, now)
        if isinstance(event, Put):
            return self._observe(event.stored, now)
        if isinstance(event, Deleted):
            self._views.pop(event.name, None)
        return []

    def _store_changed(self, now: float) -> list[Action]:
        """The agent moved to another store. What was read from the old one means nothing there:
        the view is empty and nothing expires until the new store's Snapshot. What this agent
        knows is carried over at once: our own Node and every peer that answers now are
        written Ready (created, or refreshed where the new store has them already), so no Node
        there goes through not-Ready or missing while the new watch starts."""
        self._views.clear()
        self.store_live, self._lost_at = False, now
        actions = self._heartbeat(now)
        for peer in self._peers.values():
            if peer.state is PeerState.ALIVE:
                actions += self._alive(peer.name, peer.addresses, peer.port, peer.pid,
                                       PEER_ALIVE, now)
        return actions

    def _snapshot(self, event: Snapshot, now: float) -> list[Action]:
        fresh = {s.name for s in event.items}
        for name in [name for name in self._views if name not in fresh]:
            del self._views[name]
        if not self.store_live:
            lost = now - self._lost_at if self._lost_at is not None else 0.0
            for view in self._views.values():
                # Nobody could refresh a lastSeen while the store was away. A short outage
                # shifts every age by the time lost; a longer one starts every age again.
                view.changed_at = view.changed_at + lost if lost < self.peer_ttl else now
                view.refresh_asked_at = None
            self.store_live, self._lost_at = True, None
        return [a for stored in event.items for a in self._observe(stored, now)]

    def _observe(self, stored: Stored, now: float) -> list[Action]:
        seen = last_seen(stored.node)
        view = self._views.get(stored.name)
        was_ready = view is not None and view.stored.node.ready_status == "True"
        if view is None or view.last_seen != seen:
            self._views[stored.name] = _View(stored, seen, changed_at=now)
        else:
            view.stored = stored
            view.expiry_sent = view.expiry_sent and stored.node.ready_status == "True"
        actions: list[Action] = []
        ready = stored.node.ready_status == "True"
        peer = self._peers.get(stored.name)
        if peer is not None:
            if not peer.joined and ready:
                peer.joined = True
                actions.append(JoinLatency(peer.name, now - peer.first_seen))
            if peer.state is PeerState.REFUSED and ready and not was_ready:
                peer.contradicted = True  # Ready again by others while we cannot reach it
        if stored.name == self.me.name:
            if not ready:
                actions += self._heartbeat(now)  # someone marked us down while we run: correct it
        else:
            actions += self._found_in_store(stored.node, ready, now)
        return actions

    def _found_in_store(self, node: Node, ready: bool, now: float) -> list[Action]:
        """Follow a managed, Ready Node with a port and addresses as a peer (module docstring)."""
        peer = self._peers.get(node.name)
        if peer is not None and peer.found_by != "store":
            return []  # found on the LAN: the LAN's word on its addresses and port wins
        port = node.metadata.annotations.get(ANN_PORT, "")
        addresses = _internal_ips(node)
        usable = node.managed and ready and port.isdigit() and 0 < int(port) < 65536 and addresses
        if not usable:
            if peer is None or peer.state is PeerState.REFUSED:
                return []  # (a refusal we wrote ourselves: keep the state, for contradictions)
            del self._peers[node.name]
            return [Forget(node.name)]
        if peer is None:
            pid_text = node.metadata.annotations.get(ANN_PID, "")
            peer = self._peers[node.name] = _Peer(
                node.name, addresses, int(port), int(pid_text) if pid_text.isdigit() else None,
                first_seen=now, found_by="store", joined=True,
            )
            return [ProbeNow(peer.target)]
        if (peer.addresses, peer.port) != (addresses, int(port)):
            peer.addresses, peer.port = addresses, int(port)
            return [ProbeNow(peer.target)]
        return []

    # --- timers -----------------------------------------------------------------------------

    def _paused(self, now: float, interval: float | None) -> list[Action]:
        """A Tick later than due by more than PAUSE: this agent did not run, so nobody's age
        may grow by that time (module docstring); a pause longer than peer-ttl starts every
        age again, as a store outage does."""
        ticked_at, self._ticked_at = self._ticked_at, now
        if ticked_at is None or interval is None:
            return []
        late = now - ticked_at - interval
        if late <= PAUSE:
            return []
        for view in self._views.values():
            view.changed_at = view.changed_at + late if late < self.peer_ttl else now
        if self._lost_at is not None:
            self._lost_at += late  # nor does a store outage's
        return [Paused(late)]

    def _expire(self, now: float) -> list[Action]:
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

    def _heartbeat(self, now: float) -> list[Action]:
        """This agent is alive: keep its own Node Ready and its lastSeen fresh."""
        if not self.register_self or self.shutting_down:
            return []
        me = self.me
        return self._alive(me.name, me.addresses, me.port, me.pid, AGENT_READY, now)

    def _stop(self) -> list[Action]:
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

    # --- read by /info and the metrics ----------------------------------------------------------

    def peers(self) -> list[PeerView]:
        """Every peer this agent follows, by name."""
        return [
            PeerView(p.name, p.addresses, p.port, p.state.value, p.found_by, p.confirmed,
                     p.pid, p.last_probe)
            for p in sorted(self._peers.values(), key=lambda p: p.name)
        ]

    def nodes(self) -> list[Node]:
        """The stored Nodes as this agent last read them (read by the metrics at scrape time)."""
        return [view.stored.node for view in self._views.values()]

    def self_up(self) -> bool:
        view = self._views.get(self.me.name)
        return view is not None and view.stored.node.ready_status == "True"

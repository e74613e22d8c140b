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

Each peer this agent follows is in exactly one state, one value of `State`: NEW, ALIVE,
SUSPECT, REFUSED, LEAVING, UNAUTHENTICATED or UNREACHABLE (the classes `New` to `Unreachable`
below, shown in /peers by their names in lower case; SUSPECT, LEAVING and UNREACHABLE carry what
only they need).
What can happen to a peer is one `PeerEvent`: a probe's outcome (see `ProbeResult`), an mDNS
announcement or goodbye, its Node turning Ready. Every (state, event) pair that does something
is one row of `TRANSITIONS`, an executable table, and its handler is the only code that moves a
peer to another state (`_fire`); a pair not in it changes nothing. Apart from the table, a peer
found only in the store is forgotten when its Node stops being a live agent's (see below).

The table as `tests/test_table.py` checks that it reads here (event, from which states, to
which, what the handler does):

    answered         new, alive, suspect, refused, unauthenticated, unreachable -> alive
                     Ask the writer for what its Node lacks, usually nothing (`_alive`).
    answered         leaving -> leaving
                     Write what its Node lacks; re-probe soon, LEAVING_REPROBES times.
    refused          new, alive, unauthenticated, unreachable -> suspect
                     Re-probe REPROBE_DELAY later; only its Node is marked meanwhile (`_mark`).
    refused          suspect -> refused or suspect
                     Write False/PeerRefused (too soon, or its mark's answer may come: re-probe).
    refused          leaving -> forgotten
                     Stop probing it; after a goodbye, write False/PeerLeft.
    failed           leaving -> forgotten
                     Stop probing it; after a goodbye, write False/PeerLeft.
    unreachable      alive, suspect, refused -> unreachable
                     Write Unknown/PeerUnreachable at once (if unrefreshed since); re-probe later.
    unreachable      unreachable -> unreachable
                     Re-probe DOWN_REPROBE later (once per due re-probe: no chains pile up).
    failed           unreachable -> unreachable
                     Re-probe DOWN_REPROBE later (once per due re-probe: no chains pile up).
    unreachable      leaving -> forgotten
                     Stop probing it; after a goodbye, write False/PeerLeft.
    unauthenticated  new, alive, suspect, refused, leaving, unreachable -> unauthenticated
                     Report it rejected, once; it is never written.
    announced        leaving -> new
                     Its goodbye is void: it is probed as a new peer.
    goodbye          alive, suspect, refused, leaving, unreachable -> leaving
                     Probe it at once: its next failed probe writes False/PeerLeft.
    unannounced      alive, suspect, refused, leaving, unreachable -> leaving
                     Probe it at once: its next failed probe ends following it.
    goodbye          new, unauthenticated -> leaving or forgotten
                     Forget it now if mDNS found it and it never proved itself; else leaving.
    unannounced      new, unauthenticated -> leaving or forgotten
                     Forget it now if mDNS found it and it never proved itself; else leaving.
    node-ready       refused -> refused
                     Others reach it: write no refusal of ours until we confirm it.

Two facts about a peer outlive every state, so they are fields of the peer, not states:
`confirmed` (an agent proved to be this peer at least once: from then on `unverified` is a
failure) and `contradicted` (see below).

Only proven facts are written (design.md section 6). What mDNS, a join list, a scan, another
agent's /peers or the store say about a peer are hints: where to ask it (`_Peer.addresses`, its
port until it proves its own). What reaches its Node is `_Peer.proven`, the addresses, port and
pid from its own last confirmed answer (`ProbeResult.facts`; with a key, only what the answer's
MAC covers, see `core.identity`). Evidence against a peer counts only where it proved itself: a
refusal is `refused` only if an address it proved refused on the port it proved (elsewhere it is
`failed`, which proves nothing), and a goodbye or an expired record is an event only if the
record was at an address it proved; otherwise it only makes the agent ask the peer (`ProbeNow`).
A peer that never proved itself to this agent is never written and never marked down by it.

Our own name is checked before it is written (design.md, "Say it, then stand down"): our Node is
written only once the store was read; a Ready Node of our name written by another pid or port is
first asked who answers there (a probe of our own name). Another live agent answering as our name
is a twin: the table reports `NameConflict` and never writes that Node again while it runs (the
agent that holds it keeps it); nobody answering means it was our previous run's, and we register.

Positive evidence is fast, absence is slow:

- `unverified` (something accepted the connection but no agent answered) is `answered` only for
  a peer that was never confirmed and only without a cluster key (and, proving nothing, writes
  nothing); otherwise it is `failed`, like
  `timeout` and `wrong-node`. A failure proves nothing (a lost packet, a busy host): only expiry
  at peer-ttl decides, except for a LEAVING peer.
- A refusal is confirmed by a quick re-probe (`REPROBE_DELAY` later) before anything is written:
  then the Node goes False/PeerRefused at once, whatever peer-ttl is. Not before its peer's own
  agent could answer the mark of the first refusal through the store, though: until the mark
  shows in our watch and `answer_window` of the round trip it took has passed (a store far away
  or slow to sync), the re-probe is asked for again (`_answer_due`). A second refusal sooner
  than that (a scheduled probe right after one that a held connection's close started)
  confirms nothing: an agent restarting in place must have its second (and the re-probe is asked
  for again, at its time, in case the prober dropped it for a newer target).
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
- Silence is the one absence judged before peer-ttl, and only once confirmed elsewhere: the
  prober turns a held connection gone silent into a suspicion (`k3net.tasks.probe`), and only a
  suspicion confirmed (nothing answered at the addresses the peer proved, no agent asked reached
  it, this agent's local health is 0) arrives here, as the outcome `unreachable`. For a peer that
  proved itself there it writes Unknown/PeerUnreachable at once (unless `contradicted`: others
  reach it), and the peer is re-probed every DOWN_REPROBE: its first answer writes it Ready
  again (`_reached`), its host's refusal makes it SUSPECT.

Peers are found over mDNS on this segment, from `--join` and `--scan` (`PeerSeen.found_by`), and
in the shared store: a managed Node that is Ready and carries a port annotation and addresses is
a peer too, so that agents on other subnets (mDNS stops at the router) are probed and judged like
local ones, and a crash there is seen as fast. A store-found peer is followed only while its Node
is Ready: a dead node costs no probes, and when its agent comes back it writes itself Ready and is
found again. A Node the Go side wrote (unmanaged, no port) is never probed; nothing is probed
twice, whichever ways it was found.

Bounds (`k3net.limits`): at most `PEERS` peers are followed. A new one past that takes the place
of the oldest peer no agent ever proved to be, mDNS-found ones first; if every peer followed has
proved itself, the new one is refused (`Reject` `too-many-peers`). A peer mDNS found that never
proved itself is forgotten as soon as its announcement goes (a goodbye or an expired record):
nothing of it was written, and probing it more would only spend sockets on whatever sent it.

Actions: `ProbeNow` (probe this peer, now or after a delay, and keep probing it every round),
`Retarget` (ask this peer at these addresses from now on, no probe now: its answer proved
others), `Forget` (stop probing it), `MarkSeen` (a suspicion's mark is in the store, or none
was needed: the suspect's answer is timed from here), `Write` (hand an intent to the writer, with the Node as
last seen in the store), `JoinLatency` (a peer's first mDNS sighting to its Node seen Ready),
`Reject` (an entry dropped, never written), `Paused` (this agent did not run for a while),
`NameConflict` (another live agent holds our name: this agent stands down).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, ClassVar

import attrs

from k3net import limits
from k3net.core import nodes, parse
from k3net.core.identity import Facts
from k3net.core.messages import (
    Deleted,
    Lost,
    OwnAddresses,
    PeerGone,
    PeerRejected,
    PeerSeen,
    ProbeOutcome,
    ProbeResult,
    Put,
    SelfHeartbeat,
    Snapshot,
    Stopping,
    StoreChanged,
    Stored,
    Suspected,
    Tick,
    WatchEvent,
)
from k3net.core.nodes import (
    AGENT_READY,
    PEER_ALIVE,
    Intent,
    Readiness,
    last_seen,
    ordered_addresses,
    readiness,
)
from k3net.model import ANN_PID, ANN_PORT, ANN_SUSPECTED, Node

# A refused probe is checked again this much later before it is acted on: an agent restarting
# in place is back within it, a dead one is not.
REPROBE_DELAY = 1.0
# The longest a verdict waits for its mark to show in the store (a store that slow, or away):
# then it is written, still held to the mark's lastSeen if an answer came meanwhile.
MARK_WAIT = 5.0
# A Tick this much later than due means this agent did not run meanwhile (module docstring).
PAUSE = 1.0
# How a peer was found, most direct first: a peer found several ways shows the most direct.
# An introduction (k3net.tasks.introduce) comes last: anyone may send one, so it never changes
# where a peer found another way is probed.
FOUND_BY = ("mdns", "join", "scan", "store", "introduced")
# A peer found unreachable (its held connection went silent, nobody reaches it) is probed this
# often until it answers: its Node is Ready again within about this much of its return. Every
# such probe shares the probes' socket budget (`limits.PROBE_SOCKETS`), so many hosts down at
# once slow each other's re-probes down, never the agent.
DOWN_REPROBE = 1.0
# How many quick re-probes a peer that said goodbye but still answers gets before it is left to
# the ordinary rounds (an mDNS record that expired while its agent runs).
LEAVING_REPROBES = 5


def answer_window(round_trip: float, base: float = 0.0) -> float:
    """How long after our mark shows in our watch a suspect's answer through the store may still
    come: `base` (a loaded host's reaction, the polls of a store that polls) and twice
    `round_trip`, a store call's round trip (the suspect's write takes about as long as ours,
    its watch's push no longer). A store far away or slow to sync gets the time its answer
    takes."""
    return base + 2 * round_trip


Message = (
    PeerSeen | PeerGone | PeerRejected | ProbeResult | Suspected | Tick | SelfHeartbeat
    | OwnAddresses | StoreChanged | Stopping | WatchEvent
)


@attrs.frozen
class ProbeTarget:
    name: str  # the peer to probe
    addresses: tuple[str, ...]  # every address to try, in canonical order
    port: int  # its advertised port (its agent's --listen port)


@attrs.frozen
class ProbeNow:
    target: ProbeTarget
    delay: float = 0.0  # seconds to wait first (a re-probe)


@attrs.frozen
class Retarget:
    """A peer's target changed with no probe due: its answer proved addresses it was not asked
    at. The prober asks it there from now on (a probe its hold's end brings, too)."""

    target: ProbeTarget


@attrs.frozen
class Forget:
    name: str


@attrs.frozen
class MarkSeen:
    """The answer to a `Suspected`: the suspect's Node carries a mark as this agent's watch
    shows it (or the suspect answered it already), so the suspect's own agent has seen it too,
    or will within a watch's delay; or no mark was needed (told at once). The prober times the
    suspect's answer from here (`tasks.probe.Prober._let_it_answer`)."""

    name: str


# What the table tells the prober.
ProberOrder = ProbeNow | Retarget | Forget | MarkSeen


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


@attrs.frozen
class NameConflict:
    """Another live agent answers as this agent's own node name (a twin: a host cloned with its
    name). This agent stands down: it never writes that Node again while it runs."""

    name: str
    address: str  # where the other agent answered
    port: int
    pid: int | None


Action = ProberOrder | Write | JoinLatency | Reject | Paused | NameConflict


@attrs.frozen
class SelfInfo:
    """What this agent writes into its own Node. Our addresses change while we run: `addresses`
    reads them from their one owner when the Node is written (the agent's address watcher keeps
    them; the table keeps no copy)."""

    name: str
    addresses: Callable[[], tuple[str, ...]]
    port: int
    pid: int
    labels: tuple[tuple[str, str], ...] = ()  # --node-label


@attrs.frozen
class PeerView:
    """One peer as the table knows it (for /peers and the page)."""

    name: str
    addresses: tuple[str, ...]
    port: int
    state: str  # the `label` of its state: new, alive, suspect, refused, leaving, unauthenticated
    found_by: str  # the most direct way it was found (FOUND_BY)
    confirmed: bool  # an agent proved to be this peer at least once
    pid: int | None = None  # as its identity answer gave it
    last_probe: ProbeResult | None = None  # the last probe's result, None before the first


# --- a peer's state ---------------------------------------------------------------------------
# One class per state. Which event moves a peer from one to another is TRANSITIONS, at the end of
# the module (after the handlers it names). Two states share their names with the intents of
# `core.nodes` (Alive, Refused): this module writes those as `nodes.Alive`, `nodes.Refused`.


@attrs.frozen
class _State:
    """What every state has: its `label`, the class name in lower case, which is how /peers,
    the page and `k3net peers` show it."""

    label: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.label = cls.__name__.lower()


class New(_State):
    """Announced (or announced again after a goodbye), not reached yet."""


class Alive(_State):
    """Its last probe reached it."""


@attrs.frozen
class Suspect(_State):
    """Refused once: a re-probe decides."""

    since: float  # when the first refusal came: a second one sooner than REPROBE_DELAY is none


class Refused(_State):
    """Refused twice in a row: its Node was marked False/PeerRefused (unless `contradicted`)."""


@attrs.frozen
class Leaving(_State):
    """Its mDNS record went away: its next failed probe, of any kind, is decisive."""

    since: float  # when: an answer to a probe started before says nothing about after
    # True: it said goodbye, and its failure writes False/PeerLeft. False: its record expired
    # unanswered, and its failure only ends our following it.
    goodbye: bool
    reprobes: int = LEAVING_REPROBES  # quick re-probes left while it still answers


class Unauthenticated(_State):
    """It answers, but cannot prove the cluster key: never written."""


@attrs.frozen
class Unreachable(_State):
    """Its host went silent and no agent asked could reach it: its Node was marked
    Unknown/PeerUnreachable (unless `contradicted`). Re-probed every DOWN_REPROBE until it
    answers."""

    due: float  # when the next quick re-probe is due: a failure before that asks for no other


State = New | Alive | Suspect | Refused | Leaving | Unauthenticated | Unreachable
STATES: tuple[type[State], ...] = (New, Alive, Suspect, Refused, Leaving, Unauthenticated,
                                   Unreachable)


class PeerEvent(enum.Enum):
    """What can happen to a peer: the column of `TRANSITIONS`."""

    ANSWERED = "answered"  # `confirmed`, or `unverified` for a peer never confirmed, keyless
    REFUSED = "refused"  # every address actively refused the connection
    FAILED = "failed"  # `timeout`, `wrong-node`, or an `unverified` that does not count
    UNAUTHENTICATED = "unauthenticated"  # it answers but cannot prove the cluster key
    ANNOUNCED = "announced"  # mDNS announced it again (a join list, a scan or the store: not)
    GOODBYE = "goodbye"  # its mDNS goodbye
    UNANNOUNCED = "unannounced"  # its mDNS record expired unanswered: no goodbye
    NODE_READY = "node-ready"  # its Node turned Ready in the store, whoever wrote it
    # A suspicion confirmed (`unreachable`): its held connection went silent, nothing answered
    # at the addresses it proved, and no agent asked reached it.
    UNREACHABLE = "unreachable"


@attrs.frozen
class _Marked:
    """This agent marked the peer's Node before accusing it (`PeerTable._mark`): the Node's
    lastSeen then. The accusation holds only if nobody refreshed it since."""

    last_seen: str | None
    at: float = 0.0  # when this agent marked it (asked for the write, or found it marked)
    # When our watch showed the mark (or the answer to it): None until then.
    seen_at: float | None = None
    # This agent wrote the mark for a suspicion whose prober waits for it to be in the store
    # (`MarkSeen`, owed until the watch shows it).
    awaited: bool = False


@attrs.define
class _Peer:
    """One peer this agent follows."""

    name: str
    # Where others say it is (mDNS, a join list, another agent, the store): hints of where to
    # ask it, never written (`proven` is).
    addresses: tuple[str, ...]
    port: int  # the port to ask it on: its own word once proven, else what was announced
    found_by: str  # the most direct way it was found (FOUND_BY)
    state: State = New()  # changed only by `PeerTable._fire`, as TRANSITIONS says
    # When it was first seen, while its Node has not been seen Ready yet: the join latency counts
    # from there. None once reported, and for a peer whose Node was Ready when it was found.
    joining_since: float | None = None
    # The two facts that outlive every state (module docstring):
    confirmed: bool = False  # an agent proved to be this peer at least once
    contradicted: bool = False  # Ready again by others while REFUSED: write no refusal of ours
    last_probe: ProbeResult | None = None  # the last probe's result (for /peers)
    # What the peer itself proved in its last confirmed answer: the only addresses, port and pid
    # written into its Node, and the only addresses where evidence against it counts.
    proven: Facts | None = None
    # Set while an accusation of it waits for its answer through the store (`_Marked`).
    marked: _Marked | None = None

    @property
    def target(self) -> ProbeTarget:
        proven = self.proven.addresses if self.proven is not None else ()
        return ProbeTarget(self.name, tuple(dict.fromkeys(proven + self.addresses)), self.port)

    def proven_at(self, addresses: tuple[str, ...]) -> bool:
        """Some of `addresses` are where this peer proved itself (on the port it proved)."""
        return (self.proven is not None and self.port == self.proven.port
                and not set(addresses).isdisjoint(self.proven.addresses))


@attrs.define
class _View:
    """One Node as this agent last saw it in the store, and the timers judged from it."""

    stored: Stored  # the Node and its version, as the watch last delivered it
    last_seen: str | None  # its k3.network/lastSeen annotation (None: it has none)
    changed_at: float  # when this agent saw `last_seen` take its current value
    expiry_sent: bool = False  # an expiry (Unknown) was asked for this lastSeen: not again
    # A Left write was asked for: expiry must not overtake it with a vaguer Unknown.
    left_sent: bool = False
    # When this agent last asked for a lastSeen refresh of this value; not asked again while
    # the write is on its way (unless it takes longer than a refresh interval).
    refresh_asked_at: float | None = None

    @property
    def ready(self) -> bool:
        """The Node, as last seen in the store, is Ready."""
        return readiness(self.stored.node) is Readiness.TRUE


def _internal_ips(node: Node) -> tuple[str, ...]:
    return tuple(a.address for a in node.status.addresses if a.type == "InternalIP")


def _stored_peer(node: Node) -> tuple[tuple[str, ...], int | None, int | None]:
    """Where a Node says its agent is: its InternalIP addresses, port and pid annotations, each
    through `core.parse`. A foreign value is noted and left out (None), never followed."""
    where = f"Node {node.name}"
    ips = tuple(a.address for a in node.status.addresses if a.type == "InternalIP"
                and not isinstance(parse.address(a.address, field="address", where=where),
                                   parse.Foreign))
    annotations = node.metadata.annotations
    port_text, pid_text = annotations.get(ANN_PORT), annotations.get(ANN_PID)
    port = None if port_text is None else parse.port(port_text, field=ANN_PORT, where=where)
    pid = None if pid_text is None else parse.pid(pid_text, field=ANN_PID, where=where)
    return (ips, port if isinstance(port, int) else None, pid if isinstance(pid, int) else None)


def _addresses_differ(stored: tuple[str, ...], known: tuple[str, ...], *, exact: bool) -> bool:
    """Our own Node, and a peer's that gave its whole list in its own answer, list exactly those
    addresses (every agent that reaches it is told the same list: nobody takes turns). A peer
    known only where it answered (a Go agent lists none) is rewritten only when its Node lacks
    that address: it writes its own full list."""
    if exact:
        return stored != ordered_addresses(known)
    return not set(ordered_addresses(known)) <= set(stored)


def _probe_event(
    outcome: ProbeOutcome, *, unverified_counts: bool, refusal_counts: bool,
    silence_counts: bool = False,
) -> PeerEvent:
    """The event a probe's outcome is for a peer (module docstring). A refusal or a silence
    only where the peer never proved itself is no evidence against it: a failure."""
    match outcome:
        case "confirmed":
            return PeerEvent.ANSWERED
        case "unverified" if unverified_counts:
            return PeerEvent.ANSWERED
        case "refused" if refusal_counts:
            return PeerEvent.REFUSED
        case "unauthenticated":
            return PeerEvent.UNAUTHENTICATED
        case "unreachable" if silence_counts:
            return PeerEvent.UNREACHABLE
        case _:
            return PeerEvent.FAILED


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
        # Our own Node is written only once the store was read (a twin may hold it), and never
        # while a Node of our name written by another process is being checked (`_own_seen`),
        # nor after another live agent proved to hold our name (`name_conflict`).
        self._store_read = False
        self._twin_asked = False
        self.name_conflict: NameConflict | None = None

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
            case Suspected():
                return self._suspected(msg, now)
            case Tick(interval=interval):
                return self._paused(now, interval) + self._expire(now)
            case SelfHeartbeat():
                return self._heartbeat(now)
            case OwnAddresses():
                return self._heartbeat(now)
            case StoreChanged():
                return self._store_changed(now)
            case Stopping():
                return self._stop()
            case _:
                return self._store(msg, now)

    # --- a peer's state machine ------------------------------------------------------------------

    def _fire(
        self, peer: _Peer, event: PeerEvent, now: float, probe: ProbeResult | None = None
    ) -> list[Action]:
        """`event` happened to `peer` (`probe`: the probe it came from, if any): run its row
        of TRANSITIONS and move the peer to the state the handler returns (None: forget it)."""
        transition = TRANSITIONS.get((type(peer.state), event))
        if transition is None:
            return []
        state, actions = transition.handler(self, peer, now, probe)
        if state is None:
            del self._peers[peer.name]
        else:
            peer.state = state
        return actions

    # The handlers, one per kind of row. Each returns the peer's next state and the actions;
    # the first line of its docstring is what the module docstring's table says it does.

    def _reached(self, peer: _Peer, now: float, probe: ProbeResult | None) -> Step:
        """Ask the writer for what its Node lacks, usually nothing (`_alive`)."""
        return Alive(), self._alive_peer(peer, now)

    def _still_answers(self, peer: _Peer, now: float, probe: ProbeResult | None) -> Step:
        """Write what its Node lacks; re-probe soon, LEAVING_REPROBES times."""
        state = peer.state
        assert isinstance(state, Leaving)  # the only row of this handler
        if probe is not None and probe.started < state.since:
            return state, []  # decided before the goodbye: says nothing about after it
        actions: list[Action] = []
        if state.reprobes > 0:
            state = attrs.evolve(state, reprobes=state.reprobes - 1)
            actions.append(ProbeNow(peer.target, delay=REPROBE_DELAY))
        return state, actions + self._alive_peer(peer, now)

    def _suspect(self, peer: _Peer, now: float, probe: ProbeResult | None) -> Step:
        """Re-probe REPROBE_DELAY later; only its Node is marked meanwhile (`_mark`)."""
        return Suspect(since=now), [ProbeNow(peer.target, delay=REPROBE_DELAY),
                                    *self._mark(peer, now)]

    def _refused_again(self, peer: _Peer, now: float, probe: ProbeResult | None) -> Step:
        """Write False/PeerRefused (too soon, or its mark's answer may come: re-probe)."""
        state = peer.state
        assert isinstance(state, Suspect)  # the only row of this handler
        if now - state.since < REPROBE_DELAY:
            # Too soon to confirm (an agent restarting in place): a re-probe decides, asked
            # again for its time in case the first was dropped (the peer's target changed).
            return state, [ProbeNow(peer.target, delay=state.since + REPROBE_DELAY - now)]
        view = self._views.get(peer.name)
        wait = self._answer_due(peer, now)
        if wait > 0 and view is not None and not self._answered(peer, view, keep=True):
            # Its agent may still be answering our mark through the store (a store far
            # away): the re-probe after that decides.
            return state, [ProbeNow(peer.target, delay=wait)]
        if (peer.contradicted or view is None or not view.stored.node.managed or not view.ready
                or self._answered(peer, view)):
            return Refused(), []
        return Refused(), [Write(nodes.Refused(peer.name, view.last_seen), view.stored)]

    def _answer_due(self, peer: _Peer, now: float) -> float:
        """How much longer a confirmed refusal of `peer` must wait for its agent's answer to our
        mark (0: none is due): until the mark showed in our watch (MARK_WAIT at most), then
        `answer_window` of the round trip it took."""
        marked = peer.marked
        if marked is None:
            return 0.0
        if marked.seen_at is None:
            return max(0.0, min(REPROBE_DELAY, marked.at + MARK_WAIT - now))
        return max(0.0, marked.seen_at + answer_window(marked.seen_at - marked.at) - now)

    def _gone_for_good(self, peer: _Peer, now: float, probe: ProbeResult | None) -> Step:
        """Stop probing it; after a goodbye, write False/PeerLeft."""
        state = peer.state
        assert isinstance(state, Leaving)  # the only rows of this handler
        if not state.goodbye:
            # Its record expired and it does not answer: no longer followed, and no departure
            # written (nobody said goodbye; expiry and refusals judge the Node).
            return None, [Forget(peer.name)]
        view = self._views.get(peer.name)
        if view is None:
            # Its Node may be in the store already, not yet in our view (the watch lags our own
            # writes by a poll): the writer reads it before marking it.
            return None, [Forget(peer.name), Write(nodes.Left(peer.name), None)]
        if not view.stored.node.managed:
            return None, [Forget(peer.name)]
        view.left_sent = True
        return None, [Forget(peer.name), Write(nodes.Left(peer.name), view.stored)]

    def _unproven(self, peer: _Peer, now: float, probe: ProbeResult | None) -> Step:
        """Report it rejected, once; it is never written."""
        address = probe.address if probe is not None else None
        return Unauthenticated(), [
            Reject(peer.name, "unauthenticated", f"{address or '?'} cannot prove the cluster key")
        ]

    def _announced_again(self, peer: _Peer, now: float, probe: ProbeResult | None) -> Step:
        """Its goodbye is void: it is probed as a new peer."""
        return New(), []

    def _said_goodbye(self, peer: _Peer, now: float, probe: ProbeResult | None) -> Step:
        """Probe it at once: its next failed probe writes False/PeerLeft."""
        return Leaving(since=now, goodbye=True), [ProbeNow(peer.target)]

    def _record_expired(self, peer: _Peer, now: float, probe: ProbeResult | None) -> Step:
        """Probe it at once: its next failed probe ends following it."""
        return Leaving(since=now, goodbye=False), [ProbeNow(peer.target)]

    def _unproven_said_goodbye(self, peer: _Peer, now: float, probe: ProbeResult | None
                               ) -> Step:
        """Forget it now if mDNS found it and it never proved itself; else leaving."""
        if peer.found_by == "mdns" and not peer.confirmed:
            return None, [Forget(peer.name)]
        return self._said_goodbye(peer, now, probe)

    def _unproven_record_expired(self, peer: _Peer, now: float, probe: ProbeResult | None
                                 ) -> Step:
        """Forget it now if mDNS found it and it never proved itself; else leaving."""
        if peer.found_by == "mdns" and not peer.confirmed:
            return None, [Forget(peer.name)]
        return self._record_expired(peer, now, probe)

    def _unreachable(self, peer: _Peer, now: float, probe: ProbeResult | None) -> Step:
        """Write Unknown/PeerUnreachable at once (if unrefreshed since); re-probe later.

        The write holds only while the Node's lastSeen is the one of when the suspicion began:
        its own agent answered our mark through the store, or an agent reached it, meanwhile:
        nothing is written. Re-probed DOWN_REPROBE later."""
        state = Unreachable(due=now + DOWN_REPROBE)
        actions: list[Action] = [ProbeNow(peer.target, delay=DOWN_REPROBE)]
        view = self._views.get(peer.name)
        if (peer.contradicted or view is None or not view.stored.node.managed or not view.ready
                or self._answered(peer, view)):
            return state, actions  # (others reach it, or it is not Ready: nothing to mark)
        return state, [*actions, Write(nodes.Unreachable(peer.name, view.last_seen), view.stored)]

    def _suspected(self, msg: Suspected, now: float) -> list[Action]:
        """A peer went silent and nobody reached it: its Node is marked (`_mark`) before this
        agent accuses it. Unless its lastSeen moved since the silence began: it answered
        another agent's mark meanwhile (several agents judge a split LAN's other half at
        once), or an agent reached it; then it is accused no more (`contradicted`). The prober
        waits for `MarkSeen`: once the watch shows our mark, or at once when none is written."""
        peer, view = self._peers.get(msg.name), self._views.get(msg.name)
        if peer is None:
            return [MarkSeen(msg.name)]
        if view is not None and view.changed_at > msg.since:
            peer.contradicted, peer.marked = True, None
            return [MarkSeen(msg.name)]
        actions = self._mark(peer, now)
        if not actions:
            return [MarkSeen(msg.name)]
        assert peer.marked is not None  # (`_mark` wrote it)
        peer.marked = attrs.evolve(peer.marked, awaited=True)
        return actions

    def _mark(self, peer: _Peer, now: float) -> list[Action]:
        """Before this agent may write `peer` down (a suspicion of its silence, a first
        refusal), mark its Node (`nodes.Suspicion`), so that its own agent, if it runs and
        reaches the store, can answer (lastSeen fresh); remember its lastSeen for the verdict
        (`_answered`). A Node marked already (another agent's suspicion) is answered the same."""
        view = self._views.get(peer.name)
        if peer.contradicted or view is None or not view.stored.node.managed or not view.ready:
            return []
        if ANN_SUSPECTED in view.stored.node.metadata.annotations:
            peer.marked = _Marked(view.last_seen, at=now, seen_at=now)
            return []
        peer.marked = _Marked(view.last_seen, at=now)
        return [Write(nodes.Suspicion(peer.name, self.me.name, view.last_seen), view.stored)]

    def _answered(self, peer: _Peer, view: _View, *, keep: bool = False) -> bool:
        """Whether the Node's lastSeen moved since `peer`'s suspicion began (`_mark`): its agent
        answered through the store, or an agent reached it. Then this agent accuses it no more
        until it reaches it itself (`contradicted`). The mark is done with, unless `keep` and
        it was not answered (the verdict still waits)."""
        marked = peer.marked
        if marked is None or marked.last_seen == view.last_seen:
            if not keep:
                peer.marked = None
            return False
        peer.marked = None
        peer.contradicted = True
        return True

    def _still_unreachable(self, peer: _Peer, now: float, probe: ProbeResult | None) -> Step:
        """Re-probe DOWN_REPROBE later (once per due re-probe: no chains pile up)."""
        state = peer.state
        assert isinstance(state, Unreachable)  # the only rows of this handler
        if now < state.due:
            return state, []  # another probe's failure (a round's): the due one is on its way
        return Unreachable(due=now + DOWN_REPROBE), [ProbeNow(peer.target, delay=DOWN_REPROBE)]

    def _overruled(self, peer: _Peer, now: float, probe: ProbeResult | None) -> Step:
        """Others reach it: write no refusal of ours until we confirm it."""
        peer.contradicted = True
        return peer.state, []

    # --- the LAN ----------------------------------------------------------------------------

    def _seen(self, msg: PeerSeen, now: float) -> list[Action]:
        if msg.name == self.me.name:
            return []  # ourselves, reached through a join address or a scan
        peer = self._peers.get(msg.name)
        if peer is None:
            room = self._room_for(msg.name)
            if room is None:
                return [_no_room(msg.name)]
            view = self._views.get(msg.name)
            peer = self._peers[msg.name] = _Peer(
                msg.name, msg.addresses, msg.port, found_by=msg.found_by,
                joining_since=None if view is not None and view.ready else now,
            )
            return [*room, ProbeNow(peer.target)]
        if FOUND_BY.index(msg.found_by) > FOUND_BY.index(peer.found_by):
            # Followed already through a more direct source (mDNS here, over what another
            # agent or a scan reports): its word on addresses and port stands, its probes go on.
            return []
        # A hint: where to ask it next. What is written comes only from its answers.
        peer.addresses, peer.port = msg.addresses, msg.port
        peer.found_by = msg.found_by
        actions = self._fire(peer, PeerEvent.ANNOUNCED, now) if msg.found_by == "mdns" else []
        return actions + [ProbeNow(peer.target)]

    def _gone(self, msg: PeerGone, now: float) -> list[Action]:
        peer = self._peers.get(msg.name)
        if peer is None or (not msg.goodbye and peer.found_by != "mdns"):
            # Nothing proven to judge it by; an expired record says nothing of a peer mDNS did
            # not find here.
            return []
        unproven_here = peer.found_by != "mdns" if peer.proven is None else \
            not peer.proven_at(msg.addresses)
        if unproven_here:
            # A departure announced for addresses where it never proved itself (anyone can
            # send that): it only makes us ask the peer. (A peer mDNS found that never proved
            # anything had nothing written: the table's rows forget it.)
            return [ProbeNow(peer.target)]
        event = PeerEvent.GOODBYE if msg.goodbye else PeerEvent.UNANNOUNCED
        return self._fire(peer, event, now)

    def _probed(self, result: ProbeResult, now: float) -> list[Action]:
        if result.name == self.me.name:
            return self._twin_answered(result, now)
        peer = self._peers.get(result.name)
        if peer is None:
            return []  # forgotten while the probe ran
        if peer.found_by == "introduced" and not peer.confirmed and result.outcome != "confirmed":
            # A hello its sender's own address did not back up: probed once, then forgotten
            # (k3net.tasks.introduce). Nothing of it was written ("unverified" neither: that
            # counts only for an announcement, as before keys).
            del self._peers[peer.name]
            reported = self._unproven(peer, now, result)[1] \
                if result.outcome == "unauthenticated" else []  # (as for any such peer)
            return [*reported, Forget(peer.name)]
        peer.last_probe = result
        # A foreign advertiser that never proved anything counts as answering, as before keys.
        unverified_counts = not (peer.confirmed or self.keyed)
        target = peer.target
        if result.outcome == "confirmed":
            peer.confirmed, peer.contradicted = True, False
            if result.facts is not None and result.facts.node == peer.name:
                peer.proven = result.facts
                peer.port = result.facts.port or peer.port
        event = _probe_event(result.outcome, unverified_counts=unverified_counts,
                             refusal_counts=peer.proven_at(result.refused),
                             silence_counts=peer.proven_at(result.silent))
        actions = self._fire(peer, event, now, result)
        if (peer.target != target and self._peers.get(peer.name) is peer
                and not any(isinstance(a, ProbeNow | Forget) for a in actions)):
            # Where it proved itself, it is asked from now on: a peer known only at its
            # hello's address that proved a second one is not judged by the first alone.
            actions.append(Retarget(peer.target))
        return actions

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
            if isinstance(peer.state, Alive):
                actions += self._alive_peer(peer, now)
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
        first = not self._store_read
        self._store_read = True
        actions = [a for stored in event.items for a in self._observe(stored, now)]
        if first and self.me.name not in self._views:
            actions += self._heartbeat(now)  # nobody holds our name: register at once
        return actions

    def _observe(self, stored: Stored, now: float) -> list[Action]:
        seen = last_seen(stored.node)
        ready = readiness(stored.node) is Readiness.TRUE
        view = self._views.get(stored.name)
        was_ready = view is not None and view.ready
        if view is None or view.last_seen != seen:
            self._views[stored.name] = _View(stored, seen, changed_at=now)
        else:
            view.stored = stored
            view.expiry_sent = view.expiry_sent and ready
        actions: list[Action] = []
        peer = self._peers.get(stored.name)
        if peer is not None:
            marked = peer.marked
            if marked is not None and marked.seen_at is None and (
                    ANN_SUSPECTED in stored.node.metadata.annotations
                    or marked.last_seen != seen):
                # Our mark is in the store (or was answered already: a watch that polls may
                # show only the answer): the suspect's answer is timed from here, and the
                # prober's wait for it ends.
                peer.marked = attrs.evolve(marked, seen_at=now, awaited=False)
                if marked.awaited:
                    actions.append(MarkSeen(peer.name))
            if peer.joining_since is not None and ready:
                actions.append(JoinLatency(peer.name, now - peer.joining_since))
                peer.joining_since = None
            if ready and not was_ready:
                actions += self._fire(peer, PeerEvent.NODE_READY, now)
        if stored.name == self.me.name:
            actions += self._own_seen(stored.node, ready, now)
        else:
            actions += self._found_in_store(stored.node, ready, now)
        return actions

    def _own_seen(self, node: Node, ready: bool, now: float) -> list[Action]:
        """Our own Node as stored. Written by another process (another pid or port) and Ready:
        perhaps a twin, perhaps our own previous run; ask who answers there before writing it
        (`_twin_answered`). Not Ready while we run: someone marked us down, correct it."""
        if self.name_conflict is not None or not self.register_self:
            return []
        annotations = node.metadata.annotations
        ours = (annotations.get(ANN_PID) == str(self.me.pid)
                and annotations.get(ANN_PORT) == str(self.me.port))
        addresses, port, _ = _stored_peer(node)  # (foreign values left out, never dialled)
        if ready and node.managed and not ours and port is not None and addresses:
            if self._twin_asked:
                return []
            self._twin_asked = True
            return [ProbeNow(ProbeTarget(self.me.name, addresses, port))]
        if ready and ANN_SUSPECTED not in node.metadata.annotations:
            return []
        # Marked down, or suspected (a peer lost us: a split LAN, our link): we run, say so.
        return self._heartbeat(now)

    def _twin_answered(self, result: ProbeResult, now: float) -> list[Action]:
        """Who answered as our name where our Node said: another live agent (a twin), or
        nobody (our own previous run, gone): then we register."""
        if not self._twin_asked:
            return []
        self._twin_asked = False
        facts, me = result.facts, self.me
        if result.outcome == "confirmed" and facts is not None and result.address is not None \
                and not (result.address in me.addresses() and facts.pid == me.pid):
            self.name_conflict = NameConflict(me.name, result.address, facts.port or 0, facts.pid)
            return [Forget(me.name), self.name_conflict]
        return [Forget(me.name), *self._heartbeat(now)]

    def _found_in_store(self, node: Node, ready: bool, now: float) -> list[Action]:
        """Follow a managed, Ready Node with a port and addresses as a peer (module docstring)."""
        peer = self._peers.get(node.name)
        # A hello's sender not proven yet: its Node's word on where it is beats the hello's
        # (once proven, it is followed where it answered, as one found on the LAN).
        introduced = peer is not None and peer.found_by == "introduced" and not peer.confirmed
        if peer is not None and peer.found_by != "store" and not introduced:
            return []  # found on the LAN: the LAN's word on its addresses and port wins
        addresses, port, _ = _stored_peer(node) if node.managed and ready else ((), None, None)
        if port is None or not addresses:
            if peer is None or isinstance(peer.state, Refused | Unreachable) or introduced:
                # (a refusal we wrote ourselves: keep the state, for contradictions; one we
                # found unreachable: keep re-probing it, to write it Ready on its return)
                return []
            del self._peers[node.name]
            return [Forget(node.name)]
        if peer is not None and introduced:
            peer.found_by = "store"  # (FOUND_BY: the store is the more direct way)
        if peer is None:
            room = self._room_for(node.name)
            if room is None:
                return [_no_room(node.name)]
            peer = self._peers[node.name] = _Peer(node.name, addresses, port, found_by="store")
            return [*room, ProbeNow(peer.target)]
        if (peer.addresses, peer.port) != (addresses, port):
            peer.addresses, peer.port = addresses, port
            return [ProbeNow(peer.target)]
        return []

    def _room_for(self, name: str) -> list[Action] | None:
        """Room for one more peer: [] if there is, the actions that forget the peer whose
        place it takes, or None if every peer followed proved itself (module docstring)."""
        if len(self._peers) < limits.PEERS:
            return []
        unproven = [p for p in self._peers.values() if not p.confirmed]  # oldest first
        if not unproven:
            return None
        gone = next((p for p in unproven if p.found_by == "mdns"), unproven[0])
        del self._peers[gone.name]
        return [Forget(gone.name), _no_room(gone.name, f"{name} takes its place")]

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
            # (Run every tick over every Node: the cheap test that passes over nearly all first.)
            if now - view.changed_at < self.peer_ttl or view.expiry_sent or view.left_sent:
                continue
            if name == self.me.name or not view.stored.node.managed or not view.ready:
                continue
            view.expiry_sent = True
            actions.append(Write(nodes.Expired(name, view.last_seen), view.stored))
        return actions

    def _heartbeat(self, now: float) -> list[Action]:
        """This agent is alive: keep its own Node Ready and its lastSeen fresh."""
        if (not self.register_self or self.shutting_down or not self._store_read
                or self._twin_asked or self.name_conflict is not None):
            return []
        me = self.me
        return self._alive(me.name, me.addresses(), me.port, me.pid, AGENT_READY, now,
                           labels=me.labels)

    def _stop(self) -> list[Action]:
        """This agent stops: its own Node goes False/AgentShutdown."""
        self.shutting_down = True
        if not self.register_self or self.name_conflict is not None:
            return []  # (a Node held by a twin is not ours to mark)
        view = self._views.get(self.me.name)
        return [Write(nodes.Shutdown(self.me.name), view.stored if view else None)]

    # --- decisions --------------------------------------------------------------------------

    def _alive_peer(self, peer: _Peer, now: float) -> list[Action]:
        """Write what the peer proved (`_Peer.proven`), and nothing if it proved nothing."""
        proven = peer.proven
        if proven is None:
            return []
        port = proven.port or peer.port
        return self._alive(peer.name, proven.addresses, port, proven.pid, PEER_ALIVE, now,
                           exact=proven.listed)

    def _alive(
        self,
        name: str,
        addresses: tuple[str, ...],
        port: int,
        pid: int | None,
        reason: str,
        now: float,
        *,
        labels: tuple[tuple[str, str], ...] | None = None,
        exact: bool = True,
    ) -> list[Action]:
        view = self._views.get(name)
        if view is None:
            return [Write(nodes.Alive(name, addresses, port, pid, reason, refresh=True,
                                      labels=labels, exact=exact), None)]
        node = view.stored.node
        if not node.managed:
            return []
        annotations = node.metadata.annotations
        ready = node.condition()
        differs = (
            ready is None
            or readiness(node) is not Readiness.TRUE
            or (ready.reason != reason and reason != PEER_ALIVE)  # see nodes.render
            or _addresses_differ(_internal_ips(node), addresses, exact=exact)
            or annotations.get(ANN_PORT) != str(port)
            or (pid is not None and annotations.get(ANN_PID) != str(pid))
            or (labels is not None and nodes.labels_differ(node, labels))
            or ANN_SUSPECTED in annotations  # a suspicion to answer: it is alive
        )
        due = now - view.changed_at >= self.refresh_interval and (
            view.refresh_asked_at is None
            or now - view.refresh_asked_at >= self.refresh_interval
        )
        if not (differs or due):
            return []
        if due:
            view.refresh_asked_at = now
        intent = nodes.Alive(
            name, addresses, port, pid, reason, refresh_from=view.last_seen, refresh=due,
            seen_ready=readiness(node), labels=labels, exact=exact,
        )
        return [Write(intent, view.stored)]

    # --- read by /info and the metrics ----------------------------------------------------------

    def peers(self) -> list[PeerView]:
        """Every peer this agent follows, by name."""
        return [
            PeerView(p.name, p.target.addresses, p.port, p.state.label, p.found_by,
                     p.confirmed, p.proven.pid if p.proven is not None else None, p.last_probe)
            for p in sorted(self._peers.values(), key=lambda p: p.name)
        ]

    def found_by(self, name: str) -> str | None:
        """How the peer `name` was found (the most direct way, FOUND_BY), or None: not followed."""
        peer = self._peers.get(name)
        return peer.found_by if peer is not None else None

    def nodes(self) -> list[Node]:
        """The stored Nodes as this agent last read them (read by the metrics at scrape time)."""
        return [view.stored.node for view in self._views.values()]

    def self_up(self) -> bool:
        view = self._views.get(self.me.name)
        return view is not None and view.ready


# What a handler returns: the peer's next state (None: forget it) and the actions to carry out.
def _no_room(name: str, detail: str = "") -> Reject:
    """A peer not followed, or no longer, for want of room (`limits.PEERS`)."""
    return Reject(name, "too-many-peers",
                  detail or f"already following {limits.PEERS} peers that proved themselves")


Step = tuple[State | None, list[Action]]
Handler = Callable[[PeerTable, _Peer, float, ProbeResult | None], Step]


@attrs.frozen
class Transition:
    """One row of TRANSITIONS."""

    to: tuple[type[State] | None, ...]  # the states the handler may return (None: forgotten)
    handler: Handler


def _rows(
    states: tuple[type[State], ...], event: PeerEvent, to: tuple[type[State] | None, ...],
    handler: Handler,
) -> dict[tuple[type[State], PeerEvent], Transition]:
    return {(state, event): Transition(to, handler) for state in states}


# The states a peer that never proved itself can be in, and the others.
_MAYBE_UNPROVEN: tuple[type[State], ...] = (New, Unauthenticated)
_PROVEN = tuple(state for state in STATES if state not in _MAYBE_UNPROVEN)

# Every (state, event) pair that does something; the module docstring shows it as a table.
TRANSITIONS: dict[tuple[type[State], PeerEvent], Transition] = {
    **_rows((New, Alive, Suspect, Refused, Unauthenticated, Unreachable), PeerEvent.ANSWERED,
            (Alive,), PeerTable._reached),
    **_rows((Leaving,), PeerEvent.ANSWERED, (Leaving,), PeerTable._still_answers),
    **_rows((New, Alive, Unauthenticated, Unreachable), PeerEvent.REFUSED, (Suspect,),
            PeerTable._suspect),
    **_rows((Suspect,), PeerEvent.REFUSED, (Refused, Suspect), PeerTable._refused_again),
    **_rows((Leaving,), PeerEvent.REFUSED, (None,), PeerTable._gone_for_good),
    **_rows((Leaving,), PeerEvent.FAILED, (None,), PeerTable._gone_for_good),
    **_rows((Alive, Suspect, Refused), PeerEvent.UNREACHABLE, (Unreachable,),
            PeerTable._unreachable),
    **_rows((Unreachable,), PeerEvent.UNREACHABLE, (Unreachable,), PeerTable._still_unreachable),
    **_rows((Unreachable,), PeerEvent.FAILED, (Unreachable,), PeerTable._still_unreachable),
    **_rows((Leaving,), PeerEvent.UNREACHABLE, (None,), PeerTable._gone_for_good),
    **_rows((New, Alive, Suspect, Refused, Leaving, Unreachable), PeerEvent.UNAUTHENTICATED,
            (Unauthenticated,), PeerTable._unproven),
    **_rows((Leaving,), PeerEvent.ANNOUNCED, (New,), PeerTable._announced_again),
    **_rows(_PROVEN, PeerEvent.GOODBYE, (Leaving,), PeerTable._said_goodbye),
    **_rows(_PROVEN, PeerEvent.UNANNOUNCED, (Leaving,), PeerTable._record_expired),
    **_rows(_MAYBE_UNPROVEN, PeerEvent.GOODBYE, (Leaving, None), PeerTable._unproven_said_goodbye),
    **_rows(_MAYBE_UNPROVEN, PeerEvent.UNANNOUNCED, (Leaving, None),
            PeerTable._unproven_record_expired),
    **_rows((Refused,), PeerEvent.NODE_READY, (Refused,), PeerTable._overruled),
}

"""What a Node should look like after a write: pure functions, no I/O, no clock.

An *intent* says what the agent wants a Node to say (alive, left, expired, shut down); `render`
applies it to the Node as stored and returns the Node to write, or None when there is nothing
to write. That None is how k3net writes only what changed, and how it keeps its hands off:

- a Node without `k3.network/managed=true` (one the k3 controller reported) is never touched;
- only the fields k3net owns change: its three labels, its annotations (lastSeen, port, pid,
  nodeLabels, and suspectedBy while a suspicion lasts), `status.phase`, `status.addresses` and
  the Ready condition. Every other label, annotation, condition, `spec`,
  capacity, nodeInfo and unknown key stays exactly as it was;
- `lastTransitionTime` changes only when the Ready status changes;
- readiness is a `Readiness`, not a string: the Kubernetes strings ("True", "False", "Unknown")
  are read from a Node in `readiness` and written into one in `_set_ready`, nowhere else;
- a peer's probe never rewrites the reason of a Node that is already Ready (its own agent's
  `AgentReady` stays), so agents do not take turns rewriting it;
- guards make a write conditional on what the store says *now*, so that an agent that loses a
  compare-and-swap race re-renders against the winner's Node and usually writes nothing:
  `refresh_from` refreshes lastSeen only if nobody refreshed it meanwhile, an expiry applies
  only while the Node is still Ready with the same stale lastSeen, and a peer's probe decided
  while the Node was Ready does not undo a departure (False) recorded since.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Iterable

import attrs

from k3net.convert import format_time_precise
from k3net.core.addresses import canonical as canonical_addresses
from k3net.model import (
    ANN_LAST_SEEN,
    ANN_NODE_LABELS,
    ANN_PID,
    ANN_PORT,
    ANN_SUSPECTED,
    CONDITION_READY,
    LABEL_DISCOVERED,
    LABEL_HOSTNAME,
    LABEL_MANAGED,
    Node,
    NodeAddress,
    NodeCondition,
    ObjectMeta,
    copy_node,
)

# Ready condition reasons.
PEER_ALIVE = "PeerAlive"
AGENT_READY = "AgentReady"
PEER_LEFT = "PeerLeft"
PEER_EXPIRED = "PeerExpired"
PEER_REFUSED = "PeerRefused"
PEER_UNREACHABLE = "PeerUnreachable"
AGENT_SHUTDOWN = "AgentShutdown"


class Readiness(enum.Enum):
    """A Node's Ready condition. Its value is the Kubernetes status string, used only where a
    Node is read (`readiness`) or written (`_set_ready`); the k3 Go code treats anything but
    "True" as not ready."""

    TRUE = "True"  # reachable: some agent reached it within peer-ttl
    FALSE = "False"  # known down: it left, its agent stopped, nothing listens on its port
    UNKNOWN = "Unknown"  # nobody can tell (expired); also no Ready condition, or a foreign status


_READINESS = {r.value: r for r in Readiness}
# The one vocabulary of the Ready condition in every view and log line (as kubectl get nodes).
READY_WORDS = {Readiness.TRUE: "Ready", Readiness.FALSE: "NotReady", Readiness.UNKNOWN: "Unknown"}


def status_readiness(status: str | None) -> Readiness:
    """A Ready condition's status as Kubernetes writes it (any other text, or none: UNKNOWN)."""
    return _READINESS.get(status or "", Readiness.UNKNOWN)


def readiness(node: Node) -> Readiness:
    """The Node's Ready condition; a Node without one, or with a status that is none of the
    three Kubernetes strings, is UNKNOWN."""
    cond = node.condition(CONDITION_READY)
    return status_readiness(cond.status if cond is not None else None)


@attrs.frozen
class Alive:
    """The node answered (a peer's probe, or this agent's own heartbeat): Ready=True."""

    name: str
    addresses: tuple[str, ...]
    port: int
    pid: int | None
    reason: str = PEER_ALIVE
    # Refresh lastSeen, but only if the stored value is still this one (None: no refresh
    # unless the Node is created or becomes Ready).
    refresh_from: str | None = None
    refresh: bool = False
    # The Ready status the table saw when it decided (None: no Node yet). A peer's probe that
    # was decided before someone recorded the peer's departure must not undo it.
    seen_ready: Readiness | None = None
    # This agent's own Node only: the --node-label labels it carries (None: labels untouched).
    labels: tuple[tuple[str, str], ...] | None = None
    # `addresses` is the whole list (False: only where a Go agent answered; a Node listing it
    # among others keeps its list, which that agent writes itself).
    exact: bool = True


@attrs.frozen
class Left:
    """The peer said goodbye over mDNS and does not answer: Ready=False at once."""

    name: str


@attrs.frozen
class Expired:
    """Nobody refreshed the Node's lastSeen for peer-ttl: Ready=Unknown.
    Applies only while the Node is still Ready with lastSeen == `stale_last_seen`."""

    name: str
    stale_last_seen: str | None


@attrs.frozen
class Refused:
    """Nothing listens on the peer's port (every address refused, twice): its agent died while
    its host lives. Ready=False at once. Applies only while the Node is still Ready with
    lastSeen == `seen_last_seen`: an agent that reached it meanwhile wins."""

    name: str
    seen_last_seen: str | None


@attrs.frozen
class Unreachable:
    """The peer's host went silent and nobody reaches it (a suspicion confirmed by this agent and
    the agents it asked, `k3net.tasks.probe`): Ready=Unknown at once, as an expiry would say
    after peer-ttl. Applies only while the Node is still Ready with lastSeen ==
    `seen_last_seen`: an agent that reached it meanwhile wins."""

    name: str
    seen_last_seen: str | None


@attrs.frozen
class Suspicion:
    """This agent (`by`) is about to write the peer down (a confirmed silence, or a refusal
    its re-probe is to confirm): the Node gets the annotation k3.network/suspectedBy first,
    nothing else changes. Its own agent, if it runs and reaches the store, answers by writing
    its Node (every Alive write takes the mark off and refreshes lastSeen), so that the
    accusation, held to the lastSeen of before, writes nothing: one half of a split LAN does not
    write the other half not-Ready while both reach the store. Applies only while the Node is
    Ready with lastSeen == `seen_last_seen` and carries no mark yet."""

    name: str
    by: str
    seen_last_seen: str | None


@attrs.frozen
class Shutdown:
    """This agent is stopping cleanly: its own Node goes Ready=False."""

    name: str


Intent = Alive | Left | Expired | Refused | Unreachable | Suspicion | Shutdown


def ordered_addresses(addresses: Iterable[str]) -> tuple[str, ...]:
    """InternalIP addresses as a Node lists them: the canonical list of `core.addresses`."""
    return canonical_addresses(addresses)


def last_seen(node: Node | None) -> str | None:
    if node is None:
        return None
    return node.metadata.annotations.get(ANN_LAST_SEEN)


def _new_node(name: str, now: dt.datetime) -> Node:
    return Node(metadata=ObjectMeta(name=name, uid=f"node-{name}", creation_timestamp=now))


def _set_ready(
    node: Node, ready: Readiness, reason: str, message: str, now: dt.datetime
) -> bool:
    """Set the Ready condition; returns True if its status string changed (a foreign status is
    replaced, as a change)."""
    cond = node.condition(CONDITION_READY)
    if cond is None:
        cond = NodeCondition(type=CONDITION_READY, status=ready.value, last_transition_time=now)
        node.status.conditions.append(cond)
        changed = True
    else:
        changed = cond.status != ready.value
        if changed:
            cond.status = ready.value
            cond.last_transition_time = now
    cond.reason = reason
    cond.message = message
    if changed:
        cond.last_heartbeat_time = now
    return changed


def _own(node: Node, name: str) -> None:
    labels = node.metadata.labels
    labels[LABEL_HOSTNAME] = name
    labels[LABEL_MANAGED] = "true"
    labels[LABEL_DISCOVERED] = "true"
    node.status.phase = "Running"


# Kubernetes label syntax: a name of at most 63 characters, alphanumeric at both ends, with
# `-`, `_` and `.` inside; a key may have a DNS subdomain prefix and a `/`; a value is a name or
# empty. Keys k3net writes itself are not for --node-label.
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_RESERVED = ("k3.network/", LABEL_HOSTNAME)


def label_problem(key: str, value: str) -> str | None:
    """What is wrong with a label KEY=VALUE for this agent's own Node (None: nothing)."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"label key prefix {prefix!r} is not a DNS subdomain"
    if not _LABEL_NAME.match(name):
        return (f"label key {key!r} must be at most 63 letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit (with an optional prefix/)")
    if value and not _LABEL_NAME.match(value):
        return (f"label value {value!r} must be empty, or at most 63 letters, digits, '-', '_' "
                "or '.', starting and ending with a letter or digit")
    if key == LABEL_HOSTNAME or key.startswith(_RESERVED[0]):
        return f"{key!r} is written by k3net itself"
    return None


def _own_labels(node: Node) -> list[str]:
    """The keys of the labels this agent put on its own Node (ANN_NODE_LABELS)."""
    return [k for k in node.metadata.annotations.get(ANN_NODE_LABELS, "").split(",") if k]


def labels_differ(node: Node, labels: tuple[tuple[str, str], ...]) -> bool:
    """The Node does not carry exactly these --node-label labels (or still one given before)."""
    wanted = dict(labels)
    return sorted(_own_labels(node)) != sorted(wanted) or any(
        node.metadata.labels.get(key) != value for key, value in wanted.items())


def _set_labels(node: Node, labels: tuple[tuple[str, str], ...]) -> None:
    """Put these labels on the Node and take off those put before that are no longer given;
    other labels (an administrator's, the controller's) stay."""
    meta, wanted = node.metadata, dict(labels)
    for key in _own_labels(node):
        if key not in wanted:
            meta.labels.pop(key, None)
    meta.labels.update(wanted)
    if wanted:
        meta.annotations[ANN_NODE_LABELS] = ",".join(sorted(wanted))
    else:
        meta.annotations.pop(ANN_NODE_LABELS, None)


def _set_addresses(node: Node, name: str, addresses: tuple[str, ...]) -> None:
    owned = {"Hostname", "InternalIP"}
    kept = [a for a in node.status.addresses if a.type not in owned]
    ours = [NodeAddress(type="Hostname", address=name)]
    ours += [NodeAddress(type="InternalIP", address=a) for a in ordered_addresses(addresses)]
    node.status.addresses = ours + kept


def _message(intent: Intent) -> str:
    if isinstance(intent, Alive):
        return "k3net agent is running" if intent.reason == AGENT_READY else "peer answered a probe"
    if isinstance(intent, Left):
        return "peer announced its departure over mDNS and stopped answering"
    if isinstance(intent, Expired):
        return "no agent reached the peer within the peer TTL"
    if isinstance(intent, Refused):
        return "nothing listens on the peer's port any more: its agent stopped"
    if isinstance(intent, Unreachable):
        return "the peer's host stopped answering: no agent reaches it"
    return "k3net agent shut down"


def render(existing: Node | None, intent: Intent, now: dt.datetime) -> Node | None:
    """The Node to write for `intent`, given the Node as stored (None if absent), or None if
    nothing needs writing. `now` is the wall-clock time written into timestamps."""
    if existing is not None and not existing.managed:
        return None  # the ownership rule: not ours, never touched
    if existing is None and not isinstance(intent, Alive):
        return None  # only a live node is created; nothing to mark on a Node that is not there
    if (
        isinstance(intent, Alive)
        and intent.reason == PEER_ALIVE
        and existing is not None
        and readiness(existing) is Readiness.FALSE
        and intent.seen_ready is not Readiness.FALSE
    ):
        return None  # a departure was recorded after this probe was decided: the next decides
    if isinstance(intent, Expired) and existing is not None and (
        readiness(existing) is not Readiness.TRUE
        or last_seen(existing) != intent.stale_last_seen
    ):
        return None  # someone reached it meanwhile, or it is already not Ready
    if isinstance(intent, (Refused, Unreachable)) and existing is not None and (
        readiness(existing) is not Readiness.TRUE
        or last_seen(existing) != intent.seen_last_seen
    ):
        return None  # someone reached it since we decided, or its departure is recorded
    if isinstance(intent, Suspicion) and existing is not None and (
        readiness(existing) is not Readiness.TRUE
        or last_seen(existing) != intent.seen_last_seen
        or ANN_SUSPECTED in existing.metadata.annotations
    ):
        return None  # reached since, not Ready, or suspected already: its agent answers that
    if (
        isinstance(intent, (Left, Shutdown))
        and existing is not None
        and readiness(existing) is Readiness.FALSE
        and _ready_reason(existing) != PEER_REFUSED
    ):
        # Its departure is recorded already (PeerLeft by a peer, or AgentShutdown). A refusal
        # is only what peers guessed when its listener closed first: the goodbye replaces it.
        return None

    node = _new_node(intent.name, now) if existing is None else copy_node(existing)
    _own(node, intent.name)
    if isinstance(intent, Suspicion):
        node.metadata.annotations[ANN_SUSPECTED] = intent.by
        return None if existing is not None and node == existing else node
    # Every other write decides: a suspicion's mark ends with it (an Alive one answers it).
    suspected = node.metadata.annotations.pop(ANN_SUSPECTED, None) is not None
    if isinstance(intent, Alive):
        reason, message = intent.reason, _message(intent)
        ready = node.condition(CONDITION_READY)
        if intent.reason == PEER_ALIVE and ready is not None and readiness(node) is Readiness.TRUE:
            # A peer's probe confirms a Ready node; it does not overwrite the reason its own
            # agent (AgentReady) or another peer gave, or agents would take turns rewriting it.
            reason, message = ready.reason or PEER_ALIVE, ready.message or message
        became_ready = _set_ready(node, Readiness.TRUE, reason, message, now)
        listed = {a.address for a in node.status.addresses if a.type == "InternalIP"}
        if intent.exact or not set(ordered_addresses(intent.addresses)) <= listed:
            _set_addresses(node, intent.name, intent.addresses)
        if intent.labels is not None:
            _set_labels(node, intent.labels)
        annotations = node.metadata.annotations
        annotations[ANN_PORT] = str(intent.port)
        if intent.pid is not None:
            annotations[ANN_PID] = str(intent.pid)
        stale = intent.refresh and last_seen(existing) == intent.refresh_from
        if (existing is None or became_ready or stale or suspected
                or ANN_LAST_SEEN not in annotations):
            annotations[ANN_LAST_SEEN] = format_time_precise(now)
            ready = node.condition(CONDITION_READY)
            assert ready is not None
            ready.last_heartbeat_time = now
    elif isinstance(intent, Left):
        _set_ready(node, Readiness.FALSE, PEER_LEFT, _message(intent), now)
    elif isinstance(intent, Expired):
        _set_ready(node, Readiness.UNKNOWN, PEER_EXPIRED, _message(intent), now)
    elif isinstance(intent, Refused):
        _set_ready(node, Readiness.FALSE, PEER_REFUSED, _message(intent), now)
    elif isinstance(intent, Unreachable):
        _set_ready(node, Readiness.UNKNOWN, PEER_UNREACHABLE, _message(intent), now)
    else:
        _set_ready(node, Readiness.FALSE, AGENT_SHUTDOWN, _message(intent), now)

    if existing is not None and node == existing:  # (field by field, deeply)
        return None
    return node


def _ready_reason(node: Node) -> str | None:
    cond = node.condition(CONDITION_READY)
    return cond.reason if cond is not None else None


"""Messages the agent's tasks send each other over memory channels. Plain, immutable data."""

from __future__ import annotations

from typing import Literal

import attrs

from k3net.core.identity import Facts
from k3net.model import Node


@attrs.frozen
class PeerSeen:
    """browse (or join, scan): an agent was found on the LAN (already validated and resolved)."""

    name: str  # TXT `node`, else the instance name; a valid DNS-1123 subdomain
    addresses: tuple[str, ...]  # A/AAAA records as text, IPv4 first
    port: int  # TXT `port`, else the SRV port
    pid: int | None = None  # TXT `pid`, if it was a number
    # How it was found: mdns, join (a --join address), scan (--scan), introduced (its own hello,
    # k3net.tasks.introduce: `addresses` is then the hello's TCP source address alone).
    found_by: str = "mdns"


@attrs.frozen
class PeerGone:
    """browse: an agent's mDNS record went away (Removed): it said goodbye (`goodbye`), or the
    record expired with nobody answering for it, which proves nothing about the agent."""

    name: str
    goodbye: bool = True
    # Where the record last said it was: a departure counts only where the peer proved itself.
    addresses: tuple[str, ...] = ()


@attrs.frozen
class PeerRejected:
    """browse: an mDNS entry that was dropped, never written. `reason` is a short slug."""

    instance: str
    reason: str  # invalid-name | node-mismatch | bad-port | bad-txt | no-address | overflow
    detail: str = ""


ProbeOutcome = Literal[
    "confirmed", "wrong-node", "unauthenticated", "refused", "timeout", "unverified",
    "unreachable",
]


@attrs.frozen
class ProbeResult:
    """probe: what answered on a peer's advertised port.

    - confirmed: an agent answered and named the probed peer (and proved the cluster key, if
      one is set);
    - wrong-node: an agent answered but it is another one (a shared bridge address, a reused
      address): a failure, never evidence that the peer lives;
    - unauthenticated: the peer answered with its name but could not prove our cluster key: never
      written (a `rejected` event, reason `unauthenticated`);
    - refused: every address actively refused the connection: nothing listens there;
    - timeout: no address answered in time;
    - unverified: something accepted the connection but did not answer as an agent;
    - unreachable: a suspicion confirmed (`k3net.tasks.probe`): its held connection went silent,
      a direct probe got no answer at all at `silent` (no SYN-ACK, no refusal), and no other
      agent asked could reach it; never concluded while this agent's local health is not 0.
    """

    name: str
    outcome: ProbeOutcome
    latency: float  # seconds the probe took
    address: str | None = None  # the address that answered, if any
    error: str = ""
    started: float = 0.0  # when the probe began, on the agent's clock
    answered_by: str | None = None  # the node that answered instead (wrong-node)
    # confirmed: what the peer proved about itself in its answer, completed with what the probe
    # saw (the address and port where it answered as itself): all that may be written.
    facts: Facts | None = None
    refused: tuple[str, ...] = ()  # the addresses that actively refused the connection
    silent: tuple[str, ...] = ()  # the addresses where nothing answered at all (no SYN-ACK)


@attrs.frozen
class OwnAddresses:
    """addresses: this machine's advertised addresses changed (DHCP, IPv6 privacy address): our
    own Node is written again now, with the addresses its owner holds (`SelfInfo.addresses`)."""


@attrs.frozen
class StoreChanged:
    """The agent moved to another store (a reload): what the table knows is written there before
    the new store's watch starts (the table's loop reports when it has handed that over)."""


@attrs.frozen
class Stopping:
    """The agent is stopping cleanly: the table's last message."""


@attrs.frozen
class Tick:
    """expire: time to look for Nodes whose stored lastSeen went stale. Sent every `interval`
    seconds, so the table can tell when this agent did not run for a while (None: a Tick of no
    timer, as a test's, tells nothing of that)."""

    interval: float | None = None


@attrs.frozen
class Suspected:
    """probe: a held connection to the peer went silent at `since` (this agent's clock), nobody
    reached it, and this agent is about to accuse it (`k3net.tasks.probe`): the verdict follows
    as a ProbeResult once the peer had the time to answer through the store."""

    name: str
    since: float


@attrs.frozen
class SelfHeartbeat:
    """self: this agent is alive; refresh our own Node when due."""


# --- the store, as the watch reports it ------------------------------------------------------


@attrs.frozen
class Stored:
    """A Node as the store holds it, with the version an update must name."""

    node: Node
    version: str

    @property
    def name(self) -> str:
        return self.node.metadata.name


@attrs.frozen
class Foreign:
    """A value under the Node prefix that is not a Node (bad JSON, another kind of object, a
    row with broken columns): written by someone else, never by k3net. It is shown and counted,
    never rewritten, and no Node of that name exists while it is there."""

    name: str  # the Node name its key or row claims
    key: str  # where it is: the etcd key, or `k8s_core_v1_node id=N`
    reason: str  # short and readable: why it is not a Node


@attrs.frozen
class Snapshot:
    """Every Node in the store at one moment, and the values there that are not Nodes."""

    items: tuple[Stored, ...]
    foreign: tuple[Foreign, ...] = ()


@attrs.frozen
class Put:
    """A Node was created or updated."""

    stored: Stored


@attrs.frozen
class Deleted:
    """A Node was removed, or (with `foreign`) its value was replaced by one that is not a Node."""

    name: str
    foreign: Foreign | None = None


@attrs.frozen
class Lost:
    """The watch lost the store (down, unreachable). Until the next Snapshot, nothing is known
    of changes: a consumer must not judge ages or liveness from its view meanwhile."""

    reason: str


WatchEvent = Snapshot | Put | Deleted | Lost

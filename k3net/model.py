"""The Kubernetes `v1/Node` object, as plain attrs classes.

Only the parts k3net reads or writes have fields. Everything else a Node may carry (fields the
Go k3 components or kubectl add, fields of later API versions) lands in each class's `extra` and
is written back untouched: see `k3net.convert` for the JSON form.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import attrs

# Labels and annotations k3net owns.
LABEL_HOSTNAME = "kubernetes.io/hostname"
LABEL_MANAGED = "k3.network/managed"
LABEL_DISCOVERED = "k3.network/discovered"
ANN_LAST_SEEN = "k3.network/lastSeen"
ANN_PORT = "k3.network/port"
ANN_PID = "k3.network/pid"
# The keys of the labels this agent put on its own Node from --node-label, comma-separated: so
# that a label no longer asked for is taken off, and k3net prune knows them as k3net's.
ANN_NODE_LABELS = "k3.network/nodeLabels"
# Set by an agent about to write the Node down (its value: that agent's name), so that the
# Node's own agent can answer through the store first; taken off by the next write that decides
# (k3net.core.nodes.Suspicion).
ANN_SUSPECTED = "k3.network/suspectedBy"

CONDITION_READY = "Ready"


def _extra() -> dict[str, Any]:
    return {}


@attrs.define
class ObjectMeta:
    name: str
    uid: str | None = None
    namespace: str | None = None
    resource_version: str | None = None
    creation_timestamp: dt.datetime | None = None
    labels: dict[str, str] = attrs.Factory(dict)
    annotations: dict[str, str] = attrs.Factory(dict)
    extra: dict[str, Any] = attrs.Factory(_extra)


@attrs.define
class NodeAddress:
    type: str
    address: str
    extra: dict[str, Any] = attrs.Factory(_extra)


@attrs.define
class NodeCondition:
    type: str
    status: str
    reason: str | None = None
    message: str | None = None
    last_heartbeat_time: dt.datetime | None = None
    last_transition_time: dt.datetime | None = None
    extra: dict[str, Any] = attrs.Factory(_extra)


@attrs.define
class NodeStatus:
    phase: str | None = None
    addresses: list[NodeAddress] = attrs.Factory(list)
    conditions: list[NodeCondition] = attrs.Factory(list)
    extra: dict[str, Any] = attrs.Factory(_extra)


@attrs.define
class Node:
    metadata: ObjectMeta
    api_version: str = "v1"
    kind: str = "Node"
    spec: dict[str, Any] = attrs.Factory(dict)
    status: NodeStatus = attrs.Factory(NodeStatus)
    extra: dict[str, Any] = attrs.Factory(_extra)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def managed(self) -> bool:
        """True if k3net may modify this Node (the ownership rule)."""
        return self.metadata.labels.get(LABEL_MANAGED) == "true"

    def condition(self, type_: str = CONDITION_READY) -> NodeCondition | None:
        for cond in self.status.conditions:
            if cond.type == type_:
                return cond
        return None

    @property
    def ready_status(self) -> str:
        """"True", "False" or "Unknown" (a Node without a Ready condition is "Unknown")."""
        cond = self.condition()
        return cond.status if cond is not None else "Unknown"


def copy_node(node: Node) -> Node:
    """A deep copy of `node`: what is changed on it is never seen through the original.
    (Field by field: a round trip through its JSON form cost ten times as much, once per write.)
    Text, numbers and times are immutable and shared; dicts and lists are new."""
    meta = node.metadata
    status = node.status
    return attrs.evolve(
        node,
        metadata=attrs.evolve(meta, labels=dict(meta.labels), annotations=dict(meta.annotations),
                              extra=copy.deepcopy(meta.extra)),
        spec=copy.deepcopy(node.spec),
        status=attrs.evolve(
            status,
            addresses=[attrs.evolve(a, extra=copy.deepcopy(a.extra)) for a in status.addresses],
            conditions=[attrs.evolve(c, extra=copy.deepcopy(c.extra))
                        for c in status.conditions],
            extra=copy.deepcopy(status.extra),
        ),
        extra=copy.deepcopy(node.extra),
    )

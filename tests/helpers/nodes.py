"""Nodes as the agents write them, for the tests of everything that reads them (the event hub,
the web app, the commands, prune)."""

from __future__ import annotations

import datetime as dt

from k3net.model import (
    ANN_LAST_SEEN,
    ANN_PORT,
    LABEL_MANAGED,
    Node,
    NodeAddress,
    NodeCondition,
    NodeStatus,
    ObjectMeta,
)

T0 = dt.datetime(2026, 11, 29, 12, 0, 0, tzinfo=dt.UTC)


def make_node(
    name: str = "node-b",
    ready: str | None = "True",
    reason: str = "PeerAlive",
    message: str = "reachable",
    addresses: tuple[str, ...] = ("10.77.0.3",),
    port: int | None = 7946,
    managed: bool = True,
    last_seen: dt.datetime = T0,
) -> Node:
    ann = {ANN_LAST_SEEN: last_seen.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
    if port is not None:
        ann[ANN_PORT] = str(port)
    conditions = []
    if ready is not None:
        conditions.append(NodeCondition(
            type="Ready", status=ready, reason=reason, message=message,
            last_heartbeat_time=last_seen, last_transition_time=T0,
        ))
    return Node(
        metadata=ObjectMeta(
            name=name, uid=f"node-{name}",
            labels={LABEL_MANAGED: "true"} if managed else {},
            annotations=ann, creation_timestamp=T0,
        ),
        status=NodeStatus(
            phase="Running",
            addresses=[NodeAddress("Hostname", name)] + [NodeAddress("InternalIP", a) for a in addresses],
            conditions=conditions,
        ),
    )

"""Node rendering: what a Node says after each intent, ownership, losslessness, write-on-change."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from k3net.convert import format_time_precise, node_from_dict, node_to_dict
from k3net.core.nodes import (
    AGENT_READY,
    Alive,
    Expired,
    Intent,
    Left,
    Readiness,
    Shutdown,
    Suspicion,
    Unreachable,
    last_seen,
    ordered_addresses,
    readiness,
    render,
)
from k3net.model import ANN_SUSPECTED, Node, copy_node

T0 = dt.datetime(2026, 11, 29, 10, 0, 0, tzinfo=dt.UTC)
NAME = "peer-a"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def alive(**changes: Any) -> Alive:
    fields: dict[str, Any] = {
        "name": NAME, "addresses": ("192.168.1.10",), "port": 7946, "pid": 4242,
    }
    fields.update(changes)
    return Alive(**fields)


def stored(node: Node | None) -> Node:
    """The Node as a store gives it back (through JSON)."""
    assert node is not None
    return node_from_dict(node_to_dict(node))


def ready(node: Node) -> dict[str, Any]:
    conds = node_to_dict(node)["status"]["conditions"]
    (cond,) = [c for c in conds if c["type"] == "Ready"]
    return cond


def created() -> Node:
    return stored(render(None, alive(), T0))


def with_ready(status: str, reason: str) -> Node:
    data = node_to_dict(created())
    cond = data["status"]["conditions"][0]
    cond["status"], cond["reason"] = status, reason
    return node_from_dict(data)


# --- creating ---------------------------------------------------------------------------------


def test_create_writes_a_complete_node() -> None:
    node = render(None, alive(addresses=("fe80::1", "2a00:1450::1", "10.0.0.5", "127.0.0.1")), T0)
    assert node is not None
    data = node_to_dict(node)
    assert data["apiVersion"] == "v1" and data["kind"] == "Node"
    meta = data["metadata"]
    assert meta["name"] == NAME
    assert meta["uid"] == f"node-{NAME}"
    assert meta["creationTimestamp"] == "2026-11-29T10:00:00Z"
    assert meta["labels"] == {
        "kubernetes.io/hostname": NAME,
        "k3.network/managed": "true",
        "k3.network/discovered": "true",
    }
    assert meta["annotations"] == {
        "k3.network/lastSeen": "2026-11-29T10:00:00.000000Z",
        "k3.network/port": "7946",
        "k3.network/pid": "4242",
    }
    assert data["status"]["phase"] == "Running"
    assert data["status"]["addresses"] == [
        {"type": "Hostname", "address": NAME},
        {"type": "InternalIP", "address": "10.0.0.5"},
        {"type": "InternalIP", "address": "2a00:1450::1"},
    ]
    assert ready(node) == {
        "type": "Ready",
        "status": "True",
        "reason": "PeerAlive",
        "message": ready(node)["message"],
        "lastHeartbeatTime": "2026-11-29T10:00:00Z",
        "lastTransitionTime": "2026-11-29T10:00:00Z",
    }
    assert node.managed and node.ready_status == "True"


def test_self_node_is_agent_ready() -> None:
    node = render(None, alive(reason=AGENT_READY), T0)
    assert node is not None
    assert ready(node)["reason"] == "AgentReady"
    assert ready(node)["status"] == "True"


def test_create_without_pid_has_no_pid_annotation() -> None:
    node = render(None, alive(pid=None), T0)
    assert node is not None
    assert "k3.network/pid" not in node.metadata.annotations


def test_last_seen_has_a_fraction_and_z() -> None:
    node = render(None, alive(), at(1.25))
    assert last_seen(node) == "2026-11-29T10:00:01.250000Z"


@pytest.mark.parametrize(
    "intent", [Left(NAME), Expired(NAME, None), Shutdown(NAME)], ids=["left", "expired", "shutdown"]
)
def test_only_a_live_node_is_created(intent: Intent) -> None:
    assert render(None, intent, T0) is None


# --- write only on change ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "intent",
    [
        pytest.param(alive(), id="same"),
        pytest.param(alive(pid=None), id="no-pid-keeps-stored-pid"),
        pytest.param(alive(refresh=False, refresh_from=format_time_precise(T0)), id="refresh-not-asked"),
        pytest.param(alive(refresh=True, refresh_from="2026-11-29T09:59:59.000000Z"),
                     id="refreshed-meanwhile"),
        pytest.param(alive(addresses=("192.168.1.10", "fe80::1", "192.168.1.10")),
                     id="same-addresses-after-filtering"),
    ],
)
def test_nothing_changed_writes_nothing(intent: Alive) -> None:
    assert render(created(), intent, at(50)) is None


@pytest.mark.parametrize(
    ("intent", "path", "value"),
    [
        (alive(port=8000), ("metadata", "annotations", "k3.network/port"), "8000"),
        (alive(pid=7), ("metadata", "annotations", "k3.network/pid"), "7"),
        (alive(addresses=("192.168.1.11",)), ("status", "addresses", 1, "address"), "192.168.1.11"),
        (alive(reason=AGENT_READY), ("status", "conditions", 0, "reason"), "AgentReady"),
    ],
)
def test_a_change_is_written_without_touching_times(
    intent: Alive, path: tuple[Any, ...], value: str
) -> None:
    before = created()
    node = render(before, intent, at(50))
    assert node is not None
    data: Any = node_to_dict(node)
    for key in path:
        data = data[key]
    assert data == value
    assert last_seen(node) == last_seen(before)  # no refresh asked
    assert ready(node)["lastTransitionTime"] == ready(before)["lastTransitionTime"]
    assert ready(node)["lastHeartbeatTime"] == ready(before)["lastHeartbeatTime"]


def test_peer_probe_keeps_the_reason_of_a_ready_node() -> None:
    own = stored(render(None, alive(reason=AGENT_READY), T0))  # written by the peer's agent
    assert render(own, alive(), at(10)) is None
    refreshed = render(own, alive(refresh=True, refresh_from=last_seen(own)), at(40))
    assert refreshed is not None
    assert (ready(refreshed)["status"], ready(refreshed)["reason"]) == ("True", "AgentReady")


def test_refresh_moves_last_seen_and_heartbeat_only() -> None:
    before = created()
    node = render(before, alive(refresh=True, refresh_from=last_seen(before)), at(40))
    assert node is not None
    assert last_seen(node) == format_time_precise(at(40))
    assert ready(node)["lastHeartbeatTime"] == "2026-11-29T10:00:40Z"
    assert ready(node)["lastTransitionTime"] == "2026-11-29T10:00:00Z"
    assert ready(node)["status"] == "True"


def test_refresh_when_last_seen_annotation_missing() -> None:
    data = node_to_dict(created())
    del data["metadata"]["annotations"]["k3.network/lastSeen"]
    node = render(node_from_dict(data), alive(), at(5))
    assert node is not None
    assert last_seen(node) == format_time_precise(at(5))


# --- status transitions -----------------------------------------------------------------------


def test_left_marks_ready_false_at_once() -> None:
    before = created()
    node = render(before, Left(NAME), at(30))
    assert node is not None
    cond = ready(node)
    assert (cond["status"], cond["reason"]) == ("False", "PeerLeft")
    assert cond["lastTransitionTime"] == "2026-11-29T10:00:30Z"
    assert last_seen(node) == last_seen(before)


@pytest.mark.parametrize(
    ("status", "reason", "written"),
    [
        ("True", "PeerAlive", True),
        ("True", "AgentReady", True),
        ("Unknown", "PeerExpired", True),
        ("False", "PeerLeft", False),
        ("False", "AgentShutdown", False),
        ("False", "PeerRefused", True),  # a guess made when its listener went first
    ],
)
def test_left_only_when_not_already_false(status: str, reason: str, written: bool) -> None:
    node = render(with_ready(status, reason), Left(NAME), at(30))
    assert (node is not None) == written
    if node is not None:
        assert (ready(node)["status"], ready(node)["reason"]) == ("False", "PeerLeft")


def test_expired_marks_unknown() -> None:
    before = created()
    node = render(before, Expired(NAME, last_seen(before)), at(90))
    assert node is not None
    cond = ready(node)
    assert (cond["status"], cond["reason"]) == ("Unknown", "PeerExpired")
    assert cond["lastTransitionTime"] == "2026-11-29T10:01:30Z"
    assert last_seen(node) == last_seen(before)


@pytest.mark.parametrize(
    ("status", "stale_matches", "written"),
    [
        ("True", True, True),
        ("True", False, False),  # someone refreshed lastSeen meanwhile
        ("False", True, False),
        ("Unknown", True, False),
    ],
)
def test_expired_only_while_ready_with_the_same_last_seen(
    status: str, stale_matches: bool, written: bool
) -> None:
    before = with_ready(status, "Whatever")
    stale = last_seen(before) if stale_matches else "2026-11-29T09:00:00.000000Z"
    assert (render(before, Expired(NAME, stale), at(90)) is not None) == written


def test_shutdown_marks_false_once() -> None:
    node = render(created(), Shutdown(NAME), at(10))
    assert node is not None
    assert (ready(node)["status"], ready(node)["reason"]) == ("False", "AgentShutdown")
    assert render(stored(node), Shutdown(NAME), at(20)) is None


def test_alive_after_expiry_is_ready_again_with_fresh_last_seen() -> None:
    expired = stored(render(created(), Expired(NAME, format_time_precise(T0)), at(90)))
    node = render(expired, alive(), at(100))
    assert node is not None
    cond = ready(node)
    assert (cond["status"], cond["reason"]) == ("True", "PeerAlive")
    assert cond["lastTransitionTime"] == "2026-11-29T10:01:40Z"
    assert last_seen(node) == format_time_precise(at(100))


def test_last_transition_time_changes_only_with_status() -> None:
    steps: list[tuple[Intent, float, str, str]] = [
        # intent, at, expected status, expected lastTransitionTime
        (alive(port=1), 10, "True", "2026-11-29T10:00:00Z"),
        (alive(refresh=True, refresh_from=format_time_precise(T0)), 20, "True", "2026-11-29T10:00:00Z"),
        (Left(NAME), 30, "False", "2026-11-29T10:00:30Z"),
        (alive(seen_ready=Readiness.FALSE), 50, "True", "2026-11-29T10:00:50Z"),  # it came back
        (alive(reason=AGENT_READY), 60, "True", "2026-11-29T10:00:50Z"),
    ]
    node = created()
    for intent, when, status, transition in steps:
        out = render(node, intent, at(when))
        assert out is not None, intent
        node = stored(out)
        assert ready(node)["status"] == status
        assert ready(node)["lastTransitionTime"] == transition


def test_probe_decided_before_a_departure_does_not_undo_it() -> None:
    """A peer's probe decided while the Node was Ready loses a race to the peer's goodbye: after
    the conflict it must not turn the recorded departure back into Ready."""
    departed = stored(render(created(), Left(NAME), at(30)))
    assert render(departed, alive(seen_ready=Readiness.TRUE, refresh=True), at(31)) is None
    # The node's own agent, and a probe decided after the departure, do mark it Ready again.
    assert ready(stored(render(departed, alive(reason=AGENT_READY, seen_ready=Readiness.TRUE),
                               at(32))))["status"] == "True"
    assert ready(stored(render(departed, alive(seen_ready=Readiness.FALSE),
                               at(32))))["status"] == "True"


def test_own_shutdown_replaces_a_refusal_written_while_it_stopped() -> None:
    refused = stored(with_ready("False", "PeerRefused"))
    node = render(refused, Shutdown(NAME), at(10))
    assert node is not None
    assert (ready(node)["status"], ready(node)["reason"]) == ("False", "AgentShutdown")


def test_departure_is_recorded_once() -> None:
    """Left and Shutdown race when a peer stops: whichever lands first stays, no second write."""
    node = stored(render(created(), Left(NAME), at(30)))
    assert render(node, Shutdown(NAME), at(31)) is None
    node = stored(render(created(), Shutdown(NAME), at(30)))
    assert render(node, Left(NAME), at(31)) is None


# --- ownership and losslessness ---------------------------------------------------------------

FOREIGN = {
    "apiVersion": "v1",
    "kind": "Node",
    "x-top": 1,
    "metadata": {
        "name": NAME,
        "uid": "controller-uid",
        "resourceVersion": "9",
        "labels": {"kubernetes.io/hostname": NAME, "team": "blue"},
        "annotations": {"owner": "k3-controller"},
    },
    "spec": {"podCIDR": "10.42.1.0/24"},
    "status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        "capacity": {"cpu": "2"},
    },
}


def _all_intents() -> list[Intent]:
    return [
        alive(),
        alive(refresh=True),
        alive(reason=AGENT_READY),
        Left(NAME),
        Expired(NAME, None),
        Shutdown(NAME),
    ]


@pytest.mark.parametrize("managed_label", [None, "false", "True", ""])
@pytest.mark.parametrize("intent", _all_intents(), ids=lambda i: type(i).__name__)
def test_unmanaged_node_is_never_touched(managed_label: str | None, intent: Intent) -> None:
    data: dict[str, Any] = copy.deepcopy(FOREIGN)
    if managed_label is not None:
        data["metadata"]["labels"]["k3.network/managed"] = managed_label
    node = node_from_dict(data)
    assert render(node, intent, at(500)) is None
    assert node_to_dict(node) == node_to_dict(node_from_dict(data))  # not mutated either


def rich_managed_node() -> Node:
    data = node_to_dict(created())
    data["x-top"] = {"k": [1, 2]}
    data["metadata"]["labels"]["team"] = "blue"
    data["metadata"]["annotations"]["owner"] = "ops"
    data["metadata"]["finalizers"] = ["keep"]
    data["metadata"]["resourceVersion"] = "17"
    data["spec"] = {"podCIDR": "10.42.1.0/24", "taints": [{"key": "a", "effect": "NoSchedule"}]}
    data["status"]["addresses"].append({"type": "ExternalIP", "address": "203.0.113.9"})
    data["status"]["addresses"][0]["x-addr"] = "kept"
    data["status"]["conditions"][0]["x-cond"] = True
    data["status"]["conditions"].append(
        {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
         "lastTransitionTime": "2026-01-01T00:00:00Z"}
    )
    data["status"]["capacity"] = {"cpu": "4", "memory": "8Gi"}
    data["status"]["nodeInfo"] = {"kubeletVersion": "v1.30.0", "x": 1}
    return node_from_dict(data)


@pytest.mark.parametrize(
    "intent",
    [
        alive(port=9999),
        alive(refresh=True, refresh_from=format_time_precise(T0)),
        alive(addresses=("192.168.1.99",)),
        Left(NAME),
        Expired(NAME, format_time_precise(T0)),
        Shutdown(NAME),
    ],
    ids=["port", "refresh", "addresses", "left", "expired", "shutdown"],
)
def test_fields_k3net_does_not_own_are_kept(intent: Intent) -> None:
    before = rich_managed_node()
    snapshot = node_to_dict(before)
    out = render(before, intent, at(60))
    assert out is not None
    after = node_to_dict(out)
    assert node_to_dict(before) == snapshot  # the stored Node is not mutated
    assert after["x-top"] == snapshot["x-top"]
    assert after["spec"] == snapshot["spec"]
    assert after["metadata"]["labels"]["team"] == "blue"
    assert after["metadata"]["annotations"]["owner"] == "ops"
    assert after["metadata"]["finalizers"] == ["keep"]
    assert after["metadata"]["uid"] == snapshot["metadata"]["uid"]
    assert after["metadata"]["creationTimestamp"] == snapshot["metadata"]["creationTimestamp"]
    assert after["status"]["capacity"] == snapshot["status"]["capacity"]
    assert after["status"]["nodeInfo"] == snapshot["status"]["nodeInfo"]
    assert snapshot["status"]["conditions"][1] in after["status"]["conditions"]
    assert ready(out).get("x-cond") is True
    assert {"type": "ExternalIP", "address": "203.0.113.9"} in after["status"]["addresses"]


# --- addresses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param(["192.168.1.10"], ("192.168.1.10",), id="one-v4"),
        pytest.param(["2a00:1450::1", "10.0.0.1"], ("10.0.0.1", "2a00:1450::1"), id="v4-first"),
        pytest.param(["10.0.0.2", "10.0.0.1"], ("10.0.0.1", "10.0.0.2"), id="canonical-order"),
        pytest.param(["127.0.0.1", "::1", "10.0.0.1"], ("10.0.0.1",), id="no-loopback"),
        pytest.param(["169.254.3.4", "fe80::1", "fe80::2%eth0"], (), id="no-link-local"),
        pytest.param(["0.0.0.0", "::"], (), id="no-unspecified"),
        pytest.param(["fd00::5", "fc00::1"], ("fc00::1", "fd00::5"), id="ula-kept-as-go"),
        pytest.param(["10.0.0.1", "10.0.0.1", "2a00:1450::1", "2a00:1450:0::1"],
                     ("10.0.0.1", "2a00:1450::1"), id="duplicates"),
        pytest.param(["2A00:1450::0001"], ("2a00:1450::1",), id="canonical-form"),
        pytest.param(["2a00:1450::1%eth0"], ("2a00:1450::1",), id="zone-dropped"),
        pytest.param(["", "garbage", "300.1.1.1", "10.0.0", "::g", "010.0.0.1", "1.2.3.4/24"],
                     (), id="garbage"),
        pytest.param([], (), id="none"),
    ],
)
def test_ordered_addresses(given: list[str], expected: tuple[str, ...]) -> None:
    assert ordered_addresses(given) == expected


# --- readiness: the Kubernetes strings only at the boundary -----------------------------------


@pytest.mark.parametrize(("status", "expected"), [
    ("True", Readiness.TRUE), ("False", Readiness.FALSE), ("Unknown", Readiness.UNKNOWN),
    ("true", Readiness.UNKNOWN), ("", Readiness.UNKNOWN),  # written by someone else
])
def test_readiness_reads_the_ready_condition(status: str, expected: Readiness) -> None:
    assert readiness(with_ready(status, "Whatever")) is expected


def test_a_node_without_a_ready_condition_is_unknown() -> None:
    data = node_to_dict(created())
    data["status"]["conditions"] = [{"type": "MemoryPressure", "status": "True"}]
    assert readiness(node_from_dict(data)) is Readiness.UNKNOWN


@pytest.mark.parametrize(("intent", "written"), [(alive(), "True"), (Left(NAME), "False")])
def test_a_foreign_ready_status_is_replaced_as_a_transition(intent: Intent, written: str) -> None:
    """A status k3net does not know (`true`, written by another program) reads as UNKNOWN, and
    is replaced by the Kubernetes string, with a new lastTransitionTime."""
    node = render(with_ready("true", "Whatever"), intent, at(40))
    assert node is not None
    cond = ready(node)
    assert cond["status"] == readiness(node).value == written
    assert cond["lastTransitionTime"] == "2026-11-29T10:00:40Z"


def test_a_copy_of_a_node_shares_nothing_that_can_change() -> None:
    """render changes a copy of the stored Node; nothing of that may reach the original, down
    to the fields k3net does not know (kept in `extra`)."""
    node = created()
    node.extra["x"] = {"list": [1]}
    node.spec["taints"] = [{"key": "a"}]
    node.status.addresses[0].extra["zone"] = {"id": 1}
    before = node_to_dict(node)
    twin = copy_node(node)
    assert twin == node and node_to_dict(twin) == before
    twin.metadata.labels["l"] = "x"
    twin.metadata.annotations["a"] = "x"
    twin.metadata.extra["m"] = 1
    twin.spec["taints"][0]["key"] = "b"
    twin.status.addresses[0].extra["zone"]["id"] = 2
    twin.status.addresses.append(twin.status.addresses[0])
    twin.status.conditions[0].status = "False"
    twin.status.extra["s"] = 1
    twin.extra["x"]["list"].append(2)
    assert node_to_dict(node) == before


# --- suspicion --------------------------------------------------------------------------------


def test_a_suspicion_marks_a_ready_node_and_changes_nothing_else() -> None:
    node = created()
    marked = render(node, Suspicion(NAME, "node-x", last_seen(node)), at(5))
    assert marked is not None
    assert marked.metadata.annotations[ANN_SUSPECTED] == "node-x"
    without = copy_node(marked)
    del without.metadata.annotations[ANN_SUSPECTED]
    assert without == node  # Ready, lastSeen, heartbeat: untouched
    # Not again while marked (another agent's suspicion is answered the same way), nor on a
    # Node reached since the suspicion began, nor on one that is not Ready.
    assert render(stored(marked), Suspicion(NAME, "node-y", last_seen(node)), at(6)) is None
    assert render(node, Suspicion(NAME, "node-x", "2026-11-29T09:00:00.000000Z"), at(6)) is None
    assert render(with_ready("False", "PeerLeft"), Suspicion(NAME, "node-x", last_seen(node)),
                  at(6)) is None
    assert render(None, Suspicion(NAME, "node-x", None), at(6)) is None  # nothing to mark


def test_an_alive_write_answers_a_suspicion_with_a_fresh_last_seen() -> None:
    node = created()
    marked = stored(render(node, Suspicion(NAME, "node-x", last_seen(node)), at(5)))
    # Nothing else would be written (not due), but the mark is taken off and lastSeen refreshed:
    # the suspicion's Unreachable, decided against the lastSeen of before, then writes nothing.
    answered = render(marked, alive(reason=AGENT_READY), at(6))
    assert answered is not None
    assert ANN_SUSPECTED not in answered.metadata.annotations
    assert last_seen(answered) == format_time_precise(at(6))
    assert render(stored(answered), Unreachable(NAME, last_seen(node)), at(7)) is None


def test_a_verdict_takes_the_mark_off() -> None:
    node = created()
    marked = stored(render(node, Suspicion(NAME, "node-x", last_seen(node)), at(5)))
    down = render(marked, Unreachable(NAME, last_seen(node)), at(6))
    assert down is not None and readiness(down) is Readiness.UNKNOWN
    assert ANN_SUSPECTED not in down.metadata.annotations
    assert last_seen(down) == last_seen(node)  # an accusation refreshes nothing

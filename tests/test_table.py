"""The peer table's decisions, driven by events and explicit `now` values (no clock, no I/O).

A tiny helper plays the shared store: it applies a `Write` with `render` (as the writer does)
and hands the result back to the table as the watch `Put` every agent would see.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest

from k3net.convert import node_from_dict, node_to_dict
from k3net.core import table as peer_table
from k3net.core.identity import Facts
from k3net.core.messages import (
    Deleted,
    Lost,
    OwnAddresses,
    PeerGone,
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
)
from k3net.core.nodes import (
    AGENT_READY,
    PEER_ALIVE,
    PEER_REFUSED,
    PEER_UNREACHABLE,
    Alive,
    Expired,
    Left,
    Readiness,
    Refused,
    Shutdown,
    Suspicion,
    Unreachable,
    last_seen,
    render,
)
from k3net.core.table import (
    DOWN_REPROBE,
    LEAVING_REPROBES,
    MARK_WAIT,
    PAUSE,
    REPROBE_DELAY,
    STATES,
    TRANSITIONS,
    Forget,
    JoinLatency,
    MarkSeen,
    NameConflict,
    Paused,
    PeerEvent,
    PeerTable,
    ProbeNow,
    ProbeTarget,
    Reject,
    Retarget,
    SelfInfo,
    Transition,
    Write,
)
from k3net.model import ANN_PID, ANN_SUSPECTED, Node

TTL = 90.0
REFRESH = 30.0
ME = SelfInfo(name="me", addresses=lambda: ("192.168.1.2",), port=7946, pid=100)
PEER = PeerSeen(name="peer-a", addresses=("192.168.1.10",), port=7946, pid=4242)
OTHER = PeerSeen(name="peer-b", addresses=("192.168.1.11",), port=7000, pid=None)
TARGET = ProbeTarget("peer-a", ("192.168.1.10",), 7946)
WALL0 = dt.datetime(2026, 11, 29, 10, 0, tzinfo=dt.UTC)

_versions = itertools.count(1)


def table(register_self: bool = True, me: SelfInfo = ME) -> PeerTable:
    """A table whose store watch delivered its first (empty) Snapshot, as every watch does."""
    t = PeerTable(peer_ttl=TTL, refresh_interval=REFRESH, me=me, register_self=register_self)
    first = t.handle(Snapshot(()), 0.0)  # nobody holds our name: registered at once
    assert [type(w.intent) for w in writes(first)] == ([Alive] if register_self else [])
    return t


def counts(t: PeerTable) -> dict[str, int]:
    """The stored Nodes the table follows, by Ready state."""
    states = {"True": "ready", "False": "not_ready"}
    out = {"ready": 0, "not_ready": 0, "unknown": 0}
    for node in t.nodes():
        out[states.get(node.ready_status, "unknown")] += 1
    return out


def store_node(node: Node) -> Stored:
    node = node_from_dict(node_to_dict(node))
    version = str(next(_versions))
    node.metadata.resource_version = version
    return Stored(node=node, version=version)


def commit(action: Any, wall: float = 0.0, *, wall0: dt.datetime = WALL0) -> Put:
    """The Put every agent sees after `action` (a Write) is written at wall time `wall`."""
    assert isinstance(action, Write), action
    node = render(action.base.node if action.base else None, action.intent,
                  wall0 + dt.timedelta(seconds=wall))
    assert node is not None, f"{action} writes nothing"
    return Put(store_node(node))


def as_write(action: Any) -> Write:
    assert isinstance(action, Write), action
    return action


def only_write(actions: list[Any]) -> Write:
    """The one action, which must be a Write."""
    (action,) = actions
    return as_write(action)


def writes(actions: list[Any]) -> list[Write]:
    return [a for a in actions if isinstance(a, Write)]


def ok(peer: PeerSeen = PEER, started: float = 0.0) -> ProbeResult:
    """The peer answered as itself and proved what it announced."""
    return ProbeResult(peer.name, "confirmed", 0.001, address=peer.addresses[0], started=started,
                       facts=Facts(peer.name, peer.port, peer.pid, peer.addresses))


def fail(peer: PeerSeen = PEER) -> ProbeResult:
    return ProbeResult(peer.name, "timeout", 0.7, error="timed out")


def joined(t: PeerTable, peer: PeerSeen = PEER, now: float = 0.0) -> Put:
    """`peer` seen over mDNS, probed OK, its Node created and seen in the store at `now`."""
    t.handle(peer, now)
    put = commit(t.handle(ok(peer), now)[0], wall=now)
    t.handle(put, now)
    return put


def foreign_put(name: str, status: str = "True", managed: bool = False) -> Put:
    """A Node of that name reported by someone else (the k3 controller if not managed)."""
    data: dict[str, Any] = {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"conditions": [{"type": "Ready", "status": status, "reason": "KubeletReady"}]},
    }
    if managed:
        data["metadata"]["labels"]["k3.network/managed"] = "true"
        data["metadata"]["annotations"] = {"k3.network/lastSeen": "2026-11-29T09:00:00.000000Z",
                                           "k3.network/port": "7946"}
    return Put(store_node(node_from_dict(data)))


def with_status(put: Put, status: str, reason: str) -> Put:
    data = node_to_dict(put.stored.node)
    for cond in data["status"]["conditions"]:
        if cond["type"] == "Ready":
            cond["status"], cond["reason"] = status, reason
    return Put(store_node(node_from_dict(data)))


def with_last_seen(put: Put, value: str) -> Put:
    data = node_to_dict(put.stored.node)
    data["metadata"]["annotations"]["k3.network/lastSeen"] = value
    return Put(store_node(node_from_dict(data)))


# --- joining ----------------------------------------------------------------------------------


def test_new_peer_is_probed_at_once() -> None:
    assert table().handle(PEER, 0.0) == [
        ProbeNow(ProbeTarget("peer-a", ("192.168.1.10",), 7946))
    ]


def test_ok_probe_of_a_new_peer_creates_its_node() -> None:
    t = table()
    t.handle(PEER, 0.0)
    assert t.handle(ok(), 0.01) == [
        Write(Alive("peer-a", ("192.168.1.10",), 7946, 4242, PEER_ALIVE, refresh=True), None)
    ]


def test_seeing_the_node_ready_reports_join_latency_once() -> None:
    t = table()
    t.handle(PEER, 10.0)
    put = commit(t.handle(ok(), 10.01)[0])
    (latency,) = t.handle(put, 10.05)
    assert isinstance(latency, JoinLatency)
    assert (latency.name, latency.seconds) == ("peer-a", pytest.approx(0.05))
    assert t.handle(put, 10.06) == []
    assert t.handle(PEER, 11.0) == [ProbeNow(ProbeTarget("peer-a", ("192.168.1.10",), 7946))]
    assert t.handle(with_last_seen(put, "x"), 12.0) == []


def test_no_join_latency_for_a_peer_already_ready_in_the_store() -> None:
    t = table()
    first = table()
    put = joined(first)
    t.handle(put, 0.0)
    t.handle(PEER, 1.0)
    assert t.handle(with_last_seen(put, "2026-11-29T10:00:05.000000Z"), 2.0) == []


def test_failed_probe_of_a_new_peer_writes_nothing() -> None:
    t = table()
    t.handle(PEER, 0.0)
    assert t.handle(fail(), 0.7) == []


def test_probe_result_of_an_unknown_peer_is_ignored() -> None:
    assert table().handle(ok(), 0.0) == []
    assert table().handle(fail(), 0.0) == []


def test_changed_addresses_are_written_without_refresh() -> None:
    t = table()
    put = joined(t)
    moved = PeerSeen("peer-a", ("192.168.1.99",), 7946, 4242)
    t.handle(moved, 5.0)  # asked at the address it proved and at the new one
    actions = t.handle(ok(moved), 5.0)
    # Proven at the new one alone: asked only there from now on.
    assert actions[1:] == [Retarget(ProbeTarget("peer-a", ("192.168.1.99",), 7946))]
    write = only_write(actions[:1])
    assert write.intent == Alive("peer-a", ("192.168.1.99",), 7946, 4242, PEER_ALIVE,
                                 refresh_from=last_seen(put.stored.node), refresh=False,
                                 seen_ready=Readiness.TRUE)
    assert write.base == put.stored


# --- refresh ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "due"),
    [(0.5, False), (10.0, False), (29.999, False), (30.0, True), (31.0, True), (200.0, True)],
)
def test_refresh_due_peer_ttl_over_3_after_last_seen_changed(after: float, due: bool) -> None:
    t = table()
    put = joined(t, now=100.0)
    actions = t.handle(ok(), 100.0 + after)
    if not due:
        assert actions == []
        return
    write = only_write(actions)
    assert isinstance(write.intent, Alive)
    assert write.intent.refresh is True
    assert write.intent.refresh_from == last_seen(put.stored.node)
    assert write.base == put.stored


def test_refresh_is_asked_once_while_in_flight() -> None:
    t = table()
    joined(t, now=0.0)
    assert len(writes(t.handle(ok(), 30.0))) == 1
    for now in (30.1, 35.0, 45.0, 59.9):
        assert t.handle(ok(), now) == [], now


def test_after_our_refresh_lands_the_next_is_due_a_refresh_interval_later() -> None:
    t = table()
    put = joined(t, now=0.0)
    refreshed = commit(t.handle(ok(), 30.0)[0], wall=30.0)
    assert last_seen(refreshed.stored.node) != last_seen(put.stored.node)
    assert t.handle(refreshed, 30.2) == []
    assert t.handle(ok(), 60.1) == []
    assert len(writes(t.handle(ok(), 60.2))) == 1


def test_another_agents_refresh_makes_ours_not_due() -> None:
    t = table()
    put = joined(t, now=0.0)
    # another agent refreshed lastSeen at 25s (we see it through the watch)
    t.handle(with_last_seen(put, "2026-11-29T10:00:25.000000Z"), 25.0)
    assert t.handle(ok(), 31.0) == []
    assert t.handle(ok(), 54.9) == []
    write = only_write(t.handle(ok(), 55.0))
    assert isinstance(write.intent, Alive)
    assert write.intent.refresh_from == "2026-11-29T10:00:25.000000Z"


def test_a_put_that_keeps_last_seen_does_not_restart_the_refresh_timer() -> None:
    t = table()
    put = joined(t, now=0.0)
    labelled = node_to_dict(put.stored.node)
    labelled["metadata"]["labels"]["team"] = "blue"
    t.handle(Put(store_node(node_from_dict(labelled))), 20.0)
    assert len(writes(t.handle(ok(), 30.0))) == 1


# --- expiry -----------------------------------------------------------------------------------


def test_expiry_after_peer_ttl_without_last_seen_change_exactly_once() -> None:
    t = table()
    put = joined(t, now=0.0)
    assert t.handle(Tick(), 89.9) == []
    assert t.handle(Tick(), 90.0) == [Write(Expired("peer-a", last_seen(put.stored.node)), put.stored)]
    assert t.handle(Tick(), 91.0) == []
    assert t.handle(Tick(), 500.0) == []


def test_expiry_timer_restarts_when_last_seen_changes() -> None:
    t = table()
    put = joined(t, now=0.0)
    t.handle(with_last_seen(put, "2026-11-29T10:01:00.000000Z"), 60.0)
    assert t.handle(Tick(), 149.9) == []
    assert len(t.handle(Tick(), 150.0)) == 1


def test_expiry_not_reset_by_a_put_that_keeps_last_seen() -> None:
    t = table()
    put = joined(t, now=0.0)
    moved = with_status(put, "True", "PeerAlive")  # same lastSeen, new version
    t.handle(moved, 50.0)
    write = only_write(t.handle(Tick(), 90.0))
    assert write.base == moved.stored


def test_expired_node_written_unknown_is_not_expired_again() -> None:
    t = table()
    joined(t, now=0.0)
    expiry = only_write(t.handle(Tick(), 90.0))
    t.handle(commit(expiry, wall=90.0), 90.1)
    assert t.handle(Tick(), 200.0) == []
    assert counts(t) == {"ready": 0, "not_ready": 0, "unknown": 1}


def test_expiry_again_after_the_peer_came_back_and_went_silent() -> None:
    t = table()
    joined(t, now=0.0)
    expiry = only_write(t.handle(Tick(), 90.0))
    t.handle(commit(expiry, wall=90.0), 90.0)
    (back,) = t.handle(ok(), 100.0)
    t.handle(commit(back, wall=100.0), 100.0)
    assert t.handle(Tick(), 189.9) == []
    assert len(t.handle(Tick(), 190.0)) == 1


@pytest.mark.parametrize(
    "put",
    [
        pytest.param(foreign_put("ctrl-node"), id="unmanaged"),
        pytest.param(foreign_put("managed-false", status="False", managed=True), id="false"),
        pytest.param(foreign_put("managed-unknown", status="Unknown", managed=True), id="unknown"),
    ],
)
def test_no_expiry_for_unmanaged_or_not_ready_nodes(put: Put) -> None:
    t = table()
    t.handle(put, 0.0)
    assert t.handle(Tick(), 1000.0) == []


def test_stale_managed_node_nobody_probes_expires() -> None:
    t = table()
    put = foreign_put("far-away", managed=True)
    t.handle(put, 0.0)
    assert t.handle(Tick(), 90.0) == [Write(Expired("far-away", "2026-11-29T09:00:00.000000Z"), put.stored)]


def test_own_node_is_never_expired_by_this_agent() -> None:
    t = table()
    t.handle(commit(t.handle(SelfHeartbeat(), 0.0)[0]), 0.0)
    assert t.handle(Tick(), 1000.0) == []


@pytest.mark.parametrize(
    "stored_last_seen",
    ["2100-01-01T00:00:00.000000Z", "1999-01-01T00:00:00.000000Z"],
    ids=["future", "past"],
)
def test_clock_skew_does_not_change_timing(stored_last_seen: str) -> None:
    t = table()
    t.handle(PEER, 0.0)
    put = commit(t.handle(ok(), 0.0)[0])
    skewed = with_last_seen(put, stored_last_seen)
    t.handle(skewed, 1000.0)
    assert t.handle(ok(), 1029.9) == []
    assert len(writes(t.handle(ok(), 1030.0))) == 1
    assert t.handle(Tick(), 1089.9) == []
    expiry = only_write(t.handle(Tick(), 1090.0))
    assert expiry.intent == Expired("peer-a", stored_last_seen)


# --- goodbye ----------------------------------------------------------------------------------


def test_goodbye_is_probed_at_once() -> None:
    t = table()
    joined(t)
    assert t.handle(PeerGone("peer-a", addresses=PEER.addresses), 5.0) == [
        ProbeNow(ProbeTarget("peer-a", ("192.168.1.10",), 7946))
    ]


def test_goodbye_and_failed_probe_marks_left_and_forgets() -> None:
    t = table()
    put = joined(t)
    t.handle(PeerGone("peer-a", addresses=PEER.addresses), 5.0)
    assert t.handle(fail(), 5.01) == [Forget("peer-a"), Write(Left("peer-a"), put.stored)]
    assert t.handle(fail(), 6.0) == []  # forgotten: a late result changes nothing


def test_goodbye_and_ok_probe_stays_alive_and_is_probed_again_soon() -> None:
    t = table()
    joined(t)
    t.handle(PeerGone("peer-a", addresses=PEER.addresses), 5.0)
    assert t.handle(ok(started=5.0), 5.01) == [ProbeNow(TARGET, delay=REPROBE_DELAY)]


def test_quick_reprobes_after_a_goodbye_are_bounded() -> None:
    t = table()
    joined(t)
    t.handle(PeerGone("peer-a", addresses=PEER.addresses), 5.0)
    reprobes = [t.handle(ok(started=5.0 + i), 5.0 + i) for i in range(1, 10)]
    assert sum(len(a) for a in reprobes) == LEAVING_REPROBES


def test_failed_probe_without_goodbye_writes_nothing() -> None:
    t = table()
    joined(t)
    for now in (15.0, 30.0, 45.0, 60.0, 75.0):
        assert t.handle(fail(), now) == []


def test_peer_seen_again_after_goodbye_is_not_left_on_a_failed_probe() -> None:
    t = table()
    joined(t)
    t.handle(PeerGone("peer-a", addresses=PEER.addresses), 5.0)
    t.handle(PEER, 5.5)  # restarted
    assert t.handle(fail(), 6.0) == []


@pytest.mark.parametrize("outcome", ["timeout", "refused", "wrong-node"])
def test_goodbye_then_listener_gone_later_is_left(outcome: ProbeOutcome) -> None:
    """A Go agent may send its goodbye before its listener closes: the goodbye stands until
    the peer announces itself again, so the first failed probe after it is decisive."""
    t = table()
    put = joined(t)
    t.handle(PeerGone("peer-a", addresses=PEER.addresses), 5.0)
    answered = ProbeResult("peer-a", "confirmed", 0.001, address="192.168.1.10", started=5.01)
    assert writes(t.handle(answered, 5.02)) == []  # still listening: nothing to write yet
    failed = ProbeResult("peer-a", outcome, 0.001, started=6.0)
    assert t.handle(failed, 6.02) == [Forget("peer-a"), Write(Left("peer-a"), put.stored)]


def test_ok_probe_started_before_the_goodbye_does_not_refute_it() -> None:
    t = table()
    put = joined(t)
    t.handle(PeerGone("peer-a", addresses=PEER.addresses), 5.0)
    late = ProbeResult("peer-a", "confirmed", 0.001, address="192.168.1.10", started=4.9)
    assert t.handle(late, 5.02) == []
    assert t.handle(fail(), 5.1) == [Forget("peer-a"), Write(Left("peer-a"), put.stored)]


def test_goodbye_of_a_peer_known_only_from_the_store_changes_nothing() -> None:
    """The store says where peer-a is, but peer-a never proved itself to this agent: a goodbye
    heard for it counts against nothing (its Node is judged by its lastSeen)."""
    t = table()
    put = joined(table())
    t.handle(put, 0.0)  # this agent just started: it never browsed peer-a
    # it only makes us ask peer-a
    assert t.handle(PeerGone("peer-a", addresses=PEER.addresses), 1.0) == [
        ProbeNow(ProbeTarget("peer-a", ("192.168.1.10",), 7946))]
    assert t.handle(fail(), 1.1) == []
    assert [p.state for p in t.peers()] == ["new"]


def test_an_expired_record_of_a_dead_peer_ends_following_it_and_writes_nothing() -> None:
    """zeroconf reports a record that expired unanswered as Removed too; long after a crash
    (the record lives for over an hour) it must not turn the Node into PeerLeft."""
    t = table()
    joined(t)
    assert t.handle(PeerGone("peer-a", goodbye=False, addresses=PEER.addresses), 5.0) == [ProbeNow(TARGET)]
    assert t.handle(fail(), 5.1) == [Forget("peer-a")]
    assert t.handle(fail(), 6.0) == []  # forgotten


def test_an_expired_record_of_a_peer_that_still_answers_keeps_it() -> None:
    t = table()
    joined(t)
    t.handle(PeerGone("peer-a", goodbye=False, addresses=PEER.addresses), 5.0)
    assert writes(t.handle(ok(started=5.0), 5.01)) == []
    assert [p.name for p in t.peers()] == ["peer-a"]


def test_an_expired_record_of_a_peer_found_otherwise_does_nothing() -> None:
    t = table()
    t.handle(joined(table()), 0.0)  # found in the store
    assert t.handle(PeerGone("peer-a", goodbye=False, addresses=PEER.addresses), 1.0) == []
    assert t.handle(PeerGone("nobody", goodbye=False), 1.0) == []


def test_a_goodbye_after_a_refusal_is_written_as_left() -> None:
    """Its listener closed over a second before its goodbye: peers wrote PeerRefused first;
    the goodbye is the better word and replaces it."""
    t = table()
    put = joined(t)
    refused = ProbeResult("peer-a", "refused", 0.001, error="refused",
                          refused=PEER.addresses)
    refuse(t, 5.0, refused)
    put = commit(only_write(t.handle(refused, 6.0)), wall=6.0)
    t.handle(put, 6.0)
    assert t.handle(PeerGone("peer-a", addresses=PEER.addresses), 7.0) == [ProbeNow(TARGET)]
    left = only_write([a for a in t.handle(refused, 7.1) if isinstance(a, Write)])
    node = render(put.stored.node, left.intent, WALL0 + dt.timedelta(seconds=7.1))
    assert node is not None and node.condition().reason == "PeerLeft"  # type: ignore[union-attr]


def test_goodbye_of_something_unknown_does_nothing() -> None:
    t = table()
    assert t.handle(PeerGone("nobody"), 0.0) == []
    t.handle(foreign_put("ctrl-node"), 0.0)  # no k3net port annotation: nothing to probe
    assert t.handle(PeerGone("ctrl-node"), 0.0) == []


def test_goodbye_of_a_peer_with_an_unmanaged_node_never_writes() -> None:
    t = table()
    t.handle(foreign_put("peer-a"), 0.0)
    t.handle(PEER, 0.0)
    assert t.handle(ok(), 0.1) == []  # never touched
    t.handle(PeerGone("peer-a", addresses=PEER.addresses), 1.0)
    assert t.handle(fail(), 1.1) == [Forget("peer-a")]


def test_goodbye_of_a_peer_not_yet_in_the_view_is_marked_from_the_store() -> None:
    """The watch may lag our own write of its Node (MySQL polls): the Left goes to the writer
    without a base, and the writer reads the Node before it marks it."""
    t = table()
    t.handle(PEER, 0.0)
    t.handle(ok(), 0.1)  # its creation is on its way to the store
    t.handle(PeerGone("peer-a", addresses=PEER.addresses), 0.5)
    assert t.handle(fail(), 0.6) == [Forget("peer-a"), Write(Left("peer-a"), None)]


def test_goodbye_of_an_unmanaged_node_only_forgets() -> None:
    t = table()
    t.handle(PEER, 0.0)
    foreign = node_from_dict({"metadata": {"name": "peer-a"}, "status": {"conditions": [
        {"type": "Ready", "status": "True"}]}})
    t.handle(Put(Stored(foreign, "1")), 0.1)
    t.handle(ok(), 0.2)
    t.handle(PeerGone("peer-a", addresses=PEER.addresses), 0.5)
    assert t.handle(fail(), 0.6) == [Forget("peer-a")]


@pytest.mark.parametrize("goodbye", [True, False])
def test_a_peer_that_never_proved_itself_is_forgotten_when_its_announcement_goes(
    goodbye: bool,
) -> None:
    """Whatever sent it (a fake peer with addresses nobody answers at) is not probed a moment
    longer once its announcement goes: nothing of it was written."""
    t = table()
    t.handle(PEER, 0.0)
    t.handle(fail(), 0.7)
    assert t.handle(PeerGone("peer-a", goodbye=goodbye), 5.0) == [Forget("peer-a")]
    assert t.peers() == []
    # A peer that did prove itself is probed once more, as before.
    t.handle(OTHER, 6.0)
    t.handle(ok(OTHER), 6.1)
    assert t.handle(PeerGone("peer-b", goodbye=goodbye), 7.0) == [
        ProbeNow(ProbeTarget("peer-b", OTHER.addresses, OTHER.port))]


# --- this agent's own Node --------------------------------------------------------------------


def test_heartbeat_creates_own_node() -> None:
    t = table()
    assert t.handle(SelfHeartbeat(), 0.0) == [
        Write(Alive("me", ("192.168.1.2",), 7946, 100, AGENT_READY, refresh=True, labels=()),
              None)
    ]
    assert not t.self_up()


def test_heartbeat_refreshes_own_node_when_due() -> None:
    t = table()
    put = commit(t.handle(SelfHeartbeat(), 0.0)[0])
    t.handle(put, 0.0)
    assert t.self_up()
    assert t.handle(SelfHeartbeat(), 10.0) == []
    assert t.handle(SelfHeartbeat(), 29.9) == []
    write = only_write(t.handle(SelfHeartbeat(), 30.0))
    assert write.intent == Alive("me", ("192.168.1.2",), 7946, 100, AGENT_READY,
                                 refresh_from=last_seen(put.stored.node), refresh=True,
                                 seen_ready=Readiness.TRUE, labels=())
    assert t.handle(SelfHeartbeat(), 31.0) == []


def test_shutdown_marks_own_node_down_and_stops_heartbeats() -> None:
    t = table()
    put = commit(t.handle(SelfHeartbeat(), 0.0)[0])
    t.handle(put, 0.0)
    assert t.handle(Stopping(), 0.0) == [Write(Shutdown("me"), put.stored)]
    assert t.handle(SelfHeartbeat(), 100.0) == []
    down = commit(Write(Shutdown("me"), put.stored), wall=1.0)
    assert t.handle(down, 1.0) == []  # our own shutdown is not "corrected"
    assert t.handle(SelfHeartbeat(), 200.0) == []


def test_shutdown_before_own_node_was_seen() -> None:
    assert table().handle(Stopping(), 0.0) == [Write(Shutdown("me"), None)]


@pytest.mark.parametrize(
    ("status", "reason"), [("Unknown", "PeerExpired"), ("False", "PeerLeft")]
)
def test_own_node_marked_down_by_someone_else_is_corrected_at_once(status: str, reason: str) -> None:
    t = table()
    put = commit(t.handle(SelfHeartbeat(), 0.0)[0])
    t.handle(put, 0.0)
    down = with_status(put, status, reason)
    write = only_write(t.handle(down, 5.0))
    assert isinstance(write.intent, Alive)
    assert write.intent.reason == AGENT_READY
    assert write.base == down.stored
    fixed = commit(write, wall=5.0)
    assert fixed.stored.node.ready_status == "True"
    assert t.handle(fixed, 5.1) == []


def test_register_self_false_never_writes_own_node() -> None:
    t = table(register_self=False)
    assert t.handle(SelfHeartbeat(), 0.0) == []
    assert t.handle(SelfHeartbeat(), 1000.0) == []
    assert t.handle(Stopping(), 0.0) == []
    other = table()
    put = commit(other.handle(SelfHeartbeat(), 0.0)[0])
    assert t.handle(with_status(put, "Unknown", "PeerExpired"), 1.0) == []


# --- the store view ---------------------------------------------------------------------------


def test_snapshot_replaces_the_view() -> None:
    t = table()
    put_a = joined(t, PEER)
    joined(t, OTHER)
    assert counts(t)["ready"] == 2
    t.handle(Snapshot((put_a.stored,)), 10.0)  # peer-b's Node was deleted meanwhile
    assert counts(t) == {"ready": 1, "not_ready": 0, "unknown": 0}
    # not expired: it is not in the store
    assert [as_write(w).intent.name for w in t.handle(Tick(), 1000.0)] == ["peer-a"]
    # re-created if it answers
    write = only_write(t.handle(ok(OTHER), 11.0))
    assert write.base is None and write.intent.name == "peer-b"


def test_snapshot_keeps_timers_of_unchanged_nodes() -> None:
    t = table()
    put = joined(t, now=0.0)
    t.handle(Snapshot((put.stored,)), 60.0)  # watch reconnected: same lastSeen
    assert len(t.handle(Tick(), 90.0)) == 1


def test_deleted_node_is_recreated_on_next_ok_probe() -> None:
    t = table()
    joined(t)
    t.handle(Deleted("peer-a"), 1.0)
    assert t.handle(Tick(), 1000.0) == []
    write = only_write(t.handle(ok(), 2.0))
    assert write.base is None


# --- agents agree -----------------------------------------------------------------------------


def test_probing_a_peer_whose_own_agent_keeps_it_ready_writes_nothing() -> None:
    peer_agent = table(me=SelfInfo("peer-a", lambda: ("192.168.1.10",), 7946, 4242))
    own = commit(peer_agent.handle(SelfHeartbeat(), 0.0)[0])  # peer-a's agent wrote it: AgentReady
    t = table()
    t.handle(own, 0.0)
    t.handle(PEER, 1.0)
    assert t.handle(ok(), 1.1) == []  # AgentReady is Ready: agents do not take turns
    assert t.handle(ok(), 29.0) == []


def test_two_agents_share_one_refresh() -> None:
    a, b = table(), table(me=SelfInfo("me-b", lambda: ("192.168.1.3",), 7946, 200))
    put = joined(a, now=0.0)
    b.handle(PEER, 0.0)
    b.handle(put, 0.0)
    (refresh,) = a.handle(ok(), 30.0)
    refreshed = commit(refresh, wall=30.0)
    a.handle(refreshed, 30.1)
    b.handle(refreshed, 30.1)
    assert b.handle(ok(), 31.0) == []  # b sees it fresh
    assert b.handle(Tick(), 100.0) == []  # and not stale: lastSeen changed at 30.1


# --- store outages ----------------------------------------------------------------------------


def test_nothing_expires_before_the_first_snapshot() -> None:
    t = PeerTable(peer_ttl=TTL, refresh_interval=REFRESH, me=ME, register_self=True)
    t.handle(foreign_put("far-away", managed=True), 0.0)
    assert t.handle(Tick(), 1000.0) == []


def test_nothing_expires_while_the_watch_has_lost_the_store() -> None:
    t = table()
    put = joined(t, now=0.0)
    assert t.handle(Lost("connection refused"), 10.0) == []
    assert t.handle(Tick(), 90.0) == []
    assert t.handle(Tick(), 500.0) == []
    # back: every age starts again at the new Snapshot
    t.handle(Snapshot((put.stored,)), 600.0)
    assert t.handle(Tick(), 689.9) == []
    assert len(t.handle(Tick(), 690.0)) == 1


def test_refresh_timer_restarts_after_an_outage() -> None:
    t = table()
    put = joined(t, now=0.0)
    t.handle(Lost("down"), 10.0)
    t.handle(Snapshot((put.stored,)), 100.0)
    assert t.handle(ok(), 129.9) == []
    assert len(writes(t.handle(ok(), 130.0))) == 1


def test_expiry_does_not_overtake_a_pending_goodbye() -> None:
    t = table()
    joined(t, now=0.0)
    t.handle(PeerGone("peer-a", addresses=PEER.addresses), 80.0)
    (_, left) = t.handle(fail(), 80.5)
    assert isinstance(left, Write) and left.intent == Left("peer-a")
    assert t.handle(Tick(), 90.0) == []  # Left is on its way; no vaguer Unknown on top


def test_a_short_store_hiccup_shifts_ages_by_the_time_lost() -> None:
    """A store that blips every 20 s must not keep a dead node Ready forever: the time before
    each blip still counts, only the time the store was away is added."""
    t = table()
    put = joined(t, now=0.0)
    for start in (20.0, 40.0, 60.0, 80.0):  # a 2 s outage every 20 s
        t.handle(Lost("reconnecting"), start)
        t.handle(Snapshot((put.stored,)), start + 2.0)
    assert t.handle(Tick(), 97.9) == []  # 90 s + the 8 s the store was away
    expiry = only_write(writes(t.handle(Tick(), 98.0)))
    assert expiry.intent == Expired("peer-a", last_seen(put.stored.node))


# --- probe outcomes: positive evidence is fast, absence is slow ------------------------------


def result(outcome: ProbeOutcome, started: float = 0.0, peer: PeerSeen = PEER) -> ProbeResult:
    if outcome == "confirmed":
        return ok(peer, started)
    refused = peer.addresses if outcome == "refused" else ()
    silent = peer.addresses if outcome == "unreachable" else ()
    return ProbeResult(peer.name, outcome, 0.001, started=started, refused=refused,
                       silent=silent)


def marking(put: Put) -> Write:
    """The write that marks peer-a's Node (`put`) as suspected by this agent."""
    return Write(Suspicion("peer-a", "me", last_seen(put.stored.node)), put.stored)


def refuse(t: PeerTable, now: float, refusal: ProbeResult | None = None) -> Put | None:
    """A first refusal (`refusal`, by default peer-a's at `now`), and the mark it writes
    shown by the watch at once, as a store near by does: the Put of the marked Node."""
    actions = t.handle(refusal or result("refused", now), now)
    marks = [w for w in writes(actions) if isinstance(w.intent, Suspicion)]
    if not marks:
        return None
    marked = commit(marks[0], wall=now)
    t.handle(marked, now)
    return marked


def test_refused_twice_marks_the_node_refused_at_once() -> None:
    t = table()
    put = joined(t)
    # (its Node marked meanwhile: its agent, if it runs, may answer through the store)
    assert t.handle(result("refused", 10.0), 10.0) == [ProbeNow(TARGET, delay=REPROBE_DELAY),
                                                        marking(put)]
    marked = commit(marking(put), wall=10.0)
    assert t.handle(marked, 10.01) == []  # the mark in the store (a store near by)
    assert t.handle(result("refused", 11.0), 11.0) == [
        Write(Refused("peer-a", last_seen(put.stored.node)), marked.stored)
    ]
    node = render(put.stored.node, Refused("peer-a", last_seen(put.stored.node)), WALL0)
    assert node is not None and node.condition() is not None
    assert (node.ready_status, node.condition().reason) == ("False", PEER_REFUSED)  # type: ignore[union-attr]


def test_a_refusal_answered_on_the_reprobe_writes_nothing() -> None:
    """An agent restarting in place refuses for a moment: the re-probe finds it back."""
    t = table()
    put = joined(t)
    t.handle(result("refused", 10.0), 10.0)
    assert writes(t.handle(ok(started=11.0), 11.0)) == []
    assert t.handle(result("refused", 20.0), 20.0) == [ProbeNow(TARGET, delay=REPROBE_DELAY),
                                                        marking(put)]


def test_a_refusal_its_agent_answers_through_the_store_is_not_written() -> None:
    """A firewall that rejects only this agent's packets: the peer's own agent sees the mark
    on its Node and writes it (lastSeen fresh) within the re-probe's delay; the confirmed
    refusal then writes nothing, and this agent writes no refusal of it again until it
    reaches it itself."""
    t = table()
    put = joined(t)
    marked = commit(t.handle(result("refused", 10.0), 10.0)[1], wall=10.0)
    t.handle(marked, 10.01)
    suspect = table(me=SelfInfo("peer-a", lambda: ("192.168.1.10",), 7946, 4242))
    suspect.handle(put, 10.0)
    t.handle(commit(only_write(suspect.handle(marked, 10.02)), wall=10.02), 10.03)
    assert writes(t.handle(result("refused", 11.0), 11.0)) == []
    assert writes(t.handle(result("refused", 30.0), 30.0)) == []
    assert writes(t.handle(result("refused", 31.0), 31.0)) == []


@pytest.mark.parametrize("outcome", ["timeout", "wrong-node"])
def test_timeouts_and_wrong_nodes_never_write(outcome: ProbeOutcome) -> None:
    t = table()
    joined(t)
    for now in (10.0, 11.0, 12.0, 30.0, 60.0):
        assert t.handle(result(outcome, now), now) == []


def test_a_refusal_waits_for_its_mark_and_the_answer_a_far_store_takes() -> None:
    """A firewall that rejects only this agent, the store 150 ms away: our mark shows in our
    watch 0.6 s after we asked for it, and the suspect's answer can take about as long again.
    The re-probe a second after the first refusal is too soon: the refusal is confirmed only
    once twice that round trip has passed since the mark showed (10.6 + 1.2 s), and an answer
    meanwhile stops it."""
    for answered in (False, True):
        t = table()
        put = joined(t)
        t.handle(result("refused", 10.0), 10.0)
        marked = commit(marking(put), wall=10.0)
        t.handle(marked, 10.6)
        (reprobe,) = t.handle(result("refused", 11.0), 11.0)
        assert isinstance(reprobe, ProbeNow) and reprobe.target == TARGET
        assert reprobe.delay == pytest.approx(10.6 + 2 * 0.6 - 11.0)
        if answered:  # peer-a's own agent saw the mark and wrote its Node
            answer = commit(Write(Alive("peer-a", ("192.168.1.10",), 7946, 4242, refresh=True,
                                        refresh_from=last_seen(put.stored.node)),
                                  marked.stored), wall=11.5)
            t.handle(answer, 11.5)
            assert writes(t.handle(result("refused", 11.8), 11.8)) == []
        else:
            assert writes(t.handle(result("refused", 11.8), 11.8)) == [
                Write(Refused("peer-a", last_seen(put.stored.node)), marked.stored)]


def test_a_refusal_whose_mark_never_shows_is_written_after_mark_wait() -> None:
    """The store is away (or slower than MARK_WAIT): re-probed every REPROBE_DELAY meanwhile,
    then written (the writer holds it until the store takes it)."""
    t = table()
    put = joined(t)
    t.handle(result("refused", 10.0), 10.0)
    now = 11.0
    while now < 10.0 + MARK_WAIT:
        (reprobe,) = t.handle(result("refused", now), now)
        assert isinstance(reprobe, ProbeNow) and reprobe.target == TARGET
        assert reprobe.delay == pytest.approx(min(REPROBE_DELAY, 10.0 + MARK_WAIT - now))
        now += REPROBE_DELAY
    assert writes(t.handle(result("refused", now), now)) == [
        Write(Refused("peer-a", last_seen(put.stored.node)), put.stored)]


def test_a_refusal_others_contradict_is_written_once_only() -> None:
    """A firewall that rejects only this agent: our refusal is written once, others (or the
    peer's own agent) make the Node Ready again, and we do not fight them."""
    t = table()
    put = joined(t)
    refuse(t, 10.0)
    (refusal,) = writes(t.handle(result("refused", 11.0), 11.0))
    down = commit(refusal, wall=11.0)
    t.handle(down, 11.1)
    back = commit(Write(Alive("peer-a", ("192.168.1.10",), 7946, 4242, AGENT_READY,
                              refresh=True), down.stored), wall=11.2)
    t.handle(back, 11.3)
    for now in range(20, 300, 10):
        assert writes(t.handle(result("refused", float(now)), float(now))) == []
    # once this agent reaches the peer itself, a later refusal counts again
    t.handle(ok(started=300.0), 300.0)
    refuse(t, 310.0)
    assert len(writes(t.handle(result("refused", 311.0), 311.0))) == 1
    assert put.stored.name == "peer-a"


def test_unverified_counts_only_for_a_peer_never_confirmed() -> None:
    t = table()
    t.handle(PEER, 0.0)
    # it answers (an open cluster's foreign advertiser), but proved nothing: nothing is written
    assert writes(t.handle(result("unverified"), 0.1)) == []
    assert [p.state for p in t.peers()] == ["alive"]
    t2 = table()
    put = joined(t2)  # confirmed once
    t2.handle(PeerGone("peer-a", addresses=PEER.addresses), 5.0)
    # a confirmed peer that now answers as no agent: a failure, decisive after its goodbye
    assert t2.handle(result("unverified", 5.1), 5.2) == [
        Forget("peer-a"), Write(Left("peer-a"), put.stored)
    ]


def test_with_a_cluster_key_unverified_never_counts() -> None:
    t = PeerTable(peer_ttl=TTL, refresh_interval=REFRESH, me=ME, register_self=True, keyed=True)
    t.handle(Snapshot(()), 0.0)
    t.handle(PEER, 0.0)
    assert t.handle(result("unverified"), 0.1) == []


def test_an_unauthenticated_peer_is_rejected_once_and_never_written() -> None:
    t = table()
    t.handle(PEER, 0.0)
    (reject,) = t.handle(result("unauthenticated"), 0.1)
    assert isinstance(reject, Reject) and reject.reason == "unauthenticated"
    assert t.handle(result("unauthenticated"), 15.0) == []


def test_peer_counts_follow_the_store() -> None:
    t = table()
    put = joined(t)
    assert counts(t) == {"ready": 1, "not_ready": 0, "unknown": 0}
    t.handle(with_status(put, "False", "PeerLeft"), 1.0)
    assert counts(t) == {"ready": 0, "not_ready": 1, "unknown": 0}
    t.handle(Deleted("peer-a"), 2.0)
    assert counts(t) == {"ready": 0, "not_ready": 0, "unknown": 0}


def test_own_addresses_changed_rewrite_own_node_at_once() -> None:
    here = ["192.168.1.2"]  # their owner, as the table reads it
    t = table(me=SelfInfo("me", lambda: tuple(here), 7946, 100))
    (create,) = writes(t.handle(SelfHeartbeat(), 0.0))
    t.handle(commit(create), 0.1)
    assert writes(t.handle(SelfHeartbeat(), 1.0)) == []
    here[:] = ["192.168.1.3"]
    (update,) = writes(t.handle(OwnAddresses(), 2.0))
    assert isinstance(update.intent, Alive) and update.intent.addresses == ("192.168.1.3",)


# --- peers found in the shared store (other subnets) ------------------------------------------


def remote_put(status: str = "True") -> Put:
    """peer-a's Node as its own agent on another subnet wrote it."""
    other_agent = table(me=SelfInfo("peer-a", lambda: ("10.1.2.3",), 7946, 77))
    (create,) = writes(other_agent.handle(SelfHeartbeat(), 0.0))
    put = commit(create)
    return put if status == "True" else with_status(put, status, "PeerLeft")


STORED_PEER = PeerSeen("peer-a", ("10.1.2.3",), 7946, 77)
HELLO = PeerSeen("peer-a", ("10.9.9.9",), 7000, found_by="introduced")


def test_an_unproven_introduced_peer_is_taken_over_by_its_ready_node_in_the_store() -> None:
    t = table()
    assert t.handle(HELLO, 0.5) == [ProbeNow(ProbeTarget("peer-a", ("10.9.9.9",), 7000))]
    probes = [a for a in t.handle(remote_put(), 1.0) if isinstance(a, ProbeNow)]
    assert probes == [ProbeNow(ProbeTarget("peer-a", ("10.1.2.3",), 7946))]
    assert [(p.name, p.found_by) for p in t.peers()] == [("peer-a", "store")]
    assert t.handle(HELLO, 2.0) == []  # a hello never moves a peer found another way
    # Proven at the hello's address first, it stays where it answered (our own write of its
    # Node, read back from the store, is no other way of finding it).
    t = table()
    t.handle(HELLO, 0.5)
    t.handle(ok(HELLO), 0.6)
    assert not [a for a in t.handle(remote_put(), 1.0) if isinstance(a, ProbeNow)]
    assert [(p.name, p.found_by) for p in t.peers()] == [("peer-a", "introduced")]


def test_an_introduced_peer_that_does_not_answer_as_itself_is_probed_once_and_forgotten() -> None:
    for outcome in ("timeout", "refused", "wrong-node", "unverified"):
        t = table()
        t.handle(HELLO, 0.5)
        assert t.handle(result(outcome, 1.0, HELLO), 1.0) == [Forget("peer-a")]
        assert t.peers() == []
    # One that cannot prove the cluster key is reported, as any such peer, and forgotten.
    t = table()
    t.handle(HELLO, 0.5)
    rejected = ProbeResult("peer-a", "unauthenticated", 0.001, address="10.9.9.9")
    assert t.handle(rejected, 1.0) == [
        Reject("peer-a", "unauthenticated", "10.9.9.9 cannot prove the cluster key"),
        Forget("peer-a")]
    # Once it proved itself, it is judged like any peer: a failure does not forget it.
    t = table()
    t.handle(HELLO, 0.5)
    t.handle(ok(HELLO), 1.0)
    assert Forget("peer-a") not in t.handle(result("timeout", 20.0, HELLO), 20.0)
    assert [(p.name, p.found_by) for p in t.peers()] == [("peer-a", "introduced")]


def test_a_peer_that_proves_more_addresses_than_it_was_asked_at_is_asked_there() -> None:
    """Known only at its hello's address, the peer's answer lists a second one: the prober is
    told at once to ask at both (proven first), with no probe now, so a first address blocked
    later is no refusal while the second answers. An answer that changes nothing, or a Go
    agent's that lists no addresses, tells the prober nothing."""
    t = table()
    t.handle(HELLO, 0.5)
    both = ProbeResult("peer-a", "confirmed", 0.001, address="10.9.9.9",
                       facts=Facts("peer-a", 7000, 42, ("10.9.9.8", "10.9.9.9")))
    actions = t.handle(both, 0.6)
    assert [a for a in actions if not isinstance(a, Write)] == [
        Retarget(ProbeTarget("peer-a", ("10.9.9.8", "10.9.9.9"), 7000))]
    assert not [a for a in t.handle(both, 5.0) if isinstance(a, Retarget)]  # nothing new
    t = table()
    t.handle(HELLO, 0.5)
    go = ProbeResult("peer-a", "confirmed", 0.001, address="10.9.9.9",
                     facts=Facts("peer-a", None, None, ("10.9.9.9",), listed=False))
    assert not [a for a in t.handle(go, 0.6) if isinstance(a, Retarget)]


def test_a_node_not_ready_in_the_store_does_not_end_following_an_introduced_peer() -> None:
    t = table()
    t.handle(HELLO, 0.5)
    assert not [a for a in t.handle(remote_put("False"), 1.0) if isinstance(a, Forget)]
    assert [(p.name, p.found_by) for p in t.peers()] == [("peer-a", "introduced")]


def test_a_ready_managed_node_with_a_port_is_probed_as_a_peer() -> None:
    t = table()
    assert t.handle(remote_put(), 1.0) == [ProbeNow(ProbeTarget("peer-a", ("10.1.2.3",), 7946))]
    assert [(p.name, p.found_by) for p in t.peers()] == [("peer-a", "store")]
    t.handle(ok(STORED_PEER), 1.1)
    # judged like any peer: a refusal confirmed by a re-probe marks it at once
    refuse(t, 5.0, result("refused", 5.0, STORED_PEER))
    assert [type(w.intent) for w in writes(t.handle(result("refused", 6.0, STORED_PEER), 6.0))] \
        == [Refused]


@pytest.mark.parametrize("put", [
    foreign_put("peer-a"),  # the Go side's Node: unmanaged, no port
    foreign_put("peer-a", managed=True),  # managed but no addresses
    remote_put("False"),  # not Ready: its own agent brings it back when alive
])
def test_nodes_that_are_not_live_agents_are_never_probed(put: Put) -> None:
    t = table()
    assert t.handle(put, 1.0) == []
    assert t.peers() == []


def test_a_store_peer_that_goes_not_ready_is_no_longer_probed() -> None:
    t = table()
    put = remote_put()
    t.handle(put, 1.0)
    assert t.handle(with_status(put, "False", "PeerLeft"), 2.0) == [Forget("peer-a")]
    assert t.peers() == []


def test_a_peer_found_both_ways_is_probed_once_and_shown_as_mdns() -> None:
    t = table()
    t.handle(remote_put(), 1.0)
    (probe,) = t.handle(PeerSeen("peer-a", ("10.1.2.3",), 7946, 77), 2.0)
    assert isinstance(probe, ProbeNow)
    assert [(p.name, p.found_by) for p in t.peers()] == [("peer-a", "mdns")]
    t.handle(remote_put(), 3.0)  # another store event adds nothing
    assert len(t.peers()) == 1


def test_own_node_is_never_a_peer() -> None:
    t = table(me=SelfInfo("peer-a", lambda: ("10.1.2.3",), 7946, 77))
    t.handle(remote_put(), 1.0)
    assert t.handle(PeerSeen("peer-a", ("10.1.2.3",), 7946, 77, found_by="join"), 2.0) == []
    assert t.peers() == []


# --- moving to another store -------------------------------------------------------------------


def test_a_move_to_another_store_writes_what_the_table_knows_there() -> None:
    t = table()
    joined(t, PEER, 0.0)
    joined(t, OTHER, 0.0)
    t.handle(fail(OTHER), 1.0)
    t.handle(ProbeResult(OTHER.name, "refused", 0.001, error="refused",
                         refused=OTHER.addresses), 1.0)  # SUSPECT now
    moved = writes(t.handle(StoreChanged(), 2.0))
    # Our own Node and the peer that answers, created there (no base from the old store);
    # nothing for the peer whose last probe failed: its next probe decides.
    assert [(w.intent.name, type(w.intent), w.base) for w in moved] == [
        ("me", Alive, None), ("peer-a", Alive, None)]
    assert all(isinstance(w.intent, Alive) and w.intent.refresh for w in moved)
    assert counts(t) == {"ready": 0, "not_ready": 0, "unknown": 0}
    # Nothing expires before the new store's first Snapshot, however long it takes.
    assert writes(t.handle(Tick(), 2.0 + 10 * TTL)) == []
    put = commit(moved[1], wall=3.0)
    t.handle(Snapshot((put.stored,)), 2.0 + 10 * TTL)
    assert counts(t)["ready"] == 1



# --- several ways to find one peer -------------------------------------------------------------


def test_a_peer_followed_through_mdns_keeps_its_mdns_word() -> None:
    t = table()
    joined(t)
    told = PeerSeen("peer-a", ("10.9.9.9",), 7000, None, found_by="join")
    assert t.handle(told, 1.0) == []  # nothing new to probe: it is followed already
    (view,) = t.peers()
    assert (view.addresses, view.port, view.found_by) == (PEER.addresses, PEER.port, "mdns")


def test_only_mdns_voids_a_goodbye() -> None:
    t = table()
    put = joined(t)
    t.handle(PeerGone("peer-a", addresses=PEER.addresses), 5.0)
    t.handle(PeerSeen("peer-a", PEER.addresses, PEER.port, None, found_by="join"), 5.1)
    assert t.handle(fail(), 5.2) == [Forget("peer-a"), Write(Left("peer-a"), put.stored)]


def test_a_second_refusal_sooner_than_the_reprobe_confirms_nothing() -> None:
    """A held connection's close starts a probe at once; a scheduled probe may follow within
    milliseconds. An agent restarting in place is back within REPROBE_DELAY: only a refusal
    that long after the first is decisive."""
    t = table()
    put = joined(t)
    refused = ProbeResult("peer-a", "refused", 0.001, error="refused",
                          refused=PEER.addresses)
    assert t.handle(refused, 10.0) == [ProbeNow(TARGET, delay=REPROBE_DELAY), marking(put)]
    # too soon: nothing written; the re-probe is asked for its time again
    assert t.handle(refused, 10.05) == [ProbeNow(TARGET, delay=10.0 + REPROBE_DELAY - 10.05)]
    assert writes(t.handle(ok(started=10.9), 10.9)) == []  # back: restarted in place
    assert t.handle(refused, 20.0) == [ProbeNow(TARGET, delay=REPROBE_DELAY),  # anew
                                       marking(put)]
    marked = commit(marking(put), wall=20.0)
    t.handle(marked, 20.0)
    assert writes(t.handle(refused, 20.0 + REPROBE_DELAY)) == [
        Write(Refused("peer-a", last_seen(put.stored.node)), marked.stored)]


def test_a_refusal_is_confirmed_even_when_the_peer_moves_before_its_reprobe() -> None:
    """mDNS reports a new address between the first refusal and its re-probe: the prober drops
    the re-probe of the old target and probes the new one at once, too soon to confirm. The
    refusal must still be confirmed a re-probe delay after the first, not at the next round."""
    t = table()
    put = joined(t)
    refused = ProbeResult("peer-a", "refused", 0.001, error="refused",
                          refused=PEER.addresses)
    assert t.handle(refused, 10.0) == [ProbeNow(TARGET, delay=REPROBE_DELAY), marking(put)]
    marked = commit(marking(put), wall=10.0)
    t.handle(marked, 10.0)
    moved = PeerSeen("peer-a", ("192.168.1.10", "fd00::10"), 7946, 4242)
    probe_now = ProbeNow(ProbeTarget("peer-a", moved.addresses, 7946))
    assert t.handle(moved, 10.2) == [probe_now]
    assert t.handle(refused, 10.25) == [ProbeNow(probe_now.target, delay=10.0 + REPROBE_DELAY - 10.25)]
    assert writes(t.handle(refused, 10.0 + REPROBE_DELAY)) == [
        Write(Refused("peer-a", last_seen(put.stored.node)), marked.stored)]


def ticks(t: PeerTable, start: float, end: float, every: float = 1.0) -> list[Any]:
    """The expire timer's Ticks from `start` to `end`, as the agent sends them; their actions."""
    actions: list[Any] = []
    now = start
    while now <= end:
        actions += t.handle(Tick(every), now)
        now += every
    return actions


def test_a_paused_agent_does_not_expire_peers_it_only_failed_to_look_at() -> None:
    """SIGSTOP, a paused VM: for 60 s this agent neither probed nor watched. On waking up its
    peers' ages have not grown by that time: no expiry now, only a peer-ttl of its own
    absence of evidence later."""
    t = table()
    put = joined(t, now=0.0)
    assert writes(ticks(t, 1.0, 50.0)) == []
    # paused from 50 s to 110 s: the next Tick, due at 51 s, comes at 110 s
    assert t.handle(Tick(1.0), 110.0) == [Paused(59.0)]
    # Its age is 50 s, not 110 s: it expires at 90 s of age, 149 s on the clock.
    assert writes(ticks(t, 111.0, 148.0)) == []
    assert ticks(t, 149.0, 149.0) == [Write(Expired("peer-a", last_seen(put.stored.node)),
                                            put.stored)]


def test_a_pause_longer_than_peer_ttl_starts_every_age_again() -> None:
    t = table()
    put = joined(t, now=0.0)
    ticks(t, 1.0, 10.0)
    assert t.handle(Tick(1.0), 500.0) == [Paused(489.0)]
    assert writes(ticks(t, 501.0, 589.0)) == []
    assert writes(ticks(t, 590.0, 590.0)) == [Write(Expired("peer-a", last_seen(put.stored.node)),
                                                    put.stored)]


def test_timers_that_are_merely_late_are_no_pause() -> None:
    t = table()
    joined(t, now=0.0)
    assert t.handle(Tick(1.0), 10.0) == []
    assert t.handle(Tick(1.0), 11.0 + PAUSE) == []  # late by PAUSE: a busy loop, no pause
    assert writes(ticks(t, 13.0, 89.0)) == []
    assert len(writes(ticks(t, 90.0, 90.0))) == 1  # ages were not shifted


def test_a_pause_during_a_store_outage_is_not_counted_twice() -> None:
    t = table()
    put = joined(t, now=0.0)
    ticks(t, 1.0, 10.0)
    t.handle(Lost("down"), 10.5)
    ticks(t, 11.0, 20.0)
    assert t.handle(Tick(1.0), 51.0) == [Paused(30.0)]  # paused 21 s to 51 s
    ticks(t, 52.0, 60.0)
    t.handle(Snapshot((put.stored,)), 60.5)
    # Ages shifted by the pause (30 s) and by the rest of the outage (20 s): 0 s at 50 s,
    # so it expires at 140 s, not at 110 s (counted twice) nor at 90 s (not at all).
    assert writes(ticks(t, 61.0, 139.0)) == []
    assert len(writes(ticks(t, 140.0, 140.0))) == 1


# --- the state machine: TRANSITIONS is the whole of it ----------------------------------------


def _describe(transitions: dict[Any, Transition]) -> str:
    """TRANSITIONS as the module docstring shows it: one entry per event and handler."""
    groups: dict[tuple[PeerEvent, Transition], list[str]] = {}
    for (state, event), transition in transitions.items():
        groups.setdefault((event, transition), []).append(state.label)
    lines = []
    for (event, transition), sources in groups.items():
        source = "any state" if len(sources) == len(STATES) else ", ".join(sources)
        target = " or ".join("forgotten" if s is None else s.label for s in transition.to)
        doc = (transition.handler.__doc__ or "").strip().splitlines()[0]
        lines += [f"    {event.value:<16} {source} -> {target}", f"    {'':<16} {doc}"]
    return "\n".join(lines)


def test_the_module_docstring_shows_the_transition_table() -> None:
    assert _describe(TRANSITIONS) in (peer_table.__doc__ or "")


# How a peer reaches each state through messages alone, and when the next event comes: the
# same state twice where the time of the event matters (a refusal too soon after the first)
# or its data does (a goodbye, or only an expired record).
def _new(t: PeerTable) -> float:
    joined(t)  # proven once, so that evidence against it counts
    t.handle(PeerGone("peer-a", addresses=PEER.addresses), 5.0)
    t.handle(PEER, 6.0)  # announced again after its goodbye
    return 7.0


def _alive(t: PeerTable) -> float:
    joined(t)
    return 1.0


def _new_never_proven(t: PeerTable) -> float:
    t.handle(PEER, 0.0)  # announced over mDNS, never answered as itself
    return 1.0


def _unauthenticated_never_proven(t: PeerTable) -> float:
    t.handle(PEER, 0.0)
    t.handle(result("unauthenticated", 0.5), 0.5)
    return 1.0


def _new_proven_before(t: PeerTable) -> float:
    joined(t)
    t.handle(PeerGone("peer-a"), 2.0)
    t.handle(PEER, 3.0)  # announced again: new, but it proved itself before
    return 4.0


def _unauthenticated_proven_before(t: PeerTable) -> float:
    joined(t)
    t.handle(result("unauthenticated", 2.0), 2.0)
    return 3.0


def _suspect(t: PeerTable, *, too_soon: bool) -> float:
    joined(t)
    refuse(t, 10.0)
    return 10.0 + (REPROBE_DELAY / 2 if too_soon else REPROBE_DELAY)


def _refused(t: PeerTable) -> float:
    joined(t)
    marked = refuse(t, 10.0)
    (refusal,) = writes(t.handle(result("refused", 11.0), 11.0))
    assert marked is not None and refusal.base == marked.stored
    return 12.0


def _leaving(t: PeerTable, *, goodbye: bool) -> float:
    joined(t)
    t.handle(PeerGone("peer-a", goodbye=goodbye, addresses=PEER.addresses), 10.0)
    return 11.0


def _unreachable(t: PeerTable) -> float:
    joined(t)
    t.handle(result("unreachable", 10.0), 10.0)
    return 10.0 + DOWN_REPROBE


def _unauthenticated(t: PeerTable) -> float:
    joined(t)
    t.handle(result("unauthenticated"), 0.1)  # proven once, now without the key
    return 1.0


RECIPES: dict[str, Any] = {
    "new": _new,
    "new, never proven": _new_never_proven,
    "unauthenticated, never proven": _unauthenticated_never_proven,
    "new, proven before": _new_proven_before,
    "alive": _alive,
    "suspect, the next refusal too soon": lambda t: _suspect(t, too_soon=True),
    "suspect": lambda t: _suspect(t, too_soon=False),
    "refused": _refused,
    "leaving after a goodbye": lambda t: _leaving(t, goodbye=True),
    "leaving after an expired record": lambda t: _leaving(t, goodbye=False),
    "unauthenticated": _unauthenticated,
    "unreachable": _unreachable,
    "unauthenticated, proven before": _unauthenticated_proven_before,
}


def _happen(t: PeerTable, event: PeerEvent, now: float) -> None:
    """`event` happens to peer-a, as the messages that carry it."""
    match event:
        case PeerEvent.ANSWERED:
            t.handle(ok(started=now), now)
        case PeerEvent.REFUSED:
            t.handle(result("refused", now), now)
        case PeerEvent.FAILED:
            t.handle(result("timeout", now), now)
        case PeerEvent.UNREACHABLE:
            t.handle(result("unreachable", now), now)
        case PeerEvent.UNAUTHENTICATED:
            t.handle(result("unauthenticated", now), now)
        case PeerEvent.ANNOUNCED:
            t.handle(PEER, now)
        case PeerEvent.GOODBYE:
            t.handle(PeerGone("peer-a", goodbye=True, addresses=PEER.addresses), now)
        case PeerEvent.UNANNOUNCED:
            t.handle(PeerGone("peer-a", goodbye=False, addresses=PEER.addresses), now)
        case PeerEvent.NODE_READY:
            ready = commit(Write(Alive("peer-a", ("192.168.1.10",), 7946, 4242), None))
            t.handle(with_status(ready, "False", "PeerLeft"), now)
            t.handle(ready, now)


def _state(t: PeerTable) -> str:
    """peer-a's state as /peers shows it ("forgotten": no longer followed)."""
    return next((p.state for p in t.peers() if p.name == "peer-a"), "forgotten")


def test_the_recipes_reach_every_state() -> None:
    reached = set()
    for recipe in RECIPES.values():
        t = table()
        recipe(t)
        reached.add(_state(t))
    assert reached == {state.label for state in STATES}


# A peer that never proved itself: only the end of its announcement is an event for it (a probe's
# refusal or silence at addresses it never proved is no evidence: `PeerTable._probed`).
ONLY = {"new, never proven": {PeerEvent.GOODBYE, PeerEvent.UNANNOUNCED},
        "unauthenticated, never proven": {PeerEvent.GOODBYE, PeerEvent.UNANNOUNCED}}


def test_walk_the_transition_table() -> None:
    """Every event in every state: a pair in TRANSITIONS leads to one of its states, a pair
    not in it leaves the state as it was; and each row's every target is reached."""
    reached: dict[tuple[str, PeerEvent], set[str]] = {}
    for name, recipe in RECIPES.items():
        for event in PeerEvent:
            if event not in ONLY.get(name, set(PeerEvent)):
                continue
            t = table()
            now = recipe(t)
            before = _state(t)
            _happen(t, event, now)
            after = _state(t)
            row = next((v for (s, e), v in TRANSITIONS.items()
                        if s.label == before and e is event), None)
            if row is None:
                assert after == before, (name, event)
            else:
                targets = {"forgotten" if s is None else s.label for s in row.to}
                assert after in targets, (name, event, after)
                reached.setdefault((before, event), set()).add(after)
    for (state, event), transition in TRANSITIONS.items():
        targets = {"forgotten" if s is None else s.label for s in transition.to}
        assert reached.get((state.label, event)) == targets, (state.label, event)


def test_the_table_keeps_pid_and_last_probe() -> None:
    t = table()
    t.handle(PEER, 0.0)
    [before] = t.peers()
    assert (before.pid, before.last_probe) == (None, None)  # an announced pid is no fact
    t.handle(ok(), 0.5)
    [proven] = t.peers()
    assert proven.pid == 4242  # the pid the peer proved itself
    refused = ProbeResult(PEER.name, "refused", 0.001, error="connection refused", started=1.0)
    t.handle(refused, 1.0)
    [after] = t.peers()
    assert after.last_probe == refused


# --- bounds -------------------------------------------------------------------------------------


def test_past_the_peer_cap_an_unproven_mdns_peer_makes_room_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(peer_table.limits, "PEERS", 3)
    t = table()
    t.handle(PeerSeen("proven", ("10.0.0.1",), 1), 0.0)
    t.handle(ProbeResult("proven", "confirmed", 0.01, address="10.0.0.1"), 0.1)
    t.handle(PeerSeen("joined", ("10.0.0.2",), 1, found_by="join"), 0.2)
    t.handle(PeerSeen("fake-1", ("10.0.0.3",), 1), 0.3)
    actions = t.handle(PeerSeen("fake-2", ("10.0.0.4",), 1), 0.4)
    # The oldest unproven mDNS peer goes, though an older unproven join peer is there.
    assert actions[0] == Forget("fake-1")
    assert isinstance(actions[1], Reject) and actions[1].reason == "too-many-peers"
    assert actions[1].instance == "fake-1" and "fake-2" in actions[1].detail
    assert actions[2:] == [ProbeNow(ProbeTarget("fake-2", ("10.0.0.4",), 1))]
    # Then an unproven peer found otherwise, when no mDNS one is left unproven...
    t.handle(ProbeResult("fake-2", "confirmed", 0.01, address="10.0.0.4"), 0.5)
    actions = t.handle(PeerSeen("fake-3", ("10.0.0.5",), 1), 0.6)
    assert actions[0] == Forget("joined")
    # ...and when every peer proved itself, the newcomer is refused and nothing changes.
    t.handle(ProbeResult("fake-3", "confirmed", 0.01, address="10.0.0.5"), 0.7)
    assert t.handle(PeerSeen("fake-4", ("10.0.0.6",), 1), 0.8) == [
        Reject("fake-4", "too-many-peers", "already following 3 peers that proved themselves")]
    assert sorted(p.name for p in t.peers()) == ["fake-2", "fake-3", "proven"]


# --- trust: only what a peer proves is written (design.md section 6) ---------------------------

FORGED = PeerSeen("peer-a", ("192.168.1.10", "192.168.1.66", "192.168.1.77"), 7946, 31337)


def test_announced_addresses_and_pid_are_never_written_only_what_the_peer_proved() -> None:
    """A stranger announces peer-a at its real address plus two of its own, pid 31337: peer-a
    answers at its real address and proves its own facts; only those reach its Node."""
    t = table()
    assert t.handle(FORGED, 0.0) == [ProbeNow(ProbeTarget("peer-a", FORGED.addresses, 7946))]
    answer = ProbeResult("peer-a", "confirmed", 0.001, address="192.168.1.10",
                         facts=Facts("peer-a", 7946, 4242, ("192.168.1.10",)))
    (create,) = writes(t.handle(answer, 0.1))
    assert create.intent == Alive("peer-a", ("192.168.1.10",), 7946, 4242, PEER_ALIVE,
                                  refresh=True)
    put = commit(create)
    t.handle(put, 0.2)
    # announced again with the foreign addresses: asked, but nothing new is written
    assert writes(t.handle(FORGED, 1.0)) == []
    assert writes(t.handle(answer, 1.1)) == []
    node = put.stored.node
    assert [a.address for a in node.status.addresses if a.type == "InternalIP"] == [
        "192.168.1.10"]
    assert node.metadata.annotations[ANN_PID] == "4242"


def test_a_confirmed_answer_without_facts_writes_nothing() -> None:
    t = table()
    t.handle(FORGED, 0.0)
    bare = ProbeResult("peer-a", "confirmed", 0.001, address="192.168.1.10")
    assert writes(t.handle(bare, 0.1)) == []


def test_a_goodbye_at_addresses_where_the_peer_never_proved_itself_only_asks() -> None:
    """Forged departure: peer-a announced at an address where nothing listens, then a goodbye
    for it: peer-a is asked, its Node is not touched, and it stays alive."""
    t = table()
    joined(t)
    forged = PeerSeen("peer-a", ("192.168.1.99",), 7946)
    t.handle(forged, 2.0)
    assert t.handle(PeerGone("peer-a", addresses=forged.addresses), 3.0) == [
        ProbeNow(ProbeTarget("peer-a", ("192.168.1.10", "192.168.1.99"), 7946))]
    assert [p.state for p in t.peers()] == ["alive"]
    assert writes(t.handle(fail(), 3.1)) == []
    assert writes(t.handle(PeerGone("peer-a", goodbye=False, addresses=("192.168.1.99",)),
                           4.0)) == []
    assert [p.state for p in t.peers()] == ["alive"]


def test_refusals_at_addresses_where_the_peer_never_proved_itself_change_nothing() -> None:
    t = table()
    joined(t)
    t.handle(PeerSeen("peer-a", ("192.168.1.99",), 7946), 2.0)
    for now in (10.0, 11.5, 13.0):
        refused = ProbeResult("peer-a", "refused", 0.001, started=now,
                              refused=("192.168.1.99",))
        assert writes(t.handle(refused, now)) == []
    assert [p.state for p in t.peers()] == ["alive"]
    # at its proven address a refusal still counts
    t.handle(result("refused", 20.0), 20.0)
    assert [p.state for p in t.peers()] == ["suspect"]


def test_a_never_proven_peer_is_never_marked_refused() -> None:
    """A store-found or announced peer that never answered as itself to this agent: its Node is
    left to the agents that reached it, and to expiry."""
    t = table()
    put = joined(table())
    t.handle(put, 0.0)
    t.handle(PEER, 0.0)
    for now in (1.0, 2.5, 4.0):
        assert writes(t.handle(result("refused", now), now)) == []


def test_a_peer_node_listing_more_addresses_than_proven_is_not_rewritten() -> None:
    """A Go agent proves only the address it answered at; its own Node lists all of its
    addresses: no agent takes turns rewriting that list."""
    t = table()
    own_write = PeerTable(peer_ttl=TTL, refresh_interval=REFRESH, register_self=True,
                          me=SelfInfo("peer-a", lambda: ("192.168.1.10", "10.9.9.9"), 7946, 4242))
    own_write.handle(Snapshot(()), 0.0)
    (create,) = writes(own_write.handle(SelfHeartbeat(), 0.0))
    t.handle(commit(create), 0.0)
    t.handle(PEER, 0.0)
    go_answer = ProbeResult("peer-a", "confirmed", 0.001, address="192.168.1.10",
                            facts=Facts("peer-a", 7946, 4242, ("192.168.1.10",), listed=False))
    assert writes(t.handle(go_answer, 0.1)) == []
    # a refresh when due keeps the peer's own list
    (refresh,) = writes(t.handle(go_answer, REFRESH + 1))
    stored = commit(create).stored.node
    node = render(stored, refresh.intent, WALL0 + dt.timedelta(seconds=REFRESH + 1))
    assert node is not None  # lastSeen refreshed
    assert [a.address for a in node.status.addresses if a.type == "InternalIP"] == [
        "10.9.9.9", "192.168.1.10"]


# --- twins: another live agent holding our name -------------------------------------------------

def _twin_node() -> Put:
    """Node `me` as written by another agent of that name (another host, pid 555)."""
    twin = table(me=SelfInfo("me", lambda: ("10.0.0.99",), 7946, 555))
    (create,) = writes(twin.handle(SelfHeartbeat(), 0.0))
    return commit(create)


def test_a_twin_that_answers_makes_us_stand_down_without_writing_our_node() -> None:
    t = PeerTable(peer_ttl=TTL, refresh_interval=REFRESH, me=ME, register_self=True)
    put = _twin_node()
    asked = t.handle(Snapshot((put.stored,)), 0.0)
    assert asked == [ProbeNow(ProbeTarget("me", ("10.0.0.99",), 7946))]
    assert writes(t.handle(SelfHeartbeat(), 0.5)) == []  # not while it is being checked
    twin = ProbeResult("me", "confirmed", 0.001, address="10.0.0.99",
                       facts=Facts("me", 7946, 555, ("10.0.0.99",)))
    actions = t.handle(twin, 1.0)
    assert actions == [Forget("me"), NameConflict("me", "10.0.0.99", 7946, 555)]
    assert t.name_conflict is not None
    # it never writes that Node again: no heartbeat, no correction, no shutdown mark
    assert writes(t.handle(SelfHeartbeat(), 30.0)) == []
    assert writes(t.handle(with_status(put, "False", "PeerLeft"), 31.0)) == []
    assert writes(t.handle(Stopping(), 32.0)) == []


@pytest.mark.parametrize("outcome", ["refused", "timeout", "unauthenticated"])
def test_a_node_of_our_name_left_by_a_previous_run_is_taken_over(outcome: ProbeOutcome) -> None:
    t = PeerTable(peer_ttl=TTL, refresh_interval=REFRESH, me=ME, register_self=True)
    put = _twin_node()
    t.handle(Snapshot((put.stored,)), 0.0)
    gone = ProbeResult("me", outcome, 0.5, refused=("10.0.0.99",) if outcome == "refused" else ())
    actions = t.handle(gone, 1.0)
    assert actions[0] == Forget("me")
    (own,) = writes(actions)
    assert own.intent.pid == ME.pid and t.name_conflict is None  # type: ignore[union-attr]


# --- silence: a suspicion confirmed -----------------------------------------------------------


def test_an_unreachable_peer_is_written_unknown_at_once_and_ready_on_its_return() -> None:
    t = table()
    put = joined(t)
    actions = t.handle(result("unreachable", 10.0), 10.0)
    assert actions[0] == ProbeNow(TARGET, delay=DOWN_REPROBE)  # probed every second while down
    write = only_write(actions[1:])
    assert write == Write(Unreachable("peer-a", last_seen(put.stored.node)), put.stored)
    down = commit(write, wall=10.0)
    assert (down.stored.node.ready_status, down.stored.node.condition().reason) == (  # type: ignore[union-attr]
        "Unknown", PEER_UNREACHABLE)
    t.handle(down, 10.1)
    # Still down: one re-probe a second, however many other probes fail meanwhile.
    assert t.handle(result("timeout", 10.5), 10.5) == []  # a round's probe, before the due one
    assert t.handle(result("timeout", 11.0), 11.0) == [ProbeNow(TARGET, delay=DOWN_REPROBE)]
    assert t.handle(result("timeout", 11.2), 11.2) == []
    # Back: its first answer writes it Ready, with a fresh lastSeen.
    back = only_write(t.handle(ok(started=12.0), 12.0))
    node = commit(back, wall=12.0).stored.node
    assert node.ready_status == "True"
    assert last_seen(node) != last_seen(put.stored.node)
    assert [p.state for p in t.peers()] == ["alive"]


def test_a_second_agent_finding_it_unreachable_writes_nothing_more() -> None:
    """Every agent holding it goes silent at once: the first write wins, the others render to
    nothing (the Node is no longer Ready with the lastSeen they saw)."""
    first, second = table(), table()
    put = joined(first)
    joined_put = second.handle(PEER, 0.0)
    assert joined_put == [ProbeNow(TARGET)]
    second.handle(ok(), 0.0)
    second.handle(put, 0.0)
    mine = only_write(first.handle(result("unreachable", 10.0), 10.0)[1:])
    theirs = only_write(second.handle(result("unreachable", 10.0), 10.0)[1:])
    down = commit(mine, wall=10.0)
    assert render(down.stored.node, theirs.intent, WALL0) is None


def test_a_suspect_is_marked_and_its_answer_through_the_store_stops_the_accusation() -> None:
    """A split LAN: both halves reach the store. The suspect's Node is marked while this agent
    judges it; the suspect's own agent sees the mark and writes its Node (lastSeen fresh); the
    verdict, confirmed on the LAN, then writes nothing, and the peer is not accused again until
    this agent reaches it."""
    t = table()
    put = joined(t)
    marking = only_write(t.handle(Suspected("peer-a", since=9.0), 10.0))
    assert marking == Write(Suspicion("peer-a", "me", last_seen(put.stored.node)), put.stored)
    marked = commit(marking, wall=10.0)
    # The watch shows the mark: the prober times the suspect's answer from here.
    assert t.handle(marked, 10.01) == [MarkSeen("peer-a")]
    # peer-a's own agent, as its table decides on seeing the mark: it answers.
    suspect = table(me=SelfInfo("peer-a", lambda: ("192.168.1.10",), 7946, 4242))
    suspect.handle(put, 10.0)
    answer = only_write(suspect.handle(marked, 10.02))
    answered = commit(answer, wall=10.02)
    assert ANN_SUSPECTED not in answered.stored.node.metadata.annotations
    assert last_seen(answered.stored.node) != last_seen(put.stored.node)
    assert suspect.handle(answered, 10.03) == []  # answered once
    t.handle(answered, 10.03)
    assert writes(t.handle(result("unreachable", 10.7), 10.7)) == []
    # contradicted: no more marks, and nothing to wait for
    assert t.handle(Suspected("peer-a", 19.0), 20.0) == [MarkSeen("peer-a")]
    # Once this agent reaches it again, its suspicions count again.
    t.handle(ok(started=30.0), 30.0)
    assert writes(t.handle(Suspected("peer-a", 39.0), 40.0))


def test_a_suspicion_that_began_before_the_suspects_answer_marks_nothing_more() -> None:
    """Several agents judge a split LAN's other half at once: the first one's mark is answered;
    another whose suspicion began before that answer sees the lastSeen moved since, marks
    nothing and accuses no more."""
    t = table()
    put = joined(t)
    answered = commit(Write(Alive("peer-a", ("192.168.1.10",), 7946, 4242, refresh=True,
                                  refresh_from=last_seen(put.stored.node)), put.stored), wall=9.5)
    t.handle(answered, 9.5)
    assert t.handle(Suspected("peer-a", since=9.0), 10.0) == [MarkSeen("peer-a")]
    assert writes(t.handle(result("unreachable", 10.3), 10.3)) == []


def test_the_prober_hears_once_when_its_mark_is_in_the_store_or_was_answered_already() -> None:
    """A watch that polls (MySQL) may never show the mark, only the suspect's answer to it:
    that ends the prober's wait too. Once: later changes of the Node owe it nothing."""
    t = table()
    put = joined(t)
    marking = only_write(t.handle(Suspected("peer-a", since=9.0), 10.0))
    answered = commit(Write(Alive("peer-a", ("192.168.1.10",), 7946, 4242, refresh=True,
                                  refresh_from=last_seen(put.stored.node)), marking.base),
                      wall=10.4)
    assert ANN_SUSPECTED not in answered.stored.node.metadata.annotations
    assert t.handle(answered, 10.5) == [MarkSeen("peer-a")]
    assert writes(t.handle(result("unreachable", 11.0), 11.0)) == []  # and it was answered
    again = commit(Write(Alive("peer-a", ("192.168.1.10",), 7946, 4242, refresh=True,
                               refresh_from=last_seen(answered.stored.node)), answered.stored),
                   wall=40.0)
    assert MarkSeen("peer-a") not in t.handle(again, 40.0)
    # A peer the table does not follow (forgotten meanwhile): nothing to wait for.
    assert t.handle(Suspected("peer-z", since=9.0), 41.0) == [MarkSeen("peer-z")]


def test_an_unanswered_suspicion_ends_in_the_accusation_and_its_mark_goes() -> None:
    t = table()
    put = joined(t)
    marked = commit(only_write(t.handle(Suspected("peer-a", 9.0), 10.0)), wall=10.0)
    t.handle(marked, 10.01)
    # Another agent's suspicion meanwhile adds no mark of its own.
    other = table()
    other.handle(PEER, 0.0)
    other.handle(ok(), 0.0)
    other.handle(marked, 10.02)
    assert writes(other.handle(Suspected("peer-a", 9.0), 10.02)) == []
    down = only_write(t.handle(result("unreachable", 10.7), 10.7)[1:])
    assert down == Write(Unreachable("peer-a", last_seen(put.stored.node)), marked.stored)
    node = commit(down, wall=10.7).stored.node
    assert node.ready_status == "Unknown"
    assert ANN_SUSPECTED not in node.metadata.annotations


def test_silence_where_the_peer_never_proved_itself_is_no_evidence() -> None:
    t = table()
    joined(t)
    elsewhere = ProbeResult("peer-a", "unreachable", 0.7, silent=("10.9.9.9",), started=10.0)
    assert t.handle(elsewhere, 10.0) == []
    assert [p.state for p in t.peers()] == ["alive"]


def test_an_unreachable_peer_others_reach_is_not_written_down() -> None:
    """contradicted (a firewall that drops only this agent's packets): nothing written."""
    t = table()
    put = joined(t)
    refuse(t, 10.0)
    refusal = only_write(t.handle(result("refused", 11.0), 11.0))
    t.handle(commit(refusal, wall=11.0), 11.0)
    t.handle(with_status(put, "True", PEER_ALIVE), 12.0)  # others reach it: contradicted
    assert writes(t.handle(result("unreachable", 20.0), 20.0)) == []


def test_an_unreachable_store_found_peer_stays_followed_to_be_written_ready_again() -> None:
    """A peer beyond the router, found in the store: its Node going Unknown must not make us
    forget it (a store-found peer is followed only while Ready), or nobody would write it Ready
    on its return."""
    t = table()
    put = commit(Write(Alive("peer-a", ("192.168.1.10",), 7946, 4242), None))
    assert t.handle(put, 0.0) == [ProbeNow(TARGET)]
    t.handle(ok(), 0.5)
    assert [(p.found_by, p.state) for p in t.peers()] == [("store", "alive")]
    down = commit(only_write(t.handle(result("unreachable", 10.0), 10.0)[1:]), wall=10.0)
    assert Forget("peer-a") not in t.handle(down, 10.1)
    assert [p.state for p in t.peers()] == ["unreachable"]
    assert commit(only_write(t.handle(ok(started=12.0), 12.0)), wall=12.0).stored.node \
        .ready_status == "True"

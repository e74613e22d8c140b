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
from k3net.core.messages import PeerGone, PeerSeen, ProbeResult
from k3net.core.nodes import (
    AGENT_READY,
    PEER_ALIVE,
    Alive,
    Expired,
    Left,
    Shutdown,
    last_seen,
    render,
)
from k3net.core.table import (
    Forget,
    JoinLatency,
    PeerTable,
    ProbeNow,
    ProbeTarget,
    SelfInfo,
    Write,
)
from k3net.model import Node
from k3net.store.base import Deleted, Lost, Put, Snapshot, Stored

TTL = 90.0
REFRESH = 30.0
ME = SelfInfo(name="me", addresses=("192.168.1.2",), port=7946, pid=100)
PEER = PeerSeen(name="peer-a", addresses=("192.168.1.10",), port=7946, pid=4242)
OTHER = PeerSeen(name="peer-b", addresses=("192.168.1.11",), port=7000, pid=None)
WALL0 = dt.datetime(2026, 11, 29, 10, 0, tzinfo=dt.UTC)

_versions = itertools.count(1)


def table(register_self: bool = True, me: SelfInfo = ME) -> PeerTable:
    """A table whose store watch delivered its first (empty) Snapshot, as every watch does."""
    t = PeerTable(peer_ttl=TTL, refresh_interval=REFRESH, me=me, register_self=register_self)
    assert t.on_store(Snapshot(()), 0.0) == []
    return t


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


def writes(actions: list[Any]) -> list[Write]:
    return [a for a in actions if isinstance(a, Write)]


def ok(peer: PeerSeen = PEER) -> ProbeResult:
    return ProbeResult(peer.name, "confirmed", 0.001, address=peer.addresses[0])


def fail(peer: PeerSeen = PEER) -> ProbeResult:
    return ProbeResult(peer.name, "timeout", 0.7, error="timed out")


def joined(t: PeerTable, peer: PeerSeen = PEER, now: float = 0.0) -> Put:
    """`peer` seen over mDNS, probed OK, its Node created and seen in the store at `now`."""
    t.on_seen(peer, now)
    put = commit(t.on_probe(ok(peer), now)[0], wall=now)
    t.on_store(put, now)
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
    assert table().on_seen(PEER, 0.0) == [
        ProbeNow(ProbeTarget("peer-a", ("192.168.1.10",), 7946))
    ]


def test_ok_probe_of_a_new_peer_creates_its_node() -> None:
    t = table()
    t.on_seen(PEER, 0.0)
    assert t.on_probe(ok(), 0.01) == [
        Write(Alive("peer-a", ("192.168.1.10",), 7946, 4242, PEER_ALIVE, refresh=True), None)
    ]


def test_seeing_the_node_ready_reports_join_latency_once() -> None:
    t = table()
    t.on_seen(PEER, 10.0)
    put = commit(t.on_probe(ok(), 10.01)[0])
    assert t.on_store(put, 10.05) == [JoinLatency("peer-a", pytest.approx(0.05))]
    assert t.on_store(put, 10.06) == []
    assert t.on_seen(PEER, 11.0) == [ProbeNow(ProbeTarget("peer-a", ("192.168.1.10",), 7946))]
    assert t.on_store(with_last_seen(put, "x"), 12.0) == []


def test_no_join_latency_for_a_peer_already_ready_in_the_store() -> None:
    t = table()
    first = table()
    put = joined(first)
    t.on_store(put, 0.0)
    t.on_seen(PEER, 1.0)
    assert t.on_store(with_last_seen(put, "2026-11-29T10:00:05.000000Z"), 2.0) == []


def test_failed_probe_of_a_new_peer_writes_nothing() -> None:
    t = table()
    t.on_seen(PEER, 0.0)
    assert t.on_probe(fail(), 0.7) == []


def test_probe_result_of_an_unknown_peer_is_ignored() -> None:
    assert table().on_probe(ok(), 0.0) == []
    assert table().on_probe(fail(), 0.0) == []


def test_changed_addresses_are_written_without_refresh() -> None:
    t = table()
    put = joined(t)
    moved = PeerSeen("peer-a", ("192.168.1.99",), 7946, 4242)
    t.on_seen(moved, 5.0)
    (write,) = t.on_probe(ok(moved), 5.0)
    assert write.intent == Alive("peer-a", ("192.168.1.99",), 7946, 4242, PEER_ALIVE,
                                 refresh_from=last_seen(put.stored.node), refresh=False,
                                 seen_ready="True")
    assert write.base == put.stored


# --- refresh ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "due"),
    [(0.5, False), (10.0, False), (29.999, False), (30.0, True), (31.0, True), (200.0, True)],
)
def test_refresh_due_peer_ttl_over_3_after_last_seen_changed(after: float, due: bool) -> None:
    t = table()
    put = joined(t, now=100.0)
    actions = t.on_probe(ok(), 100.0 + after)
    if not due:
        assert actions == []
        return
    (write,) = actions
    assert isinstance(write.intent, Alive)
    assert write.intent.refresh is True
    assert write.intent.refresh_from == last_seen(put.stored.node)
    assert write.base == put.stored


def test_refresh_is_asked_once_while_in_flight() -> None:
    t = table()
    joined(t, now=0.0)
    assert len(writes(t.on_probe(ok(), 30.0))) == 1
    for now in (30.1, 35.0, 45.0, 59.9):
        assert t.on_probe(ok(), now) == [], now


def test_after_our_refresh_lands_the_next_is_due_a_refresh_interval_later() -> None:
    t = table()
    put = joined(t, now=0.0)
    refreshed = commit(t.on_probe(ok(), 30.0)[0], wall=30.0)
    assert last_seen(refreshed.stored.node) != last_seen(put.stored.node)
    assert t.on_store(refreshed, 30.2) == []
    assert t.on_probe(ok(), 60.1) == []
    assert len(writes(t.on_probe(ok(), 60.2))) == 1


def test_another_agents_refresh_makes_ours_not_due() -> None:
    t = table()
    put = joined(t, now=0.0)
    # another agent refreshed lastSeen at 25s (we see it through the watch)
    t.on_store(with_last_seen(put, "2026-11-29T10:00:25.000000Z"), 25.0)
    assert t.on_probe(ok(), 31.0) == []
    assert t.on_probe(ok(), 54.9) == []
    (write,) = t.on_probe(ok(), 55.0)
    assert write.intent.refresh_from == "2026-11-29T10:00:25.000000Z"


def test_a_put_that_keeps_last_seen_does_not_restart_the_refresh_timer() -> None:
    t = table()
    put = joined(t, now=0.0)
    labelled = node_to_dict(put.stored.node)
    labelled["metadata"]["labels"]["team"] = "blue"
    t.on_store(Put(store_node(node_from_dict(labelled))), 20.0)
    assert len(writes(t.on_probe(ok(), 30.0))) == 1


# --- expiry -----------------------------------------------------------------------------------


def test_expiry_after_peer_ttl_without_last_seen_change_exactly_once() -> None:
    t = table()
    put = joined(t, now=0.0)
    assert t.on_tick(89.9) == []
    assert t.on_tick(90.0) == [Write(Expired("peer-a", last_seen(put.stored.node)), put.stored)]
    assert t.on_tick(91.0) == []
    assert t.on_tick(500.0) == []


def test_expiry_timer_restarts_when_last_seen_changes() -> None:
    t = table()
    put = joined(t, now=0.0)
    t.on_store(with_last_seen(put, "2026-11-29T10:01:00.000000Z"), 60.0)
    assert t.on_tick(149.9) == []
    assert len(t.on_tick(150.0)) == 1


def test_expiry_not_reset_by_a_put_that_keeps_last_seen() -> None:
    t = table()
    put = joined(t, now=0.0)
    moved = with_status(put, "True", "PeerAlive")  # same lastSeen, new version
    t.on_store(moved, 50.0)
    (write,) = t.on_tick(90.0)
    assert write.base == moved.stored


def test_expired_node_written_unknown_is_not_expired_again() -> None:
    t = table()
    joined(t, now=0.0)
    (expiry,) = t.on_tick(90.0)
    t.on_store(commit(expiry, wall=90.0), 90.1)
    assert t.on_tick(200.0) == []
    assert t.counts() == {"ready": 0, "not_ready": 0, "unknown": 1}


def test_expiry_again_after_the_peer_came_back_and_went_silent() -> None:
    t = table()
    joined(t, now=0.0)
    (expiry,) = t.on_tick(90.0)
    t.on_store(commit(expiry, wall=90.0), 90.0)
    (back,) = t.on_probe(ok(), 100.0)
    t.on_store(commit(back, wall=100.0), 100.0)
    assert t.on_tick(189.9) == []
    assert len(t.on_tick(190.0)) == 1


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
    t.on_store(put, 0.0)
    assert t.on_tick(1000.0) == []


def test_stale_managed_node_nobody_probes_expires() -> None:
    t = table()
    put = foreign_put("far-away", managed=True)
    t.on_store(put, 0.0)
    assert t.on_tick(90.0) == [Write(Expired("far-away", "2026-11-29T09:00:00.000000Z"), put.stored)]


def test_own_node_is_never_expired_by_this_agent() -> None:
    t = table()
    t.on_store(commit(t.on_heartbeat(0.0)[0]), 0.0)
    assert t.on_tick(1000.0) == []


@pytest.mark.parametrize(
    "stored_last_seen",
    ["2100-01-01T00:00:00.000000Z", "1999-01-01T00:00:00.000000Z"],
    ids=["future", "past"],
)
def test_clock_skew_does_not_change_timing(stored_last_seen: str) -> None:
    t = table()
    t.on_seen(PEER, 0.0)
    put = commit(t.on_probe(ok(), 0.0)[0])
    skewed = with_last_seen(put, stored_last_seen)
    t.on_store(skewed, 1000.0)
    assert t.on_probe(ok(), 1029.9) == []
    assert len(writes(t.on_probe(ok(), 1030.0))) == 1
    assert t.on_tick(1089.9) == []
    (expiry,) = t.on_tick(1090.0)
    assert expiry.intent == Expired("peer-a", stored_last_seen)


# --- goodbye ----------------------------------------------------------------------------------


def test_goodbye_is_probed_at_once() -> None:
    t = table()
    joined(t)
    assert t.on_gone(PeerGone("peer-a"), 5.0) == [
        ProbeNow(ProbeTarget("peer-a", ("192.168.1.10",), 7946))
    ]


def test_goodbye_and_failed_probe_marks_left_and_forgets() -> None:
    t = table()
    put = joined(t)
    t.on_gone(PeerGone("peer-a"), 5.0)
    assert t.on_probe(fail(), 5.01) == [Forget("peer-a"), Write(Left("peer-a"), put.stored)]
    assert t.targets() == []
    assert t.on_probe(fail(), 6.0) == []


def test_goodbye_and_ok_probe_stays_alive() -> None:
    t = table()
    joined(t)
    t.on_gone(PeerGone("peer-a"), 5.0)
    assert t.on_probe(ok(), 5.01) == []
    assert [p.name for p in t.targets()] == ["peer-a"]


def test_failed_probe_without_goodbye_writes_nothing() -> None:
    t = table()
    joined(t)
    for now in (15.0, 30.0, 45.0, 60.0, 75.0):
        assert t.on_probe(fail(), now) == []


def test_peer_seen_again_after_goodbye_is_not_left_on_a_failed_probe() -> None:
    t = table()
    joined(t)
    t.on_gone(PeerGone("peer-a"), 5.0)
    t.on_seen(PEER, 5.5)  # restarted
    assert t.on_probe(fail(), 6.0) == []


def test_goodbye_refuted_by_ok_probe_then_one_failed_probe_writes_nothing() -> None:
    t = table()
    joined(t)
    t.on_gone(PeerGone("peer-a"), 5.0)
    answered = ProbeResult("peer-a", "confirmed", 0.001, address="192.168.1.10", started=5.01)
    assert t.on_probe(answered, 5.02) == []  # the peer restarted: still there
    assert t.on_probe(fail(), 20.0) == []  # one failed probe proves nothing


def test_ok_probe_started_before_the_goodbye_does_not_refute_it() -> None:
    t = table()
    put = joined(t)
    t.on_gone(PeerGone("peer-a"), 5.0)
    late = ProbeResult("peer-a", "confirmed", 0.001, address="192.168.1.10", started=4.9)
    assert t.on_probe(late, 5.02) == []
    assert t.on_probe(fail(), 5.1) == [Forget("peer-a"), Write(Left("peer-a"), put.stored)]


def test_goodbye_of_a_peer_known_only_from_the_store() -> None:
    t = table()
    put = joined(table())
    t.on_store(put, 0.0)  # this agent just started: it never browsed peer-a
    assert t.on_gone(PeerGone("peer-a"), 1.0) == [
        ProbeNow(ProbeTarget("peer-a", ("192.168.1.10",), 7946))
    ]
    assert t.on_probe(fail(), 1.1) == [Forget("peer-a"), Write(Left("peer-a"), put.stored)]


def test_goodbye_of_something_unknown_does_nothing() -> None:
    t = table()
    assert t.on_gone(PeerGone("nobody"), 0.0) == []
    t.on_store(foreign_put("ctrl-node"), 0.0)  # no k3net port annotation: nothing to probe
    assert t.on_gone(PeerGone("ctrl-node"), 0.0) == []


def test_goodbye_of_a_peer_with_an_unmanaged_node_never_writes() -> None:
    t = table()
    t.on_store(foreign_put("peer-a"), 0.0)
    t.on_seen(PEER, 0.0)
    assert t.on_probe(ok(), 0.1) == []  # never touched
    t.on_gone(PeerGone("peer-a"), 1.0)
    assert t.on_probe(fail(), 1.1) == [Forget("peer-a")]


def test_goodbye_of_a_peer_not_yet_in_the_view_is_marked_from_the_store() -> None:
    """The watch may lag our own write of its Node (MySQL polls): the Left goes to the writer
    without a base, and the writer reads the Node before it marks it."""
    t = table()
    t.on_seen(PEER, 0.0)
    t.on_gone(PeerGone("peer-a"), 0.5)
    assert t.on_probe(fail(), 0.6) == [Forget("peer-a"), Write(Left("peer-a"), None)]


def test_goodbye_of_an_unmanaged_node_only_forgets() -> None:
    t = table()
    t.on_seen(PEER, 0.0)
    foreign = node_from_dict({"metadata": {"name": "peer-a"}, "status": {"conditions": [
        {"type": "Ready", "status": "True"}]}})
    t.on_store(Put(Stored(foreign, "1")), 0.1)
    t.on_gone(PeerGone("peer-a"), 0.5)
    assert t.on_probe(fail(), 0.6) == [Forget("peer-a")]


# --- this agent's own Node --------------------------------------------------------------------


def test_heartbeat_creates_own_node() -> None:
    t = table()
    assert t.on_heartbeat(0.0) == [
        Write(Alive("me", ("192.168.1.2",), 7946, 100, AGENT_READY, refresh=True), None)
    ]
    assert not t.self_up()


def test_heartbeat_refreshes_own_node_when_due() -> None:
    t = table()
    put = commit(t.on_heartbeat(0.0)[0])
    t.on_store(put, 0.0)
    assert t.self_up()
    assert t.on_heartbeat(10.0) == []
    assert t.on_heartbeat(29.9) == []
    (write,) = t.on_heartbeat(30.0)
    assert write.intent == Alive("me", ("192.168.1.2",), 7946, 100, AGENT_READY,
                                 refresh_from=last_seen(put.stored.node), refresh=True,
                                 seen_ready="True")
    assert t.on_heartbeat(31.0) == []


def test_shutdown_marks_own_node_down_and_stops_heartbeats() -> None:
    t = table()
    put = commit(t.on_heartbeat(0.0)[0])
    t.on_store(put, 0.0)
    assert t.shutdown() == [Write(Shutdown("me"), put.stored)]
    assert t.on_heartbeat(100.0) == []
    down = commit(Write(Shutdown("me"), put.stored), wall=1.0)
    assert t.on_store(down, 1.0) == []  # our own shutdown is not "corrected"
    assert t.on_heartbeat(200.0) == []


def test_shutdown_before_own_node_was_seen() -> None:
    assert table().shutdown() == [Write(Shutdown("me"), None)]


@pytest.mark.parametrize(
    ("status", "reason"), [("Unknown", "PeerExpired"), ("False", "PeerLeft")]
)
def test_own_node_marked_down_by_someone_else_is_corrected_at_once(status: str, reason: str) -> None:
    t = table()
    put = commit(t.on_heartbeat(0.0)[0])
    t.on_store(put, 0.0)
    down = with_status(put, status, reason)
    (write,) = t.on_store(down, 5.0)
    assert isinstance(write.intent, Alive)
    assert write.intent.reason == AGENT_READY
    assert write.base == down.stored
    fixed = commit(write, wall=5.0)
    assert fixed.stored.node.ready_status == "True"
    assert t.on_store(fixed, 5.1) == []


def test_register_self_false_never_writes_own_node() -> None:
    t = table(register_self=False)
    assert t.on_heartbeat(0.0) == []
    assert t.on_heartbeat(1000.0) == []
    assert t.shutdown() == []
    other = table()
    put = commit(other.on_heartbeat(0.0)[0])
    assert t.on_store(with_status(put, "Unknown", "PeerExpired"), 1.0) == []


# --- the store view ---------------------------------------------------------------------------


def test_snapshot_replaces_the_view() -> None:
    t = table()
    put_a = joined(t, PEER)
    joined(t, OTHER)
    assert t.counts()["ready"] == 2
    t.on_store(Snapshot((put_a.stored,)), 10.0)  # peer-b's Node was deleted meanwhile
    assert t.counts() == {"ready": 1, "not_ready": 0, "unknown": 0}
    # not expired: it is not in the store
    assert [w.intent.name for w in t.on_tick(1000.0)] == ["peer-a"]
    # re-created if it answers
    (write,) = t.on_probe(ok(OTHER), 11.0)
    assert write.base is None and write.intent.name == "peer-b"


def test_snapshot_keeps_timers_of_unchanged_nodes() -> None:
    t = table()
    put = joined(t, now=0.0)
    t.on_store(Snapshot((put.stored,)), 60.0)  # watch reconnected: same lastSeen
    assert len(t.on_tick(90.0)) == 1


def test_deleted_node_is_recreated_on_next_ok_probe() -> None:
    t = table()
    joined(t)
    t.on_store(Deleted("peer-a"), 1.0)
    assert t.on_tick(1000.0) == []
    (write,) = t.on_probe(ok(), 2.0)
    assert write.base is None


def test_targets_follow_seen_and_forgotten_peers() -> None:
    t = table()
    t.on_seen(PEER, 0.0)
    t.on_seen(OTHER, 0.0)
    assert {p.name for p in t.targets()} == {"peer-a", "peer-b"}
    t.on_gone(PeerGone("peer-b"), 1.0)
    t.on_probe(fail(OTHER), 1.1)
    assert [p.name for p in t.targets()] == ["peer-a"]


# --- agents agree -----------------------------------------------------------------------------


def test_probing_a_peer_whose_own_agent_keeps_it_ready_writes_nothing() -> None:
    peer_agent = table(me=SelfInfo("peer-a", ("192.168.1.10",), 7946, 4242))
    own = commit(peer_agent.on_heartbeat(0.0)[0])  # peer-a's agent wrote it: AgentReady
    t = table()
    t.on_store(own, 0.0)
    t.on_seen(PEER, 1.0)
    assert t.on_probe(ok(), 1.1) == []  # AgentReady is Ready: agents do not take turns
    assert t.on_probe(ok(), 29.0) == []


def test_two_agents_share_one_refresh() -> None:
    a, b = table(), table(me=SelfInfo("me-b", ("192.168.1.3",), 7946, 200))
    put = joined(a, now=0.0)
    b.on_seen(PEER, 0.0)
    b.on_store(put, 0.0)
    (refresh,) = a.on_probe(ok(), 30.0)
    refreshed = commit(refresh, wall=30.0)
    a.on_store(refreshed, 30.1)
    b.on_store(refreshed, 30.1)
    assert b.on_probe(ok(), 31.0) == []  # b sees it fresh
    assert b.on_tick(100.0) == []  # and not stale: lastSeen changed at 30.1


# --- store outages ----------------------------------------------------------------------------


def test_nothing_expires_before_the_first_snapshot() -> None:
    t = PeerTable(peer_ttl=TTL, refresh_interval=REFRESH, me=ME, register_self=True)
    t.on_store(foreign_put("far-away", managed=True), 0.0)
    assert t.on_tick(1000.0) == []


def test_nothing_expires_while_the_watch_has_lost_the_store() -> None:
    t = table()
    put = joined(t, now=0.0)
    assert t.on_store(Lost("connection refused"), 10.0) == []
    assert t.on_tick(90.0) == []
    assert t.on_tick(500.0) == []
    # back: every age starts again at the new Snapshot
    t.on_store(Snapshot((put.stored,)), 600.0)
    assert t.on_tick(689.9) == []
    assert len(t.on_tick(690.0)) == 1


def test_refresh_timer_restarts_after_an_outage() -> None:
    t = table()
    put = joined(t, now=0.0)
    t.on_store(Lost("down"), 10.0)
    t.on_store(Snapshot((put.stored,)), 100.0)
    assert t.on_probe(ok(), 129.9) == []
    assert len(writes(t.on_probe(ok(), 130.0))) == 1


def test_expiry_does_not_overtake_a_pending_goodbye() -> None:
    t = table()
    joined(t, now=0.0)
    t.on_gone(PeerGone("peer-a"), 80.0)
    (_, left) = t.on_probe(fail(), 80.5)
    assert isinstance(left, Write) and left.intent == Left("peer-a")
    assert t.on_tick(90.0) == []  # Left is on its way; no vaguer Unknown on top

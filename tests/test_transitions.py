"""The log lines of Ready transitions (k3net.core.transitions), pure: messages and watch events
in, lines out, with `now` given."""

from __future__ import annotations

import datetime as dt

from k3net.core.messages import (
    Deleted,
    PeerGone,
    PeerSeen,
    ProbeResult,
    Put,
    Snapshot,
    Stored,
)
from k3net.core.nodes import Alive, Expired, Left, Refused, Unreachable
from k3net.core.transitions import INFO, WARNING, Line, Transitions

from .helpers.nodes import T0, make_node

WALL = T0 + dt.timedelta(seconds=30)
B = ("10.0.0.5",)


def stored(ready: str, reason: str, name: str = "node-b", version: int = 1, **kw: object) -> Stored:
    return Stored(make_node(name, ready=ready, reason=reason, addresses=B, **kw),  # type: ignore[arg-type]
                  str(version))


def started(*items: Stored) -> Transitions:
    t = Transitions("node-a")
    assert t.store(Snapshot(items), 0.0, WALL) == []  # the start is no change
    return t


def answered(t: Transitions, now: float) -> None:
    t.seen(PeerSeen("node-b", B, 7946), now)
    t.seen(ProbeResult("node-b", "confirmed", 0.001, address="10.0.0.5"), now)


def test_a_crash_this_agent_wrote_is_one_warning_with_its_evidence() -> None:
    t = started(stored("True", "PeerAlive"))
    answered(t, 10.0)
    t.seen(ProbeResult("node-b", "refused", 0.001, error="10.0.0.5: connection refused"), 10.5)
    t.seen(ProbeResult("node-b", "refused", 0.001, error="10.0.0.5: connection refused"), 11.0)
    t.decided(Refused("node-b", None))
    [line] = t.store(Put(stored("False", "PeerRefused", version=2)), 11.0, WALL)
    assert line == Line(
        level=WARNING,
        text="node node-b NotReady (PeerRefused): 10.0.0.5:7946 refused twice, "
             "last answer 1.0 s ago",
        node="node-b", reason="PeerRefused", status="NotReady", peer="10.0.0.5:7946",
        addresses=B, last_answer=1.0,
    )
    assert line.fields == {"node": "node-b", "peer": "10.0.0.5:7946", "reason": "PeerRefused",
                           "status": "NotReady", "addresses": ["10.0.0.5"], "last_answer": 1.0}
    # The same status again (a refresh, another agent's identical write): no second line.
    assert t.store(Put(stored("False", "PeerRefused", version=3)), 12.0, WALL) == []


def test_a_transition_another_agent_wrote_says_so() -> None:
    t = started(stored("True", "PeerAlive"))
    answered(t, 10.0)
    t.seen(ProbeResult("node-b", "refused", 0.001, error="refused"), 10.4)
    [line] = t.store(Put(stored("False", "PeerRefused")), 10.5, WALL)
    assert line.text == ("node node-b NotReady (PeerRefused): 10.0.0.5:7946 refused once "
                         "(written by another agent), last answer 0.5 s ago")


def test_expiry_without_any_answer_gives_the_stored_last_seen_age() -> None:
    t = started(stored("True", "PeerAlive"))
    t.seen(ProbeResult("node-b", "timeout", 0.7, error="10.0.0.5: timed out after 0.7s"), 5.0)
    t.decided(Expired("node-b", None))
    [line] = t.store(Put(stored("Unknown", "PeerExpired")), 90.0, WALL)
    assert line.level == WARNING and line.last_answer is None
    assert line.text == (
        "node node-b Unknown (PeerExpired): no agent refreshed its lastSeen within the peer "
        "TTL; our last probe: 10.0.0.5: timed out after 0.7s, last seen 30.0 s ago (its stored "
        "lastSeen)")


def test_a_goodbye_is_a_planned_departure_at_info() -> None:
    t = started(stored("True", "PeerAlive"))
    answered(t, 1.0)
    t.seen(PeerGone("node-b"), 2.0)
    t.seen(ProbeResult("node-b", "refused", 0.001, error="10.0.0.5: connection refused"), 2.1)
    t.decided(Left("node-b"))
    [line] = t.store(Put(stored("False", "PeerLeft")), 2.2, WALL)
    assert line.level == INFO
    assert line.text == ("node node-b NotReady (PeerLeft): said goodbye over mDNS 0.2 s ago, "
                         "then 10.0.0.5: connection refused, last answer 1.2 s ago")


def test_arrival_and_return_are_info() -> None:
    t = started()
    answered(t, 3.0)
    t.decided(Alive("node-b", B, 7946, 42))
    [joined] = t.store(Put(stored("True", "PeerAlive")), 3.0, WALL)
    assert (joined.level, joined.text) == (
        INFO, "node node-b Ready (PeerAlive): answered at 10.0.0.5:7946, last answer 0.0 s ago")
    t.store(Put(stored("Unknown", "PeerExpired")), 100.0, WALL)
    answered(t, 101.0)
    [back] = t.store(Put(stored("True", "PeerAlive")), 101.5, WALL)
    assert back.level == INFO and back.status == "Ready" and back.last_answer == 0.5


def test_own_node_and_nodes_first_seen_not_ready() -> None:
    t = started()
    [me] = t.store(Put(stored("True", "AgentReady", name="node-a")), 1.0, WALL)
    assert me.text == "node node-a Ready (AgentReady): this agent is running"
    # An old Node, not Ready when this agent first sees it: not a change it saw.
    assert t.store(Put(stored("Unknown", "PeerExpired", name="node-old")), 1.0, WALL) == []
    [bye] = t.store(Put(stored("False", "AgentShutdown", name="node-a")), 2.0, WALL)
    assert bye.level == INFO and bye.text.endswith("this agent stopped cleanly")


def test_a_snapshot_after_an_outage_tells_what_changed_meanwhile() -> None:
    t = started(stored("True", "PeerAlive"), stored("True", "PeerAlive", name="node-c"))
    lines = t.store(Snapshot((stored("Unknown", "PeerExpired"),
                              stored("True", "PeerAlive", name="node-c"))), 50.0, WALL)
    assert [(line.node, line.status) for line in lines] == [("node-b", "Unknown")]
    # A move to another store: its first snapshot is a new start.
    t.store_changed()
    assert t.store(Snapshot((stored("True", "PeerAlive"),)), 51.0, WALL) == []


def test_deleted_nodes_are_forgotten() -> None:
    t = started(stored("True", "PeerAlive"))
    assert t.store(Deleted("node-b"), 1.0, WALL) == []
    # Created again later, Ready: an arrival.
    [line] = t.store(Put(stored("True", "PeerAlive")), 2.0, WALL)
    assert line.text.startswith("node node-b Ready (PeerAlive): reached by another agent at "
                                "10.0.0.5:7946")


def test_a_vanished_host_is_one_warning_whoever_confirmed_it() -> None:
    t = started(stored("True", "PeerAlive"))
    answered(t, 10.0)
    t.seen(ProbeResult("node-b", "unreachable", 0.7, silent=B,
                       error="10.0.0.5: timed out after 700ms; none of 3 agents asked reach it"),
           12.7)
    t.decided(Unreachable("node-b", None))
    [line] = t.store(Put(stored("Unknown", "PeerUnreachable", version=2)), 12.7, WALL)
    assert (line.level, line.status, line.peer) == (WARNING, "Unknown", "10.0.0.5:7946")
    assert line.text == ("node node-b Unknown (PeerUnreachable): 10.0.0.5:7946 went silent, "
                         "nobody reached it, last answer 2.7 s ago")
    other = started(stored("True", "PeerAlive"))
    answered(other, 10.0)
    [line] = other.store(Put(stored("Unknown", "PeerUnreachable", version=2)), 12.7, WALL)
    assert line.text.startswith("node node-b Unknown (PeerUnreachable): another agent found "
                                "10.0.0.5:7946 silent")

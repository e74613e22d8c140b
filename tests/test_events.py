"""The event hub: classification (table-driven), snapshots, resume, bounded queues, shutdown."""

from __future__ import annotations

import datetime as dt

import pytest
import trio
import trio.testing

from k3net.events import EventHub, classify
from k3net.metrics import Metrics
from k3net.model import (
    Node,
)
from k3net.store.base import Deleted, Put, Snapshot, Stored

from .helpers.nodes import T0, make_node


def put(node: Node, version: int = 1) -> Put:
    return Put(Stored(node=node, version=str(version)))


LATER = T0 + dt.timedelta(seconds=30)

# (what happened, old, new, expected message type or None)
CLASSIFY_TABLE = [
    ("first sighting", None, make_node(), "joined"),
    ("first sighting, not ready", None, make_node(ready="False", reason="PeerLeft"), "joined"),
    ("becomes ready", make_node(ready="Unknown", reason="PeerExpired"), make_node(), "ready"),
    ("goodbye", make_node(), make_node(ready="False", reason="PeerLeft"), "not_ready"),
    ("expired", make_node(), make_node(ready="Unknown", reason="PeerExpired"), "not_ready"),
    ("left then expired", make_node(ready="False", reason="PeerLeft"),
     make_node(ready="Unknown", reason="PeerExpired"), "not_ready"),
    ("agent stopped", make_node(reason="AgentReady"),
     make_node(ready="False", reason="AgentShutdown"), "not_ready"),
    ("condition removed", make_node(), make_node(ready=None), "not_ready"),
    ("lastSeen refresh only", make_node(), make_node(last_seen=LATER), None),
    ("message only", make_node(), make_node(message="reached by node-c"), None),
    ("same", make_node(), make_node(), None),
    ("new address", make_node(), make_node(addresses=("10.77.0.3", "10.77.0.9")), "updated"),
    ("new port", make_node(), make_node(port=7947), "updated"),
    ("reason only", make_node(ready="False", reason="PeerLeft"),
     make_node(ready="False", reason="AgentShutdown"), "updated"),
    ("unmanaged now", make_node(), make_node(managed=False), "updated"),
    ("ready and moved", make_node(ready="Unknown"), make_node(addresses=("10.77.0.9",)), "ready"),
]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [row[1:] for row in CLASSIFY_TABLE],
    ids=[row[0] for row in CLASSIFY_TABLE],
)
def test_classify(old: Node | None, new: Node, expected: str | None) -> None:
    assert classify(old, new) == expected


def new_hub(**kwargs: int) -> tuple[EventHub, Metrics]:
    metrics = Metrics()
    return EventHub(metrics, clock=lambda: T0, **kwargs), metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def history(hub: EventHub) -> list[dict]:
    return hub.missed(0) or []


def test_messages_carry_the_schema() -> None:
    hub, _ = new_hub()
    hub.observe(put(make_node()))
    [msg] = history(hub)
    assert msg == {
        "seq": 1, "type": "joined", "node": "node-b", "ready": "True", "reason": "PeerAlive",
        "message": "reachable", "addresses": ["10.77.0.3"], "port": 7946, "managed": True,
        "lastSeen": "2026-11-29T12:00:00.000000Z", "ts": "2026-11-29T12:00:00.000000Z",
    }


def test_seq_increases_and_heartbeats_are_silent() -> None:
    hub, _ = new_hub()
    hub.observe(put(make_node()))
    hub.observe(put(make_node(last_seen=LATER)))
    hub.observe(put(make_node(ready="False", reason="PeerLeft")))
    hub.observe(Deleted("node-b"))
    hub.observe(Deleted("never-seen"))
    hub.rejected("Bad_Name", "invalid-name", "not a DNS-1123 subdomain")
    msgs = history(hub)
    assert [(m["seq"], m["type"]) for m in msgs] == [
        (1, "joined"), (2, "not_ready"), (3, "removed"), (4, "rejected"),
    ]
    assert msgs[2]["reason"] == "PeerLeft"  # removed: as last known
    assert msgs[3]["node"] == "Bad_Name" and msgs[3]["message"] == "not a DNS-1123 subdomain"


def test_resnapshot_after_outage_is_diffed() -> None:
    hub, _ = new_hub()
    hub.observe(Snapshot((Stored(make_node("a"), "1"), Stored(make_node("b"), "2"))))
    # During an outage: a left, b expired, c joined. The store then sends a new snapshot.
    hub.observe(Snapshot((
        Stored(make_node("b", ready="Unknown", reason="PeerExpired"), "5"),
        Stored(make_node("c"), "6"),
        Stored(make_node("d", last_seen=T0), "7"),
    )))
    hub.observe(Snapshot((
        Stored(make_node("b", ready="Unknown", reason="PeerExpired"), "5"),
        Stored(make_node("c", last_seen=LATER), "8"),
        Stored(make_node("d"), "7"),
    )))
    assert [(m["type"], m["node"]) for m in history(hub)] == [
        ("joined", "a"), ("joined", "b"),
        ("removed", "a"), ("not_ready", "b"), ("joined", "c"), ("joined", "d"),
    ]


def test_subscribe_snapshot_then_live() -> None:
    hub, metrics = new_hub()
    hub.observe(put(make_node("a")))
    sub = hub.subscribe()
    assert sample(metrics, "k3net_event_subscribers") == 1
    hub.observe(put(make_node("b")))
    got = drain(sub)
    assert got[0]["type"] == "snapshot" and got[0]["seq"] == 1
    assert [n["node"] for n in got[0]["nodes"]] == ["a"]
    assert got[0]["epoch"] == hub.epoch
    assert [(m["seq"], m["node"]) for m in got[1:]] == [(2, "b")]
    sub.close()
    sub.close()
    assert sample(metrics, "k3net_event_subscribers") == 0


def drain(sub) -> list[dict]:
    """Everything already queued for `sub`, without waiting."""
    return sub.take_queued()


@pytest.mark.parametrize(
    ("since", "epoch", "first"),
    [
        (5, None, [6, 7, 8, 9, 10]),  # missed messages only
        (10, None, []),  # nothing missed
        (2, None, [3, 4, 5, 6, 7, 8, 9, 10]),  # oldest kept is 3: since=2 is just resumable
        (1, None, "snapshot"),  # message 2 fell out of the history
        (11, None, "snapshot"),  # from the future: another agent run
        (5, "other-run", "snapshot"),
        (None, None, "snapshot"),
    ],
)
def test_resume(since: int | None, epoch: str | None, first: list[int] | str) -> None:
    hub, _ = new_hub(history=8)
    for i in range(10):
        hub.observe(put(make_node(f"n{i}")))
    sub = hub.subscribe(since, epoch)
    got = drain(sub)
    if first == "snapshot":
        assert [m["type"] for m in got] == ["snapshot"]
        assert got[0]["seq"] == 10 and len(got[0]["nodes"]) == 10
    else:
        assert [m["seq"] for m in got] == first
    sub.close()


def test_a_flood_of_rejections_keeps_every_node_change_resumable() -> None:
    hub, metrics = new_hub(history=8, rejected_history=4)
    hub.observe(put(make_node("a")))  # seq 1
    for i in range(100):
        hub.rejected(f"bad-{i}._k3._tcp.local.", "invalid-name")
    hub.observe(put(make_node("b")))
    got = drain(hub.subscribe(0))
    # Both Node changes, and only the last 4 rejections, in seq order.
    assert [m["node"] for m in got] == [
        "a", "bad-96._k3._tcp.local.", "bad-97._k3._tcp.local.", "bad-98._k3._tcp.local.",
        "bad-99._k3._tcp.local.", "b"]
    assert [m["seq"] for m in got] == sorted(m["seq"] for m in got)
    assert sample(metrics, "k3net_limit_hits_total", limit="rejected-history") == 96


def test_a_repeated_rejection_is_one_message() -> None:
    hub, _ = new_hub(rejected_history=4)
    sub = hub.subscribe()
    drain(sub)
    for _ in range(10):
        hub.rejected("x._k3._tcp.local.", "bad-port", "TXT port 'x'")
    hub.rejected("x._k3._tcp.local.", "no-address")  # another reason is news
    assert [(m["node"], m["reason"]) for m in drain(sub)] == [
        ("x._k3._tcp.local.", "bad-port"), ("x._k3._tcp.local.", "no-address")]
    for i in range(4):  # pushes both out of the ring: the next one is news again
        hub.rejected(f"y{i}", "bad-port")
    drain(sub)
    hub.rejected("x._k3._tcp.local.", "bad-port")
    assert [m["node"] for m in drain(sub)] == ["x._k3._tcp.local."]


def test_resume_with_own_epoch() -> None:
    hub, _ = new_hub()
    hub.observe(put(make_node("a")))
    hub.observe(put(make_node("b")))
    assert [m["node"] for m in drain(hub.subscribe(1, hub.epoch))] == ["b"]


async def test_full_queue_drops_the_subscriber_only() -> None:
    hub, metrics = new_hub(queue_size=4)
    slow, fast = hub.subscribe(), hub.subscribe()
    received: list[int] = []
    for i in range(10):
        hub.observe(put(make_node(f"n{i}")))  # never blocks, whatever the subscribers do
        received += [m["seq"] for m in drain(fast) if m["type"] != "snapshot"]
    assert received == list(range(1, 11))
    assert slow.dropped and not fast.dropped
    assert [m async for m in slow] == []  # a dropped subscriber stops at once
    assert sample(metrics, "k3net_event_subscribers_dropped_total") == 1
    assert sample(metrics, "k3net_event_subscribers") == 1
    assert hub.subscriber_count == 1


async def test_close_ends_every_subscription() -> None:
    hub, metrics = new_hub()
    subs = [hub.subscribe() for _ in range(3)]
    hub.observe(put(make_node("a")))
    hub.close()
    for sub in subs:
        got = [m async for m in sub]
        assert [m["type"] for m in got] == ["snapshot", "joined"]  # queued messages still go out
        assert sub.ended == "shutdown" and not sub.dropped
    late = hub.subscribe()
    assert [m["type"] async for m in late] == ["snapshot"]
    assert late.ended == "shutdown"
    assert sample(metrics, "k3net_event_subscribers") == 0
    hub.close()


async def test_subscriber_waits_for_live_messages() -> None:
    hub, _ = new_hub()
    got: list[str] = []
    with hub.subscribe() as sub:
        async with trio.open_nursery() as nursery:
            async def consume() -> None:
                async for m in sub:
                    got.append(m["type"])
                    if m["type"] == "removed":
                        return

            nursery.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()
            hub.observe(put(make_node()))
            hub.observe(Deleted("node-b"))
    assert got == ["snapshot", "joined", "removed"]

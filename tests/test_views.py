"""`k3net nodes` formatting and `k3net watch` (including its reconnects with ?since=)."""

from __future__ import annotations

import datetime as dt
import io
import json
from functools import partial

import pytest
import trio
import trio.testing

from k3net.model import ANN_PID
from k3net.store.base import Stored
from k3net.views import WatchError, age, events_url, format_event, format_nodes, watch
from tests.test_events import T0, make_node
from tests.test_web import start_server, start_web, write_nodes


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-5, "0s"), (0, "0s"), (12.9, "12s"), (119, "119s"), (120, "2m"), (200, "3m20s"),
     (600, "10m"), (179 * 60, "179m"), (3 * 3600, "3h"), (5 * 3600 + 600, "5h10m"),
     (30 * 3600, "30h"), (3 * 86400 + 4 * 3600, "3d4h"), (12 * 86400, "12d")],
)
def test_age(seconds: float, text: str) -> None:
    assert age(seconds) == text


NOW = T0 + dt.timedelta(seconds=12)


def sample_nodes() -> list[Stored]:
    a = make_node("node-a", reason="AgentReady", addresses=("10.77.0.2", "2001:db8::2"))
    a.metadata.annotations[ANN_PID] = "4242"
    b = make_node("node-b", ready="False", reason="PeerLeft",
                  last_seen=T0 - dt.timedelta(minutes=3))
    c = make_node("node-c", ready="Unknown", reason="PeerExpired", addresses=(), port=None)
    d = make_node("worker-1", ready=None, managed=False)  # the k3 controller's, no condition
    d.metadata.creation_timestamp = None
    return [Stored(n, str(i)) for i, n in enumerate([a, b, c, d])]


def test_format_nodes_table() -> None:
    assert format_nodes(sample_nodes(), NOW, "table") == (
        "NAME       STATUS     REASON        LASTSEEN   AGE         ADDRESS     MANAGED\n"
        "node-a     Ready      AgentReady    12s        12s         10.77.0.2   true\n"
        "node-b     NotReady   PeerLeft      3m12s      12s         10.77.0.3   true\n"
        "node-c     Unknown    PeerExpired   12s        12s         <none>      true\n"
        "worker-1   Unknown    <none>        12s        <unknown>   10.77.0.3   false\n"
    )


def test_format_nodes_wide() -> None:
    lines = format_nodes(sample_nodes(), NOW, "wide").splitlines()
    assert lines[0].split() == [
        "NAME", "STATUS", "REASON", "LASTSEEN", "AGE", "ADDRESSES", "MANAGED", "PORT", "PID"]
    assert lines[1].split() == [
        "node-a", "Ready", "AgentReady", "12s", "12s", "10.77.0.2,2001:db8::2", "true", "7946",
        "4242"]
    assert lines[3].split()[-2:] == ["<none>", "<none>"]


def test_format_nodes_json_is_a_node_list() -> None:
    data = json.loads(format_nodes(sample_nodes(), NOW, "json"))
    assert (data["apiVersion"], data["kind"]) == ("v1", "NodeList")
    assert [n["metadata"]["name"] for n in data["items"]] == [
        "node-a", "node-b", "node-c", "worker-1"]
    assert data["items"][1]["status"]["conditions"][0]["reason"] == "PeerLeft"


def test_format_nodes_empty_and_bad_format() -> None:
    assert format_nodes([], NOW, "") == "No nodes found.\n"
    assert json.loads(format_nodes([], NOW, "json"))["items"] == []
    with pytest.raises(ValueError, match="yaml"):
        format_nodes([], NOW, "yaml")


@pytest.mark.parametrize(
    ("url", "since", "epoch", "expected"),
    [
        ("ws://127.0.0.1:7946/events", None, None, "ws://127.0.0.1:7946/events"),
        ("http://10.77.0.2:7946", 42, None, "ws://10.77.0.2:7946/events?since=42"),
        ("10.77.0.2:7946", 42, "ab12", "ws://10.77.0.2:7946/events?since=42&epoch=ab12"),
        ("ws://[::1]:7946/events?since=3", 7, None, "ws://[::1]:7946/events?since=7"),
    ],
)
def test_events_url(url: str, since: int | None, epoch: str | None, expected: str) -> None:
    assert events_url(url, since, epoch) == expected


def test_format_event_lines() -> None:
    msg = {"seq": 42, "type": "ready", "node": "node-b", "ready": "True", "reason": "PeerAlive",
           "addresses": ["10.77.0.3"], "ts": "2026-11-29T12:00:01.5Z"}
    [line] = format_event(msg)
    assert line.split()[1:] == ["#42", "ready", "node-b", "True", "PeerAlive", "10.77.0.3"]
    snap = {"seq": 7, "type": "snapshot", "ts": "2026-11-29T12:00:01Z",
            "nodes": [dict(msg, node="a"), dict(msg, node="b")]}
    assert [ln.split()[2:4] for ln in format_event(snap)] == [["snapshot", "a"], ["snapshot", "b"]]
    assert format_event(dict(snap, nodes=[]))[0].endswith("snapshot  (no nodes)")
    rejected = {"seq": 8, "type": "rejected", "node": "Bad_Name", "ready": None,
                "reason": "invalid-name", "message": "upper case", "addresses": [], "ts": None}
    assert format_event(rejected)[0].split() == [
        "--:--:--", "#8", "rejected", "Bad_Name", "-", "invalid-name", "-", "upper", "case"]


class Output(io.StringIO):
    """What `watch` prints, with a way to wait for it."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = trio.Event()

    def write(self, text: str) -> int:
        self._changed.set()
        return super().write(text)

    async def wait_for(self, predicate) -> list[str]:
        with trio.fail_after(5):
            while not predicate(self.getvalue().splitlines()):
                self._changed = trio.Event()
                await self._changed.wait()
        return self.getvalue().splitlines()

    async def messages(self, count: int) -> list[dict]:
        lines = await self.wait_for(lambda lines: len(lines) >= count)
        return [json.loads(line) for line in lines]


FAST = {"backoff": 0.02, "max_backoff": 0.1}


async def test_watch_resumes_with_since_after_a_restart(nursery: trio.Nursery) -> None:
    web = await start_web(nursery)
    await write_nodes(web.store, make_node("n1"))
    out = Output()
    nursery.start_soon(partial(watch, f"127.0.0.1:{web.port}", True, out, 50, **FAST))
    assert (await out.messages(1))[0]["type"] == "snapshot"
    await write_nodes(web.store, make_node("n2"))
    await out.messages(2)

    await web.stop()  # the listener goes away; the hub (and the store watch) carry on
    await write_nodes(web.store, make_node("n3"), make_node("n4"))
    await trio.testing.wait_all_tasks_blocked()
    await start_server(nursery, web.state, web.port)
    await out.messages(4)
    await write_nodes(web.store, make_node("n5"))
    got = await out.messages(5)
    assert [(m["type"], m["seq"]) for m in got] == [
        ("snapshot", 1), ("joined", 2), ("joined", 3), ("joined", 4), ("joined", 5)]


async def test_watch_after_agent_restart_gets_a_snapshot(nursery: trio.Nursery) -> None:
    first = await start_web(nursery)
    await write_nodes(first.store, make_node("n1"), make_node("n2"), make_node("n3"))
    out = Output()
    url = f"ws://127.0.0.1:{first.port}/events"
    nursery.start_soon(partial(watch, url, False, out, 50, **FAST))
    await out.wait_for(lambda lines: len(lines) == 3)
    first.hub.close()
    await first.stop()
    # A new agent run on the same port: new hub (new epoch, seq from 1), same store.
    await start_web(nursery, store=first.store, port=first.port)
    lines = await out.wait_for(lambda lines: len(lines) == 6)
    assert [ln.split()[2:4] for ln in lines] == [["snapshot", f"n{i}"] for i in (1, 2, 3)] * 2


async def test_watch_gives_up_after_max_reconnects() -> None:
    with trio.fail_after(5), pytest.raises(WatchError, match="giving up after 2 reconnects"):
        await watch("ws://127.0.0.1:9/events", False, io.StringIO(), 2, **FAST)


async def test_watch_stops_when_rejected(nursery: trio.Nursery) -> None:
    web = await start_web(nursery)
    with trio.fail_after(5), pytest.raises(WatchError, match="403"):
        await watch(f"ws://127.0.0.1:{web.port}/nope", False, io.StringIO())


def test_nodes_main_prints_the_store(capsys: pytest.CaptureFixture[str]) -> None:
    from k3net.config import StorageConfig
    from k3net.views import nodes_main

    assert nodes_main(StorageConfig(type="memory"), "table") == 0
    assert capsys.readouterr().out == "No nodes found.\n"

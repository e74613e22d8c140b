"""The commands `nodes`, `peers`, `watch`: their formats (pure), `k3net nodes` against an agent
(its /nodes and /events, served in-process), and `k3net watch` reconnecting with ?since=."""

from __future__ import annotations

import datetime as dt
import io
import json
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
import yaml

from k3net import cli
from k3net.backoff import Backoff
from k3net.commands import Table, table
from k3net.commands.nodes import (
    AgentSource,
    Query,
    Requirement,
    age,
    follow,
    format_nodes,
    parse_selector,
    show,
)
from k3net.commands.peers import PeerInfo, format_peers
from k3net.commands.watch import events_url, format_event, render, watch
from k3net.core.messages import ProbeResult
from k3net.model import ANN_PID, LABEL_MANAGED, Node
from tests.helpers.commands import Output
from tests.helpers.nodes import T0, make_node
from tests.helpers.web import start_server, start_web, write_nodes


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-5, "0s"), (0, "0s"), (12.9, "12s"), (119, "119s"), (120, "2m"), (200, "3m20s"),
     (600, "10m"), (179 * 60, "179m"), (3 * 3600, "3h"), (5 * 3600 + 600, "5h10m"),
     (30 * 3600, "30h"), (3 * 86400 + 4 * 3600, "3d4h"), (12 * 86400, "12d")],
)
def test_age(seconds: float, text: str) -> None:
    assert age(seconds) == text


NOW = T0 + dt.timedelta(seconds=12)


def sample_nodes() -> list[Node]:
    a = make_node("node-a", reason="AgentReady", addresses=("10.77.0.2", "2001:db8::2"))
    a.metadata.annotations[ANN_PID] = "4242"
    b = make_node("node-b", ready="False", reason="PeerLeft",
                  last_seen=T0 - dt.timedelta(minutes=3))
    c = make_node("node-c", ready="Unknown", reason="PeerExpired", addresses=(), port=None)
    d = make_node("worker-1", ready=None, managed=False)  # the k3 controller's, no condition
    d.metadata.creation_timestamp = None
    return [a, b, c, d]


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


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_format_nodes_as_a_node_list(output: str) -> None:
    text = format_nodes(sample_nodes(), NOW, output)
    data = json.loads(text) if output == "json" else yaml.safe_load(text)
    assert (data["apiVersion"], data["kind"]) == ("v1", "NodeList")
    assert [n["metadata"]["name"] for n in data["items"]] == [
        "node-a", "node-b", "node-c", "worker-1"]
    assert data["items"][1]["status"]["conditions"][0]["reason"] == "PeerLeft"


def test_json_and_yaml_say_the_same() -> None:
    nodes = sample_nodes()
    assert json.loads(format_nodes(nodes, NOW, "json")) == \
        yaml.safe_load(format_nodes(nodes, NOW, "yaml"))


def test_format_nodes_empty_and_bad_format() -> None:
    assert format_nodes([], NOW, "table") == "No nodes found.\n"
    assert json.loads(format_nodes([], NOW, "json"))["items"] == []
    assert yaml.safe_load(format_nodes([], NOW, "yaml"))["items"] == []
    with pytest.raises(ValueError, match="yaml"):
        format_nodes([], NOW, "xml")


def test_one_table_printer() -> None:
    assert table(["A", "LONGER"], [["xx", "1"], ["y", ""]]) == "A    LONGER\nxx   1\ny\n"
    printer = Table(["NAME", "X"])
    assert printer.lines([["a", "1"]], header=True) == "NAME   X\na      1\n"
    assert printer.lines([["b", "2"]]) == "b      2\n"  # a stream keeps its column widths


# --- selecting Nodes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a=b", (Requirement("a", "=", "b"),)),
        ("a==b", (Requirement("a", "=", "b"),)),
        ("k3.network/managed!=true", (Requirement("k3.network/managed", "!=", "true"),)),
        ("zone", (Requirement("zone", "exists"),)),
        ("!zone", (Requirement("zone", "!exists"),)),
        ("a=b, c=", (Requirement("a", "=", "b"), Requirement("c", "=", ""))),
    ],
)
def test_parse_selector(text: str, expected: tuple[Requirement, ...]) -> None:
    assert parse_selector(text) == expected


@pytest.mark.parametrize("text", ["", "a=b,", "=b", "a=b c", "!a=b", "a in (b)", "a=b=c"])
def test_bad_selector_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_selector(text)


def test_bad_selector_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["nodes", "-l", "a=b c"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_query_by_name_and_label() -> None:
    nodes = sample_nodes()
    nodes[0].metadata.labels["zone"] = "a"
    found, missing = Query(("worker-1", "nope", "node-a")).pick(nodes)
    assert [n.name for n in found] == ["worker-1", "node-a"]  # in the order asked for
    assert missing == ["nope"]
    managed, _ = Query(selector=parse_selector(f"{LABEL_MANAGED}=true")).pick(nodes)
    assert [n.name for n in managed] == ["node-a", "node-b", "node-c"]
    zone, _ = Query(selector=parse_selector("zone,!nothing")).pick(nodes)
    assert [n.name for n in zone] == ["node-a"]


@pytest.mark.parametrize(
    ("argv", "output"),
    [(["nodes"], "table"), (["nodes", "-o", "yaml"], "yaml"), (["nodes", "--json"], "json"),
     (["peers", "--json"], "json"), (["peers", "-o", "wide"], "wide"),
     (["watch", "--json"], "json"), (["watch", "-o", "yaml"], "yaml")],
)
def test_one_output_option_and_the_old_spelling(argv: list[str], output: str) -> None:
    assert cli.parse_args(argv).output == output


def test_server_and_config_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["nodes", "--server", "http://x:1", "--config", "k3.yaml"])
    assert exc.value.code == 2


# --- peers --------------------------------------------------------------------------------------


def test_format_peers_wide_and_yaml() -> None:
    peers = [PeerInfo("node-a", ("10.0.0.1",), 7946, 12,
                      ProbeResult("node-a", "confirmed", 0.0004, address="10.0.0.1"))]
    wide = format_peers(peers, "wide").splitlines()
    assert wide[0].split() == ["NAME", "ADDRESSES", "PORT", "PID", "PROBE", "PROBED"]
    assert wide[1].split() == ["node-a", "10.0.0.1", "7946", "12", "confirmed", "0.4ms", "10.0.0.1"]
    assert yaml.safe_load(format_peers(peers, "yaml")) == json.loads(format_peers(peers, "json"))


# --- watch formats ------------------------------------------------------------------------------


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


MSG = {"seq": 42, "type": "ready", "node": "node-b", "ready": "True", "reason": "PeerAlive",
       "message": "probe answered", "addresses": ["10.77.0.3"], "port": 7946,
       "lastSeen": "2026-11-29T12:00:01.5Z", "ts": "2026-11-29T12:00:01.5Z"}


def test_format_event_lines() -> None:
    [line] = format_event(MSG)
    assert line.split()[1:] == ["#42", "ready", "node-b", "True", "PeerAlive", "10.77.0.3"]
    [wide] = format_event(MSG, "wide")
    assert wide.split()[7:] == ["7946", "2026-11-29T12:00:01.5Z", "probe", "answered"]
    snap = {"seq": 7, "type": "snapshot", "ts": "2026-11-29T12:00:01Z",
            "nodes": [dict(MSG, node="a"), dict(MSG, node="b")]}
    assert [ln.split()[2:4] for ln in format_event(snap)] == [["snapshot", "a"], ["snapshot", "b"]]
    assert format_event(dict(snap, nodes=[]))[0].endswith("snapshot  (no nodes)")
    rejected = {"seq": 8, "type": "rejected", "node": "Bad_Name", "ready": None,
                "reason": "invalid-name", "message": "upper case", "addresses": [], "ts": None}
    assert format_event(rejected)[0].split() == [
        "--:--:--", "#8", "rejected", "Bad_Name", "-", "invalid-name", "-", "upper", "case"]


def test_watch_json_is_one_object_per_line_and_yaml_one_document_each() -> None:
    assert json.loads(render(MSG, "json")) == MSG
    assert render(MSG, "json").count("\n") == 1
    stream = render(MSG, "yaml") + render(dict(MSG, seq=43), "yaml")
    assert [d["seq"] for d in yaml.safe_load_all(stream)] == [42, 43]


# --- against an agent's endpoints, in-process -----------------------------------------------------


FAST = {"backoff": Backoff(0.02, 0.1)}


async def test_nodes_asks_the_agent(nursery: trio.Nursery) -> None:
    web = await start_web(nursery)
    await write_nodes(web.store, make_node("n1"), make_node("n2", ready="False", reason="PeerLeft"))
    source = AgentSource(f"127.0.0.1:{web.port}")
    out = io.StringIO()
    assert await show(source, Query(), "json", out) == 0
    assert [n["metadata"]["name"] for n in json.loads(out.getvalue())["items"]] == ["n1", "n2"]
    out = io.StringIO()
    assert await show(source, Query(("n2",)), "table", out) == 0
    assert [line.split()[:3] for line in out.getvalue().splitlines()] == [
        ["NAME", "STATUS", "REASON"], ["n2", "NotReady", "PeerLeft"]]


async def test_nodes_asked_by_name_missing_is_exit_1(
    nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:
    web = await start_web(nursery)
    await write_nodes(web.store, make_node("n1"))
    out = io.StringIO()
    assert await show(AgentSource(web.url("")), Query(("n1", "n9")), "table", out) == 1
    assert [line.split()[0] for line in out.getvalue().splitlines()] == ["NAME", "n1"]
    assert "'n9' not found" in capsys.readouterr().err


def test_nodes_without_an_agent_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 9 (discard) on loopback: nothing listens there.
    assert cli.main(["nodes", "--server", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "no k3net agent answers at http://127.0.0.1:9" in err


def test_nodes_without_config_asks_the_local_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("K3NET_CONFIG", "CONFIG_PATH"):
        monkeypatch.delenv(name, raising=False)
    seen: list[Any] = []

    def fake_main(*args: Any) -> int:
        seen.append(args)
        return 0

    monkeypatch.setattr("k3net.commands.nodes.main", fake_main)
    assert cli.main(["nodes"]) == 0
    assert seen[0][0] == AgentSource("http://127.0.0.1:7946")


async def test_nodes_watch_follows_the_agent(nursery: trio.Nursery) -> None:
    web = await start_web(nursery)
    await write_nodes(web.store, make_node("n1"))
    out = Output()
    nursery.start_soon(follow, AgentSource(web.url("")), Query(), "table", out)
    await out.wait_for(lambda lines: len(lines) == 2)
    await write_nodes(web.store, make_node("n2"))
    stored = await web.store.get("n1")
    await web.store.update(make_node("n1", ready="False", reason="PeerLeft"), stored.version)
    lines = await out.wait_for(lambda lines: len(lines) == 4)
    assert [line.split()[:3] for line in lines] == [
        ["NAME", "STATUS", "REASON"], ["n1", "Ready", "PeerAlive"], ["n2", "Ready", "PeerAlive"],
        ["n1", "NotReady", "PeerLeft"]]


async def test_nodes_watch_yaml_with_a_selector(nursery: trio.Nursery) -> None:
    web = await start_web(nursery)
    out = Output()
    query = Query(selector=parse_selector(f"{LABEL_MANAGED}=true"))
    nursery.start_soon(follow, AgentSource(web.url("")), query, "yaml", out)
    await out.wait_for(lambda lines: True)
    await write_nodes(web.store, make_node("other", managed=False), make_node("n1"))
    await out.wait_for(lambda lines: "---" in lines)
    await trio.testing.wait_all_tasks_blocked()
    docs = list(yaml.safe_load_all(out.getvalue()))
    assert [d["metadata"]["name"] for d in docs] == ["n1"]


async def test_watch_resumes_with_since_after_a_restart(nursery: trio.Nursery) -> None:
    web = await start_web(nursery)
    await write_nodes(web.store, make_node("n1"))
    out = Output()
    nursery.start_soon(partial(watch, f"127.0.0.1:{web.port}", "json", out,
                               max_reconnects=50, **FAST))
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
    nursery.start_soon(partial(watch, url, "table", out, max_reconnects=50, **FAST))
    await out.wait_for(lambda lines: len(lines) == 3)
    first.hub.close()
    await first.stop()
    # A new agent run on the same port: new hub (new epoch, seq from 1), same store.
    await start_web(nursery, store=first.store, port=first.port)
    lines = await out.wait_for(lambda lines: len(lines) == 6)
    assert [ln.split()[2:4] for ln in lines] == [["snapshot", f"n{i}"] for i in (1, 2, 3)] * 2


async def test_watch_gives_up_after_max_reconnects() -> None:
    from k3net.commands import CommandError

    with trio.fail_after(5), pytest.raises(CommandError, match="giving up after 2 reconnects"):
        await watch("ws://127.0.0.1:9/events", "table", io.StringIO(), max_reconnects=2, **FAST)


async def test_watch_stops_when_rejected(nursery: trio.Nursery) -> None:
    from k3net.commands import CommandError

    web = await start_web(nursery)
    with trio.fail_after(5), pytest.raises(CommandError, match="403"):
        await watch(f"ws://127.0.0.1:{web.port}/nope", "table", io.StringIO())

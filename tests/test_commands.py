"""The commands `nodes`, `peers`, `watch`: their formats (pure), `k3net nodes` against an agent
(its /nodes and /events, served in-process), and `k3net watch` reconnecting with ?since=."""

from __future__ import annotations

import datetime as dt
import io
import json
import sys
import time
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
import yaml

from k3net import cli
from k3net.backoff import Backoff
from k3net.commands import Table, agent_server, table
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

from .helpers.commands import Output, exit_code, free_port
from .helpers.nodes import T0, make_node
from .helpers.web import start_server, start_web, write_nodes


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
    assert format_nodes([], NOW, "table") == ""  # the command says so on stderr
    assert format_nodes([], NOW, "name") == ""
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
        ("a=b", (Requirement("a", "=", ("b",)),)),
        ("a==b", (Requirement("a", "=", ("b",)),)),
        ("k3.network/managed!=true", (Requirement("k3.network/managed", "!=", ("true",)),)),
        ("zone", (Requirement("zone", "exists"),)),
        ("!zone", (Requirement("zone", "!exists"),)),
        ("a=b, c=", (Requirement("a", "=", ("b",)), Requirement("c", "=", ("",)))),
        ("env in (a,b)", (Requirement("env", "in", ("a", "b")),)),
        ("env notin ( a , b ),tier", (Requirement("env", "notin", ("a", "b")),
                                      Requirement("tier", "exists"))),
        ("env in (a),!gpu", (Requirement("env", "in", ("a",)), Requirement("gpu", "!exists"))),
        ("env in ()", (Requirement("env", "in", ("",)),)),  # as labels.Parse: the empty value
        ("rank>2,rank<10", (Requirement("rank", "gt", ("2",)), Requirement("rank", "lt", ("10",)))),
    ],
)
def test_parse_selector(text: str, expected: tuple[Requirement, ...]) -> None:
    assert parse_selector(text) == expected


@pytest.mark.parametrize("text", ["", "a=b,", "=b", "a=b c", "!a=b", "a=b=c", "a in b",
                                  "a in (b", "a in (b c)", "a notin (b))", "a>b", "in (a)",
                                  "a=" + "x" * 64, "Bad Key=x"])
def test_bad_selector_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid label selector"):
        parse_selector(text)


@pytest.mark.parametrize(
    ("selector", "names"),
    [
        ("env in (prod,staging)", ["a", "b"]),
        ("env notin (prod)", ["b", "c", "d"]),  # as Kubernetes: no label matches notin
        ("env!=prod", ["b", "c", "d"]),
        ("env", ["a", "b", "c"]),
        ("!env", ["d"]),
        ("env=dev,gpu", ["c"]),
        ("rank>1", ["b"]),
        ("rank<2", ["a"]),
    ],
)
def test_set_based_selectors_pick_as_kubectl(selector: str, names: list[str]) -> None:
    # "٣" is a digit to Python's int(), not to Kubernetes: no number, so never picked
    labels = {"a": {"env": "prod", "rank": "1"}, "b": {"env": "staging", "rank": "3"},
              "c": {"env": "dev", "gpu": "", "rank": "x"}, "d": {"rank": "٣"}}
    nodes = []
    for name, more in labels.items():
        node = make_node(name)
        node.metadata.labels.update(more)
        nodes.append(node)
    found, _ = Query(selector=parse_selector(selector)).pick(nodes)
    assert [n.name for n in found] == names


def test_nodes_set_based_selector_on_the_command_line() -> None:
    args = cli.parse_args(["nodes", "-l", "env in (a,b),!gpu"])
    assert args.selector == (Requirement("env", "in", ("a", "b")), Requirement("gpu", "!exists"))


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


def test_output_name_and_no_headers() -> None:
    nodes = sample_nodes()
    assert format_nodes(nodes, NOW, "name") == (
        "node/node-a\nnode/node-b\nnode/node-c\nnode/worker-1\n")
    plain = format_nodes(nodes, NOW, "table").splitlines()
    assert format_nodes(nodes, NOW, "table", headers=False).splitlines() == plain[1:]
    wide = format_nodes(nodes, NOW, "wide", headers=False).splitlines()
    assert wide[0].split()[0] == "node-a" and len(wide) == 4
    args = cli.parse_args(["nodes", "--no-headers", "-o", "name"])
    assert (args.headers, args.output) == (False, "name")
    assert cli.parse_args(["peers", "--no-headers"]).headers is False


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("name", ["node-a", "node-b", "node-c", "worker-1"]),
        ("STATUS", ["node-b", "node-a", "node-c", "worker-1"]),  # NotReady, Ready, Unknown
        ("lastseen", ["node-b", "node-a", "node-c", "worker-1"]),  # oldest first
        ("pid", ["node-a", "node-b", "node-c", "worker-1"]),  # without the field: last
        (".metadata.labels.zone", ["node-c", "node-a", "node-b", "worker-1"]),
        ("{.status.addresses[1].address}", ["node-a", "node-b", "worker-1", "node-c"]),
    ],
)
def test_sort_by_a_column_or_a_field_path(spec: str, names: list[str]) -> None:
    nodes = sample_nodes()
    nodes[0].metadata.labels["zone"] = "b"
    nodes[2].metadata.labels["zone"] = "a"
    found, _ = Query(sort=spec).pick(nodes)
    assert [n.name for n in found] == names


@pytest.mark.parametrize("command", ["nodes", "peers"])
@pytest.mark.parametrize("spec", ["colour", ".", "..x", ".a[b]"])
def test_bad_sort_by_exits_2_with_one_line(
    command: str, spec: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.parse_args([command, "--sort-by", spec])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith(f"k3net {command}: error: --sort-by: cannot sort by")


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


@pytest.mark.parametrize(
    "argv", [["nodes", "--server", "ftp://x"], ["peers", "--server", "ftp://x"],
             ["watch", "ftp://x"], ["nodes", "--server", "http://"]])
def test_a_server_that_is_not_an_agent_url_exits_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_code(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"k3net {argv[0]}: error:")
    assert "not an agent's URL" in err


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("K3NET_SERVER", "K3NET_LISTEN", "K3NET_CONFIG", "CONFIG_PATH"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("env", "config", "server"),
    [
        ({}, None, "http://127.0.0.1:7946"),
        ({"K3NET_SERVER": "10.0.0.5:7950"}, None, "http://10.0.0.5:7950"),
        ({"K3NET_LISTEN": ":7947"}, None, "http://127.0.0.1:7947"),
        ({"K3NET_LISTEN": "[::]:7948"}, None, "http://[::1]:7948"),
        ({"K3NET_LISTEN": "10.0.0.7:7949"}, None, "http://10.0.0.7:7949"),
        ({}, "0.0.0.0:7951", "http://127.0.0.1:7951"),
        ({"K3NET_LISTEN": ":7952"}, ":7951", "http://127.0.0.1:7952"),
        ({"K3NET_SERVER": "https://h:1", "K3NET_LISTEN": ":7952"}, None, "https://h:1"),
    ],
)
def test_which_agent_a_client_asks(
    env: dict[str, str], config: str | None, server: str, tmp_path: Any
) -> None:
    if config is not None:
        path = tmp_path / "k3.yaml"
        path.write_text(f"storage:\n  type: memory\nnetwork:\n  listen: '{config}'\n")
        env = dict(env, K3NET_CONFIG=str(path))
    assert agent_server(None, env) == server
    assert agent_server("http://other:1/x", env) == "http://other:1"  # --server wins


@pytest.mark.parametrize(
    ("env", "where"), [({"K3NET_SERVER": "ftp://x"}, "K3NET_SERVER"),
                       ({"K3NET_LISTEN": "7946"}, "K3NET_LISTEN")])
def test_a_bad_server_from_the_environment_exits_2(
    env: dict[str, str], where: str, clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert cli.main(["watch"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"k3net watch: error: {where}")


def test_nodes_asks_the_agent_of_k3net_listen(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("K3NET_LISTEN", ":7947")
    seen: list[Any] = []

    def fake_main(*args: Any) -> int:
        seen.append(args)
        return 0

    clean_env.setattr("k3net.commands.nodes.main", fake_main)
    assert cli.main(["nodes"]) == 0
    assert seen[0][0] == AgentSource("http://127.0.0.1:7947")


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
    assert line.split()[1:] == ["#42", "ready", "node-b", "Ready", "PeerAlive", "10.77.0.3"]
    words = [format_event(dict(MSG, ready=r))[0].split()[4] for r in ("False", "Unknown")]
    assert words == ["NotReady", "Unknown"]  # one vocabulary, as `k3net nodes`
    # Columns stay aligned whatever the Ready word and reason.
    lines = [format_event(dict(MSG, ready=r, reason=why))[0]
             for r, why in (("True", "PeerAlive"), ("False", "PeerRefused"),
                            ("Unknown", "AgentShutdown"))]
    assert len({line.index("10.77.0.3") for line in lines}) == 1
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


def test_watch_name_output() -> None:
    snap = {"seq": 7, "type": "snapshot", "nodes": [dict(MSG, node="a"), dict(MSG, node="b")]}
    assert render(snap, "name") + render(MSG, "name") == "node/a\nnode/b\nnode/node-b\n"


def test_watch_json_is_one_object_per_line_and_yaml_one_document_each() -> None:
    assert json.loads(render(MSG, "json")) == MSG
    assert render(MSG, "json").count("\n") == 1
    stream = render(MSG, "yaml") + render(dict(MSG, seq=43), "yaml")
    assert [d["seq"] for d in yaml.safe_load_all(stream)] == [42, 43]


# --- against an agent's endpoints, in-process -----------------------------------------------------


FAST = Backoff(0.02, 0.1)


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
                               max_reconnects=50, backoff=FAST))
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
    nursery.start_soon(partial(watch, url, "table", out, max_reconnects=50, backoff=FAST))
    await out.wait_for(lambda lines: len(lines) == 3)
    first.hub.close()
    await first.stop()
    # A new agent run on the same port: new hub (new epoch, seq from 1), same store.
    await start_web(nursery, store=first.store, port=first.port)
    lines = await out.wait_for(lambda lines: len(lines) == 6)
    assert [ln.split()[2:4] for ln in lines] == [["snapshot", f"n{i}"] for i in (1, 2, 3)] * 2


async def test_watch_gives_up_after_max_reconnects(nursery: trio.Nursery) -> None:
    from k3net.commands import CommandError

    web = await start_web(nursery)
    out = Output()

    async def stop_once_connected() -> None:
        await out.messages(1)
        await web.stop()  # connected once: reconnects are tried, then given up

    nursery.start_soon(stop_once_connected)
    with trio.fail_after(5), pytest.raises(CommandError, match="giving up after 2 reconnects"):
        await watch(web.url(""), "json", out, max_reconnects=2, backoff=FAST)


async def test_watch_without_an_agent_fails_at_once() -> None:
    from k3net.commands import CommandError

    with trio.fail_after(1), pytest.raises(CommandError, match="no k3net agent answers") as exc:
        await watch("ws://127.0.0.1:9/events", "table", io.StringIO(), backoff=FAST)
    assert "connection refused" in str(exc.value) and "--retry" in str(exc.value)


async def test_watch_retry_waits_for_an_agent(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    err = Output()
    monkeypatch.setattr(sys, "stderr", err)
    port = free_port()
    out = Output()
    nursery.start_soon(partial(watch, f"127.0.0.1:{port}", "json", out, retry=True,
                               max_reconnects=1, backoff=FAST))
    # More failures than max_reconnects, and still trying.
    await err.wait_for(lambda lines: sum("reconnecting" in line for line in lines) >= 3)
    web = await start_web(nursery, port=port)
    await write_nodes(web.store, make_node("n1"))
    assert (await out.messages(1))[0]["type"] == "snapshot"


async def test_nodes_watch_reports_as_nodes(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    err = Output()
    monkeypatch.setattr(sys, "stderr", err)
    web = await start_web(nursery)
    out = Output()
    nursery.start_soon(follow, AgentSource(web.url("")), Query(), "json", out)
    await write_nodes(web.store, make_node("n1"))
    await out.messages(1)
    await web.stop()
    lines = await err.wait_for(lambda lines: any("reconnecting" in line for line in lines))
    assert lines[0].startswith("k3net nodes: ") and "k3net watch" not in err.getvalue()


async def test_nodes_watch_rows_stay_under_the_header(nursery: trio.Nursery) -> None:
    web = await start_web(nursery)
    await write_nodes(web.store, make_node("n1", last_seen=T0))
    out = Output()
    nursery.start_soon(follow, AgentSource(web.url("")), Query(), "wide", out)
    await out.wait_for(lambda lines: len(lines) == 2)
    # Later rows with the longest values of each column's vocabulary.
    stored = await web.store.get("n1")
    await web.store.update(make_node("n1", ready="Unknown", reason="PeerExpired",
                                     addresses=("192.168.100.200",), port=65535), stored.version)
    await write_nodes(web.store, make_node("node-twelve-ch", ready="False", reason="AgentShutdown",
                                           addresses=()))
    lines = await out.wait_for(lambda lines: len(lines) == 4)
    header = lines[0]
    starts = [header.index(word) for word in header.split()]
    for line in lines[1:]:
        cells = line.split()
        assert [line.index(cell, start) for cell, start in zip(cells, starts, strict=True)] == \
            starts, line


def test_no_nodes_found_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    async def run() -> int:
        async with trio.open_nursery() as nursery:
            web = await start_web(nursery)
            code = await show(AgentSource(web.url("")), Query(), "table")
            nursery.cancel_scope.cancel()
        return code

    assert trio.run(run) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("", "No nodes found.\n")


async def test_watch_stops_when_rejected(nursery: trio.Nursery) -> None:
    from k3net.commands import CommandError

    web = await start_web(nursery)
    with trio.fail_after(5), pytest.raises(CommandError, match="403"):
        await watch(f"ws://127.0.0.1:{web.port}/nope", "table", io.StringIO())


@pytest.fixture
def silent_port() -> Any:
    """A port where the kernel accepts connections that nobody ever answers (a stopped agent,
    a process that is not an agent)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    "argv", [["nodes", "--server", "{}"], ["nodes", "-w", "--server", "{}"],
             ["peers", "--server", "{}"], ["watch", "{}"]])
@pytest.mark.parametrize("kind", ["silent", "refused"])
def test_no_agent_is_one_line_in_under_a_second(
    argv: list[str], kind: str, silent_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{silent_port if kind == 'silent' else free_port()}"
    began = time.monotonic()
    assert cli.main([a.format(address) for a in argv]) == 1
    took = time.monotonic() - began
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"k3net {argv[0]}: no k3net agent answers at ") and address in err
    assert ("no answer within 500ms" if kind == "silent" else "connection refused") in err
    assert took < 1.0


# --- delete, help -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["delete", "pod", "x"], "invalid choice"), (["delete", "node"], "required"),
     (["delete", "node", "x"], "give --config PATH")])
def test_delete_usage_errors_exit_2(
    argv: list[str], message: str, clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert exit_code(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("k3net delete: error:") and message in err


def test_delete_a_node_through_the_cli(
    tmp_path: Any, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "k3.yaml"
    path.write_text("storage:\n  type: memory\n")
    # The memory store of a new process is empty: the Node is not there, said in one line.
    assert cli.main(["delete", "node", "ghost", "--config", str(path)]) == 1
    assert capsys.readouterr().err == "k3net delete: node 'ghost' not found\n"


@pytest.mark.parametrize(("ready", "warned"), [("True", True), ("False", False), ("Unknown", False)])
async def test_deleting_a_ready_node_says_an_agent_writes_it_again(ready: str, warned: bool) -> None:
    from k3net.commands.delete import delete_node
    from k3net.store.memory import MemoryStore

    store = MemoryStore()
    await store.create(make_node("n1", ready=ready))
    outcome = await delete_node(store, "n1", force=False)
    assert outcome.deleted and not await store.list()
    assert ("an agent that reaches it writes it again" in outcome.detail) is warned


@pytest.mark.parametrize("command", ["nodes", "peers", "watch", "delete", "prune"])
def test_every_client_command_has_a_description(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args([command, "--help"])
    usage, _, rest = capsys.readouterr().out.partition("\n\n")
    assert usage.startswith(f"usage: k3net {command}")
    description = rest.split("\n\n")[0]
    assert not description.startswith(("positional arguments", "options")), description


@pytest.mark.parametrize("variable", ["K3NET_LISTEN", "K3NET_SERVER"])
async def test_nodes_finds_the_agent_from_the_environment(
    variable: str, nursery: trio.Nursery, clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    web = await start_web(nursery)
    await write_nodes(web.store, make_node("n2"), make_node("n1"))
    clean_env.setenv(variable, f":{web.port}" if variable == "K3NET_LISTEN" else web.url(""))
    code = await trio.to_thread.run_sync(cli.main, ["nodes", "-o", "name"])
    assert (code, capsys.readouterr().out) == (0, "node/n1\nnode/n2\n")

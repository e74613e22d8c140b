"""Arbitrary input from outside, fed to every reader of it: JSON Nodes (any annotations, labels,
conditions and addresses, wrong types anywhere) to the store decoders, the peer table, the event
hub and the views; mDNS TXT records and identity and /peers answers to their readers and on to
the table. Nothing raises, and nothing foreign is written: every Write intent carries a valid
port, pid and addresses, and every field k3net owns that a rendered Node changes reads back
through `core.parse`."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from k3net.commands import CommandError
from k3net.commands.nodes import _nodes_from_answer, format_nodes
from k3net.commands.peers import format_followed, peers_from_answer
from k3net.commands.watch import format_event, read_message
from k3net.commands.watch import render as watch_render
from k3net.convert import InvalidNode, node_from_dict, node_list, node_to_dict
from k3net.core import parse
from k3net.core.discovery import Found, found_in_answer, listed_peers
from k3net.core.identity import AnswerReader, judge, judge_reader, nonce_from_query, proof
from k3net.core.messages import (
    PeerGone,
    PeerSeen,
    ProbeResult,
    Put,
    Snapshot,
    Stored,
    Tick,
)
from k3net.core.nodes import Alive, render
from k3net.core.records import peer_from_record
from k3net.core.table import PeerTable, ProbeNow, SelfInfo, Write
from k3net.events import MAX_MESSAGE, MAX_REASON, EventHub
from k3net.metrics import Metrics
from k3net.model import ANN_LAST_SEEN, ANN_PID, ANN_PORT, LABEL_MANAGED, Node
from k3net.store.etcd import PREFIX, stored_from_kv
from k3net.store.mysql import stored_from_row

from .helpers.web import get, start_web, write_nodes

BOUNDED = settings(max_examples=200, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NOW = dt.datetime(2026, 12, 2, 18, 0, tzinfo=dt.UTC)
TTL = 90.0
ME = SelfInfo(name="me", addresses=lambda: ("192.168.1.2",), port=7946, pid=100)
NONCE = bytes(16)
KEY = b"k" * 32
METRICS = Metrics()

# --- strategies ---------------------------------------------------------------------------

# Values that look almost right: the ones a reader gets wrong.
numbers = st.sampled_from(["7946", "0", "65536", "²", "٣", "１２", " 80", "+80", "4242", "",
                          "99999999999999999999"])
tricky = st.sampled_from([
    "7946", "0", "65535", "65536", "²", "٣", "１２", " 80", "+80", "-1", "", "4242",
    "10.0.0.1", "192.168.1.10", "10.0.0.300", "::1", "2001:db8::7", "fe80::1%eth0", "127.0.0.1",
    "2026-12-02T17:59:00.123456Z", "2026-12-02T17:59:00Z", "1970-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z", "2026-13-01T00:00:00Z", "2026-12-02", "2026-12-02T17:59:00",
    "True", "False", "Unknown", "true", "Ready", "InternalIP", "Hostname", "x" * 300,
])
texts = tricky | st.text(max_size=12)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=4,
)
names = st.sampled_from(["peer-a", "peer-b", "me", "x"])


@st.composite
def _maybe_wrong(draw: st.DrawFn, strategy: st.SearchStrategy[Any]) -> Any:
    return draw(json_values) if draw(st.integers(0, 11)) == 0 else draw(strategy)


def maybe_wrong(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly `strategy`, once in twelve any JSON value instead (a wrong type)."""
    return _maybe_wrong(strategy)


# Where a value can go wrong in a Node, and what may land there.
PATHS = [
    ("metadata", "name"), ("metadata", "labels"), ("metadata", "labels", LABEL_MANAGED),
    ("metadata", "labels", "other/x"), ("metadata", "annotations"),
    ("metadata", "annotations", ANN_PORT), ("metadata", "annotations", ANN_PID),
    ("metadata", "annotations", ANN_LAST_SEEN), ("metadata", "annotations", "other/x"),
    ("metadata", "resourceVersion"), ("metadata", "creationTimestamp"), ("metadata",),
    ("status",), ("status", "phase"), ("status", "addresses"), ("status", "addresses", 0),
    ("status", "addresses", 0, "address"), ("status", "addresses", 0, "type"),
    ("status", "addresses", 1, "address"), ("status", "conditions"),
    ("status", "conditions", 0), ("status", "conditions", 0, "status"),
    ("status", "conditions", 0, "type"), ("status", "conditions", 0, "reason"),
    ("status", "conditions", 0, "lastHeartbeatTime"),
    ("status", "conditions", 0, "lastTransitionTime"), ("spec",), ("kind",), ("apiVersion",),
]
# What the agent reads from a Node to follow its agent, tried more often.
READ = [("metadata", "annotations", ANN_PORT), ("metadata", "annotations", ANN_PID),
        ("status", "addresses", 1, "address"), ("metadata", "annotations", ANN_LAST_SEEN)]


def template(name: str) -> dict[str, Any]:
    """A managed, Ready Node as an agent writes it: followed from the store as it is."""
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name, "labels": {LABEL_MANAGED: "true", "kubernetes.io/hostname": name},
            "annotations": {ANN_PORT: "7946", ANN_PID: "4242",
                            ANN_LAST_SEEN: "2026-12-02T17:59:00.123456Z"},
        },
        "status": {
            "phase": "Running",
            "addresses": [{"type": "Hostname", "address": name},
                          {"type": "InternalIP", "address": "192.168.1.10"}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "PeerAlive",
                            "lastHeartbeatTime": "2026-12-02T17:59:00Z",
                            "lastTransitionTime": "2026-12-02T17:00:00Z"}],
        },
    }


def _set(data: Any, path: tuple[Any, ...], value: Any) -> None:
    for step in path[:-1]:
        if isinstance(data, dict) and isinstance(step, str):
            data = data.setdefault(step, {})
        elif isinstance(data, list) and isinstance(step, int) and step < len(data):
            data = data[step]
        else:
            return
    last = path[-1]
    if isinstance(data, dict) and isinstance(last, str):
        data[last] = value
    elif isinstance(data, list) and isinstance(last, int):
        if last < len(data):
            data[last] = value
        else:
            data.append(value)


@st.composite
def json_nodes(draw: st.DrawFn) -> Any:
    """A Node as an agent writes it, with a few of its values (or whole parts) replaced by
    values that are nearly right, by strings, or by JSON of any type; now and then any JSON."""
    if draw(st.integers(0, 19)) == 0:
        return draw(json_values)
    data = template(draw(names))
    for path, value in draw(st.lists(st.tuples(st.sampled_from(PATHS),
                                               st.one_of(tricky, tricky, json_values)),
                                     max_size=3)):
        _set(data, path, value)
    for path, value in draw(st.lists(st.tuples(st.sampled_from(READ), numbers | tricky),
                                     max_size=2)):
        _set(data, path, value)
    return data


def readable(data: list[Any]) -> list[Node]:
    """The Nodes among `data`, as the store decoders take them (the rest is a foreign value)."""
    out = []
    for item in data:
        try:
            out.append(node_from_dict(item))
        except InvalidNode:
            pass
    return out


def stored(nodes: list[Node]) -> list[Stored]:
    by_name = {n.name: n for n in nodes}  # one per name, as a store holds them
    return [Stored(node=n, version=str(i + 1)) for i, n in enumerate(by_name.values())]


# --- what "nothing foreign written" means -------------------------------------------------


def assert_valid_intent(write: Write) -> None:
    intent = write.intent
    if isinstance(intent, Alive):
        assert isinstance(parse.port(intent.port), int), intent
        assert intent.pid is None or isinstance(parse.pid(intent.pid), int), intent
        for address in intent.addresses:
            assert not isinstance(parse.address(address), parse.Foreign), intent


def _owned(node: Node | None) -> dict[str, Any]:
    if node is None:
        return {}
    ann = node.metadata.annotations
    return {
        ANN_PORT: ann.get(ANN_PORT), ANN_PID: ann.get(ANN_PID), ANN_LAST_SEEN: ann.get(ANN_LAST_SEEN),
        "addresses": [a.address for a in node.status.addresses if a.type == "InternalIP"],
    }


def assert_writes_nothing_foreign(write: Write) -> None:
    """The Node this Write renders: every field k3net owns that it changed reads back through
    core.parse (a field it left alone may stay foreign: it is not rewritten)."""
    assert_valid_intent(write)
    base = write.base.node if write.base is not None else None
    node = render(base, write.intent, NOW)
    if node is None:
        return
    node = node_from_dict(json.loads(json.dumps(node_to_dict(node))))  # as the store keeps it
    before, after = _owned(base), _owned(node)
    readers: dict[str, Callable[[Any], object]] = {
        ANN_PORT: parse.port, ANN_PID: parse.pid, ANN_LAST_SEEN: lambda v: parse.rfc3339(v, NOW),
    }
    for field, reader in readers.items():
        if after[field] is not None and after[field] != before.get(field):
            assert not isinstance(reader(after[field]), parse.Foreign), (field, after[field])
    if after["addresses"] != before.get("addresses"):
        for address in after["addresses"]:
            assert not isinstance(parse.address(address), parse.Foreign), address


def drive(table: PeerTable, messages: list[Any], now: float) -> list[Any]:
    """Handle each message; answer every probe asked for as confirmed, then as refused twice."""
    actions: list[Any] = []
    for msg in messages:
        actions += table.handle(msg, now)
    targets = [a.target for a in actions if isinstance(a, ProbeNow)]
    for target in targets:
        for outcome, at in (("confirmed", now + 1), ("refused", now + 2), ("refused", now + 4)):
            actions += table.handle(ProbeResult(target.name, outcome, 0.001,  # type: ignore[arg-type]
                                                address=(target.addresses or (None,))[0]), at)
    return actions


# --- the peer table -----------------------------------------------------------------------


def _with(path: tuple[Any, ...], value: Any, name: str = "peer-a") -> dict[str, Any]:
    data = template(name)
    _set(data, path, value)
    return data


@BOUNDED
@given(st.lists(json_nodes(), max_size=4), st.lists(json_nodes(), max_size=2))
@example([_with(("metadata", "annotations", ANN_PORT), "²")], [])  # stopped every agent
@example([], [_with(("metadata", "annotations", ANN_PID), "²", "peer-b")])
def test_the_table_takes_any_stored_nodes_and_writes_nothing_foreign(
    first: list[Any], later: list[Any]
) -> None:
    table = PeerTable(peer_ttl=TTL, refresh_interval=TTL / 3, me=ME, register_self=True)
    snapshot = stored(readable(first))
    actions = drive(table, [Snapshot(tuple(snapshot))], 0.0)
    actions += drive(table, [Put(s) for s in stored(readable(later))], 10.0)
    actions += drive(table, [PeerGone(name) for name in ("peer-a", "peer-b", "x")], 20.0)
    actions += table.handle(Tick(), 10 * TTL)
    event(f"writes: {min(sum(isinstance(a, Write) for a in actions), 3)}")
    event(f"followed from the store: {min(sum(isinstance(a, ProbeNow) for a in actions), 3)}")
    for action in actions:
        if isinstance(action, Write):
            assert_writes_nothing_foreign(action)
        if isinstance(action, ProbeNow):
            assert isinstance(parse.port(action.target.port), int)
            assert all(isinstance(parse.address(a), parse.IPAddress)
                       for a in action.target.addresses)
    table.peers()  # what /peers shows


# --- mDNS TXT and SRV ---------------------------------------------------------------------

txt_keys = st.sampled_from([b"node", b"port", b"pid", b"NODE", b"Port"]) | st.binary(max_size=6)
txt_values = st.none() | tricky.map(str.encode) | st.binary(max_size=12) \
    | st.sampled_from([b"peer-a", b"7946", b"\xb2", "²".encode(), "٣".encode()])


@BOUNDED
@given(
    st.sampled_from(["peer-a", "peer-b", "Peer A", "x" * 70]) | st.text(max_size=10),
    st.dictionaries(txt_keys, txt_values, max_size=5),
    st.none() | st.integers(min_value=-5, max_value=70000),
    st.lists(tricky | st.text(max_size=10), max_size=4),
)
def test_txt_records_are_read_and_followed_without_anything_foreign(
    instance: str, properties: dict[bytes, bytes | None], srv_port: int | None,
    record_addresses: list[str],
) -> None:
    seen = peer_from_record(instance, properties, srv_port, record_addresses)
    if not isinstance(seen, PeerSeen):
        return
    assert isinstance(parse.port(seen.port), int)
    assert seen.pid is None or isinstance(parse.pid(seen.pid), int)
    assert seen.addresses and all(isinstance(parse.address(a), parse.IPAddress)
                                  for a in seen.addresses)
    table = PeerTable(peer_ttl=TTL, refresh_interval=TTL / 3, me=ME, register_self=False)
    table.handle(Snapshot(()), 0.0)
    for action in drive(table, [seen], 1.0):
        if isinstance(action, Write):
            assert_writes_nothing_foreign(action)


# --- identity and /peers answers ----------------------------------------------------------


@st.composite
def info_answers(draw: st.DrawFn) -> bytes:
    """An /info answer body: JSON shaped like one with anything anywhere, or any bytes."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=40))
    node = draw(maybe_wrong(st.just("peer-a") | texts))
    data = draw(st.fixed_dictionaries({"node": st.just(node)}, optional={
        "port": maybe_wrong(st.integers(-5, 70000) | tricky),
        "pid": maybe_wrong(st.integers(-5, 2**33) | tricky),
        "addrs": maybe_wrong(st.lists(maybe_wrong(tricky), max_size=4)),
        "ts": maybe_wrong(texts),
    }))
    if draw(st.booleans()) and isinstance(node, str):
        data["proof"] = proof(KEY, NONCE, node)
    return json.dumps(data).encode()


@BOUNDED
@given(st.sampled_from([200, 404, None]), info_answers(), st.sampled_from([None, KEY]))
def test_identity_answers_give_only_valid_facts(status: int | None, body: bytes,
                                                key: bytes | None) -> None:
    judge(status, body, probed="peer-a", nonce=NONCE, key=key)
    found = found_in_answer(status, body, address="10.0.0.1", port=7946, nonce=NONCE, key=key)
    if isinstance(found, Found):
        assert isinstance(parse.port(found.port), int)
        assert found.pid is None or isinstance(parse.pid(found.pid), int)
        assert found.addresses and all(isinstance(parse.address(a), parse.IPAddress)
                                       for a in found.addresses)


http_answers = st.lists(
    st.sampled_from([b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 999 X\r\n", b"Content-Length: 5\r\n",
                     b"Content-Length: \xb2\r\n", b"Transfer-Encoding: chunked\r\n", b"\r\n",
                     b"5\r\nhello\r\n0\r\n\r\n", b'{"node": "peer-a"}']) | st.binary(max_size=20),
    max_size=6,
)


@BOUNDED
@given(http_answers, st.binary(max_size=80))
def test_probe_answers_and_queries_are_read_without_raising(chunks: list[bytes],
                                                             query: bytes) -> None:
    reader = AnswerReader(limit=64)
    for chunk in [*chunks, b""]:
        if reader.feed(chunk):
            break
    answer = judge_reader(reader, probed="peer-a", nonce=NONCE, key=KEY)
    assert answer.outcome != "confirmed"  # nobody proved the key
    nonce = nonce_from_query(query)
    assert nonce is None or len(nonce) == len(NONCE)


@BOUNDED
@given(st.lists(maybe_wrong(st.fixed_dictionaries({
    "name": maybe_wrong(names), "state": st.just("alive"), "confirmed": maybe_wrong(st.just(True)),
    "port": maybe_wrong(st.integers(-5, 70000) | tricky),
    "addresses": maybe_wrong(st.lists(maybe_wrong(tricky), max_size=3)),
})), max_size=4))
def test_peers_answers_give_only_valid_peers(entries: list[Any]) -> None:
    for listed in listed_peers(200, json.dumps({"peers": entries}).encode()):
        assert isinstance(parse.port(listed.port), int)
        assert all(isinstance(parse.address(a), parse.IPAddress) for a in listed.addresses)


# --- the store decoders -------------------------------------------------------------------


@attrs.frozen
class KV:
    key: bytes
    value: bytes
    mod_revision: int = 7


@BOUNDED
@given(json_nodes(), st.binary(max_size=8))
def test_the_store_decoders_take_a_node_or_call_it_foreign(data: Any, junk: bytes) -> None:
    name = data.get("metadata", {}).get("name") if isinstance(data, dict) \
        and isinstance(data.get("metadata"), dict) else "x"
    key = f"{PREFIX}{name}".encode()
    for value in (json.dumps(data).encode(), junk, json.dumps(data).encode()[:-1]):
        try:
            stored_from_kv(KV(key, value))
        except InvalidNode:
            pass
    meta = data.get("metadata") if isinstance(data, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    status = data.get("status") if isinstance(data, dict) else data
    row = (1, str(name), None, "uid", meta.get("resourceVersion") if isinstance(
        meta.get("resourceVersion"), str) else "", json.dumps(meta.get("labels")),
        json.dumps(meta.get("annotations")), None, None, None, json.dumps(data),
        json.dumps(status))
    try:
        stored_from_row(row)
    except InvalidNode:
        pass


# --- the event hub and the views ----------------------------------------------------------


@BOUNDED
@given(st.lists(json_nodes(), max_size=4), st.lists(json_nodes(), max_size=2))
def test_the_event_hub_and_the_views_take_any_stored_nodes(first: list[Any],
                                                           later: list[Any]) -> None:
    hub = EventHub(METRICS, clock=lambda: NOW)
    nodes = readable(first)
    hub.observe(Snapshot(tuple(stored(nodes))))
    for s in stored(readable(later)):
        hub.observe(Put(s))
    sub = hub.subscribe(since=0)
    messages = [hub.snapshot(), *sub.take_queued()]
    for message in messages:
        json.dumps(message)
    for entry in [*hub.snapshot()["nodes"], *messages[1:]]:
        assert entry["port"] is None or isinstance(parse.port(entry["port"]), int)
        assert all(isinstance(parse.address(a), parse.IPAddress) for a in entry["addresses"])
        assert entry["lastSeen"] is None or isinstance(parse.timestamp(entry["lastSeen"]),
                                                       dt.datetime)
        assert len(entry["reason"] or "") <= MAX_REASON
        assert len(entry["message"] or "") <= MAX_MESSAGE
    every = nodes + readable(later)
    for output in ("table", "wide", "json", "yaml"):
        format_nodes(every, NOW, output)
    json.dumps(node_list(every))  # the body of the agent's /nodes


def test_the_store_decoders_call_json_nested_too_deeply_foreign() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    for column in (5, 6, 10, 11):  # labels, annotations, spec, status
        row: list[Any] = [1, "x", None, "uid", "1", "{}", "{}", None, None, None, "{}", "{}"]
        row[column] = deep
        with pytest.raises(InvalidNode, match="nested too deeply"):
            stored_from_row(tuple(row))
    with pytest.raises(InvalidNode):
        stored_from_kv(KV(f"{PREFIX}x".encode(), deep.encode()))


# --- the record that stopped every agent, and its kin -------------------------------------


def _node(path: tuple[Any, ...], value: Any, name: str = "peer-a") -> Node:
    return node_from_dict(_with(path, value, name))


def test_a_stored_node_is_followed_only_with_a_port_and_addresses_that_parse() -> None:
    table = PeerTable(peer_ttl=TTL, refresh_interval=TTL / 3, me=ME, register_self=False)
    good = template("peer-c")
    before = parse.FOREIGN.counts.get(ANN_PORT, 0)
    actions = table.handle(Snapshot(tuple(stored([
        _node(("metadata", "annotations", ANN_PORT), "²", "peer-a"),
        _node(("metadata", "annotations", ANN_PORT), "٣", "peer-b"),  # int() reads it as 3
        _node(("status", "addresses", 1, "address"), "10.0.0.300", "x"),
        node_from_dict(good),
    ]))), 0.0)
    assert [a.target.name for a in actions if isinstance(a, ProbeNow)] == ["peer-c"]
    assert [p.name for p in table.peers()] == ["peer-c"]
    assert parse.FOREIGN.counts[ANN_PORT] == before + 2
    # A goodbye for a peer known only from such a Node: nothing to probe, nothing written.
    assert table.handle(PeerGone("peer-a"), 1.0) == []


def test_a_stored_nodes_foreign_pid_is_left_out_and_not_written() -> None:
    table = PeerTable(peer_ttl=TTL, refresh_interval=TTL / 3, me=ME, register_self=False)
    node = _node(("metadata", "annotations", ANN_PID), "²")
    table.handle(Snapshot((Stored(node, "1"),)), 0.0)
    (peer,) = table.peers()
    assert peer.name == "peer-a"
    confirmed = table.handle(ProbeResult("peer-a", "confirmed", 0.001, address="192.168.1.10"),
                             1.0)
    # Ready already: nothing to write now; the pid stays as it was (not "repaired").
    assert not [a for a in confirmed if isinstance(a, Write)]


def test_event_messages_carry_no_foreign_port_address_or_time() -> None:
    from k3net.events import node_entry

    data = template("peer-a")
    data["metadata"]["annotations"][ANN_PORT] = "٣"
    data["metadata"]["annotations"][ANN_LAST_SEEN] = "yesterday"
    data["status"]["addresses"].append({"type": "InternalIP", "address": "not-an-ip"})
    data["status"]["conditions"][0]["message"] = "m" * 5000
    entry = node_entry(node_from_dict(data))
    assert entry["port"] is None  # (int("٣") is 3)
    assert entry["lastSeen"] is None
    assert entry["addresses"] == ["192.168.1.10"]
    assert entry["message"] is None
    assert entry["reason"] == "PeerAlive"


def test_the_nodes_table_shows_foreign_values_as_foreign() -> None:
    data = template("peer-a")
    data["metadata"]["annotations"][ANN_PORT] = "²"
    data["metadata"]["annotations"][ANN_LAST_SEEN] = "1970-01-01T00:00:00Z"
    data["status"]["addresses"][1]["address"] = "10.0.0.300\x1b[2J"
    out = format_nodes([node_from_dict(data)], NOW, "wide")
    row = out.splitlines()[1].split()
    assert row[0] == "peer-a" and row[3] == "<foreign>"  # LASTSEEN
    assert "<foreign>" in row[5] and "\x1b" not in out  # ADDRESSES
    assert row[7:] == ["<foreign>", "4242"]  # PORT, PID


@BOUNDED
@given(st.dictionaries(st.sampled_from(["type", "seq", "ts", "nodes", "node", "ready", "reason",
                                        "addresses", "port", "lastSeen", "message", "epoch"]),
                       json_values | st.lists(json_values, max_size=3), max_size=8),
       st.sampled_from(["table", "wide", "json", "yaml"]))
def test_watch_prints_any_event_message(message: dict[str, Any], output: str) -> None:
    """`k3net watch` shows what an agent (of any version, or anything on its port) sends."""
    if output in ("table", "wide"):
        lines = format_event(message, output)
        assert lines and all(isinstance(line, str) for line in lines)
    watch_render(message, output)


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", "3", "[" * 100_000, b"\xff"])
def test_watch_skips_a_message_that_is_no_json_object(raw: str | bytes) -> None:
    assert read_message(raw) is None


@BOUNDED
@given(st.lists(json_nodes(), max_size=3), st.lists(json_values, max_size=3))
def test_the_commands_read_any_nodes_and_peers_answer(items: list[Any], peers: list[Any]) -> None:
    """`k3net nodes` and `k3net peers --server` on whatever an agent's port answers."""
    nodes = _nodes_from_answer("http://a", 200, json.dumps({"items": items}).encode())
    format_nodes(nodes, NOW, "wide")
    try:
        followed = peers_from_answer("http://a", 200, json.dumps({"peers": peers}).encode())
    except CommandError:
        return
    format_followed(followed)


@pytest.mark.parametrize("body", [b"[" * 100_000, b"\xff", b"{}", b"[]"])
def test_the_commands_refuse_an_answer_that_is_no_list_in_one_line(body: bytes) -> None:
    with pytest.raises(CommandError):
        _nodes_from_answer("http://a", 200, body)
    with pytest.raises(CommandError):
        peers_from_answer("http://a", 200, body)


async def test_the_served_views_show_nodes_with_foreign_fields(nursery: trio.Nursery) -> None:
    """The agent's /nodes, /snapshot and /metrics over a store holding Nodes whose fields are
    foreign: the Nodes as stored (lossless), the hub's entries without the foreign values."""
    web = await start_web(nursery)
    odd = [
        _node(("metadata", "annotations", ANN_PORT), "²", "peer-a"),
        _node(("status", "addresses", 1, "address"), "10.0.0.300", "peer-b"),
        _node(("status", "conditions", 0, "message"), "m" * 5000, "peer-c"),
        _node(("metadata", "annotations", ANN_LAST_SEEN), "1970-01-01T00:00:00Z", "x"),
    ]
    with web.hub.subscribe() as sub:
        await write_nodes(web.store, *odd)
        joined: list[dict[str, Any]] = []
        with trio.fail_after(5):
            async for message in sub:  # (a subscription starts with a snapshot)
                if message["type"] == "joined":
                    joined.append(message)
                if len(joined) == len(odd):
                    break
    assert sorted(m["node"] for m in joined) == ["peer-a", "peer-b", "peer-c", "x"]
    status, _, body = await get(web.url("/nodes"))
    assert status == 200
    items = {n["metadata"]["name"]: n for n in json.loads(body)["items"]}
    assert items["peer-a"]["metadata"]["annotations"][ANN_PORT] == "²"  # as stored
    status, _, body = await get(web.url("/events/snapshot"))
    assert status == 200
    entries = {e["node"]: e for e in json.loads(body)["nodes"]}
    assert entries["peer-a"]["port"] is None
    assert entries["peer-b"]["addresses"] == []
    assert entries["peer-c"]["message"] is None
    assert entries["x"]["lastSeen"] == "1970-01-01T00:00:00Z"  # an RFC 3339 time
    status, _, body = await get(web.url("/metrics"))
    assert status == 200 and b"k3net_foreign_values_total" in body
    await web.stop()

"""Beyond one segment, in one process: --join and --scan values and their errors, what an /info
answer makes of whoever answered (with and without the cluster key), the join task against a
real agent app on loopback (found, retried with backoff, logged once), and /peers with
`k3net peers --server`."""

from __future__ import annotations

import json
import logging
import random
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from k3net import cli
from k3net.backoff import Backoff
from k3net.commands.peers import FollowedPeer, format_followed, peers_from_answer
from k3net.core.discovery import (
    Found,
    JoinAddress,
    Listed,
    NotFound,
    found_in_answer,
    listed_peers,
    parse_join,
    parse_scan,
    scan_addresses,
    scan_size,
)
from k3net.core.identity import proof
from k3net.core.messages import PeerSeen
from k3net.core.table import Message, PeerView
from k3net.current import Current
from k3net.events import EventHub
from k3net.health import StoreHealth
from k3net.metrics import Metrics
from k3net.settings import Settings
from k3net.store.memory import MemoryStore
from k3net.tasks import join
from k3net.tasks.whois import Unreachable, whois
from k3net.web.app import AppState

from .helpers.web import start_server

KEY = b"6b3a55e0261b4c8d9f1e0a7c2d4b6e8f"
NONCE = bytes(range(16))


# --- the values ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "host", "port"), [
    ("10.79.2.2", "10.79.2.2", None),
    ("10.79.2.2:7000", "10.79.2.2", 7000),
    ("node-c.lab.example:7946", "node-c.lab.example", 7946),
    ("node-c", "node-c", None),
    ("fd00::0:2", "fd00::2", None),
    ("[fd00::2]:7946", "fd00::2", 7946),
    ("127.0.0.1:7947", "127.0.0.1", 7947),  # another agent on this host (a test, a demo)
])
def test_join_address_parses(text: str, host: str, port: int | None) -> None:
    parsed = parse_join(text)
    assert parsed == JoinAddress(host, port)
    assert parse_join(str(parsed)) == parsed  # the text form round-trips (env -> settings)


@pytest.mark.parametrize(("text", "message"), [
    ("10.79.2.2:0", "invalid port"),
    ("10.79.2.2:70000", "invalid port"),
    ("10.79.2.2:http", "invalid port"),
    ("[fd00::2", "invalid join address"),
    ("[10.0.0.1]:7946", "invalid IPv6 address"),
    ("under_score.example", "invalid join address"),
    ("224.0.0.251", "multicast"),
    ("0.0.0.0:7946", "unspecified"),
    ("", "invalid join address"),
])
def test_bad_join_address_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_join(text)


@pytest.mark.parametrize(("text", "size"), [
    ("10.79.2.0/24", 254), ("10.79.2.77/24", 254), ("10.79.0.0/22", 1022),
    ("10.79.2.7", 1), ("10.79.2.6/31", 2), ("fd00::/120", 255),
])
def test_scan_range_sizes(text: str, size: int) -> None:
    assert scan_size([parse_scan(text)], own=()) == size


@pytest.mark.parametrize(("text", "message"), [
    ("10.0.0.0/21", "2048 addresses: at most 1024 (a /22)"),
    ("10.0.0.0/8", "at most 1024"),
    ("fd00::/64", "at most 1024 (a /118)"),
    ("127.0.0.0/24", "loopback"),
    ("169.254.0.0/24", "link-local"),
    ("224.0.0.0/24", "multicast"),
    ("10.0.0.300/24", "invalid scan range"),
    ("lab", "invalid scan range"),
])
def test_bad_scan_range_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_scan(text)


def test_scan_skips_own_addresses_and_repeats() -> None:
    networks = [parse_scan("10.79.2.0/30"), parse_scan("10.79.2.0/29")]
    assert list(scan_addresses(networks, own={"10.79.2.2", "10.79.1.2"})) == [
        "10.79.2.1", "10.79.2.3", "10.79.2.4", "10.79.2.5", "10.79.2.6",
    ]


def test_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("K3NET_JOIN", "K3NET_SCAN", "K3NET_SCAN_INTERVAL", "K3NET_SCAN_RATE"):
        monkeypatch.delenv(name, raising=False)

    def settings(*argv: str) -> Settings:
        return cli.settings_from_args(cli.build_parser().parse_args(["run", "--node-name=n1",
                                                                     *argv]))

    s = settings()
    assert (s.join, s.scan, s.scan_interval, s.scan_rate) == ((), (), 60.0, 100.0)
    s = settings("--join", "10.79.2.2", "--join=node-c:7000", "--scan", "10.79.2.0/24",
                 "--scan-interval", "5m", "--scan-rate", "20")
    assert s.join == (JoinAddress("10.79.2.2"), JoinAddress("node-c", 7000))
    assert [str(n) for n in s.scan] == ["10.79.2.0/24"]
    assert (s.scan_interval, s.scan_rate) == (300.0, 20.0)
    monkeypatch.setenv("K3NET_JOIN", "10.79.2.2, [fd00::2]:7946")
    monkeypatch.setenv("K3NET_SCAN", "10.79.2.0/24 10.79.3.0/24")
    s = settings()
    assert s.join == (JoinAddress("10.79.2.2"), JoinAddress("fd00::2", 7946))
    assert [str(n) for n in s.scan] == ["10.79.2.0/24", "10.79.3.0/24"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--scan", "10.0.0.0/16"], "at most 1024 (a /22)"),
    (["--join", "10.79.2.2:99999"], "invalid port"),
    (["--scan-rate", "0"], "rate out of range"),
    (["--scan-interval", "0s"], "more than 0"),
])
def test_bad_value_exits_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        status = cli.main(["run", "--node-name=n1", *argv])
    except SystemExit as exc:  # argparse's own check of a single-valued flag
        status = int(exc.code or 0)
    assert status == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


# --- what an /info answer says ------------------------------------------------------------------


def _answer(node: Any, key: bytes | None = None, **more: Any) -> bytes:
    data = {"node": node, **more}
    if key is not None:
        data["proof"] = proof(key, NONCE, node)
    return json.dumps(data).encode()


@pytest.mark.parametrize(("status", "body", "key", "expected"), [
    (200, _answer("node-c", port=7946, addrs=["10.79.2.2", "fd00::2"], pid=42), None,
     Found("node-c", ("10.79.2.2", "fd00::2"), 7946, 42, "10.79.2.2")),
    # It lists addresses that no peer can use, or none: the address that answered.
    (200, _answer("node-c", port=7946, addrs=["127.0.0.1", "fe80::1"]), None,
     Found("node-c", ("10.79.2.2",), 7946, None, "10.79.2.2")),
    # A Go agent's answer: no port, no key; the port we asked is taken.
    (200, _answer("node-c", addrs=["10.79.2.2"]), None,
     Found("node-c", ("10.79.2.2",), 7000, None, "10.79.2.2")),
    (200, _answer("node-c", KEY, port=7946, addrs=["10.79.2.2"]), KEY,
     Found("node-c", ("10.79.2.2",), 7946, None, "10.79.2.2")),
    (200, _answer("node-c", port=7946), KEY, "unauthenticated"),
    (200, _answer("node-c", b"another-cluster-key-0123456789ab", port=7946), KEY,
     "unauthenticated"),
    (200, _answer("Node_C"), None, "invalid-name"),
    (200, b"<html>hello</html>", None, "not-agent"),
    (200, json.dumps({"status": "ok"}).encode(), None, "not-agent"),
    (404, b"not found", None, "not-agent"),
])
def test_found_in_answer(status: int, body: bytes, key: bytes | None,
                         expected: Found | str) -> None:
    got = found_in_answer(status, body, address="10.79.2.2", port=7000, nonce=NONCE, key=key)
    if isinstance(expected, Found):
        assert got == expected
    else:
        assert isinstance(got, NotFound) and got.reason == expected, got


# --- against a real agent app on loopback --------------------------------------------------------


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def _serve_agent(nursery: trio.Nursery, name: str, key: bytes | None = None, port: int = 0,
                       peers: list[PeerView] | None = None) -> int:
    metrics = Metrics()
    state = AppState(
        settings=Current(Settings(node_name=name, listen_port=port or 7946, cluster_key=key)),
        store=Current(MemoryStore()), hub=EventHub(metrics), metrics=metrics, health=StoreHealth(),
        started_at=time.time(), addrs=lambda: ["10.79.2.2"], peers=lambda: list(peers or []),
    )
    return (await start_server(nursery, state, port)).port


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("served", "asked", "outcome"), [
    (KEY, KEY, "node-c"), (None, None, "node-c"), (None, KEY, "unauthenticated"),
])
async def test_whois_asks_a_real_agent(nursery: trio.Nursery, served: bytes | None,
                                       asked: bytes | None, outcome: str) -> None:
    port = await _serve_agent(nursery, "node-c", served)
    got = await whois("127.0.0.1", port, key=asked)
    if isinstance(got, Found):
        assert (got.name, got.addresses, got.pid) == (outcome, ("10.79.2.2",), got.pid)
    else:
        assert isinstance(got, NotFound) and got.reason == outcome


async def test_whois_where_nothing_listens_is_refused() -> None:
    got = await whois("127.0.0.1", _free_port(), key=None)
    assert isinstance(got, Unreachable) and got.refused


async def test_join_retries_quietly_then_finds_the_agent(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """A join address where nobody answers yet: retried with backoff, one warning, never
    fatal; once an agent listens there it is handed to the table as found by join."""
    caplog.set_level(logging.DEBUG, logger="k3net.join")
    port = _free_port()
    metrics = Metrics()
    send, recv = trio.open_memory_channel[Message](0)
    await nursery.start(lambda task_status: join.run(
        [JoinAddress("127.0.0.1", port)], send, port=7946, key=None, timeout=2.0, me="node-a",
        metrics=metrics, recheck=60.0, retry=Backoff(0.01, 0.05), rng=random.Random(1),
        task_status=task_status))

    def attempts(result: str) -> float:
        return metrics.registry.get_sample_value(
            "k3net_discovery_probes_total", {"via": "join", "result": result}) or 0.0

    with trio.fail_after(10):
        while attempts("refused") < 5:  # noqa: ASYNC110 (a counter of real connections)
            await trio.sleep(0.01)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"127.0.0.1:{port}" in warnings[0].getMessage()

    await _serve_agent(nursery, "node-c", port=port)
    with trio.fail_after(10):
        seen = await recv.receive()
    assert isinstance(seen, PeerSeen)
    assert seen == PeerSeen("node-c", ("10.79.2.2",), port, seen.pid, found_by="join")
    assert any("found agent node-c" in r.getMessage() for r in caplog.records)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


async def test_join_of_this_agent_sends_nothing(nursery: trio.Nursery) -> None:
    port = await _serve_agent(nursery, "node-a")
    metrics = Metrics()
    send, recv = trio.open_memory_channel[Message](1)
    await nursery.start(lambda task_status: join.run(
        [JoinAddress("127.0.0.1", port)], send, port=7946, key=None, timeout=2.0, me="node-a",
        metrics=metrics, task_status=task_status))
    with trio.fail_after(10):
        while not metrics.registry.get_sample_value(  # noqa: ASYNC110 (real connections)
                "k3net_discovery_probes_total", {"via": "join", "result": "found"}):
            await trio.sleep(0.01)
    with pytest.raises(trio.WouldBlock):
        recv.receive_nowait()


async def test_join_passes_on_the_peers_the_found_agent_reaches(nursery: trio.Nursery) -> None:
    """Transitive: node-c, found at the join address, reaches node-b now; node-d it has not
    reached, and node-a is this agent. Only node-b is passed on, to be probed here."""
    views = [PeerView("node-b", ("10.79.1.3",), 7946, "alive", "mdns", True),
             PeerView("node-d", ("10.79.1.4",), 7946, "new", "mdns", False),
             PeerView("node-a", ("10.79.1.2",), 7946, "alive", "join", True)]
    port = await _serve_agent(nursery, "node-c", peers=views)
    send, recv = trio.open_memory_channel[Message](0)
    await nursery.start(lambda task_status: join.run(
        [JoinAddress("127.0.0.1", port)], send, port=7946, key=None, timeout=2.0, me="node-a",
        metrics=Metrics(), recheck=60.0, task_status=task_status))
    with trio.fail_after(10):
        got = [await recv.receive(), await recv.receive()]
    assert [m.name for m in got if isinstance(m, PeerSeen)] == ["node-c", "node-b"]
    assert got[1] == PeerSeen("node-b", ("10.79.1.3",), 7946, None, found_by="join")


def test_listed_peers_takes_only_what_is_reached_and_well_formed() -> None:
    def body(*entries: object) -> bytes:
        return json.dumps({"peers": list(entries)}).encode()

    good = {"name": "node-b", "addresses": ["10.0.0.3", "127.0.0.1"], "port": 7946,
            "state": "alive", "foundBy": "mdns", "confirmed": True}
    assert listed_peers(200, body(good)) == [Listed("node-b", ("10.0.0.3",), 7946)]
    assert listed_peers(200, body(good), loopback=True) == [
        Listed("node-b", ("10.0.0.3", "127.0.0.1"), 7946)]
    for bad in ({**good, "state": "refused"}, {**good, "confirmed": False},
                {**good, "name": "Bad_Name"}, {**good, "port": 70000}, {**good, "port": True},
                {**good, "addresses": ["127.0.0.1"]}, {**good, "addresses": "10.0.0.3"}, "x"):
        assert listed_peers(200, body(bad)) == [], bad
    assert listed_peers(404, body(good)) == []
    assert listed_peers(200, b"<html>") == []
    assert listed_peers(200, b'{"peers": 3}') == []


# --- /peers and `k3net peers --server` -----------------------------------------------------------


async def test_peers_endpoint_and_command(nursery: trio.Nursery) -> None:
    views = [PeerView("node-b", ("10.79.1.3",), 7946, "alive", "mdns", True),
             PeerView("node-c", ("10.79.2.2", "fd00::2"), 7946, "refused", "store", True),
             PeerView("node-d", ("10.79.2.3",), 7000, "new", "join", False)]
    port = await _serve_agent(nursery, "node-a", peers=views)

    def get() -> tuple[int, bytes]:
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/peers", timeout=5) as resp:
            return resp.status, resp.read()

    status, body = await trio.to_thread.run_sync(get)
    assert status == 200
    assert json.loads(body)["peers"][1] == {
        "name": "node-c", "addresses": ["10.79.2.2", "fd00::2"], "port": 7946, "pid": None,
        "state": "refused", "foundBy": "store", "confirmed": True, "held": None,
        "lastProbe": None}
    peers = peers_from_answer("http://x", status, body)
    assert [p.found_by for p in peers] == ["mdns", "store", "join"]
    lines = format_followed(peers).splitlines()
    assert lines[0].split() == ["NAME", "ADDRESSES", "PORT", "STATE", "FOUND-BY", "CONFIRMED"]
    assert lines[3].split() == ["node-d", "10.79.2.3", "7000", "new", "join", "no"]

    done = await trio.to_thread.run_sync(lambda: __import__("subprocess").run(
        [__import__("sys").executable, "-m", "k3net", "peers", "--server",
         f"http://127.0.0.1:{port}", "-o", "json"], capture_output=True, text=True, timeout=30))
    assert done.returncode == 0, done.stderr
    assert [p["foundBy"] for p in json.loads(done.stdout)] == ["mdns", "store", "join"]


def test_peers_command_without_agent_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["peers", "--server", f"http://127.0.0.1:{_free_port()}"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "no k3net agent answers" in err


def test_followed_peers_as_yaml() -> None:
    text = format_followed([FollowedPeer("node-c", ("10.79.2.2",), 7946, "alive", "scan", True)],
                           "yaml")
    assert "foundBy: scan" in text

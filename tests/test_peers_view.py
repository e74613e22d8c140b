"""What an agent says of its peers: the table keeps each peer's pid and last probe, /peers
carries them with the connection held to the peer, and `k3net peers --server -o wide` shows
them (the plain table stays as it was)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import AsyncIterator

import pytest
import trio

from k3net.commands.peers import FollowedPeer, format_followed, peers_from_answer, sort_peers
from k3net.core.messages import ProbeResult
from k3net.core.table import PeerView
from k3net.current import Current
from k3net.events import EventHub
from k3net.health import StoreHealth
from k3net.metrics import Metrics
from k3net.settings import Settings
from k3net.store.memory import MemoryStore
from k3net.web.app import AppState

from .helpers.web import start_server


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


VIEWS = [
    PeerView("node-b", ("10.79.1.3",), 7946, "alive", "mdns", True, 4242,
             ProbeResult("node-b", "confirmed", 0.0004, address="10.79.1.3")),
    PeerView("node-c", ("10.79.2.2",), 7946, "refused", "store", True, 77,
             ProbeResult("node-c", "refused", 0.001, address=None, error="connection refused")),
    PeerView("node-d", ("10.79.2.3",), 7000, "new", "join", False),
]


async def test_peers_endpoint_carries_pid_held_and_last_probe(nursery: trio.Nursery) -> None:
    metrics = Metrics()
    state = AppState(
        settings=Current(Settings(node_name="node-a", listen_port=7946)),
        store=Current(MemoryStore()),
        hub=EventHub(metrics), metrics=metrics, health=StoreHealth(), started_at=time.time(),
        peers=lambda: list(VIEWS), held=lambda: {"node-b": "10.79.1.3"},
    )
    port = (await start_server(nursery, state)).port

    def get() -> tuple[int, bytes]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/peers", timeout=5) as resp:
            return resp.status, resp.read()

    status, body = await trio.to_thread.run_sync(get)
    items = json.loads(body)["peers"]
    assert items[0] == {
        "name": "node-b", "addresses": ["10.79.1.3"], "port": 7946, "pid": 4242,
        "state": "alive", "foundBy": "mdns", "confirmed": True, "held": "10.79.1.3",
        "lastProbe": {"outcome": "confirmed", "latencySeconds": 0.0004, "address": "10.79.1.3",
                      "error": ""}}
    assert (items[2]["pid"], items[2]["held"], items[2]["lastProbe"]) == (None, None, None)

    peers = peers_from_answer("http://x", status, body)
    plain = format_followed(peers).splitlines()
    assert plain[0].split() == ["NAME", "ADDRESSES", "PORT", "STATE", "FOUND-BY", "CONFIRMED"]
    wide = format_followed(peers, "wide").splitlines()
    assert wide[0].split() == ["NAME", "ADDRESSES", "PORT", "STATE", "FOUND-BY", "CONFIRMED",
                               "PID", "HELD", "LAST-PROBE"]
    assert wide[1].split()[6:] == ["4242", "10.79.1.3", "confirmed", "0.4ms"]
    assert wide[2].split()[6:] == ["77", "no", "refused:", "connection", "refused"]
    assert wide[3].split()[6:] == ["<none>", "no", "<none>"]
    assert format_followed(peers, "name") == "peer/node-b\npeer/node-c\npeer/node-d\n"
    assert format_followed(peers, "table", headers=False).splitlines() == plain[1:]
    assert [p.name for p in sort_peers(peers, "port")] == ["node-d", "node-b", "node-c"]
    assert [p.name for p in sort_peers(peers, ".lastProbe.latencySeconds")] == [
        "node-b", "node-c", "node-d"]


def test_an_older_agent_without_the_new_fields_is_read() -> None:
    body = json.dumps({"peers": [{"name": "n", "addresses": [], "port": 1, "state": "alive",
                                  "foundBy": "mdns", "confirmed": True}]}).encode()
    assert peers_from_answer("http://x", 200, body) == [
        FollowedPeer("n", (), 1, "alive", "mdns", True)]
    assert format_followed(peers_from_answer("http://x", 200, body), "wide").splitlines()[1] \
        .split()[6:] == ["<none>", "no", "<none>"]


def test_no_peers_is_said_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    from k3net.commands import peers

    peers._print(format_followed([], "table"), True, "table")
    assert capsys.readouterr() == ("", "No peers found.\n")
    peers._print(format_followed([], "json"), True, "json")
    out, err = capsys.readouterr()
    assert (json.loads(out), err) == ([], "")

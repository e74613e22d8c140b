"""The ASGI app served by real hypercorn on 127.0.0.1, with a MemoryStore and real
trio-websocket clients. The hub is driven from a `store.watch()` loop, as the agent does."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import CloseReason, ConnectionClosed, wrap_client_stream

from k3net.current import Current
from k3net.events import EventHub
from k3net.health import StoreHealth
from k3net.metrics import Metrics
from k3net.settings import Settings
from k3net.store.base import StoreUnavailable
from k3net.store.memory import MemoryStore
from k3net.web import listen, serve
from k3net.web.app import AppState, make_app

from .helpers.nodes import make_node
from .helpers.web import Web, connect_from, get, start_web, write_nodes


@pytest.fixture
async def web(nursery: trio.Nursery) -> AsyncIterator[Web]:
    w = await start_web(nursery)
    yield w
    await w.stop()


def closed(info: pytest.ExceptionInfo[ConnectionClosed]) -> CloseReason:
    """Why the server closed the websocket (trio-websocket types it optional)."""
    reason = info.value.reason
    assert reason is not None
    return reason


async def next_json(ws: Any) -> dict[str, Any]:
    with trio.fail_after(5):
        return json.loads(await ws.get_message())


# --- plain HTTP ---------------------------------------------------------------------------------


async def test_healthz(web: Web) -> None:
    status, headers, body = await get(web.url("/healthz"))
    assert (status, body) == (200, b"ok\n")
    assert headers["content-type"].startswith("text/plain")


async def test_readyz_follows_store_health(web: Web) -> None:
    web.health.down("connection refused")
    status, _, body = await get(web.url("/readyz"))
    assert (status, body) == (503, b"[-]store failed: connection refused\nreadyz check failed\n")
    web.health.up()
    assert (await get(web.url("/readyz")))[:3:2] == (200, b"ok\n")


async def test_info(web: Web) -> None:
    status, headers, body = await get(web.url("/info"))
    assert status == 200 and headers["content-type"] == "application/json"
    info = json.loads(body)
    assert info["node"] == "node-a" and info["port"] == 7946 and info["addrs"] == ["10.77.0.2"]
    assert isinstance(info["pid"], int) and info["selfUp"] is True
    assert info["mdns"] == {"service": "_k3._tcp", "domain": "local."}
    assert info["ts"].endswith("Z") and info["startedAt"].endswith("Z")


async def test_nodes_lists_the_store(web: Web) -> None:
    await write_nodes(web.store, make_node("node-b"), make_node("node-c", ready="False"))
    status, _, body = await get(web.url("/nodes"))
    assert status == 200
    data = json.loads(body)
    assert (data["apiVersion"], data["kind"]) == ("v1", "NodeList")
    assert [n["metadata"]["name"] for n in data["items"]] == ["node-b", "node-c"]
    assert data["items"][0]["metadata"]["labels"]["k3.network/managed"] == "true"
    assert data["items"][1]["status"]["conditions"][0]["status"] == "False"


class DownStore(MemoryStore):
    async def list(self) -> list:
        raise StoreUnavailable("etcd at 127.0.0.1:2379: connection refused")


async def test_nodes_store_down_is_503(nursery: trio.Nursery) -> None:
    web = await start_web(nursery, store=DownStore())
    status, _, body = await get(web.url("/nodes"))
    assert status == 503
    data = json.loads(body)
    assert data["kind"] == "Status" and "connection refused" in data["message"]
    await web.stop()


async def test_metrics_parse_and_move(web: Web) -> None:
    def samples(text: bytes) -> dict[str, float]:
        out = {}
        for family in text_string_to_metric_families(text.decode()):
            for s in family.samples:
                out[s.name + json.dumps(s.labels, sort_keys=True)] = s.value
        return out

    status, headers, body = await get(web.url("/metrics"))
    assert status == 200 and headers["content-type"].startswith("text/plain")
    before = samples(body)
    assert before["k3net_event_subscribers{}"] == 0
    web.metrics.probes.labels("unverified").inc(3)
    async with web.ws() as ws:
        await next_json(ws)
        after = samples((await get(web.url("/metrics")))[2])
    assert after['k3net_probes_total{"result": "unverified"}'] == 3
    assert after["k3net_event_subscribers{}"] == 1


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nope", 404), ("POST", "/healthz", 405), ("DELETE", "/nodes", 405),
     ("GET", "/events", 426)],
)
async def test_errors(web: Web, method: str, path: str, status: int) -> None:
    assert (await get(web.url(path), method))[0] == status


async def test_head(web: Web) -> None:
    status, headers, body = await get(web.url("/healthz"), "HEAD")
    assert (status, body, headers["content-length"]) == (200, b"", "3")


# --- /events ------------------------------------------------------------------------------------


async def test_events_snapshot_then_changes_in_order(web: Web) -> None:
    await write_nodes(web.store, make_node("node-b"))
    await trio.testing.wait_all_tasks_blocked()
    async with web.ws() as ws:
        snap = await next_json(ws)
        assert snap["type"] == "snapshot" and snap["seq"] == 1
        assert [n["node"] for n in snap["nodes"]] == ["node-b"]
        await write_nodes(web.store, make_node("node-c"))
        stored = await web.store.get("node-b")
        await web.store.update(make_node("node-b", ready="False", reason="PeerLeft"),
                               stored.version)
        await web.store.delete("node-c")
        got = [await next_json(ws) for _ in range(3)]
    assert [(m["seq"], m["type"], m["node"]) for m in got] == [
        (2, "joined", "node-c"), (3, "not_ready", "node-b"), (4, "removed", "node-c"),
    ]
    assert got[1]["reason"] == "PeerLeft" and got[1]["ready"] == "False"


async def test_resume_since_gets_exactly_the_missed_messages(web: Web) -> None:
    await write_nodes(web.store, make_node("n1"), make_node("n2"))
    await trio.testing.wait_all_tasks_blocked()
    async with web.ws() as ws:
        snap = await next_json(ws)
    last = snap["seq"]
    await write_nodes(web.store, make_node("n3"), make_node("n4"))
    await trio.testing.wait_all_tasks_blocked()
    async with web.ws(f"?since={last}&epoch={snap['epoch']}") as ws:
        missed = [await next_json(ws) for _ in range(2)]
        assert [(m["seq"], m["node"]) for m in missed] == [(last + 1, "n3"), (last + 2, "n4")]
        await write_nodes(web.store, make_node("n5"))  # then live
        assert (await next_json(ws))["node"] == "n5"
        with trio.move_on_after(0.1):  # nothing else: no duplicates, no snapshot
            extra = await ws.get_message()
            pytest.fail(f"unexpected message {extra}")


async def test_too_old_since_gets_a_snapshot(nursery: trio.Nursery) -> None:
    web = await start_web(nursery, history=2)
    await write_nodes(web.store, *(make_node(f"n{i}") for i in range(5)))
    await trio.testing.wait_all_tasks_blocked()
    async with web.ws("?since=1") as ws:
        snap = await next_json(ws)
    assert snap["type"] == "snapshot" and snap["seq"] == 5 and len(snap["nodes"]) == 5
    await web.stop()


@pytest.mark.parametrize(
    "query", ["?since=abc", "?since=-1", "?since=", "?since=%C2%B2", "?since=%D9%A3"]
)
async def test_bad_since_closes_1008(web: Web, query: str) -> None:
    async with web.ws(query) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await next_json(ws)
    assert closed(info).code == 1008
    assert "since" in (closed(info).reason or "")


async def test_many_subscribers_get_the_same_events(web: Web, nursery: trio.Nursery) -> None:
    n_clients, n_nodes = 100, 5
    results: dict[int, list[tuple[int, str]]] = {}
    subscribed = 0
    all_subscribed = trio.Event()

    async def client(i: int) -> None:
        nonlocal subscribed
        # Each from an address of its own: one address gets SUBSCRIBERS_PER_CLIENT at most.
        stream = await connect_from(f"127.0.1.{i + 1}", web.port)
        async with await wrap_client_stream(nursery, stream, "127.0.0.1", "/events") as ws:
            assert (await next_json(ws))["type"] == "snapshot"
            subscribed += 1
            if subscribed == n_clients:
                all_subscribed.set()
            got = []
            for _ in range(n_nodes):
                m = await next_json(ws)
                got.append((m["seq"], m["node"]))
            results[i] = got

    async with trio.open_nursery() as clients:
        for i in range(n_clients):
            clients.start_soon(client, i)
        with trio.fail_after(10):
            await all_subscribed.wait()
        assert web.hub.subscriber_count == n_clients
        await write_nodes(web.store, *(make_node(f"n{i}") for i in range(n_nodes)))
    expected = [(i + 1, f"n{i}") for i in range(n_nodes)]
    assert len(results) == n_clients
    assert all(got == expected for got in results.values())


async def slow_client(nursery: trio.Nursery, port: int) -> Any:
    """A websocket client that reads nothing until told to: a tiny receive buffer and no client
    side queue, so the server's sends block almost at once."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    ws = await wrap_client_stream(nursery, stream, "127.0.0.1", "/events", message_queue_size=0)
    return ws, stream


async def test_slow_subscriber_is_dropped_fast_one_gets_everything(nursery: trio.Nursery) -> None:
    web = await start_web(nursery, queue_size=16)
    n_events = 400
    async with trio.open_nursery() as clients:
        slow, slow_stream = await slow_client(clients, web.port)
        async with web.ws() as fast:
            assert (await next_json(fast))["type"] == "snapshot"
            await trio.testing.wait_all_tasks_blocked()
            assert web.hub.subscriber_count == 2
            seqs = []
            node = make_node("flappy", ready="True")
            stored = await web.store.create(node)
            for i in range(n_events - 1):
                status = "False" if i % 2 == 0 else "True"
                stored = await web.store.update(make_node("flappy", ready=status),
                                                stored.version)
                seqs.append((await next_json(fast))["seq"])  # the fast one keeps up
            seqs.append((await next_json(fast))["seq"])
        assert sorted(seqs) == seqs and len(seqs) == n_events
        assert web.hub.subscriber_count == 0
        # The slow one now reads: what was already sent, then the 4008 close.
        with trio.fail_after(5), pytest.raises(ConnectionClosed) as info:
            while True:
                await slow.get_message()
        assert (closed(info).code, closed(info).reason) == (
            4008, "subscriber fell behind")
        await slow_stream.aclose()
    assert web.metrics.registry.get_sample_value("k3net_event_subscribers_dropped_total") == 1
    await web.stop()


async def test_shutdown_closes_subscribers_1001(nursery: trio.Nursery) -> None:
    web = await start_web(nursery)
    async with web.ws() as ws1, web.ws() as ws2:
        await next_json(ws1)
        await next_json(ws2)
        start = trio.current_time()
        await web.stop()
        for ws in (ws1, ws2):
            with pytest.raises(ConnectionClosed) as info:
                await next_json(ws)
            assert (closed(info).code, closed(info).reason) == (
                1001, "agent shutting down")
        assert trio.current_time() - start < serve.GRACE
    assert not web.hub.closed  # the hub is the agent's: it may outlive the listener


async def test_hub_close_ends_streams_1001(web: Web) -> None:
    async with web.ws() as ws:
        await next_json(ws)
        web.hub.close()
        with pytest.raises(ConnectionClosed) as info:
            await next_json(ws)
    assert closed(info).code == 1001
    async with web.ws() as late:  # later subscribers: a snapshot, then 1001
        assert (await next_json(late))["type"] == "snapshot"
        with pytest.raises(ConnectionClosed):
            await next_json(late)


async def test_client_that_stopped_reading_cannot_hold_up_shutdown(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # hypercorn's socket writes ignore cancellation: only the kernel's TCP_USER_TIMEOUT ends a
    # write to a peer that takes nothing. Shortened here from 5s.
    monkeypatch.setattr(listen, "STALL_TIMEOUT", 0.3)
    web = await start_web(nursery, queue_size=8)
    async with trio.open_nursery() as clients:
        _, stream = await slow_client(clients, web.port)
        await trio.testing.wait_all_tasks_blocked()
        stored = await web.store.create(make_node("flappy"))
        while web.hub.subscriber_count:  # until the handler is stuck and the hub dropped it
            reason = f"r{stored.version}"
            stored = await web.store.update(make_node("flappy", reason=reason), stored.version)
            await trio.sleep(0.001)  # let the handler send what it can
        start = trio.current_time()
        with trio.fail_after(5):
            await web.stop()
        assert trio.current_time() - start < 3
        await stream.aclose()
        clients.cancel_scope.cancel()  # trio-websocket's reader of a cut connection


async def test_port_in_use_is_one_clear_error(web: Web) -> None:
    with pytest.raises(listen.ListenError) as info:
        await serve.run(make_app(web.state), "127.0.0.1", web.port)
    assert str(info.value) == f"cannot listen on 127.0.0.1:{web.port}: Address already in use"


@pytest.mark.parametrize(("host", "family"), [("", None), ("[::1]", socket.AF_INET6),
                                              ("127.0.0.1", socket.AF_INET)])
async def test_listen_addresses(host: str, family: int | None) -> None:
    if not socket.has_ipv6 and family == socket.AF_INET6:
        pytest.skip("no IPv6")
    sock = await listen.listen_socket(host, 0)
    with sock:
        assert family is None or sock.family == family
        if host == "":  # every address: IPv4 too (through a dual-stack socket if IPv6 is on)
            stream = await trio.open_tcp_stream("127.0.0.1", sock.getsockname()[1])
            await stream.aclose()


async def test_hold_stays_open_until_the_agent_stops(nursery: trio.Nursery) -> None:
    """Peers hold /hold open (k3net.tasks.hold): it answers 200 and then nothing while the
    agent runs, and ends when the server stops, within its grace."""
    w = await start_web(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", w.port)
    await stream.send_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    head = b""
    with trio.fail_after(5):
        while b"held\n" not in head:  # the head comes with a first piece of the body
            head += await stream.receive_some(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
    with trio.move_on_after(1.0) as idle:  # nothing more while it runs
        assert await stream.receive_some(4096) == b"never"
    assert idle.cancelled_caught
    with trio.fail_after(5):
        await w.stop()
        rest = b""
        while chunk := await stream.receive_some(4096):
            rest += chunk
    assert rest.endswith(b"0\r\n\r\n")  # the response ended, then the connection closed
    await stream.aclose()


async def test_a_hold_ends_when_the_agents_addresses_change(nursery: trio.Nursery) -> None:
    """A holder takes beats as proof of the facts it last probed (the addresses among them):
    when this agent's addresses change, its held connections end, so that every holder probes
    it again and learns the new ones. The agent serves on."""
    w = await start_web(nursery)
    readdressed = trio.Event()
    w.state.facts_changed = readdressed.wait
    stream = await trio.open_tcp_stream("127.0.0.1", w.port)
    await stream.send_all(b"GET /hold?beat=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    head = b""
    with trio.fail_after(5):
        while b"held\n" not in head:
            head += await stream.receive_some(4096)
    with trio.move_on_after(0.5) as idle:  # held while the addresses stay
        assert await stream.receive_some(4096) == b"never"
    assert idle.cancelled_caught
    readdressed.set()
    rest = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(4096):
            rest += chunk
    assert rest.endswith(b"0\r\n\r\n")  # the response ended, then the connection closed
    await stream.aclose()
    assert (await get(f"http://127.0.0.1:{w.port}/healthz"))[0] == 200


async def test_hold_is_refused_while_stopping() -> None:
    app = make_app(AppState(
        settings=Current(Settings(node_name="node-a")), store=Current(MemoryStore()),
        hub=EventHub(Metrics()), metrics=Metrics(), health=StoreHealth(), started_at=time.time()))
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    app.shutdown()
    await app({"type": "http", "path": "/hold", "method": "GET"}, receive, send)
    assert sent[0]["status"] == 503 and sent[1]["body"] == b"shutting down\n"

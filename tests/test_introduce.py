"""Join by introduction (k3net.tasks.introduce): the hello's reader, the caps, the receiving side
served by the real app, and the sending side's tap on the probe results."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from k3net import limits
from k3net.core import parse
from k3net.core.identity import Facts
from k3net.core.messages import PeerSeen, ProbeResult, Snapshot
from k3net.core.table import Message, PeerTable, ProbeNow, SelfInfo
from k3net.current import Current
from k3net.events import EventHub
from k3net.health import StoreHealth
from k3net.metrics import Metrics
from k3net.settings import Settings
from k3net.store.memory import MemoryStore
from k3net.tasks import introduce
from k3net.tasks.introduce import Hello, Introductions, Window, parse_hello
from k3net.web.app import AppState

from .helpers.web import connect_from, start_server

# --- the reader ------------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "want"), [
    (b"node=node-b&port=7946", Hello("node-b", 7946)),
    (b"port=1&node=a.b-c", Hello("a.b-c", 1)),
    (b"node=node-b&port=7946&address=10.9.9.9", Hello("node-b", 7946)),  # extra keys: ignored
])
def test_a_hello_says_a_name_and_a_port(query: bytes, want: Hello) -> None:
    assert parse_hello(query) == want


@pytest.mark.parametrize(("query", "field"), [
    (b"", "node"),
    (b"node=Node-B&port=7946", "node"),
    (b"node=node-b", "port"),
    (b"node=node-b&port=0", "port"),
    (b"node=node-b&port=70000", "port"),
    (b"node=node-b&port=-1", "port"),
    (b"node=" + b"a" * 600 + b"&port=1", "query"),
    (b"node=n\xc3\xa9&port=1", "query"),
])
def test_a_bad_hello_is_foreign_and_says_why(query: bytes, field: str) -> None:
    found = parse_hello(query)
    assert isinstance(found, parse.Foreign)
    assert found.field == field


@given(st.binary(max_size=700))
def test_the_reader_never_raises(query: bytes) -> None:
    assert isinstance(parse_hello(query), Hello | parse.Foreign)


# --- the caps ----------------------------------------------------------------------------------


def test_the_window_caps_per_client_and_in_all_and_forgets_old_hellos() -> None:
    w = Window(per_key=2, overall=3, seconds=10)
    assert [w.admit("a", 0), w.admit("a", 1), w.admit("a", 2)] == [None, None, "per-client"]
    assert w.admit("b", 3) is None
    assert w.admit("c", 4) == "overall"  # 3 in the window
    assert w.admit("a", 10.5) is None  # a's first (at 0) left the window
    assert w.admit("c", 11.5) is None  # and a's second (at 1)


def _introductions(now: list[float]) -> tuple[Introductions, Metrics]:
    metrics = Metrics()
    return Introductions("node-a", metrics, clock=lambda: now[0]), metrics


def _hits(metrics: Metrics, limit: str) -> float | None:
    return metrics.registry.get_sample_value("k3net_limit_hits_total", {"limit": limit})


def test_an_introduction_is_taken_from_the_connections_address_only() -> None:
    intro, _ = _introductions([0.0])
    status, line = intro.offer("10.77.0.3", b"node=node-b&port=7000&address=10.9.9.9")
    assert status == 202
    assert "10.77.0.3:7000" in line
    # An IPv4 client on a dual-stack socket is probed at its IPv4 address.
    assert intro.offer("::ffff:10.77.0.4", b"node=node-c&port=7946")[0] == 202
    assert intro._recv.receive_nowait() == PeerSeen("node-b", ("10.77.0.3",), 7000,
                                                    found_by="introduced")
    assert intro._recv.receive_nowait().addresses == ("10.77.0.4",)


def test_bad_or_own_hellos_are_answered_and_change_nothing() -> None:
    intro, metrics = _introductions([0.0])
    assert intro.offer("10.77.0.3", b"node=NODE&port=1")[0] == 400
    assert intro.offer("", b"node=node-b&port=1")[0] == 400
    assert intro.offer("10.77.0.3", b"node=node-a&port=7946")[0] == 409  # our own name
    with pytest.raises(trio.WouldBlock):
        intro._recv.receive_nowait()
    assert intro.window.admit("10.77.0.3", 0.0) is None  # none of them took a slot


def test_introductions_past_the_caps_are_refused_and_counted() -> None:
    now = [0.0]
    intro, metrics = _introductions(now)
    answers = [intro.offer("10.77.0.3", f"node=n{i}&port=1".encode())[0]
               for i in range(limits.INTRODUCTIONS_PER_CLIENT + 1)]
    assert answers == [202] * limits.INTRODUCTIONS_PER_CLIENT + [429]
    assert _hits(metrics, "introductions-per-client") == 1
    # The queue to the table holds QUEUE: past that (a table that does not keep up), 503.
    for i in range(introduce.QUEUE - limits.INTRODUCTIONS_PER_CLIENT):
        assert intro.offer(f"10.78.{i // 250}.{i % 250}", b"node=x&port=1")[0] == 202
    assert intro.offer("10.79.0.1", b"node=x&port=1")[0] == 503
    assert _hits(metrics, "introductions") == 1
    # The window passed: the first client may introduce again (once the table took some).
    for _ in range(introduce.QUEUE):
        intro._recv.receive_nowait()
    now[0] = limits.INTRODUCTION_WINDOW + 1
    assert intro.offer("10.77.0.3", b"node=n9&port=1")[0] == 202


# --- served: POST /hello into the table ----------------------------------------------------------


async def _hello(port: int, source: str, query: str) -> bytes:
    stream = await connect_from(source, port)
    async with stream:
        await stream.send_all(f"POST /hello?{query} HTTP/1.1\r\nHost: x\r\n"
                              "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := await stream.receive_some(4096):
            answer += chunk
    return answer


async def _serving_introductions(
    nursery: trio.Nursery,
) -> tuple[Introductions, AppState, Any]:
    """Node-a's app, taking introductions, served on a loopback port."""
    metrics = Metrics()
    intro = Introductions("node-a", metrics)
    state = AppState(
        settings=Current(Settings(node_name="node-a", listen_port=7946)),
        store=Current(MemoryStore()), hub=EventHub(metrics), metrics=metrics,
        health=StoreHealth(), started_at=time.time(), introduce=intro.offer,
    )
    return intro, state, await start_server(nursery, state)


async def test_a_served_hello_makes_the_table_probe_the_sender_and_no_named_address(
    nursery: trio.Nursery,
) -> None:
    intro, state, server = await _serving_introductions(nursery)
    send, recv = trio.open_memory_channel[Message](0)
    await nursery.start(intro.run, send)
    table = PeerTable(peer_ttl=90, refresh_interval=30, register_self=False,
                      me=SelfInfo("node-a", lambda: ("127.0.0.1",), 7946, 1))
    table.handle(Snapshot(()), 0.0)

    answer = await _hello(server.port, "127.0.0.7",
                          "node=node-b&port=7000&address=10.9.9.9&addrs=10.9.9.8")
    assert answer.startswith(b"HTTP/1.1 202")
    seen = await recv.receive()
    assert seen == PeerSeen("node-b", ("127.0.0.7",), 7000, found_by="introduced")
    probes = [a for a in table.handle(seen, 1.0) if isinstance(a, ProbeNow)]
    assert [(p.target.name, p.target.addresses, p.target.port) for p in probes] == [
        ("node-b", ("127.0.0.7",), 7000)]
    assert table.peers()[0].found_by == "introduced"

    # An introduction names nobody else's address, and changes no peer found another way.
    mdns = PeerSeen("node-c", ("10.77.0.5",), 7946)
    table.handle(mdns, 2.0)
    assert (await _hello(server.port, "127.0.0.8", "node=node-c&port=7946")).startswith(
        b"HTTP/1.1 202")
    assert table.handle(await recv.receive(), 3.0) == []
    node_c = next(p for p in table.peers() if p.name == "node-c")
    assert (node_c.addresses, node_c.found_by) == (("10.77.0.5",), "mdns")

    # Not served: GET, and an app without introductions.
    assert (await _hello(server.port, "127.0.0.9", "x")).startswith(b"HTTP/1.1 400")
    state.introduce = None
    assert (await _hello(server.port, "127.0.0.9", "node=node-d&port=1")).startswith(
        b"HTTP/1.1 404")
    server.scope.cancel()


# --- the sending side ----------------------------------------------------------------------------


def _confirmed(name: str, address: str, port: int) -> ProbeResult:
    return ProbeResult(name, "confirmed", 0.001, address=address,
                       facts=Facts(name, port, 42, (address,)))


async def test_each_peer_is_greeted_once_where_it_proved_itself(nursery: trio.Nursery) -> None:
    greeted: list[tuple[str, int, str, int]] = []

    async def greet(address: str, port: int, me: str, my_port: int) -> int | None:
        greeted.append((address, port, me, my_port))
        return 202

    results_send, results_recv = trio.open_memory_channel[ProbeResult](0)
    out_send, out_recv = trio.open_memory_channel[Message](10)
    await nursery.start(lambda task_status: introduce.tap(
        results_recv, out_send, me="node-a", port=7946, timeout=0.7, greet=greet,
        task_status=task_status))
    sent = [
        ProbeResult("node-x", "timeout", 0.7),  # not proven: nobody is greeted
        ProbeResult("node-y", "wrong-node", 0.01, address="10.77.0.9", answered_by="node-z"),
        _confirmed("node-b", "10.77.0.3", 7000),
        _confirmed("node-b", "10.77.0.3", 7000),  # again: greeted once
        _confirmed("node-c", "10.77.0.4", 7946),
    ]
    async with results_send:
        for result in sent:
            await results_send.send(result)
        await trio.testing.wait_all_tasks_blocked()
    assert [out_recv.receive_nowait() for _ in sent] == sent  # every result reaches the table
    assert sorted(greeted) == [("10.77.0.3", 7000, "node-a", 7946),
                               ("10.77.0.4", 7946, "node-a", 7946)]


async def test_a_peer_that_has_heard_of_us_is_not_greeted(nursery: trio.Nursery) -> None:
    """Once this agent's mDNS record is out, a peer found over mDNS has it already (the agent's
    `needed` says so): no hello. One that needs it again later is greeted at its next
    confirmation."""
    greeted: list[str] = []
    has_heard = {"node-b"}

    async def greet(address: str, port: int, me: str, my_port: int) -> int | None:
        greeted.append(address)
        return 202

    results_send, results_recv = trio.open_memory_channel[ProbeResult](0)
    out_send, out_recv = trio.open_memory_channel[Message](10)
    await nursery.start(lambda task_status: introduce.tap(
        results_recv, out_send, me="node-a", port=7946, timeout=0.7, greet=greet,
        needed=lambda name: name not in has_heard, task_status=task_status))
    await results_send.send(_confirmed("node-b", "10.77.0.3", 7000))
    await results_send.send(_confirmed("node-c", "10.77.0.4", 7946))
    await trio.testing.wait_all_tasks_blocked()
    assert greeted == ["10.77.0.4"]
    has_heard.clear()
    await results_send.send(_confirmed("node-b", "10.77.0.3", 7000))
    await trio.testing.wait_all_tasks_blocked()
    assert greeted == ["10.77.0.4", "10.77.0.3"]


async def test_a_hello_that_gets_no_answer_is_bounded_by_the_probe_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
) -> None:
    async def silent(address: str, port: int, me: str, my_port: int) -> int | None:
        await trio.sleep_forever()
        return None  # pragma: no cover

    results_send, results_recv = trio.open_memory_channel[ProbeResult](0)
    out_send, out_recv = trio.open_memory_channel[Message](10)
    done = trio.Event()

    async def run_tap() -> None:
        await introduce.tap(results_recv, out_send, me="node-a", port=7946, timeout=0.7,
                            greet=silent)
        done.set()

    nursery.start_soon(run_tap)
    await results_send.send(_confirmed("node-b", "10.77.0.3", 7000))
    start = trio.current_time()
    await trio.sleep(0.7)
    await results_send.aclose()
    await done.wait()
    assert trio.current_time() - start == pytest.approx(0.7)


async def test_say_hello_introduces_this_agent_to_a_served_one(nursery: trio.Nursery) -> None:
    intro, state, server = await _serving_introductions(nursery)
    assert await introduce.say_hello("127.0.0.1", server.port, "node-b", 7001) == 202
    assert intro._recv.receive_nowait() == PeerSeen("node-b", ("127.0.0.1",), 7001,
                                                    found_by="introduced")
    assert await introduce.say_hello("127.0.0.1", server.port, "node-a", 7001) == 409
    server.scope.cancel()


# --- the newcomer's first mDNS query --------------------------------------------------------------


async def test_the_first_query_for_peers_asks_for_unicast_answers_at_once() -> None:
    import trio_asyncio
    from zeroconf import DNSOutgoing
    from zeroconf.const import _TYPE_PTR

    from k3net.tasks import presence

    sent: list[DNSOutgoing] = []

    class Zeroconf:
        async def async_wait_for_start(self) -> None:
            pass

        def async_send(self, out: DNSOutgoing) -> None:
            sent.append(out)

    class AsyncZeroconf:
        zeroconf = Zeroconf()

    async with trio_asyncio.open_loop():
        await presence._ask_peers_now(AsyncZeroconf(), "_k3._tcp.local.")  # type: ignore[arg-type]
    (out,) = sent
    (question,) = out.questions
    # QU: peers answer at once, where a multicast question may wait 20-120 ms (RFC 6762).
    assert (question.name, question.type, question.unicast) == ("_k3._tcp.local.", _TYPE_PTR, True)

"""TCP probes against real listeners on 127.0.0.1 (loopback only), and the Prober's rounds.

Rounds run on trio's MockClock: loopback connects complete inside the connect() call, so the
clock only jumps when every task waits for a timer.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import trio
import trio.testing

from k3net.core import identity
from k3net.core.identity import Facts
from k3net.core.messages import ProbeResult
from k3net.core.table import Forget, ProbeNow, ProberOrder, ProbeTarget, Retarget
from k3net.metrics import Metrics
from k3net.tasks.hold import MIN_HOLD
from k3net.tasks.probe import Own, Prober, probe_peer

from .helpers.fakeagent import FakeAgent
from .helpers.sockets import fill_accept_queue, unanswering

LOOPBACK = "127.0.0.1"
INTERVAL = 60.0
TIMEOUT = 0.7


class Listeners:
    """Real TCP listeners on 127.0.0.1; counts the connections each one accepted."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.accepted: Counter[int] = Counter()

    async def open(self) -> int:
        async def handler(stream: trio.SocketStream) -> None:
            self.accepted[port] += 1
            await stream.aclose()

        listeners = await self.nursery.start(functools.partial(trio.serve_tcp, handler, 0, host=LOOPBACK))
        port: int = listeners[0].socket.getsockname()[1]
        return port


@pytest.fixture
async def listeners() -> AsyncIterator[Listeners]:
    async with trio.open_nursery() as nursery:
        yield Listeners(nursery)
        nursery.cancel_scope.cancel()


@pytest.fixture
def unanswering_port_2() -> Iterator[int]:
    """The same on 127.0.0.2 (so 127.0.0.1 can answer on the same port)."""
    yield from unanswering("127.0.0.2")


# --- one probe --------------------------------------------------------------------------------


async def test_probe_ok(listeners: Listeners) -> None:
    port = await listeners.open()
    result = await probe_peer("peer-a", [LOOPBACK], port, 5.0)
    assert result.outcome == "unverified"
    assert result.name == "peer-a"
    assert result.address == LOOPBACK
    assert 0 <= result.latency < 5.0
    assert listeners.accepted[port] == 1


async def test_probe_refused(closed_port: int) -> None:
    result = await probe_peer("peer-a", [LOOPBACK], closed_port, 5.0)
    assert result.outcome == "refused"
    assert result.address is None
    assert LOOPBACK in result.error


async def test_probe_tries_every_address_until_one_answers(listeners: Listeners) -> None:
    port = await listeners.open()  # bound to 127.0.0.1 only: 127.0.0.2 refuses
    result = await probe_peer("peer-a", ["127.0.0.2", LOOPBACK], port, 5.0)
    assert result.outcome == "unverified"
    assert result.address == LOOPBACK


async def test_probe_fails_when_no_address_answers(closed_port: int) -> None:
    result = await probe_peer("peer-a", ["127.0.0.2", "127.0.0.3"], closed_port, 5.0)
    assert result.outcome != "unverified"
    assert "127.0.0.2" in result.error and "127.0.0.3" in result.error


async def test_probe_without_addresses_fails() -> None:
    result = await probe_peer("peer-a", [], 7946, 5.0)
    assert result.outcome != "unverified"


async def test_probe_times_out(
    autojump_clock: trio.testing.MockClock, unanswering_port: int
) -> None:
    start = trio.current_time()
    result = await probe_peer("peer-a", [LOOPBACK], unanswering_port, TIMEOUT)
    assert result.outcome != "unverified"
    assert trio.current_time() - start == pytest.approx(TIMEOUT)
    assert result.latency == pytest.approx(TIMEOUT)
    assert "timed out" in result.error


# --- identity probes: who answered --------------------------------------------------------

KEY = b"a-cluster-key-of-32-bytes-------"


class Agents:
    """FakeAgents (tests/helpers/fakeagent.py) listening on loopback addresses of a shared port."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery

    async def serve(self, agent: FakeAgent, host: str = LOOPBACK, port: int = 0) -> int:
        listeners = await self.nursery.start(
            functools.partial(trio.serve_tcp, agent.handle, port, host=host))
        return int(listeners[0].socket.getsockname()[1])


@pytest.fixture
async def fake_agents() -> AsyncIterator[Agents]:
    async with trio.open_nursery() as nursery:
        yield Agents(nursery)
        nursery.cancel_scope.cancel()


async def test_go_agent_answering_only_info_is_confirmed(fake_agents: Agents) -> None:
    go = FakeAgent("node-g")
    port = await fake_agents.serve(go)
    result = await probe_peer("node-g", [LOOPBACK], port, 5.0)
    assert (result.outcome, result.address, result.error) == ("confirmed", LOOPBACK, "")
    assert go.paths and go.paths[0].startswith("/info?nonce=")


async def test_another_agent_answering_is_wrong_node(fake_agents: Agents) -> None:
    port = await fake_agents.serve(FakeAgent("node-x"))
    result = await probe_peer("node-g", [LOOPBACK], port, 5.0)
    assert (result.outcome, result.answered_by) == ("wrong-node", "node-x")
    assert "node-x" in result.error


@pytest.mark.parametrize(
    ("answers_key", "probe_key", "outcome"),
    [(KEY, KEY, "confirmed"), (None, KEY, "unauthenticated"),
     (b"another-key-of-more-than-16-bytes", KEY, "unauthenticated"), (KEY, None, "confirmed")],
    ids=["same-key", "peer-without-key", "peer-with-another-key", "no-key-here"],
)
async def test_cluster_key(fake_agents: Agents, answers_key: bytes | None,
                           probe_key: bytes | None, outcome: str) -> None:
    port = await fake_agents.serve(FakeAgent("node-k", key=answers_key))
    result = await probe_peer("node-k", [LOOPBACK], port, 5.0, key=probe_key)
    assert result.outcome == outcome
    assert KEY.decode() not in result.error


@pytest.mark.parametrize(
    ("agent", "detail"),
    [(FakeAgent("x", status=500), "status 500"), (FakeAgent("x", body=b"<html>"), "not JSON"),
     (FakeAgent("x", body=b'{"pid": 3}'), "names no node")],
    ids=["http-500", "not-json", "no-node"],
)
async def test_something_else_answering_is_unverified(
    fake_agents: Agents, agent: FakeAgent, detail: str
) -> None:
    port = await fake_agents.serve(agent)
    result = await probe_peer("node-a", [LOOPBACK], port, 5.0)
    assert result.outcome == "unverified" and detail in result.error


async def test_accepted_but_silent_is_unverified(
    autojump_clock: trio.testing.MockClock, fake_agents: Agents
) -> None:
    port = await fake_agents.serve(FakeAgent("node-a", silent=True))
    result = await probe_peer("node-a", [LOOPBACK], port, TIMEOUT)
    assert result.outcome == "unverified" and "no answer" in result.error
    assert result.latency == pytest.approx(TIMEOUT)


async def test_silent_first_address_does_not_hide_a_working_second(
    autojump_clock: trio.testing.MockClock, fake_agents: Agents, unanswering_port_2: int
) -> None:
    autojump_clock.autojump_threshold = 0.01
    # 127.0.0.2 drops SYNs (a full accept queue); 127.0.0.1 on the same port answers.
    await fake_agents.serve(FakeAgent("node-a"), host="127.0.0.1", port=unanswering_port_2)
    result = await probe_peer("node-a", ["127.0.0.2", LOOPBACK], unanswering_port_2, TIMEOUT)
    assert (result.outcome, result.address) == ("confirmed", LOOPBACK)
    assert result.latency < TIMEOUT  # it did not wait for the silent address first


async def test_confirmed_wins_over_another_agent_on_a_shared_address(fake_agents: Agents) -> None:
    port = await fake_agents.serve(FakeAgent("node-me"), host="127.0.0.2")
    await fake_agents.serve(FakeAgent("node-a"), host=LOOPBACK, port=port)
    result = await probe_peer("node-a", ["127.0.0.2", LOOPBACK], port, 5.0)
    assert (result.outcome, result.address) == ("confirmed", LOOPBACK)


async def test_refused_only_when_every_address_refuses(
    autojump_clock: trio.testing.MockClock, closed_port: int, unanswering_port: int
) -> None:
    autojump_clock.autojump_threshold = 0.01
    refused = await probe_peer("node-a", ["127.0.0.2", "127.0.0.3"], closed_port, TIMEOUT)
    assert refused.outcome == "refused"
    assert "127.0.0.2" in refused.error and "127.0.0.3" in refused.error
    # One address refuses, the other does not answer: no positive evidence of a death.
    mixed = await probe_peer("node-a", ["127.0.0.1", "127.0.0.2"], unanswering_port, TIMEOUT)
    assert mixed.outcome == "timeout"


async def test_own_address_on_own_port_is_never_dialled(fake_agents: Agents) -> None:
    me = FakeAgent("node-me")
    port = await fake_agents.serve(me)  # "our" listener, reached through a shared address
    own = Own.of(["127.0.0.1"], port)
    result = await probe_peer("node-dead", [LOOPBACK], port, 5.0, own=own)
    assert result.outcome == "timeout" and "this machine" in result.error
    assert me.accepted == 0


async def test_own_address_counts_only_when_confirmed(
    fake_agents: Agents, closed_port: int
) -> None:
    own = Own.of(["127.0.0.1"], 7946)
    other = await fake_agents.serve(FakeAgent("node-x"))
    wrong = await probe_peer("node-a", [LOOPBACK], other, 5.0, own=own)
    assert wrong.outcome == "timeout"  # another agent of this machine: no evidence at all
    refused = await probe_peer("node-a", [LOOPBACK, "127.0.0.2"], closed_port, 5.0, own=own)
    assert refused.outcome == "refused"  # decided by the address that counts
    assert "1 address(es) of this machine" in refused.error
    same_host = await fake_agents.serve(FakeAgent("node-a"))
    confirmed = await probe_peer("node-a", [LOOPBACK], same_host, 5.0, own=own)
    assert confirmed.outcome == "confirmed"  # an agent of that name runs on this machine


async def test_unusable_and_duplicate_addresses_are_not_dialled(fake_agents: Agents) -> None:
    agent = FakeAgent("node-a")
    port = await fake_agents.serve(agent)
    result = await probe_peer("node-a", ["not-an-ip", LOOPBACK, "127.0.0.1"], port, 5.0)
    assert result.outcome == "confirmed" and agent.accepted == 1


# --- the Prober -------------------------------------------------------------------------------


class Running:
    def __init__(self, prober: Prober, inbox: trio.MemorySendChannel[ProberOrder],
                 results: trio.MemoryReceiveChannel[ProbeResult]) -> None:
        self.prober = prober
        self.inbox = inbox
        self.results = results

    async def next_results(self, count: int) -> list[tuple[float, ProbeResult]]:
        out = []
        for _ in range(count):
            result = await self.results.receive()
            out.append((trio.current_time(), result))
        return out

    async def results_during(self, seconds: float) -> list[ProbeResult]:
        out: list[ProbeResult] = []
        with trio.move_on_after(seconds):
            async for result in self.results:
                out.append(result)
        return out


@pytest.fixture
async def prober(autojump_clock: trio.testing.MockClock) -> AsyncIterator[Running]:
    # (pytest-trio runs a test on the clock the TEST requests: every test using this fixture
    # also takes `autojump_clock`.)
    assert trio.lowlevel.current_clock() is autojump_clock
    # Jump the mock clock only after 10ms of real idleness, so that a slow machine's loopback
    # connect is never overtaken by a jump to the probe deadline.
    autojump_clock.autojump_threshold = 0.01
    inbox_send, inbox_recv = trio.open_memory_channel[ProberOrder](0)
    results_send, results_recv = trio.open_memory_channel[ProbeResult](0)
    p = Prober(interval=INTERVAL, timeout=TIMEOUT, metrics=Metrics(), rng=random.Random(5))
    async with trio.open_nursery() as nursery:
        await nursery.start(p.run, inbox_recv, results_send)
        yield Running(p, inbox_send, results_recv)
        await inbox_send.aclose()


def target(name: str, port: int, *addresses: str) -> ProbeTarget:
    return ProbeTarget(name, addresses or (LOOPBACK,), port)


async def test_probe_now_probes_at_once(
    autojump_clock: trio.testing.MockClock, prober: Running, listeners: Listeners
) -> None:
    port = await listeners.open()
    start = trio.current_time()
    await prober.inbox.send(ProbeNow(target("peer-a", port)))
    [(when, result)] = await prober.next_results(1)
    assert result.outcome == "unverified" and result.name == "peer-a"
    assert when - start < 1.0  # not at the next round (60s)
    assert listeners.accepted[port] == 1


async def test_rounds_probe_every_target(
    autojump_clock: trio.testing.MockClock, prober: Running, listeners: Listeners, closed_port: int
) -> None:
    ports = {"peer-a": await listeners.open(), "peer-b": await listeners.open()}
    start = trio.current_time()
    for name, port in ports.items():
        await prober.inbox.send(ProbeNow(target(name, port)))
    await prober.inbox.send(ProbeNow(target("peer-c", closed_port)))
    immediate = await prober.next_results(3)
    assert {r.name for _, r in immediate} == {"peer-a", "peer-b", "peer-c"}

    times: dict[str, list[float]] = {"peer-a": [], "peer-b": [], "peer-c": []}
    for _ in range(3 * 3):
        [(when, result)] = await prober.next_results(1)
        assert (result.outcome == "unverified") == (result.name != "peer-c")
        times[result.name].append(when - start)
    for name, seen in times.items():
        # each peer at its own phase in the first interval, then once per interval
        assert 0 <= seen[0] < INTERVAL + TIMEOUT, name
        assert [b - a for a, b in zip(seen, seen[1:], strict=False)] == pytest.approx(
            [INTERVAL, INTERVAL], abs=TIMEOUT), name
    assert listeners.accepted[ports["peer-a"]] == 4
    assert listeners.accepted[ports["peer-b"]] == 4


async def test_each_peer_is_probed_at_its_own_phase(
    autojump_clock: trio.testing.MockClock, prober: Running, closed_port: int
) -> None:
    """Peers added together are not probed in one burst per interval: their phases spread
    over the whole interval (so some agent reaches a dead peer soon, and the LAN load is
    smooth)."""
    start = trio.current_time()
    for i in range(40):
        await prober.inbox.send(ProbeNow(target(f"peer-{i}", closed_port)))
    await prober.next_results(40)  # the immediate probes
    scheduled = await prober.next_results(40)
    tenths = {int((when - start) / INTERVAL * 10) for when, _ in scheduled}
    assert len(tenths) >= 7, sorted(tenths)  # 40 random phases leave few tenths empty
    assert {r.name for _, r in scheduled} == {f"peer-{i}" for i in range(40)}


async def test_a_delayed_probe_waits(
    autojump_clock: trio.testing.MockClock, prober: Running, listeners: Listeners
) -> None:
    port = await listeners.open()
    await prober.inbox.send(ProbeNow(target("peer-a", port)))
    await prober.next_results(1)
    asked = trio.current_time()
    await prober.inbox.send(ProbeNow(target("peer-a", port), delay=1.0))
    [(when, result)] = await prober.next_results(1)
    assert result.name == "peer-a"
    assert when - asked >= 1.0


async def test_forget_stops_probing(
    autojump_clock: trio.testing.MockClock, prober: Running, listeners: Listeners
) -> None:
    port_a, port_b = await listeners.open(), await listeners.open()
    await prober.inbox.send(ProbeNow(target("peer-a", port_a)))
    await prober.inbox.send(ProbeNow(target("peer-b", port_b)))
    await prober.next_results(2)
    await prober.inbox.send(Forget("peer-b"))
    later = await prober.results_during(3.5 * INTERVAL)
    assert len(later) == 3
    assert {r.name for r in later} == {"peer-a"}
    assert listeners.accepted[port_b] == 1


async def test_probe_now_replaces_the_target(
    autojump_clock: trio.testing.MockClock, prober: Running, listeners: Listeners, closed_port: int
) -> None:
    await prober.inbox.send(ProbeNow(target("peer-a", closed_port)))
    [(_, first)] = await prober.next_results(1)
    assert first.outcome != "unverified"
    port = await listeners.open()  # the peer restarted on another port
    await prober.inbox.send(ProbeNow(target("peer-a", port)))
    [(_, second)] = await prober.next_results(1)
    assert second.outcome == "unverified"
    later = await prober.results_during(2.5 * INTERVAL)
    assert [r.outcome == "unverified" for r in later] == [True, True]


async def test_unanswering_peer_does_not_delay_the_others(
    autojump_clock: trio.testing.MockClock, prober: Running, listeners: Listeners, unanswering_port: int
) -> None:
    port = await listeners.open()
    await prober.inbox.send(ProbeNow(target("slow", unanswering_port)))
    await prober.inbox.send(ProbeNow(target("fast", port)))
    [(t1, r1), (t2, r2)] = await prober.next_results(2)
    assert (r1.name, r1.outcome == "unverified") == ("fast", True)
    assert (r2.name, r2.outcome == "unverified") == ("slow", False)
    assert t2 - t1 == pytest.approx(TIMEOUT, abs=0.01)


async def test_closing_the_inbox_stops_the_prober(autojump_clock: trio.testing.MockClock) -> None:
    inbox_send, inbox_recv = trio.open_memory_channel[ProberOrder](0)
    results_send, results_recv = trio.open_memory_channel[ProbeResult](0)
    p = Prober(interval=INTERVAL, timeout=TIMEOUT, metrics=Metrics())
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            await nursery.start(p.run, inbox_recv, results_send)
            await inbox_send.aclose()
        # run() returned and closed its results channel
        assert [r async for r in results_recv] == []


async def _probing(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]], name: str,
    *, interval: float,
) -> tuple[Metrics, trio.MemoryReceiveChannel[ProbeResult]]:
    """`handler` serving on a loopback port, and a Prober asked to probe peer `name` there:
    the prober's metrics and its results (room for 100)."""
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host=LOOPBACK))
    port = listeners[0].socket.getsockname()[1]
    metrics = Metrics()
    prober = Prober(interval=interval, timeout=TIMEOUT, metrics=metrics)
    asks, inbox = trio.open_memory_channel[ProberOrder](1)
    results, out = trio.open_memory_channel[ProbeResult](100)
    await nursery.start(prober.run, inbox, results)
    await asks.send(ProbeNow(ProbeTarget(name, (LOOPBACK,), port)))
    return metrics, out


async def test_a_server_that_answers_200_to_anything_is_not_held_in_a_loop() -> None:
    """A web server that answers every path with 200 and closes is no agent's /hold: it must not
    be held, closed and probed again in a loop (k3net.tasks.hold)."""
    accepted = 0

    async def answer_anything(stream: trio.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        async with stream:
            await stream.receive_some(4096)
            body = b'{"node": "node-w", "pid": 7}'
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                  % (len(body), body))

    async with trio.open_nursery() as nursery:
        metrics, out = await _probing(nursery, answer_anything, "node-w", interval=600)
        with trio.fail_after(5):
            assert (await out.receive()).outcome == "confirmed"
        await trio.sleep(2)
        assert accepted <= 3, accepted  # the probe, one try at a hold, no loop
        assert metrics.registry.get_sample_value("k3net_held_connections") == 0
        nursery.cancel_scope.cancel()


async def test_a_hold_that_closes_during_a_probe_is_followed_by_a_probe_of_its_own() -> None:
    """A peer crashes while a probe of it is under way: the broken probe proves nothing, so the
    close of the held connection must still bring a probe of its own, which finds the port
    refused (k3net.tasks.hold)."""
    slow = trio.Event()  # set: /info waits for the crash instead of answering
    crashed = trio.Event()
    hold_closed = trio.Event()
    waiting = trio.Event()  # a slow /info is under way

    async def agent(stream: trio.SocketStream) -> None:
        async with stream:
            request = await stream.receive_some(4096)
            if request.startswith(b"GET /hold"):
                await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                      b"5\r\nheld\n\r\n")
                await crashed.wait()
                return
            if slow.is_set():
                waiting.set()
                await crashed.wait()
                await hold_closed.wait()  # this probe's connection breaks after the hold's
                await trio.sleep(0.2)
                return
            body = b'{"node": "node-h", "pid": 7}'
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                  % (len(body), body))

    async with trio.open_nursery() as nursery:
        listening = trio.CancelScope()

        port = await nursery.start(_serve_as_a_process, agent, listening, nursery)
        peer = ProbeTarget("node-h", (LOOPBACK,), port)
        prober, metrics, asks, out = await _holding(nursery, peer, probe_timeout=30.0)
        assert prober.held() == {"node-h": LOOPBACK}  # what /peers shows as HELD
        slow.set()
        await asks.send(ProbeNow(peer))
        with trio.fail_after(5):
            await waiting.wait()
        await trio.sleep(MIN_HOLD)  # a hold that lasted: its close is worth a probe
        listening.cancel()  # the process dies: its port is closed, its connections with it
        crashed.set()
        with trio.fail_after(5):
            await _held(metrics, 0)
        assert prober.held() == {}
        hold_closed.set()
        outcomes = []
        with trio.move_on_after(3):
            while "refused" not in outcomes:
                outcomes.append((await out.receive()).outcome)
        assert "refused" in outcomes, outcomes
        assert metrics.registry.get_sample_value("k3net_held_connections_closed_total") == 1
        nursery.cancel_scope.cancel()


async def test_a_probe_after_a_close_that_proves_nothing_is_followed_by_another() -> None:
    """The probe that follows a hold's close may meet the dying process for a moment (accepted,
    then closed without a word): it proves nothing, so the prober probes again shortly, and the
    port, closed by then, refuses (k3net.tasks.probe CLOSED_PROBES)."""
    crashed = trio.Event()

    async with trio.open_nursery() as nursery:
        listening = trio.CancelScope()

        async def agent(stream: trio.SocketStream) -> None:
            async with stream:
                request = await stream.receive_some(4096)
                if crashed.is_set():
                    listening.cancel()  # the process is going away: nothing more listens
                    return  # and this connection ends without an answer
                if request.startswith(b"GET /hold"):
                    await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"
                                          b"\r\n\r\n5\r\nheld\n\r\n")
                    await crashed.wait()
                    return
                body = b'{"node": "node-d", "pid": 7}'
                await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                      % (len(body), body))

        port = await nursery.start(_serve_as_a_process, agent, listening, nursery)
        _, _, _, out = await _holding(nursery, ProbeTarget("node-d", (LOOPBACK,), port),
                                      probe_timeout=2.0)
        await trio.sleep(MIN_HOLD)  # a hold that lasted: its close is worth a probe
        crashed.set()
        outcomes = []
        with trio.move_on_after(3):
            while "refused" not in outcomes:
                outcomes.append((await out.receive()).outcome)
        assert outcomes[0] not in ("confirmed", "refused"), outcomes  # the dying process
        assert "refused" in outcomes, outcomes
        nursery.cancel_scope.cancel()


async def _serve_as_a_process(
    handler: Callable[[trio.SocketStream], Awaitable[None]], listening: trio.CancelScope, nursery: trio.Nursery, *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `handler` on a loopback port (reported started) until `listening` is cancelled.
    The connections live on when the listener closes, as a dying process's do for a moment:
    each ends when its handler says."""
    with listening:
        listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(handler, listeners, handler_nursery=nursery)


async def _holding(
    nursery: trio.Nursery, peer: ProbeTarget, *, probe_timeout: float
) -> tuple[Prober, Metrics, trio.MemorySendChannel[ProberOrder],
           trio.MemoryReceiveChannel[ProbeResult]]:
    """A prober that probed `peer`, found it confirmed and holds its /hold; its channels."""
    metrics = Metrics()
    prober = Prober(interval=600, timeout=probe_timeout, metrics=metrics)
    asks, inbox = trio.open_memory_channel[ProberOrder](1)
    results, out = trio.open_memory_channel[ProbeResult](10)
    await nursery.start(prober.run, inbox, results)
    await asks.send(ProbeNow(peer))
    with trio.fail_after(5):
        assert (await out.receive()).outcome == "confirmed"
        await _held(metrics, 1)
    return prober, metrics, asks, out


async def _held(metrics: Metrics, count: int) -> None:
    """Wait until the prober holds `count` connections."""
    while metrics.registry.get_sample_value("k3net_held_connections") != count:  # noqa: ASYNC110
        await trio.sleep(0.01)  # (the gauge has no hook to wait on)


async def test_a_lost_first_syn_does_not_fail_the_probe() -> None:
    """The kernel sends a lost SYN again only after a second, longer than the probe timeout: a
    LAN that drops one packet must not fail the probe. Here the listener's accept queue is full
    when the probe starts, so its first SYN is dropped (as a lossy LAN would), and there is room
    again 0.1 s later: only a second connection attempt can be answered within the timeout."""
    agent = FakeAgent("node-l")
    server = trio.socket.socket()
    await server.bind((LOOPBACK, 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = fill_accept_queue(LOOPBACK, port)
    filler_ports = {c.getsockname()[1] for c in fillers}

    async def serve(nursery: trio.Nursery) -> None:
        await trio.sleep(0.1)
        while True:
            conn, peer = await server.accept()
            if peer[1] in filler_ports:
                conn.close()
            else:
                nursery.start_soon(agent.handle, trio.SocketStream(conn))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, nursery)
            result = await probe_peer("node-l", [LOOPBACK], port, TIMEOUT)
            nursery.cancel_scope.cancel()
    finally:
        server.close()
        for client in fillers:
            client.close()
    assert result.outcome == "confirmed", result


async def test_a_hold_that_got_no_answer_in_time_is_tried_again() -> None:
    """A hold whose answer is lost (a lossy LAN, a busy peer) says nothing about the peer: it
    is tried again after the next confirmed probe, unlike a peer that has no /hold at all."""
    holds = 0

    async def agent(stream: trio.SocketStream) -> None:
        nonlocal holds
        async with stream:
            request = await stream.receive_some(4096)
            if request.startswith(b"GET /hold"):
                holds += 1
                if holds > 1:  # the first gets no answer in time
                    await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                                          b"\r\n5\r\nheld\n\r\n")
                await trio.sleep_forever()
            body = b'{"node": "node-s", "pid": 7}'
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                  % (len(body), body))

    async with trio.open_nursery() as nursery:
        metrics, _ = await _probing(nursery, agent, "node-s", interval=2.0)
        with trio.move_on_after(6):  # three scheduled probes
            while holds < 2:  # noqa: ASYNC110 (the fake agent has no hook)
                await trio.sleep(0.05)
        assert holds == 2  # tried again after a scheduled probe, and held
        await trio.sleep(TIMEOUT + 0.5)
        assert metrics.registry.get_sample_value("k3net_held_connections") == 1
        nursery.cancel_scope.cancel()


def test_what_a_confirmed_probe_lets_the_table_write() -> None:
    """The peer's proven facts; where it proved none, the address and port where it answered
    as itself, never an address anyone announced."""
    from k3net.tasks.probe import proven

    assert proven(Facts("b", 7000, 9, ("10.0.0.5", "10.0.0.6")), "b", "10.0.0.5", 7946) == \
        Facts("b", 7000, 9, ("10.0.0.5", "10.0.0.6"))
    assert proven(Facts("b", None, 9), "b", "10.0.0.5", 7946) == Facts(
        "b", 7946, 9, ("10.0.0.5",), listed=False)
    assert proven(None, "b", "10.0.0.5", 7946) == Facts("b", 7946, None, ("10.0.0.5",),
                                                        listed=False)
    # loopback addresses only from an answer on loopback
    assert proven(Facts("b", 1, 2, ("127.0.0.1",)), "b", "10.0.0.5", 1).addresses == ("10.0.0.5",)
    assert proven(Facts("b", 1, 2, ("127.0.0.1",)), "b", "127.0.0.1", 1).addresses == ("127.0.0.1",)


class HeldAgent:
    """A fake agent that serves /hold as agents do and answers /info as `node-h`, noting when
    each /info came and whether it was answered: `mute` leaves them unanswered and stops its
    beats (a frozen process), `crashed` ends its holds and closes each /info unanswered (a dead
    one). `beats`: its holds beat as asked (agents before beats send none)."""

    def __init__(self, *, beats: bool = False) -> None:
        self.asked: list[tuple[float, bool]] = []  # (when, answered) of every /info
        self.mute = False
        self.crashed = trio.Event()
        self.beats = beats
        self.results: trio.MemoryReceiveChannel[ProbeResult] | None = None  # what the table got

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            request = await stream.receive_some(4096)
            if request.startswith(b"GET /hold"):
                await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                      b"5\r\nheld\n\r\n")
                query = request.split(b" ")[1].partition(b"?")[2]
                every = identity.beat_from_query(query) if self.beats else None
                if every is None:
                    await self.crashed.wait()
                    return
                seq = 0
                while not self.crashed.is_set():
                    with trio.move_on_after(every):
                        await self.crashed.wait()
                    if not self.mute and not self.crashed.is_set():
                        seq += 1
                        line = identity.beat_line(seq, "node-h", None, None)
                        await stream.send_all(b"%x\r\n%s\r\n" % (len(line), line))
                return
            answered = not self.mute and not self.crashed.is_set()
            self.asked.append((trio.current_time(), answered))
            if self.mute:
                await trio.sleep_forever()
            if answered:
                body = b'{"node": "node-h", "pid": 7}'
                await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                      % (len(body), body))

    async def held_by(self, nursery: trio.Nursery, interval: float, held: float) -> Metrics:
        """A prober (`interval`, `held`) asked to probe this agent, once it holds its /hold."""
        listeners = await nursery.start(functools.partial(trio.serve_tcp, self.handle, 0,
                                                          host=LOOPBACK))
        port = listeners[0].socket.getsockname()[1]
        metrics = Metrics()
        prober = Prober(interval=interval, held=held, timeout=TIMEOUT, metrics=metrics,
                        rng=random.Random(3))
        asks, inbox = trio.open_memory_channel[ProberOrder](1)
        results, self.results = trio.open_memory_channel[ProbeResult](1000)
        await nursery.start(prober.run, inbox, results)
        await asks.send(ProbeNow(ProbeTarget("node-h", (LOOPBACK,), port)))
        await _held(metrics, 1)
        return metrics


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


async def test_a_held_peer_that_answers_is_probed_once_per_refresh(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Its held connection reports a crash or a vanished host; a probe only has to show that
    its process answers, once per lastSeen refresh (`held_interval`). A held peer that stops
    answering (a frozen process keeps its hold: its kernel ACKs) is probed every interval
    again, and once per refresh after it answers again."""
    from k3net.tasks.probe import held_interval

    autojump_clock.autojump_threshold = 0.01  # (see the `prober` fixture)
    interval, refresh = 10.0, 20.0
    held = held_interval(interval, refresh)
    assert held == 22.5
    agent = HeldAgent()
    async with trio.open_nursery() as nursery:
        metrics = await agent.held_by(nursery, interval, held)
        await trio.sleep(interval + 4 * held)
        answering = [t for t, _ in agent.asked[1:]]  # the scheduled probes, after the first one
        agent.mute = True
        await trio.sleep(4 * interval)
        muted = [t for t, answered in agent.asked if not answered]
        agent.mute = False
        await trio.sleep(interval + 3 * held)
        assert metrics.registry.get_sample_value("k3net_held_connections") == 1  # all along
        nursery.cancel_scope.cancel()

    assert _gaps(answering) == pytest.approx([held] * (len(answering) - 1), abs=TIMEOUT)
    assert len(answering) >= 4
    assert _gaps(muted) == pytest.approx([interval] * (len(muted) - 1), abs=TIMEOUT + 0.1)
    assert len(muted) >= 3
    again = [t for t, _ in agent.asked if t > muted[-1]]
    # the first probe after it answers again comes an interval later; then once per refresh
    assert _gaps(again)[1:] == pytest.approx([held] * (len(again) - 2), abs=TIMEOUT)
    assert len(again) >= 3


async def test_a_held_peer_that_stops_answering_is_probed_every_interval_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A held peer waits for its next probe a whole refresh; when its hold closes (its process
    died) and its probe no longer confirms it, the schedule must not sleep out that refresh:
    it is probed every interval from then on, as a peer that was never held."""
    autojump_clock.autojump_threshold = 0.01  # (see the `prober` fixture)
    interval, held = 1.0, 10.0
    agent = HeldAgent()
    async with trio.open_nursery() as nursery:
        await agent.held_by(nursery, interval, held)
        await trio.sleep(2.5 * held)  # probed once per `held` by now; the next is due in ~5 s
        crash = trio.current_time()
        agent.crashed.set()
        await trio.sleep(4 * interval)
        nursery.cancel_scope.cancel()
    after = [t - crash for t, _ in agent.asked if t >= crash]
    # the close's own probes (CLOSED_PROBES) and, well before `held` is out, the schedule's,
    # every interval
    assert len(after) >= 5, after
    assert after[-1] - after[-2] == pytest.approx(interval, abs=TIMEOUT), after
    assert after[-1] < held / 2, after


async def test_a_held_peer_that_beats_is_not_probed_while_its_beats_come(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A beat on its hold shows that its process runs: while its beats come, a good one stands
    in for each scheduled probe (the table gets the confirmation, with the facts of its last
    probe), and the peer is not dialled at all. When its beats stop (a frozen process keeps its
    hold, not its beats), it is probed again, every interval while it does not answer."""
    autojump_clock.autojump_threshold = 0.01  # (see the `prober` fixture)
    interval, held = 10.0, 22.5
    agent = HeldAgent(beats=True)
    async with trio.open_nursery() as nursery:
        metrics = await agent.held_by(nursery, interval, held)
        await trio.sleep(interval + 6 * held)
        beating = list(agent.asked)
        spared = metrics.registry.get_sample_value("k3net_probes_spared_total")
        agent.mute = True
        frozen = trio.current_time()
        await trio.sleep(2 * held + 4 * interval)
        nursery.cancel_scope.cancel()

    # the probe that confirmed it, perhaps its first scheduled one (before the first beat came,
    # an interval after the hold), then no other
    assert len(beating) <= 2 and all(t <= interval + TIMEOUT for t, _ in beating), beating
    assert spared is not None and spared >= 6
    assert agent.results is not None
    got = []
    while True:
        try:
            got.append(agent.results.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    # (a beat's confirmation is dated at the beat; one before `frozen` may stand in later)
    vouched = [r for r in got if interval + TIMEOUT < r.started < frozen]
    assert len(vouched) >= spared
    assert {(r.outcome, r.address) for r in vouched} == {("confirmed", LOOPBACK)}
    assert {r.facts for r in vouched} == {got[0].facts}  # what its first probe proved
    assert got[0].facts is not None and got[0].facts.pid == 7
    muted = [t for t, answered in agent.asked if not answered]
    assert muted and muted[0] - frozen <= held + interval + TIMEOUT  # (a late beat counts)
    assert _gaps(muted) == pytest.approx([interval] * (len(muted) - 1), abs=TIMEOUT + 0.1)
    assert len(muted) >= 3


async def test_a_retarget_moves_where_a_peer_is_asked_without_a_probe(
    autojump_clock: trio.testing.MockClock, prober: Running, listeners: Listeners
) -> None:
    """The table's Retarget: the peer is asked at the new target from then on (its scheduled
    probes, and the probes its hold's end brings), and no probe is made for it; a Retarget of
    a peer the prober does not follow starts nothing."""
    port = await listeners.open()
    await prober.inbox.send(ProbeNow(target("node-a", port)))
    await prober.next_results(1)
    moved = target("node-a", port, "127.0.0.2", LOOPBACK)
    await prober.inbox.send(Retarget(moved))
    await prober.inbox.send(Retarget(target("node-z", port)))
    assert prober.prober.targets["node-a"] == moved
    assert "node-z" not in prober.prober.targets
    assert await prober.results_during(INTERVAL * 0.2) == []  # no probe now

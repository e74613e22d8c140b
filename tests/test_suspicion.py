"""Silence: a held connection gone silent is a suspicion, confirmed by a direct probe and by other
agents before anything is written (`k3net.tasks.probe.suspect`), and never concluded by an agent
whose own health is in doubt (`k3net.health.LocalHealth`). On trio's MockClock; the direct
probes go to loopback sockets that behave as a vanished host (SYNs dropped) or a living one."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import pytest
import trio
import trio.testing

from k3net import health as local
from k3net.core.messages import ProbeResult, Suspected
from k3net.core.table import MARK_WAIT, ProbeTarget
from k3net.health import LocalHealth
from k3net.metrics import Metrics
from k3net.tasks.probe import REACH_REUSE, Helper, Prober, probe_peer, suspect

from .helpers.fakeagent import FakeAgent

LOOPBACK = "127.0.0.1"
TIMEOUT = 0.7
HELPERS = [Helper("peer-b", "127.0.0.2", 7946), Helper("peer-c", "127.0.0.3", 7946),
           Helper("peer-d", "127.0.0.4", 7946)]


def silent_probe(port: int) -> Callable[[], Awaitable[ProbeResult]]:
    """A direct probe of a host that vanished: nothing answers (its SYNs are dropped)."""
    return functools.partial(probe_peer, "peer-a", [LOOPBACK], port, TIMEOUT)


def answers(by: dict[str, bool | None], asked: list[str], *, delay: float = TIMEOUT
            ) -> Callable[[Helper], Awaitable[bool | None]]:
    """Agents asked: each answers (after its own probe) with `by[name]`."""
    async def ask(helper: Helper) -> bool | None:
        asked.append(helper.name)
        await trio.sleep(delay)
        return by[helper.name]
    return ask


async def test_silent_and_nobody_reaches_it_is_confirmed_unreachable(
    autojump_clock: trio.testing.MockClock, unanswering_port: int
) -> None:
    asked: list[str] = []
    start = trio.current_time()
    verdict, result = await suspect(
        silent_probe(unanswering_port),
        answers(dict.fromkeys(["peer-b", "peer-c", "peer-d"], False), asked), HELPERS,
        LocalHealth())
    assert verdict == "confirmed"
    assert (result.outcome, result.silent) == ("unreachable", (LOOPBACK,))
    assert "none of 3 agents asked reach it" in result.error
    assert sorted(asked) == ["peer-b", "peer-c", "peer-d"]
    # Asked together with the direct probe: the verdict takes one probe timeout, not four.
    assert trio.current_time() - start == pytest.approx(TIMEOUT)


async def test_one_agent_that_reaches_it_refutes(
    autojump_clock: trio.testing.MockClock, unanswering_port: int
) -> None:
    """A path cut between us and the suspect only (a firewall dropping our packets)."""
    verdict, result = await suspect(
        silent_probe(unanswering_port),
        answers({"peer-b": False, "peer-c": True, "peer-d": False}, []), HELPERS, LocalHealth())
    assert verdict == "refuted"
    assert result.outcome == "timeout"  # the table hears a failed probe: nothing is written


async def test_the_suspect_answering_refutes_without_waiting_for_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(
            trio.serve_tcp, FakeAgent("peer-a").handle, 0, host=LOOPBACK))
        port = listeners[0].socket.getsockname()[1]
        start = trio.current_time()
        verdict, result = await suspect(
            functools.partial(probe_peer, "peer-a", [LOOPBACK], port, TIMEOUT),
            answers(dict.fromkeys(["peer-b", "peer-c", "peer-d"], None), [], delay=5.0),
            HELPERS, health := LocalHealth())
        assert (verdict, result.outcome) == ("refuted", "confirmed")
        assert trio.current_time() - start < 0.1  # the questions were cancelled
        assert health.score == 0  # agents cut short did not fail to answer
        nursery.cancel_scope.cancel()


async def test_its_kernel_refusing_refutes(
    autojump_clock: trio.testing.MockClock, closed_port: int
) -> None:
    """A refusal is its host's kernel answering: a living host (the refusal path judges it)."""
    verdict, result = await suspect(
        functools.partial(probe_peer, "peer-a", [LOOPBACK], closed_port, TIMEOUT),
        answers(dict.fromkeys(["peer-b", "peer-c", "peer-d"], False), []), HELPERS,
        LocalHealth())
    assert (verdict, result.outcome) == ("refuted", "refused")


async def test_an_agent_alone_with_the_peer_decides_alone(
    autojump_clock: trio.testing.MockClock, unanswering_port: int
) -> None:
    verdict, result = await suspect(silent_probe(unanswering_port), answers({}, []), [],
                                    LocalHealth())
    assert (verdict, result.outcome) == ("confirmed", "unreachable")
    assert "no other agent to ask" in result.error


async def test_agents_that_do_not_answer_make_it_withhold(
    autojump_clock: trio.testing.MockClock, unanswering_port: int
) -> None:
    """No answer from an agent asked: the path to them is bad too (likely ours)."""
    health = LocalHealth()
    verdict, result = await suspect(
        silent_probe(unanswering_port),
        answers({"peer-b": False, "peer-c": None, "peer-d": False}, []), HELPERS, health)
    assert (verdict, result.outcome) == ("withheld", "timeout")
    assert health.score == 1


# --- local health ---------------------------------------------------------------------------


async def test_many_holds_silent_at_once_withhold_accusations(
    autojump_clock: trio.testing.MockClock, unanswering_port: int
) -> None:
    """Our own link cut: every hold goes silent within a second or two."""
    scores: list[int] = []
    health = LocalHealth(changed=scores.append)
    now = trio.current_time()
    health.hold_silent(now, held=4)
    assert health.healthy(now)  # one host vanishing: a suspicion as usual
    health.hold_silent(now + 1.0, held=4)
    assert not health.healthy(now + 1.0)
    verdict, result = await suspect(
        silent_probe(unanswering_port),
        answers(dict.fromkeys(["peer-b", "peer-c", "peer-d"], False), []), HELPERS, health)
    assert (verdict, result.outcome) == ("withheld", "timeout")
    # Forgotten over time: one point less every DECAY seconds.
    later = now + 1.0 + local.DECAY
    assert health.healthy(later)
    assert scores == [1, 0]


def test_silent_holds_far_apart_or_few_of_many_are_no_point() -> None:
    health = LocalHealth()
    health.hold_silent(0.0, held=10)
    health.hold_silent(1.0, held=10)  # 2 of 10: two hosts, not our link
    assert health.healthy(1.0)
    health = LocalHealth()
    health.hold_silent(0.0, held=2)
    health.hold_silent(local.SILENT_WINDOW + 1.0, held=2)  # too far apart
    assert health.healthy(local.SILENT_WINDOW + 1.0)


def test_timeouts_widen_with_the_score_and_it_is_capped() -> None:
    health = LocalHealth()
    for n in range(10):
        health.point(float(n), "test")
    assert health.score == local.MAX_SCORE
    assert health.widen(0.7, 9.0) == pytest.approx(0.7 * (1 + local.MAX_SCORE))


async def test_a_lagging_loop_withholds_accusations(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The ticker sees its own sleep wake late (a starved or stopped agent), and says so."""
    caplog.set_level("INFO", logger="k3net.health")
    health = LocalHealth()
    async with trio.open_nursery() as nursery:
        await nursery.start(health.run)
        await trio.sleep(1.0)
        assert health.healthy(trio.current_time())
        autojump_clock.jump(3.0)  # time passes while the loop cannot run
        await trio.sleep(local.TICK * 2)
        assert not health.healthy(trio.current_time())
        assert "withholding accusations (event loop " in caplog.text
        await trio.sleep(local.DECAY + local.TICK)
        assert health.healthy(trio.current_time())
        assert "local health back to 0" in caplog.text
        nursery.cancel_scope.cancel()


# --- the prober: from a silent hold to what the table hears ---------------------------------


@pytest.fixture
async def results() -> AsyncIterator[
        tuple[trio.MemorySendChannel[ProbeResult], trio.MemoryReceiveChannel[ProbeResult]]]:
    send, receive = trio.open_memory_channel[ProbeResult](100)
    yield send, receive


async def test_the_prober_confirms_an_unreachable_peer_and_counts_it(
    autojump_clock: trio.testing.MockClock, unanswering_port: int,
    results: tuple[trio.MemorySendChannel[ProbeResult], trio.MemoryReceiveChannel[ProbeResult]],
) -> None:
    metrics = Metrics()
    prober = Prober(interval=15.0, timeout=TIMEOUT, metrics=metrics)
    prober.targets["peer-a"] = ProbeTarget("peer-a", (LOOPBACK,), unanswering_port)
    send, receive = results
    await prober._suspect("peer-a", 3, send)
    result = receive.receive_nowait()
    assert (result.outcome, result.silent) == ("unreachable", (LOOPBACK,))
    value = metrics.registry.get_sample_value
    assert value("k3net_suspicions_total", {"result": "confirmed"}) == 1
    assert value("k3net_probes_total", {"result": "unreachable"}) == 1


@attrs.define
class _Table:
    """As the table answers the prober's `Suspected`: the mark is written and shows in the
    watch `echo` seconds later (`MarkSeen`); `echo` None: none is ever seen (a store away).
    What it was told goes on to `told`."""

    prober: Prober
    told: trio.MemorySendChannel[Suspected]
    echo: float | None = 0.0

    async def send(self, value: Suspected, /) -> None:
        await self.told.send(value)
        if self.echo is not None:
            trio.lowlevel.spawn_system_task(self._seen, value.name, self.echo)

    async def _seen(self, name: str, echo: float) -> None:
        await trio.sleep(echo)
        self.prober.mark_seen(name)


def _telling_prober(
    port: int, *names: str, answer_time: Callable[[], float | None] = lambda: 0.3,
    echo: float | None = 0.0, round_trip: float = 0.0,
) -> tuple[Prober, trio.MemoryReceiveChannel[Suspected]]:
    """A prober following `names` at 127.0.0.1:`port`, and what it tells the table before an
    accusation (as the agent wires it to the table, which answers after `echo`: `_Table`)."""
    prober = Prober(interval=15.0, timeout=TIMEOUT, metrics=Metrics(), health=LocalHealth(),
                    answer_time=answer_time, store_round_trip=lambda: round_trip)
    for name in names:
        prober.targets[name] = ProbeTarget(name, (LOOPBACK,), port)
    told, heard = trio.open_memory_channel[Suspected](10)
    prober._suspicions = _Table(prober, told, echo)
    return prober, heard


async def test_the_table_hears_of_a_suspicion_before_its_verdict_and_not_of_a_withheld_one(
    autojump_clock: trio.testing.MockClock, unanswering_port: int,
    results: tuple[trio.MemorySendChannel[ProbeResult], trio.MemoryReceiveChannel[ProbeResult]],
) -> None:
    """So that the suspect's Node is marked, and its own agent can answer through the store,
    while the verdict is still to come. A judgement withheld tells nothing (no accusation
    follows it); the one made once this agent is healthy again does."""
    prober, heard = _telling_prober(unanswering_port, "peer-a", "peer-b")
    send, receive = results
    start = trio.current_time()
    await prober._suspect("peer-a", 2, send)
    assert heard.receive_nowait() == Suspected("peer-a", start)  # (before the verdict came)
    assert receive.receive_nowait().started == start
    withheld_at = trio.current_time()
    await prober._suspect("peer-b", 2, send)  # withheld (2 of 2 silent), judged again later
    assert heard.receive_nowait().name == "peer-b"
    verdicts = []
    while True:
        try:
            verdicts.append(receive.receive_nowait())
        except trio.WouldBlock:
            break
    assert verdicts[0].outcome == "timeout"  # the withheld one: a plain probe's result
    assert verdicts[-1].outcome == "unreachable"
    assert verdicts[-1].started >= withheld_at + local.DECAY  # told only for this one
    with pytest.raises(trio.WouldBlock):
        heard.receive_nowait()


async def test_a_confirmed_verdict_leaves_the_suspect_its_answer_time(
    autojump_clock: trio.testing.MockClock, unanswering_port: int,
    results: tuple[trio.MemorySendChannel[ProbeResult], trio.MemoryReceiveChannel[ProbeResult]],
) -> None:
    """On a store whose watch polls (MySQL), the suspect sees the mark and we its answer only
    after a poll each: the confirmed verdict reaches the table no sooner than that after the
    mark, so an answer can still stop the accusation."""
    answer: float | None = 1.0
    prober, heard = _telling_prober(unanswering_port, "peer-a", answer_time=lambda: answer)
    send, receive = results
    start = trio.current_time()
    await prober._suspect("peer-a", 10, send)  # (one of ten held: no doubt about ourselves)
    assert heard.receive_nowait() == Suspected("peer-a", start)
    assert receive.receive_nowait().outcome == "unreachable"
    assert trio.current_time() - start == pytest.approx(TIMEOUT + 1.0)
    # A store of this agent's own (memory): nobody could answer, so no mark and no wait.
    answer = None
    start = trio.current_time()
    await prober._suspect("peer-a", 10, send)
    assert receive.receive_nowait().outcome == "unreachable"
    assert trio.current_time() - start == pytest.approx(TIMEOUT)
    with pytest.raises(trio.WouldBlock):
        heard.receive_nowait()


async def test_a_far_store_gives_the_suspect_the_time_its_answer_takes(
    autojump_clock: trio.testing.MockClock, unanswering_port: int,
    results: tuple[trio.MemorySendChannel[ProbeResult], trio.MemoryReceiveChannel[ProbeResult]],
) -> None:
    """A store 150 ms away each way (or slow to sync): its writes take 0.3 s, our mark (behind
    another write in the writer's queue) 0.6 s to show in our watch. The verdict waits for the
    mark, then the answer time and twice the store's round trip; an accusation whose mark is
    another agent's already (the table answers at once) waits the same once it is told."""
    prober, heard = _telling_prober(unanswering_port, "peer-a", "peer-b", echo=0.6,
                                    round_trip=0.3)
    send, receive = results
    start = trio.current_time()
    await prober._suspect("peer-a", 10, send)
    assert heard.receive_nowait() == Suspected("peer-a", start)
    assert receive.receive_nowait().outcome == "unreachable"
    assert trio.current_time() - start == pytest.approx(TIMEOUT + 0.6 + 0.3 + 2 * 0.3)
    assert prober.metrics.registry.get_sample_value(
        "k3net_suspect_answer_wait_seconds", {}) == pytest.approx(0.6 + 0.3 + 2 * 0.3)
    # Marked already by another agent: the table answers at once.
    assert isinstance(prober._suspicions, _Table)
    prober._suspicions.echo = None
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(prober._suspect, "peer-b", 10, send)
        await heard.receive()
        prober.mark_seen("peer-b")
    assert receive.receive_nowait().outcome == "unreachable"
    assert trio.current_time() - start == pytest.approx(TIMEOUT + 0.3 + 2 * 0.3)


async def test_a_mark_the_store_never_shows_delays_the_verdict_by_mark_wait_at_most(
    autojump_clock: trio.testing.MockClock, unanswering_port: int,
    results: tuple[trio.MemorySendChannel[ProbeResult], trio.MemoryReceiveChannel[ProbeResult]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The store is away (or slower than MARK_WAIT): the accusation goes on, said in the log."""
    prober, heard = _telling_prober(unanswering_port, "peer-a", echo=None)
    send, receive = results
    start = trio.current_time()
    await prober._suspect("peer-a", 10, send)
    assert receive.receive_nowait().outcome == "unreachable"
    assert trio.current_time() - start == pytest.approx(TIMEOUT + MARK_WAIT)
    assert "did not show in the store" in caplog.text


async def test_a_suspicion_settled_at_once_tells_nothing(
    autojump_clock: trio.testing.MockClock, closed_port: int,
    results: tuple[trio.MemorySendChannel[ProbeResult], trio.MemoryReceiveChannel[ProbeResult]],
) -> None:
    """Its host's kernel answers the direct probe (a hold that a lossy link aborted): refuted,
    so its Node is not marked, and no write is spent on it."""
    prober, heard = _telling_prober(closed_port, "peer-a")
    send, receive = results
    with trio.move_on_after(5):
        await prober._suspect("peer-a", 3, send)
    assert receive.receive_nowait().outcome == "refused"
    with pytest.raises(trio.WouldBlock):
        heard.receive_nowait()


async def test_the_prober_withholds_while_its_health_is_in_doubt_then_judges_again(
    autojump_clock: trio.testing.MockClock, unanswering_port: int,
    results: tuple[trio.MemorySendChannel[ProbeResult], trio.MemoryReceiveChannel[ProbeResult]],
) -> None:
    metrics = Metrics()
    exported: list[float] = []

    def changed(score: int) -> None:
        metrics.local_health.set(score)
        exported.append(metrics.registry.get_sample_value("k3net_local_health", {}) or 0.0)

    health = LocalHealth(changed=changed)
    prober = Prober(interval=15.0, timeout=TIMEOUT, metrics=metrics, health=health)
    prober.targets["peer-a"] = ProbeTarget("peer-a", (LOOPBACK,), unanswering_port)
    prober.targets["peer-b"] = ProbeTarget("peer-b", (LOOPBACK,), unanswering_port)
    send, receive = results
    await prober._suspect("peer-a", 2, send)  # 1 of 2 silent: a suspicion
    assert receive.receive_nowait().outcome == "unreachable"
    await prober._suspect("peer-b", 2, send)  # the second of 2 in a few seconds: our link
    withheld = receive.receive_nowait()
    assert withheld.outcome == "timeout"  # an ordinary failed probe: nothing written
    # Then probed every second while it stays silent, and judged again once this agent is
    # healthy (DECAY later): not left to peer-ttl.
    again = []
    while (outcome := receive.receive_nowait().outcome) == "timeout":
        again.append(outcome)
    assert again and outcome == "unreachable"
    value = metrics.registry.get_sample_value
    assert value("k3net_suspicions_total", {"result": "withheld"}) == 1
    assert value("k3net_suspicions_total", {"result": "confirmed"}) == 2
    assert exported == [1, 0]  # and back to 0 once healthy for a while (DECAY)


async def test_reach_probes_only_a_peer_it_follows(
    autojump_clock: trio.testing.MockClock, unanswering_port: int
) -> None:
    prober = Prober(interval=15.0, timeout=TIMEOUT, metrics=Metrics())
    assert await prober.reach("127.0.0.1") is None  # a name, never an address to dial
    assert await prober.reach("peer-a") is None
    prober.targets["peer-a"] = ProbeTarget("peer-a", (LOOPBACK,), unanswering_port)
    # Questions about one peer meanwhile share its probe.
    outcomes: list[str] = []

    async def ask() -> None:
        result = await prober.reach("peer-a")
        assert result is not None
        outcomes.append(result.outcome)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(ask)
    assert outcomes == ["timeout"] * 3
    assert trio.current_time() - start == pytest.approx(TIMEOUT)
    # Asked again at once: the same answer, no new probe; later, a new probe.
    start = trio.current_time()
    await ask()
    assert trio.current_time() == start
    await trio.sleep(REACH_REUSE)
    await ask()
    assert trio.current_time() - start == pytest.approx(REACH_REUSE + TIMEOUT)


async def test_a_suspicion_other_agents_refute_is_followed_by_probes_only(
    autojump_clock: trio.testing.MockClock, unanswering_port: int,
    monkeypatch: pytest.MonkeyPatch,
    results: tuple[trio.MemorySendChannel[ProbeResult], trio.MemoryReceiveChannel[ProbeResult]],
) -> None:
    """A firewall dropping only our packets: the others reach it. We keep probing it (to hold
    it again once the path is back), for SILENT_FOLLOW at most, and never ask again."""
    from k3net.tasks import probe

    metrics = Metrics()
    prober = Prober(interval=15.0, timeout=TIMEOUT, metrics=metrics)
    prober.targets["peer-a"] = ProbeTarget("peer-a", (LOOPBACK,), unanswering_port)
    prober._helpers = lambda suspect: HELPERS[:1]  # type: ignore[method-assign]
    asked: list[str] = []

    async def reaches(helper: Helper, node: str, budget: float, **kwargs: object) -> bool:
        asked.append(helper.name)
        return True

    send, receive = results
    monkeypatch.setattr(probe, "ask_reach", reaches)
    start = trio.current_time()
    await prober._suspect("peer-a", 3, send)
    assert asked == ["peer-b"]
    outcomes = []
    while True:
        try:
            outcomes.append(receive.receive_nowait().outcome)
        except trio.WouldBlock:
            break
    assert set(outcomes) == {"timeout"} and len(outcomes) > 10
    assert trio.current_time() - start == pytest.approx(probe.SILENT_FOLLOW, abs=3.0)
    assert metrics.registry.get_sample_value("k3net_suspicions_total",
                                             {"result": "refuted"}) == 1

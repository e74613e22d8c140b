"""One held connection (k3net.tasks.hold.hold_open) against real loopback listeners: how it ends,
read with the probes' HTTP reader. The prober's use of holds (a close brings a probe at once, a
hold tried again, never held in a loop) is in test_prober.py."""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import pytest
import trio
import trio.testing

from k3net.core.identity import BeatReader, Facts, hold_target
from k3net.core.table import ProbeTarget
from k3net.metrics import Metrics
from k3net.tasks.hold import NOISE, Hold, Holds, hold_open

from .helpers.web import start_web

LOOPBACK = "127.0.0.1"
HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"

Handler = Callable[[trio.SocketStream], Awaitable[None]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    async with trio.open_nursery() as nursery:

        async def start(handler: Handler) -> int:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, handler, 0, host=LOOPBACK))
            return int(listeners[0].socket.getsockname()[1])

        yield start
        nursery.cancel_scope.cancel()


class Opened:
    def __init__(self) -> None:
        self.at: list[float] = []

    def __call__(self) -> None:
        self.at.append(trio.current_time())


async def test_an_agents_hold_is_held_until_the_peer_closes_it(
    serve: Callable[[Handler], Awaitable[int]],
) -> None:
    """The mark may come in pieces (it is read as HTTP, not matched in the first packet)."""
    release = trio.Event()

    async def agent(stream: trio.SocketStream) -> None:
        async with stream:
            assert (await stream.receive_some(4096)).startswith(b"GET /hold HTTP/1.1\r\n")
            await stream.send_all(HEAD + b"5\r\nhe")
            await trio.sleep(0.05)
            await stream.send_all(b"ld\n\r\n")
            await release.wait()

    port = await serve(agent)
    opened = Opened()
    async with trio.open_nursery() as nursery:
        ended: list[str] = []

        async def hold() -> None:
            ended.append(await hold_open(LOOPBACK, port, 2.0, opened))

        nursery.start_soon(hold)
        await trio.sleep(0.5)
        assert len(opened.at) == 1 and ended == []  # held: set up, and still open
        closed_at = trio.current_time()
        release.set()
    assert ended == ["closed"]
    assert trio.current_time() - closed_at < 0.5


@pytest.mark.parametrize(("answer", "why"), [
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nnot found\n", "a Go agent"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n", "a web server's page"),
    (HEAD + b"5\r\nhello\r\n0\r\n\r\n", "200, but not an agent's hold"),
    (b"SSH-2.0-OpenSSH_9.2\r\n", "not HTTP"),
    (b"", "closed without an answer"),
])
async def test_anything_but_an_agents_hold_is_no_hold(
    serve: Callable[[Handler], Awaitable[int]], answer: bytes, why: str
) -> None:
    async def server(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(4096)
            await stream.send_all(answer)

    port = await serve(server)
    opened = Opened()
    with trio.fail_after(2):
        assert await hold_open(LOOPBACK, port, 1.0, opened) == "no-hold", why
    assert opened.at == []


async def test_nothing_listening_is_refused() -> None:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port = sock.getsockname()[1]
    opened = Opened()
    assert await hold_open(LOOPBACK, port, 1.0, opened) == "refused"
    assert opened.at == []


async def test_no_answer_in_time_failed(serve: Callable[[Handler], Awaitable[int]]) -> None:
    """Accepted, never answered (a busy peer, a lost answer): no evidence, `failed`."""

    async def silent(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    port = await serve(silent)
    start = trio.current_time()
    assert await hold_open(LOOPBACK, port, 0.3, Opened()) == "failed"
    assert 0.3 <= trio.current_time() - start < 1.0


def test_a_hold_serves_its_peer_while_it_stays_at_that_address_and_port() -> None:
    hold = Hold(ProbeTarget("peer-a", ("10.0.0.1", "10.0.0.2"), 7946), "10.0.0.2")
    assert hold.serves(ProbeTarget("peer-a", ("10.0.0.2",), 7946))
    assert not hold.serves(ProbeTarget("peer-a", ("10.0.0.1",), 7946))  # that address is gone
    assert not hold.serves(ProbeTarget("peer-a", ("10.0.0.2",), 7000))  # restarted elsewhere


async def test_a_peer_that_moved_or_was_forgotten_is_let_go_without_a_probe(
    serve: Callable[[Handler], Awaitable[int]],
) -> None:
    async def agent(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(4096)
            await stream.send_all(HEAD + b"5\r\nheld\n\r\n")
            await trio.sleep_forever()

    port = await serve(agent)
    metrics = Metrics()
    probed: list[str] = []

    async def closed(name: str) -> None:
        probed.append(name)

    def held() -> float | None:
        return metrics.registry.get_sample_value("k3net_held_connections")

    async def until_held(count: int) -> None:
        with trio.fail_after(2):
            while held() != count:  # noqa: ASYNC110 (the gauge has no hook to wait on)
                await trio.sleep(0.01)

    peer = ProbeTarget("peer-a", (LOOPBACK,), port)
    async with trio.open_nursery() as nursery:
        holds = Holds(nursery, timeout=1.0, metrics=metrics, closed=closed)
        holds.confirmed(peer, LOOPBACK)
        await until_held(1)
        holds.asked(peer, anew=True)  # still there: kept
        await trio.sleep(0.1)
        assert held() == 1
        holds.asked(ProbeTarget("peer-a", (LOOPBACK,), port + 1), anew=True)  # restarted elsewhere
        await until_held(0)
        holds.confirmed(peer, LOOPBACK)
        await until_held(1)
        holds.release("peer-a")  # forgotten
        await until_held(0)
        nursery.cancel_scope.cancel()
    assert probed == []  # letting go is no evidence: nothing to probe


async def test_an_agents_hold_beats_for_its_holder_with_the_cluster_key(
    nursery: trio.Nursery,
) -> None:
    """The served side: a hold that asks for beats gets one a second (`?beat=1`), made with the
    cluster key for this holder's nonce, which the holder's reader takes; a holder with another
    key takes none of them; an agent beats no more often than its own probe interval, and one
    that stands down from its name sends none."""
    key, nonce = b"k" * 32, bytes(range(16))
    w = await start_web(nursery)
    w.state.settings.set(attrs.evolve(w.state.settings.value, cluster_key=key,
                                      probe_interval=1.0))

    async def beats_in(seconds: float, reader: BeatReader) -> tuple[int, int]:
        counts = [0, 0]

        def beaten(good: int, bad: int) -> None:
            counts[0] += good
            counts[1] += bad

        with trio.move_on_after(seconds):
            await hold_open(LOOPBACK, w.port, 2.0, Opened(), path=hold_target(1, nonce),
                            beats=reader, beaten=beaten)
        return counts[0], counts[1]

    good, bad = await beats_in(3.5, BeatReader("node-a", nonce, key))
    assert 2 <= good <= 4 and bad == 0
    good, bad = await beats_in(2.5, BeatReader("node-a", nonce, b"x" * 32))
    assert good == 0 and bad >= 1
    # never more often than the agent's own probe interval, whatever the holder asks
    w.state.settings.set(attrs.evolve(w.state.settings.value, probe_interval=3.0))
    assert await beats_in(3.5, BeatReader("node-a", nonce, key)) == (1, 0)
    w.state.name_conflict = lambda: "node-a is held by another agent"
    assert await beats_in(2.5, BeatReader("node-a", nonce, key)) == (0, 0)


async def test_a_beat_vouches_only_for_the_process_its_hold_goes_to(
    serve: Callable[[Handler], Awaitable[int]], autojump_clock: trio.testing.MockClock,
) -> None:
    """A held peer's beats vouch for it with the facts of its last probe: while they come and
    while that probe found the same process (pid). Once a probe finds another process there (it
    restarted; the hold still goes to the old one for a moment), the hold vouches for nothing,
    nor once its beats are older than the window."""
    autojump_clock.autojump_threshold = 0.01

    async def agent(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(4096)
            await stream.send_all(HEAD + b"5\r\nheld\n\r\n")
            for seq in range(1, 1000):
                await trio.sleep(1.0)
                line = b"beat %d\n" % seq
                await stream.send_all(b"%x\r\n%s\r\n" % (len(line), line))

    port = await serve(agent)
    peer = ProbeTarget("peer-a", (LOOPBACK,), port)
    facts = Facts("peer-a", port, 41, (LOOPBACK,))

    async def closed(name: str) -> None:
        pass

    async with trio.open_nursery() as nursery:
        holds = Holds(nursery, timeout=0.5, metrics=Metrics(), closed=closed, beat=1.0)
        assert holds.beat_window == 1.5
        holds.confirmed(peer, LOOPBACK, facts)
        await trio.sleep(2.5)
        hold = holds.vouch("peer-a", trio.current_time() - holds.beat_window)
        assert hold is not None and hold.facts == facts and hold.address == LOOPBACK
        newer = attrs.evolve(facts, addresses=(LOOPBACK, "10.0.0.9"))
        holds.confirmed(peer, LOOPBACK, newer)  # the same process says more: that is vouched
        hold = holds.vouch("peer-a", trio.current_time() - holds.beat_window)
        assert hold is not None and hold.facts == newer
        assert holds.vouch("peer-a", trio.current_time() + 1) is None  # no beat that fresh
        holds.confirmed(peer, LOOPBACK, attrs.evolve(facts, pid=42))  # restarted
        await trio.sleep(2.0)
        assert holds.vouch("peer-a", trio.current_time() - holds.beat_window) is None
        nursery.cancel_scope.cancel()


async def test_a_hold_that_brings_anything_but_beats_is_let_go(
    serve: Callable[[Handler], Awaitable[int]],
) -> None:
    """Asked for beats, a peer's hold brings a line now and then. One that streams anything else
    (more than NOISE bytes without a good beat) is let go as no hold: the holder follows that
    peer by probes, and does not read and split what it sends for ever."""
    async def streamer(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(4096)
            await stream.send_all(HEAD + b"5\r\nheld\n\r\n")
            junk = b"beat 1 " + b"x" * 4000 + b"\n"
            with contextlib.suppress(trio.BrokenResourceError):
                for _ in range(4 * NOISE // len(junk)):
                    await stream.send_all(b"%x\r\n%s\r\n" % (len(junk), junk))
                await trio.sleep_forever()

    port = await serve(streamer)
    counts: list[tuple[int, int]] = []
    with trio.fail_after(5):
        ended = await hold_open(LOOPBACK, port, 1.0, Opened(), path=hold_target(1, bytes(16)),
                                beats=BeatReader("peer-a", bytes(16), None),
                                beaten=lambda good, bad: counts.append((good, bad)))
    assert ended == "no-hold"
    assert sum(good for good, _ in counts) == 0 and sum(bad for _, bad in counts) > 0

"""The TCP client side (k3net.tasks.tcp).

What is k3net's own (when attempts start, which one wins, what ends them, what gets closed) is
driven through scripted connection attempts on trio's autojump clock: each attempt ends after
the delay its script gives, connected or refused, or never (a host that drops the SYNs). What
is the kernel's (a real connect, a real refusal, file descriptors) runs against 127.0.0.1.
"""

from __future__ import annotations

import errno
import functools
import math
import os
import socket
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from k3net.tasks import tcp

LOOPBACK = "127.0.0.1"
PEER, PORT = "10.77.0.3", 7946

SILENT = math.inf  # the attempt never ends: the host drops every SYN (or every SYN-ACK)
CONNECTS, REFUSED, UNREACHABLE = "connects", "refused", "unreachable"
CONNECTS_AS_CALLER_GIVES_UP = "connects as the caller gives up"


class FakeAttempt:
    """A connection attempt that ends `delay` seconds after it started, as its script says.
    Like the kernel's, its end wakes whoever waits for it, and comes whether anyone waits or
    not (a timer task of the test's nursery sets `ended`)."""

    def __init__(self, delay: float, result: str) -> None:
        self.started = trio.current_time()
        self.delay, self.result = delay, result
        self.ended = trio.Event()
        self.closed = False

    async def wait(self) -> None:
        await self.ended.wait()

    def connected(self) -> FakeAttempt:
        assert self.ended.is_set() and not self.closed
        if self.result == REFUSED:
            self.closed = True  # as tcp.Attempt: the socket of a failed attempt is closed
            raise ConnectionRefusedError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED))
        return self

    def close(self) -> None:
        self.closed = True


class FakeNet:
    """A scripted LAN: the n-th attempt to connect ends as `script[n]` says, (delay, result);
    UNREACHABLE fails at once, as when the host or our routing answers the connect itself;
    CONNECTS_AS_CALLER_GIVES_UP cancels `caller` in the instant it connects."""

    def __init__(self, nursery: trio.Nursery, *script: tuple[float, str], address: str = PEER,
                 caller: trio.CancelScope | None = None) -> None:
        self.nursery, self.script, self.address, self.caller = nursery, script, address, caller
        self.attempts: list[FakeAttempt] = []
        self.families: list[int] = []

    def attempt(self, family: int, address: str, port: int) -> Any:
        assert (address, port) == (self.address, PORT)
        self.families.append(family)
        delay, result = self.script[len(self.attempts)]
        attempt = FakeAttempt(delay, result)
        self.attempts.append(attempt)
        if result == UNREACHABLE:
            attempt.closed = True
            raise OSError(errno.ENETUNREACH, os.strerror(errno.ENETUNREACH))
        self.nursery.start_soon(self._end, attempt)
        return attempt

    async def _end(self, attempt: FakeAttempt) -> None:
        await trio.sleep_until(attempt.started + attempt.delay)
        attempt.ended.set()
        if attempt.result == CONNECTS_AS_CALLER_GIVES_UP:
            assert self.caller is not None
            self.caller.cancel()  # in the same instant, before connect() has returned

    async def connect(self, sockets: tcp.Sockets | None = None) -> Any:
        return await tcp.connect(self.address, PORT, attempt_factory=self.attempt, sockets=sockets)

    def starts(self) -> list[float]:
        return [round(a.started, 6) for a in self.attempts]

    def assert_all_closed_but(self, winner: Any = None) -> None:
        assert [a.closed for a in self.attempts] == [a is not winner for a in self.attempts]


Scripted = Callable[..., FakeNet]


@pytest.fixture
def scripted(nursery: trio.Nursery) -> Scripted:
    """FakeNet(script...), its timers in the test's nursery."""
    return functools.partial(FakeNet, nursery)


def now() -> float:
    return round(trio.current_time(), 6)


# --- scripted attempts, on the autojump clock -----------------------------------------------------


async def test_a_quick_answer_costs_one_attempt(
    autojump_clock: trio.testing.MockClock, scripted: Scripted
) -> None:
    net = scripted((0.004, CONNECTS))
    winner = await net.connect()
    assert winner is net.attempts[0] and now() == 0.004
    assert net.starts() == [0.0] and net.families == [socket.AF_INET]
    net.assert_all_closed_but(winner)


async def test_an_ipv6_peer_gets_ipv6_attempts(
    autojump_clock: trio.testing.MockClock, scripted: Scripted
) -> None:
    net = scripted((0.004, CONNECTS), address="fd00::3")
    assert await net.connect() is net.attempts[0]
    assert net.families == [socket.AF_INET6]


async def test_a_silent_host_gets_an_attempt_every_stagger_up_to_attempts(
    autojump_clock: trio.testing.MockClock, scripted: Scripted
) -> None:
    """Within the default 700 ms probe timeout: attempts at 0, 0.2, 0.4 and 0.6 s; then no more,
    however long the caller waits; silence is no error: only the caller's deadline ends it."""
    net = scripted(*[(SILENT, CONNECTS)] * tcp.ATTEMPTS)
    with trio.move_on_after(0.7):
        await net.connect()
    assert net.starts() == [0.0, 0.2, 0.4, 0.6]
    net.assert_all_closed_but(None)

    net = scripted(*[(SILENT, CONNECTS)] * tcp.ATTEMPTS)
    with trio.move_on_after(60) as deadline:
        await net.connect()
    assert deadline.cancelled_caught and len(net.attempts) == tcp.ATTEMPTS
    net.assert_all_closed_but(None)


async def test_extra_attempts_only_with_free_sockets_of_the_budget(
    autojump_clock: trio.testing.MockClock, scripted: Scripted
) -> None:
    """The caller holds one socket of the budget; each extra attempt takes one only if it is
    free at once (never waits), and every one taken is given back when connect returns."""
    full: list[float] = []
    sockets = tcp.Sockets(3, on_full=lambda: full.append(now()))
    async with sockets.one():
        net = scripted(*[(SILENT, CONNECTS)] * tcp.ATTEMPTS)
        with trio.move_on_after(0.7):
            await net.connect(sockets)
        # Two free besides the caller's: attempts at 0 (the caller's), 0.2 and 0.4; none at 0.6.
        assert net.starts() == [0.0, 0.2, 0.4] and full == [0.6]
        net.assert_all_closed_but(None)
        assert sockets.free == 2  # given back, though the caller's deadline ended it

        net = scripted((SILENT, CONNECTS), (0.1, CONNECTS))
        winner = await net.connect(sockets)
        assert winner is net.attempts[1]
        assert sockets.free == 2  # the winner is the caller's socket; the extra one is back


async def test_a_full_budget_makes_the_caller_wait_and_counts_it(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    full: list[float] = []
    sockets = tcp.Sockets(1, on_full=lambda: full.append(now()))
    got: list[float] = []

    async def hold_one(seconds: float) -> None:
        async with sockets.one():
            got.append(now())
            await trio.sleep(seconds)

    nursery.start_soon(hold_one, 5.0)
    await trio.testing.wait_all_tasks_blocked()
    await hold_one(0.0)
    assert got == [0.0, 5.0] and full == [0.0]
    assert sockets.free == 1


async def test_the_first_attempt_to_connect_wins_and_the_others_are_closed(
    autojump_clock: trio.testing.MockClock, scripted: Scripted
) -> None:
    # The third attempt (started at 0.4) connects at 0.5, before the second (0.2 + 0.5) and
    # before a fourth would have started (0.6).
    net = scripted((SILENT, CONNECTS), (0.5, CONNECTS), (0.1, CONNECTS), (SILENT, CONNECTS))
    winner = await net.connect()
    assert winner is net.attempts[2] and now() == 0.5
    assert net.starts() == [0.0, 0.2, 0.4]
    net.assert_all_closed_but(winner)


async def test_a_slow_first_attempt_can_still_win_the_race(
    autojump_clock: trio.testing.MockClock, scripted: Scripted
) -> None:
    net = scripted((0.3, CONNECTS), (SILENT, CONNECTS), (SILENT, CONNECTS))
    winner = await net.connect()
    assert winner is net.attempts[0] and now() == 0.3
    assert net.starts() == [0.0, 0.2]
    net.assert_all_closed_but(winner)


async def test_a_refusal_is_raised_at_once_without_more_attempts(
    autojump_clock: trio.testing.MockClock, scripted: Scripted
) -> None:
    net = scripted((0.002, REFUSED))
    with pytest.raises(ConnectionRefusedError):
        await net.connect()
    assert now() == 0.002 and net.starts() == [0.0]
    net.assert_all_closed_but(None)


async def test_a_refusal_during_the_race_ends_it(
    autojump_clock: trio.testing.MockClock, scripted: Scripted
) -> None:
    """Any answer of the host ends the attempts: only silence is worth another try. The second
    attempt is refused at 0.3, before the third would start (0.4); the first is closed."""
    net = scripted((SILENT, CONNECTS), (0.1, REFUSED), (SILENT, CONNECTS))
    with pytest.raises(ConnectionRefusedError):
        await net.connect()
    assert now() == 0.3 and net.starts() == [0.0, 0.2]
    net.assert_all_closed_but(None)


async def test_an_error_at_the_start_of_an_attempt_is_raised(
    autojump_clock: trio.testing.MockClock, scripted: Scripted
) -> None:
    net = scripted((0.0, UNREACHABLE))
    with pytest.raises(OSError) as first:
        await net.connect()
    assert first.value.errno == errno.ENETUNREACH and now() == 0.0

    net = scripted((SILENT, CONNECTS), (SILENT, CONNECTS), (0.0, UNREACHABLE))
    with pytest.raises(OSError) as later:
        await net.connect()
    assert later.value.errno == errno.ENETUNREACH
    assert net.starts() == [0.0, 0.2, 0.4] and now() == 0.4
    net.assert_all_closed_but(None)


@pytest.mark.parametrize("connects_at", [0.3, 0.5, 0.7])
async def test_the_callers_deadline_leaves_nothing_open(
    autojump_clock: trio.testing.MockClock, scripted: Scripted, connects_at: float
) -> None:
    """The second attempt connects before, at or after the caller's deadline (0.5): either the
    caller gets it and every other attempt is closed, or it gets nothing and all are closed."""
    net = scripted((SILENT, CONNECTS), (connects_at - 0.2, CONNECTS), *[(SILENT, CONNECTS)] * 2)
    winner = None
    with trio.move_on_after(0.5):
        winner = await net.connect()
    if connects_at < 0.5:
        assert winner is net.attempts[1]
    if connects_at > 0.5:
        assert winner is None
    net.assert_all_closed_but(winner)


async def test_attempts_that_connect_at_the_same_moment_one_wins_the_other_is_closed(
    autojump_clock: trio.testing.MockClock, scripted: Scripted
) -> None:
    net = scripted((0.4, CONNECTS), (0.2, CONNECTS), (SILENT, CONNECTS))
    winner = await net.connect()
    assert winner in net.attempts[:2] and now() == 0.4
    net.assert_all_closed_but(winner)


async def test_a_winner_the_caller_gave_up_on_is_closed(
    autojump_clock: trio.testing.MockClock, scripted: Scripted
) -> None:
    """The second attempt connects in the very instant the caller's scope is cancelled: the
    caller gets Cancelled, so nobody would ever close that socket but connect() itself."""
    with trio.CancelScope() as caller:
        net = scripted((SILENT, CONNECTS), (0.1, CONNECTS_AS_CALLER_GIVES_UP), (SILENT, CONNECTS),
                      caller=caller)
        await net.connect()
    assert caller.cancelled_caught and now() == 0.3
    net.assert_all_closed_but(None)


# --- the kernel's part: a real connect, a real refusal, real file descriptors -------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_connects_to_a_real_listener_with_one_attempt() -> None:
    server = trio.socket.socket()
    await server.bind((LOOPBACK, 0))
    server.listen(8)
    with server:
        sock = await tcp.connect(LOOPBACK, server.getsockname()[1])
        with sock:
            conn, peer = await server.accept()
            conn.close()
            assert peer == sock.getsockname()
            with pytest.raises(BlockingIOError):  # nobody else knocked: one attempt only
                server._sock.accept()  # type: ignore[attr-defined]


async def test_a_real_refusal_is_raised_as_such_and_leaks_nothing() -> None:
    with socket.socket() as free:
        free.bind((LOOPBACK, 0))
        port = free.getsockname()[1]
    before = _open_fds()
    with pytest.raises(ConnectionRefusedError):
        await tcp.connect(LOOPBACK, port)
    assert _open_fds() == before


async def test_keepalive_has_the_kernel_watch_a_held_connection() -> None:
    """Probes every second while idle, and an abort after `silence` with nothing back."""
    import socket as stdlib

    from k3net.keepalive import KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, keepalive

    with trio.socket.socket() as sock:
        keepalive(sock, 2.0)
        assert sock.getsockopt(stdlib.SOL_SOCKET, stdlib.SO_KEEPALIVE) == 1
        assert sock.getsockopt(stdlib.IPPROTO_TCP, stdlib.TCP_KEEPIDLE) == KEEPALIVE_IDLE
        assert sock.getsockopt(stdlib.IPPROTO_TCP, stdlib.TCP_KEEPINTVL) == KEEPALIVE_INTERVAL
        assert sock.getsockopt(stdlib.IPPROTO_TCP, stdlib.TCP_USER_TIMEOUT) == 2000


async def test_connections_served_inherit_the_listeners_keepalive() -> None:
    """A peer's /hold served here ends when its holder vanished (its slot is free again)."""
    import socket as stdlib

    from k3net.keepalive import keepalive
    from k3net.tasks.tcp import SERVED_IDLE, SERVED_SILENCE

    with stdlib.socket() as listener, stdlib.socket() as client:
        listener.bind(("127.0.0.1", 0))
        keepalive(listener, SERVED_SILENCE, idle=SERVED_IDLE)
        listener.listen(1)
        client.connect(listener.getsockname())
        served, _ = listener.accept()
        with served:
            assert served.getsockopt(stdlib.SOL_SOCKET, stdlib.SO_KEEPALIVE) == 1
            assert served.getsockopt(stdlib.IPPROTO_TCP, stdlib.TCP_KEEPIDLE) == SERVED_IDLE
            assert served.getsockopt(stdlib.IPPROTO_TCP, stdlib.TCP_USER_TIMEOUT) == \
                SERVED_SILENCE * 1000

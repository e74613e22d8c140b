"""tcp: the agent's TCP client side: connect to a peer (with attempts staggered, for LANs that
lose packets) and ask it one HTTP request. Used by the probes, the held connections, whois and
/peers.

Why staggered attempts: the kernel sends a connection's first SYN again only after a second
(Linux's initial retransmission timeout), longer than a probe's whole budget (`--probe-timeout`,
700 ms by default). On a LAN that drops packets (a busy Wi-Fi, a bad cable, a switch under
load), one lost SYN or SYN-ACK would make the probe fail, and at 20 % loss that is a third of
all probes: enough for healthy nodes to expire now and then. So when an attempt has not
connected after `STAGGER`, another starts beside it, up to `ATTEMPTS` in all; the first to
connect wins and the others are closed. On a healthy LAN the first connects within a
millisecond and nothing more is sent. Any answer of the host (a refusal, an unreachable error)
ends the attempts at once: only silence is worth another try.

Sockets are a budget (`Sockets`): the probes share one of `limits.PROBE_SOCKETS` over every
peer. Whoever connects holds one socket of it for the connection; the extra attempts take theirs
only if they are free at once (they are an optimisation, never worth a wait) and give them back
before `connect` returns, when at most one socket is left open.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from k3net.core.identity import AnswerReader

# Connection attempts in parallel at most, and how long each waits before the next starts
# (module docstring). After a delay the attempts cover the LAN's round trip many times over.
ATTEMPTS = 4
STAGGER = 0.2

_READ_SIZE = 4096


class Sockets:
    """A budget of sockets open at once (module docstring). `on_full()` is called whenever
    someone has to wait for one, or an extra attempt is not made for want of one."""

    def __init__(self, limit: int, on_full: Callable[[], None] = lambda: None) -> None:
        self._free = trio.Semaphore(limit)
        self.on_full = on_full

    @asynccontextmanager
    async def one(self) -> AsyncIterator[None]:
        """Hold one socket of the budget for the block, waiting for it if none is free."""
        try:
            self._free.acquire_nowait()
        except trio.WouldBlock:
            self.on_full()
            await self._free.acquire()
        try:
            yield
        finally:
            self._free.release()

    def take(self) -> bool:
        """One more socket now if one is free (released with `give_back`), else False."""
        try:
            self._free.acquire_nowait()
        except trio.WouldBlock:
            self.on_full()
            return False
        return True

    def give_back(self, n: int) -> None:
        for _ in range(n):
            self._free.release()

    @property
    def free(self) -> int:
        return self._free.value


class Attempt:
    """One connection attempt under way: a non-blocking connect on a socket of its own. Raises
    OSError if it failed at once (the host, or our routing, answered before any wait)."""

    def __init__(self, family: int, address: str, port: int) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        err = self.sock.connect_ex((address, port))
        if err not in (0, errno.EINPROGRESS):
            self.sock.close()
            raise OSError(err, os.strerror(err))

    async def wait(self) -> None:
        """Until the attempt ended: connected, or answered with an error."""
        await trio.lowlevel.wait_writable(self.sock)

    def connected(self) -> trio.socket.SocketType:
        """An ended attempt's outcome: the connected socket, or its error (the socket closed)."""
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.sock.close()
            raise OSError(err, os.strerror(err))
        return trio.socket.from_stdlib_socket(self.sock)

    def close(self) -> None:
        self.sock.close()


async def connect(
    address: str, port: int, *, attempts: int = ATTEMPTS,
    attempt_factory: Callable[[int, str, int], Attempt] = Attempt,
    sockets: Sockets | None = None,
) -> trio.socket.SocketType:
    """A socket connected to `address:port` (an IP address as text). Raises the OSError of the
    first attempt the host answered with (ConnectionRefusedError: nothing listens). No timeout:
    the caller bounds the call, and every attempt ends with it.

    The first attempt is waited for alone (no task, no nursery: a probe's usual case costs one
    connect); only one that is not up after STAGGER gets others beside it (`_race`).
    `attempt_factory(family, address, port)` starts an attempt (the tests script them).
    `sockets`: the budget the caller holds one socket of (`Sockets.one`) for this connection;
    the extra attempts are made only while it has more free."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    start = functools.partial(attempt_factory, family, address, port)
    pending = [start()]
    extra = 0  # sockets of the budget taken for extra attempts

    def start_extra() -> Attempt | None:
        nonlocal extra
        if sockets is not None and not sockets.take():
            return None
        extra += 1
        return start()

    try:
        with trio.move_on_after(STAGGER):
            await pending[0].wait()
            return pending.pop().connected()
        return await _race(pending, start_extra, attempts)
    finally:
        for attempt in pending:
            attempt.close()
        if sockets is not None:
            sockets.give_back(extra)  # at most one socket is left open: the caller's


async def _race(pending: list[Attempt], start: Callable[[], Attempt | None], attempts: int
                ) -> trio.socket.SocketType:
    """The attempts in `pending` and more beside them, one every STAGGER, up to `attempts` in
    all (fewer when `start` returns None: no socket free for one); the first to end decides
    (connected, or the host's answer). Attempts left in `pending` are the caller's to close."""
    ended: list[Attempt | OSError] = []

    def end(outcome: Attempt | OSError, done: trio.CancelScope) -> None:
        if not ended:
            ended.append(outcome)
            done.cancel()

    async def watch(attempt: Attempt, done: trio.CancelScope) -> None:
        await attempt.wait()
        if not ended:
            pending.remove(attempt)
            end(attempt, done)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, pending[0], nursery.cancel_scope)
            # The first attempt has waited STAGGER already: the second starts now, at STAGGER,
            # the others one STAGGER apart.
            for n in range(1, attempts):
                try:
                    attempt = start()
                except OSError as exc:  # the host (or our routing) answered at once
                    end(exc, nursery.cancel_scope)
                    break
                if attempt is not None:
                    pending.append(attempt)
                    nursery.start_soon(watch, attempt, nursery.cancel_scope)
                if n < attempts - 1:
                    await trio.sleep(STAGGER)
    except BaseException:
        for outcome in ended:
            if not isinstance(outcome, OSError):
                outcome.close()  # won just as the caller's deadline came: nobody will use it
        raise
    # The nursery ends only once an attempt ended (or with the caller's deadline: Cancelled).
    outcome = ended[0]
    if isinstance(outcome, OSError):
        raise outcome
    return outcome.connected()


# The served side of a held connection (the agent's listener, whose accepted connections inherit
# its `k3net.keepalive` options): the holder's keepalive probes arrive every second, so it sends none of its own
# while they come (idle SERVED_IDLE > 1 s), and a holder that vanished is let go after
# SERVED_SILENCE: its /hold slot (limits.HOLDS_PER_CLIENT) is free again for the connection it
# makes when it comes back. No hurry there: nothing is judged from it.
SERVED_IDLE = 5
SERVED_SILENCE = 15.0


async def exchange(stream: trio.SocketStream, message: bytes, reader: AnswerReader) -> None:
    """Send one HTTP request and feed the answer to `reader` until it has what it needs (the
    probes, whois and /peers all ask this way)."""
    await stream.send_all(message)
    while not reader.feed(await stream.receive_some(_READ_SIZE)):
        pass

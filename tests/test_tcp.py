"""The TCP client side (k3net.tasks.tcp): staggered connection attempts, on 127.0.0.1 only."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from k3net.tasks import tcp
from tests.test_prober import LOOPBACK, _fill_accept_queue, _unanswering


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_connects_at_once_with_one_attempt() -> None:
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


async def test_a_refusal_is_raised_as_such() -> None:
    with socket.socket() as free:
        free.bind((LOOPBACK, 0))
        port = free.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        await tcp.connect(LOOPBACK, port)


async def test_a_silent_host_gets_a_few_more_attempts_and_the_first_up_wins() -> None:
    """SYNs dropped (a full accept queue, as a lossy LAN drops them): a second attempt after
    STAGGER, and more, up to ATTEMPTS; once there is room, one of them connects."""
    server = socket.socket()
    server.bind((LOOPBACK, 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = _fill_accept_queue(LOOPBACK, port)
    filler_ports = {c.getsockname()[1] for c in fillers}
    try:
        async with trio.open_nursery() as nursery:
            connected: list[trio.socket.SocketType] = []

            connected_at: list[float] = []

            async def client() -> None:
                connected.append(await tcp.connect(LOOPBACK, port))
                connected_at.append(trio.current_time())

            started = trio.current_time()
            nursery.start_soon(client)
            await trio.sleep(tcp.STAGGER * 2.5)  # three attempts under way by now
            server.setblocking(False)
            accepted: list[int] = []
            with trio.fail_after(5):
                while not connected:
                    accepted += _accept_all(server, filler_ports)
                    await trio.sleep(0.01)
            await trio.sleep(0.1)  # the attempts that got in meanwhile
            accepted += _accept_all(server, filler_ports)
            with connected[0]:
                assert connected[0].getsockname()[1] in accepted
            # Up before the kernel sent the first attempt's SYN again (after 1 s): a later
            # attempt got in.
            assert connected_at[0] - started < 1.0
    finally:
        server.close()
        for client_sock in fillers:
            client_sock.close()


def _accept_all(server: socket.socket, skip: set[int]) -> list[int]:
    """Accept (and close) what waits in `server`'s queue; the client ports not in `skip`."""
    ports: list[int] = []
    while True:
        try:
            conn, peer = server.accept()
        except BlockingIOError:
            return ports
        conn.close()
        if peer[1] not in skip:
            ports.append(peer[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port whose listener drops every SYN (its accept queue is full)."""
    yield from _unanswering(LOOPBACK)


async def test_the_callers_deadline_ends_every_attempt_and_leaks_nothing(silent_port: int) -> None:
    before = _open_fds()
    with trio.move_on_after(tcp.STAGGER * (tcp.ATTEMPTS + 1)) as deadline:
        await tcp.connect(LOOPBACK, silent_port)
    assert deadline.cancelled_caught
    assert _open_fds() == before


async def test_attempts_start_one_stagger_apart_within_a_probe_timeout(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, silent_port: int
) -> None:
    """Against a host that never answers, within the default 700 ms probe timeout: attempts at
    0, 0.2, 0.4 and 0.6 s (on the mock clock; the SYNs are really sent and dropped)."""
    started: list[float] = []
    real_start = tcp._start

    def counting_start(family: int, address: str, port: int) -> socket.socket:
        started.append(trio.current_time())
        return real_start(family, address, port)

    monkeypatch.setattr(tcp, "_start", counting_start)
    begin = trio.current_time()
    with trio.move_on_after(0.7):
        await tcp.connect(LOOPBACK, silent_port)
    assert [round(t - begin, 3) for t in started] == [0.0, 0.2, 0.4, 0.6]

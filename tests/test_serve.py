"""The web server's hold on the agent's listening socket: hypercorn serves a duplicate of it
(`fd://N`), and when serving ends both are closed, so the port is free again at once and no
descriptor is left behind."""

from __future__ import annotations

import os
import socket

import trio

from .helpers.web import _get, start_web


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


async def test_serving_ends_with_the_port_closed_and_no_descriptor_left(
    nursery: trio.Nursery,
) -> None:
    before = _open_fds()
    web = await start_web(nursery)
    status, _, body = await trio.to_thread.run_sync(_get, web.url("/healthz"))
    assert (status, body) == (200, b"ok\n")
    await web.stop()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", web.port)) != 0  # refused: nothing listens
    with socket.socket() as again:
        # Free to listen on again, as a restarted agent does (SO_REUSEADDR: the /healthz
        # connection's TIME_WAIT does not count, a listener still open would).
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", web.port))
        again.listen()
    # What stays open is the test's own (the store's watch pump); no listener is among it.
    left = _open_fds() - before
    listeners = [fd for fd in left if _is_listener(fd)]
    assert listeners == []


def _is_listener(fd: int) -> bool:
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    with sock:
        try:
            return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        except OSError:
            return False

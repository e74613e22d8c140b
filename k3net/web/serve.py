"""Serve the ASGI app with hypercorn's trio worker on the --listen address.

`run` binds the socket itself, so that a port in use is one clear `ListenError` before any
task starts, `host=""` listens on every address (IPv6 and IPv4 when the host has IPv6), and port
0 works (tests): `nursery.start(run, ...)` returns the port actually bound.

Stopping: cancelling `run` is the shutdown trigger. The app's `shutdown()` (if it has one) is
called first, so that /events websockets close with 1001 by themselves; hypercorn then gets
`GRACE` seconds to finish open requests, and `run` returns. Without that, hypercorn would wait
its graceful timeout for the websockets and clients would see 1006. A client that stopped
reading altogether is cut after `STALL_TIMEOUT` (see there).
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Any

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

log = logging.getLogger("k3net.web")

# Seconds hypercorn may spend finishing open requests at shutdown. Requests here are small and
# websockets close themselves, so one second is plenty and keeps the agent's shutdown quick.
GRACE = 1.0
BACKLOG = 128
# A connection whose peer takes no data for this long is cut by the kernel (TCP_USER_TIMEOUT,
# inherited by accepted sockets; Linux only). hypercorn writes with cancellation shielded, so
# without it one client that stopped reading (a suspended `k3net watch`) would hold up the
# agent's shutdown for as long as it keeps the connection open. 5s is far beyond any live
# reader's pause on a LAN, and bounds that shutdown delay.
STALL_TIMEOUT = 5.0


class ListenError(OSError):
    """The listener could not be opened: `cannot listen on HOST:PORT: <why>`."""

    def __str__(self) -> str:
        return str(self.strerror)


def display(host: str, port: int) -> str:
    """`127.0.0.1:7946`, `[::1]:7946`, `:7946` (every address)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def listen_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket. `host` may be an address, a name, `""` (every address)
    or an IPv6 literal in brackets."""
    host = host.strip("[]")
    where = display(host, port)
    try:
        if host == "":
            return _listen_any(port)
        infos = await trio.socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, type_, proto, _, addr = infos[0]
        return _listen(family, addr, dual_stack=False)
    except OSError as exc:
        raise ListenError(exc.errno, f"cannot listen on {where}: {exc.strerror or exc}") from None


def _listen_any(port: int) -> socket.socket:
    try:
        return _listen(socket.AF_INET6, ("::", port), dual_stack=True)
    except OSError as exc:
        if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            raise
    return _listen(socket.AF_INET, ("0.0.0.0", port), dual_stack=False)  # no IPv6 on this host


def _listen(family: int, addr: Any, *, dual_stack: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(STALL_TIMEOUT * 1000))
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        sock.bind(addr)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def hypercorn_config() -> Config:
    config = Config()
    config.graceful_timeout = GRACE
    config.accesslog = None  # quiet: probes hit /healthz every few seconds
    # hypercorn's own lines ("Running on ... (CTRL + C to quit)") only from warning up: the
    # agent says what it serves itself.
    config.errorlog = logging.getLogger("k3net.web.hypercorn")
    config.backlog = BACKLOG
    return config


class _Started:
    """hypercorn's `task_status`, as an event we can wait for without `nursery.start` (whose
    wait could not be turned into a graceful shutdown if `run` is cancelled during start-up)."""

    def __init__(self) -> None:
        self.event = trio.Event()

    def started(self, value: Any = None) -> None:
        self.event.set()


async def run(app: Any, host: str, port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED
              ) -> None:
    """Serve `app` on host:port until cancelled. `task_status.started(port)` is called once the
    socket listens, with the port bound (useful with port 0)."""
    sock = await listen_socket(host, port)
    config = hypercorn_config()
    stop = trio.Event()
    started = _Started()
    # hypercorn runs shielded, so that cancelling `run` becomes its graceful shutdown instead
    # of killing every connection at once; the deadline set below bounds that shutdown.
    shield = trio.CancelScope(shield=True)

    async def serve_shielded() -> None:
        # `hypercorn.trio.serve` is this call plus binding its own sockets; passing ours keeps
        # their ownership (and the clear bind error) here. worker_serve and wrap_app are not
        # hypercorn's documented API: checked against hypercorn 0.18.
        with shield:
            await worker_serve(
                wrap_app(app, config.wsgi_max_body_size, "asgi"), config,
                sockets=Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[]),
                shutdown_trigger=stop.wait, task_status=started,
            )

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_shielded)
            try:
                await started.event.wait()
                task_status.started(sock.getsockname()[1])
                await trio.sleep_forever()
            finally:
                shutdown = getattr(app, "shutdown", None)
                if shutdown is not None:
                    shutdown()  # k3net's App: /events streams close with 1001
                stop.set()
                shield.deadline = trio.current_time() + GRACE + 1.0
    finally:
        sock.close()

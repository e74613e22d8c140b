"""The agent's listening socket, bound before anything is advertised and before the web stack
is imported: a port in use is one clear `ListenError` at once, `host=""` listens on every
address (IPv6 and IPv4 when the host has IPv6), and port 0 works (tests). A peer that connects
while the server is still starting waits in the backlog, it is not refused.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import trio

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

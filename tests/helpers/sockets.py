"""Sockets that behave as a busy or silent peer does, on loopback: the kernel is the point."""

from __future__ import annotations

import socket
from collections.abc import Iterator


def fill_accept_queue(host: str, port: int) -> list[socket.socket]:
    """Connections that fill the accept queue of a listener with backlog 0: the kernel drops
    the SYNs that come next (as a lossy LAN would), until the listener accepts."""
    clients = []
    for _ in range(8):
        client = socket.socket()
        client.setblocking(False)
        try:
            client.connect((host, port))
        except BlockingIOError:
            pass
        clients.append(client)
    return clients


def unanswering(host: str) -> Iterator[int]:
    """A port on `host` that accepts connections in the kernel and never answers (its accept
    queue full): a probe there times out."""
    server = socket.socket()
    server.bind((host, 0))
    server.listen(0)
    port = server.getsockname()[1]
    clients = fill_accept_queue(host, port)
    yield port
    for client in clients:
        client.close()
    server.close()

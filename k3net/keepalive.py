"""keepalive: have the kernel watch a TCP connection, so that a peer that vanished (nothing
closes: power lost, cable pulled) is noticed in seconds with no Python running for it. Used by
the held connections (k3net.tasks.hold), the agent's listener (whose accepted connections
inherit the options) and the MySQL store's connections: the lowest layer they share."""

from __future__ import annotations

import socket
from typing import Protocol


class _Socket(Protocol):
    def setsockopt(self, level: int, option: int, value: int, /) -> None: ...


# The kernel probes an idle connection after KEEPALIVE_IDLE seconds and every KEEPALIVE_INTERVAL
# after that (1 s: the least the options take), and aborts it with ETIMEDOUT once nothing came
# back for the user timeout (`keepalive`'s `silence`). KEEPALIVE_COUNT only matters where
# TCP_USER_TIMEOUT is missing.
KEEPALIVE_IDLE = 1
KEEPALIVE_INTERVAL = 1
KEEPALIVE_COUNT = 3


def keepalive(sock: _Socket, silence: float, idle: int = KEEPALIVE_IDLE) -> None:
    """Have the kernel watch `sock`: keepalive probes every second once it is idle for `idle`
    seconds, and an abort (ETIMEDOUT on the next receive) when nothing at all came back from the
    peer for `silence` seconds (TCP_USER_TIMEOUT, which also bounds unacknowledged data). No
    Python runs for it: the peer's kernel answers the probes, the abort wakes the task that waits
    to read."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                          ("TCP_KEEPCNT", KEEPALIVE_COUNT),
                          ("TCP_USER_TIMEOUT", max(1, round(silence * 1000)))):
        number = getattr(socket, option, None)
        if number is not None:  # (Linux has all four; elsewhere, what the system offers)
            sock.setsockopt(socket.IPPROTO_TCP, number, value)

"""Readiness and liveness for a supervisor, with systemd's notify protocol (`Type=notify`).

systemd passes a unix datagram socket in `$NOTIFY_SOCKET` (a path, or `@name` for an abstract
socket); the service sends newline-separated `KEY=value` assignments to it:

    READY=1       once HTTP listens and the mDNS advertisement is registered: from then on
                  peers can find and probe this agent, so units ordered After= us may start
    STATUS=...    a line for `systemctl status`
    STOPPING=1    as the shutdown begins (SIGTERM, SIGINT)
    WATCHDOG=1    every WatchdogSec/2 when `$WATCHDOG_USEC` is set (and `$WATCHDOG_PID`, if set,
                  is us): a ping sent from the trio loop, so a hung loop misses its pings and
                  systemd restarts the agent

Without `$NOTIFY_SOCKET` (not under systemd, or `Type=simple`), nothing is sent. A notify
socket that goes away is logged once and never stops the agent.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping

import trio

from k3net.core import parse

log = logging.getLogger(__name__)


def socket_address(environ: Mapping[str, str]) -> str | None:
    """The datagram address in `$NOTIFY_SOCKET` (`@name` is the abstract `\\0name`), or None."""
    address = environ.get("NOTIFY_SOCKET", "")
    if not address:
        return None
    if address.startswith("@"):
        return "\0" + address[1:]
    return address if address.startswith("/") else None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """How often to send WATCHDOG=1: half of `$WATCHDOG_USEC`, as sd_watchdog_enabled advises;
    None when no watchdog is asked for, or it is asked of another process."""
    usec = parse.number(environ.get("WATCHDOG_USEC", ""), 1, parse.REVISION_MAX)
    if isinstance(usec, parse.Foreign):
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    return usec / 1e6 / 2


class Notifier:
    """Sends notify messages to one address. `send` never raises: a supervisor that went away
    is no reason for the agent to stop."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._failed = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Notifier | None:
        address = socket_address(environ)
        return cls(address) if address else None

    async def send(self, *assignments: str) -> None:
        try:
            await self._sock.sendto("\n".join(assignments).encode(), self.address)
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify the supervisor at %r: %s", self.address, exc)
            self._failed = True
        else:
            self._failed = False

    def close(self) -> None:
        self._sock.close()


async def run(
    notifier: Notifier,
    ready: Callable[[], Awaitable[None]],
    stopping: Callable[[], Awaitable[None]],
    *,
    status: str = "",
    watchdog: float | None = None,
) -> None:
    """READY=1 once `ready()` returns, STOPPING=1 once `stopping()` returns, WATCHDOG=1 every
    `watchdog` seconds meanwhile (from the start: a slow start must not be killed either)."""
    async with trio.open_nursery() as nursery:
        if watchdog:
            nursery.start_soon(_pings, notifier, watchdog)
        await ready()
        await notifier.send("READY=1", *([f"STATUS={status}"] if status else []))
        await stopping()
        nursery.cancel_scope.cancel()
    await notifier.send("STOPPING=1", "STATUS=shutting down")


async def _pings(notifier: Notifier, interval: float) -> None:
    while True:
        await notifier.send("WATCHDOG=1")
        await trio.sleep(interval)

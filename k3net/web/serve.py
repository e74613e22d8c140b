"""Serve the ASGI app with hypercorn's trio worker on the --listen address.

`run` binds the socket (`k3net.web.listen`) and serves it; `serve_socket` serves a socket bound
already. `nursery.start(run, ...)` returns the port actually bound.

hypercorn is driven through its public API only: `hypercorn.trio.serve` with a `Config` whose
bind is `fd://N`, N being a duplicate of the agent's own listening socket. The agent binds first
(a port in use is one clear line before anything is advertised, see `k3net.web.listen`) and
keeps its socket; hypercorn owns the duplicate and closes it when it stops serving.

Stopping: cancelling `run` is the shutdown trigger. The app's `shutdown()` (if it has one) is
called first, so that /events websockets close with 1001 by themselves; hypercorn then gets
`GRACE` seconds to finish open requests, and `run` returns. Without that, hypercorn would wait
its graceful timeout for the websockets and clients would see 1006. A client that stopped
reading altogether is cut after `k3net.web.listen.STALL_TIMEOUT`.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import hypercorn.trio
import trio
from hypercorn.config import Config

from k3net.limits import WEBSOCKET_MESSAGE
from k3net.web.listen import BACKLOG, listen_socket

log = logging.getLogger("k3net.web")

# Seconds hypercorn may spend finishing open requests at shutdown. Requests here are small and
# websockets close themselves, so one second is plenty and keeps the agent's shutdown quick.
GRACE = 1.0


def hypercorn_config(fd: int | None = None) -> Config:
    """hypercorn's settings; `fd`: serve this listening socket (hypercorn then owns it)."""
    config = Config()
    if fd is not None:
        config.bind = [f"fd://{fd}"]
    config.graceful_timeout = GRACE
    config.accesslog = None  # quiet: probes hit /healthz every few seconds
    # hypercorn's own lines ("Running on ... (CTRL + C to quit)") only from warning up: the
    # agent says what it serves itself.
    config.errorlog = logging.getLogger("k3net.web.hypercorn")
    config.backlog = BACKLOG
    # A longer message closes its websocket with 1009 (k3net.limits.WEBSOCKET_MESSAGE).
    config.websocket_max_message_size = WEBSOCKET_MESSAGE
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
    await serve_socket(app, await listen_socket(host, port), task_status=task_status)


async def serve_socket(
    app: Any, sock: socket.socket, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve `app` on a listening socket (closed when this returns) until cancelled."""
    stop = trio.Event()
    started = _Started()
    # hypercorn runs shielded, so that cancelling `run` becomes its graceful shutdown instead
    # of killing every connection at once; the deadline set below bounds that shutdown.
    shield = trio.CancelScope(shield=True)

    async def serve_shielded() -> None:
        # The duplicate is made here, where hypercorn takes it at once: hypercorn wraps it in a
        # socket of its own and trio's serve_listeners closes that when serving ends.
        config = hypercorn_config(os.dup(sock.fileno()))
        with shield:
            await hypercorn.trio.serve(
                app, config, shutdown_trigger=stop.wait, task_status=started, mode="asgi"
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

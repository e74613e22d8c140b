"""What the commands (nodes, peers, watch) print, as the tests read it."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Sequence
from typing import Any

import trio

from k3net import cli


class Output(io.StringIO):
    """What a command prints, with a way to wait for it."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = trio.Event()

    def write(self, text: str) -> int:
        self._changed.set()
        return super().write(text)

    async def wait_for(self, predicate: Any) -> list[str]:
        with trio.fail_after(5):
            while not predicate(self.getvalue().splitlines()):
                self._changed = trio.Event()
                await self._changed.wait()
        return self.getvalue().splitlines()

    async def messages(self, count: int) -> list[dict[str, Any]]:
        lines = await self.wait_for(lambda lines: len(lines) >= count)
        return [json.loads(line) for line in lines]


def exit_code(argv: Sequence[str]) -> int:
    """cli.main's exit status, whether it returns it or raises SystemExit (argparse).
    Only called with arguments that must fail before the agent starts."""
    try:
        return cli.main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)


def free_port() -> int:
    """A loopback TCP port nothing listens on (free when asked)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

"""What the commands (nodes, peers, watch) print, as the tests read it."""

from __future__ import annotations

import io
import json
from typing import Any

import trio


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

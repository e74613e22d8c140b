"""Whether the store answers: set by the tasks that talk to it, read by /readyz and /metrics."""

from __future__ import annotations

import attrs


@attrs.define
class StoreHealth:
    ok: bool = False
    reason: str = "store not reached yet"

    def up(self) -> None:
        self.ok, self.reason = True, ""

    def down(self, reason: str) -> None:
        self.ok, self.reason = False, reason

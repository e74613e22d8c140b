"""The store protocol every backend implements, and k3net's own store errors.

A backend keeps `v1/Node` objects by name. Each stored Node carries an opaque `version`
(etcd: the key's mod_revision; MySQL: the row's resource_version; memory: a counter) and every
update is a compare-and-swap against it. Backends translate their library's exceptions into the
errors below, once, at this boundary: nothing above the store ever sees a grpc or pymysql error.

Watching: `watch()` yields a `Snapshot` of every Node first, then `Put` / `Deleted` in commit
order. When it loses the store it yields `Lost`, and once the store answers again a new
`Snapshot` (the consumer replaces its view), so no change can be missed across a reconnect.
Timeouts belong to the caller.

Foreign data: a value under the Node prefix that is not a Node (bad JSON, another object, a row
with broken columns) was written by someone else. No read ever fails because of one: `scan`
and the watch's Snapshot report it as a `Foreign` item beside the Nodes, a change that turns a
Node into such a value arrives as `Deleted(name, foreign=...)`, and `get` of it raises
`ForeignValue` (a StoreError that is neither NotFound, which would invite a create, nor
Conflict). Compare-and-swap keeps writers off it: its version is not any Node's version.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import attrs

from k3net.core.messages import Deleted, Foreign, Lost, Put, Snapshot, Stored, WatchEvent
from k3net.model import Node

__all__ = [
    "Conflict", "Deleted", "Foreign", "ForeignTally", "ForeignValue", "Lost", "NotFound", "Put",
    "Scan", "Snapshot", "Store", "StoreError", "StoreUnavailable", "Stored", "WatchEvent",
]

# A Foreign reason longer than this is cut: it is shown on one line.
REASON_CHARS = 160


def foreign(name: str, key: str, reason: object) -> Foreign:
    """A Foreign item with a one-line reason of bounded length."""
    text = " ".join(str(reason).split())
    if len(text) > REASON_CHARS:
        text = text[: REASON_CHARS - 3] + "..."
    return Foreign(name=name, key=key, reason=text)


class StoreError(Exception):
    """Base of every error a store raises."""


class NotFound(StoreError):
    """No Node of that name."""


class Conflict(StoreError):
    """Compare-and-swap failed: the Node exists already, or changed since it was read."""


class StoreUnavailable(StoreError):
    """The store did not answer (down, unreachable, timed out, refused our credentials)."""


class ForeignValue(StoreError):
    """The value stored under that name is not a Node: someone else's data, never to be
    overwritten. `foreign` says where it is and why it is not a Node."""

    def __init__(self, item: Foreign) -> None:
        super().__init__(f"{item.key} does not hold a Node: {item.reason}")
        self.foreign = item


@attrs.frozen
class Scan:
    """Everything under the Node prefix: the Nodes (sorted by name) and the foreign values
    (sorted by name)."""

    nodes: list[Stored]
    foreign: list[Foreign]


class ForeignTally:
    """The foreign values a watch has reported, kept current from its events (for /metrics).
    Pure: feed it every WatchEvent."""

    def __init__(self) -> None:
        self.items: dict[str, Foreign] = {}

    def observe(self, event: WatchEvent) -> None:
        if isinstance(event, Snapshot):
            self.items = {f.name: f for f in event.foreign}
        elif isinstance(event, Put):
            self.items.pop(event.stored.name, None)
        elif isinstance(event, Deleted):
            if event.foreign is None:
                self.items.pop(event.name, None)
            else:
                self.items[event.name] = event.foreign

    def __len__(self) -> int:
        return len(self.items)


class Store(Protocol):
    """What k3net needs of a store. `kind` is `memory`, `etcd` or `mysql`."""

    kind: str

    async def get(self, name: str) -> Stored:
        """The Node named `name`; NotFound, or ForeignValue if what is there is not a Node."""
        ...

    async def list(self) -> list[Stored]:
        """Every Node, sorted by name (foreign values left out)."""
        ...

    async def scan(self) -> Scan:
        """Every Node and every foreign value."""
        ...

    async def create(self, node: Node) -> Stored:
        """Store a new Node; Conflict if one of that name exists."""
        ...

    async def update(self, node: Node, version: str) -> Stored:
        """Replace the Node if its stored version is still `version`; Conflict if not,
        NotFound if it is gone."""
        ...

    async def delete(self, name: str, version: str | None = None) -> None:
        """Remove a Node (tools such as `k3net prune`; the agent never deletes). NotFound if
        absent. With `version`, a compare-and-swap: Conflict if the Node changed since it was
        read at that version, so a Node that came back to life meanwhile is never removed."""
        ...

    def watch(self) -> AbstractAsyncContextManager[AsyncIterator[WatchEvent]]:
        """`async with store.watch() as events: async for ev in events: ...`"""
        ...

    async def aclose(self) -> None:
        """Release connections. Safe to call twice."""
        ...

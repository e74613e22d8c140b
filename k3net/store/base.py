"""The store protocol every backend implements, and k3net's own store errors.

A backend keeps `v1/Node` objects by name. Each stored Node carries an opaque `version`
(etcd: the key's mod_revision; MySQL: the row's resource_version; memory: a counter) and every
update is a compare-and-swap against it. Backends translate their library's exceptions into the
errors below, once, at this boundary: nothing above the store ever sees a grpc or pymysql error.

Watching: `watch()` yields a `Snapshot` of every Node first, then `Put` / `Deleted` in commit
order. When it loses the store it yields `Lost`, and once the store answers again a new
`Snapshot` (the consumer replaces its view), so no change can be missed across a reconnect. Timeouts belong to the caller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from k3net.core.messages import Deleted, Lost, Put, Snapshot, Stored, WatchEvent
from k3net.model import Node

__all__ = [
    "Conflict", "Deleted", "Lost", "NotFound", "Put", "Snapshot", "Store", "StoreError",
    "StoreUnavailable", "Stored", "WatchEvent",
]


class StoreError(Exception):
    """Base of every error a store raises."""


class NotFound(StoreError):
    """No Node of that name."""


class Conflict(StoreError):
    """Compare-and-swap failed: the Node exists already, or changed since it was read."""


class StoreUnavailable(StoreError):
    """The store did not answer (down, unreachable, timed out, refused our credentials)."""


class Store(Protocol):
    """What k3net needs of a store. `kind` is `memory`, `etcd` or `mysql`."""

    kind: str

    async def get(self, name: str) -> Stored:
        """The Node named `name`, or NotFound."""
        ...

    async def list(self) -> list[Stored]:
        """Every Node, sorted by name."""
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

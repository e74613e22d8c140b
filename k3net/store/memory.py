"""The in-process store: the default, so that `k3net run` works with no set-up.

It behaves like the shared backends (versions, compare-and-swap, watch) so that the agent and the
contract tests cannot tell the difference. Nodes are copied in and out: a caller that mutates a
Node it got back changes nothing in the store.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from k3net.convert import node_from_dict, node_to_dict
from k3net.model import Node
from k3net.store.base import (
    Conflict,
    Deleted,
    NotFound,
    Put,
    Scan,
    Snapshot,
    Stored,
    WatchEvent,
)

# A watcher that falls this many events behind gets one fresh Snapshot instead of the backlog.
WATCH_BACKLOG = 1024


def _copy(node: Node) -> Node:
    return node_from_dict(node_to_dict(node))


class _Watcher:
    def __init__(self) -> None:
        self.pending: deque[WatchEvent] = deque()
        self.resync = True  # the first thing every watcher gets is a Snapshot
        self.wakeup = trio.Event()

    def push(self, event: WatchEvent) -> None:
        if not self.resync:
            self.pending.append(event)
            if len(self.pending) > WATCH_BACKLOG:
                self.pending.clear()
                self.resync = True
        self.wakeup.set()


class MemoryStore:
    kind = "memory"

    def __init__(self) -> None:
        self._nodes: dict[str, Stored] = {}
        self._revision = 0
        self._watchers: set[_Watcher] = set()

    def _stored(self, node: Node) -> Stored:
        self._revision += 1
        version = str(self._revision)
        node = _copy(node)
        node.metadata.resource_version = version
        stored = Stored(node=node, version=version)
        self._nodes[node.metadata.name] = stored
        for watcher in self._watchers:
            watcher.push(Put(self._out(stored)))
        return self._out(stored)

    @staticmethod
    def _out(stored: Stored) -> Stored:
        return Stored(node=_copy(stored.node), version=stored.version)

    async def get(self, name: str) -> Stored:
        await trio.lowlevel.checkpoint()
        try:
            return self._out(self._nodes[name])
        except KeyError:
            raise NotFound(name) from None

    async def list(self) -> list[Stored]:
        await trio.lowlevel.checkpoint()
        return [self._out(self._nodes[name]) for name in sorted(self._nodes)]

    async def scan(self) -> Scan:
        # Only Nodes can get in: there is never foreign data here.
        return Scan(nodes=await self.list(), foreign=[])

    async def create(self, node: Node) -> Stored:
        await trio.lowlevel.checkpoint()
        if node.metadata.name in self._nodes:
            raise Conflict(f"{node.metadata.name} exists")
        return self._stored(node)

    async def update(self, node: Node, version: str) -> Stored:
        await trio.lowlevel.checkpoint()
        current = self._nodes.get(node.metadata.name)
        if current is None:
            raise NotFound(node.metadata.name)
        if current.version != version:
            raise Conflict(f"{node.metadata.name} is at version {current.version}, not {version}")
        return self._stored(node)

    async def delete(self, name: str, version: str | None = None) -> None:
        await trio.lowlevel.checkpoint()
        current = self._nodes.get(name)
        if current is None:
            raise NotFound(name)
        if version is not None and current.version != version:
            raise Conflict(f"{name} is at version {current.version}, not {version}")
        del self._nodes[name]
        self._revision += 1
        for watcher in self._watchers:
            watcher.push(Deleted(name))

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        watcher = _Watcher()
        self._watchers.add(watcher)
        try:
            yield self._events(watcher)
        finally:
            self._watchers.discard(watcher)

    async def _events(self, watcher: _Watcher) -> AsyncIterator[WatchEvent]:
        while True:
            if watcher.resync:
                watcher.resync = False
                watcher.pending.clear()
                yield Snapshot(tuple(self._out(s) for _, s in sorted(self._nodes.items())))
            elif watcher.pending:
                yield watcher.pending.popleft()
            else:
                watcher.wakeup = trio.Event()
                await watcher.wakeup.wait()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()

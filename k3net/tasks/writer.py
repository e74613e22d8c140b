"""writer: the only task that writes to the store, so every write is serialized and ordered.

It takes `Write` actions from the peer table, keeps at most one pending intent per Node (the
latest wins: a Node that went Ready then Left while the store was down gets one write, PeerLeft),
renders each against the Node as stored and writes it with compare-and-swap. On a conflict it
re-reads and re-renders, so an agent that lost a race usually finds nothing left to write. While
the store is down it retries with capped exponential backoff and jitter; pending intents stay
bounded by the number of Nodes, and nothing is dropped.

When the table closes its end of the channel (the agent is stopping), the writer writes what is
still pending and returns; the caller bounds that with a deadline.

Each write goes to the store current when it begins (`store`, the agent's one owner of it: a
reload moves the agent to another store), never to two stores in one write; `settled` returns
once the write under way is done, `wait_idle` once nothing is pending.
"""

from __future__ import annotations

import datetime as dt
import logging
import random

import trio

from k3net.backoff import DEFAULT_BACKOFF, Backoff
from k3net.core.nodes import Alive, render
from k3net.core.table import Write
from k3net.current import Current
from k3net.durations import format_duration
from k3net.health import StoreHealth
from k3net.metrics import Metrics
from k3net.store.base import Conflict, ForeignValue, NotFound, Store, Stored, StoreUnavailable

log = logging.getLogger("k3net.writer")


# Compare-and-swap losses in a row before the writer backs off like for an outage.
MAX_CONFLICTS = 10


class Writer:
    def __init__(
        self,
        store: Current[Store],
        metrics: Metrics,
        health: StoreHealth,
        *,
        backoff: Backoff = DEFAULT_BACKOFF,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.health = health
        self.backoff = backoff
        self.rng = rng or random.Random()
        self._pending: dict[str, Write] = {}
        self._wakeup = trio.Event()
        self._inbox_open = True
        self._writing = trio.Lock()  # held for each write: a store change waits for it
        self._idle = trio.Event()  # set while nothing is pending

    @property
    def backlog(self) -> int:
        """Nodes with a write still to be made."""
        return len(self._pending)

    async def settled(self) -> None:
        """Return once the write under way (if any) is done: every write after it goes to the
        store current when it begins."""
        async with self._writing:
            pass

    async def wait_idle(self) -> None:
        """Return once every write handed over so far is written (or there is none)."""
        await self._idle.wait()

    async def run(
        self,
        inbox: trio.MemoryReceiveChannel[Write],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._collect, inbox)
            task_status.started()
            await self._drain()

    async def _collect(self, inbox: trio.MemoryReceiveChannel[Write]) -> None:
        async with inbox:
            async for write in inbox:
                self._pending.pop(write.intent.name, None)  # the newest goes to the back
                self._pending[write.intent.name] = write
                if self._idle.is_set():
                    self._idle = trio.Event()
                self._wakeup.set()
        self._inbox_open = False
        self._wakeup.set()

    async def _drain(self) -> None:
        failures = 0
        while True:
            if not self._pending:
                self._idle.set()
                if not self._inbox_open:
                    return
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            name = next(iter(self._pending))
            write = self._pending.pop(name)
            try:
                async with self._writing:
                    await self._apply(write)
            except ForeignValue as exc:  # someone else's data: never written over, never fatal
                log.warning("not writing %s: %s", name, exc, extra={"node": name})
            except (StoreUnavailable, _TooManyConflicts) as exc:
                self._pending.setdefault(name, write)  # unless a newer intent replaced it
                delay = self.backoff.delay(failures, self.rng)
                failures += 1
                log.warning(
                    "store write for %s failed (%s); %d pending, retrying in %s",
                    name, exc, len(self._pending), format_duration(delay), extra={"node": name},
                )
                await trio.sleep(delay)
            else:
                if failures:
                    log.info("store writes succeed again after %d failed attempts", failures)
                failures = 0

    async def _apply(self, write: Write) -> None:
        store = self.store.value  # one store for the whole write, whatever happens meanwhile
        base: Stored | None = write.base
        name = write.intent.name
        read = False  # `base` was read from the store by this writer, not taken from the table
        if base is None and not isinstance(write.intent, Alive):
            # Only Alive creates a Node; anything else needs the Node as stored, which the
            # table may not have seen yet (the watch's first snapshot is still on its way).
            base, read = await self._get(store, name), True
        for _ in range(MAX_CONFLICTS):
            node = render(base.node if base else None, write.intent, dt.datetime.now(dt.UTC))
            if node is None:
                if read or isinstance(write.intent, Alive):
                    return
                # The table's copy may predate a write of ours that it has not seen yet (the
                # watch is a poll behind, or the store was away): a departure that looks
                # recorded already is checked against the store once before it is dropped.
                base, read = await self._get(store, name), True
                continue
            try:
                if base is None:
                    stored = await self._call("create", store.create(node))
                else:
                    stored = await self._call("update", store.update(node, base.version))
            except (Conflict, NotFound):
                self.metrics.store_conflicts.inc()
                base, read = await self._get(store, name), True
                continue
            cause = type(write.intent).__name__.lower()
            self.metrics.writes.labels(cause=cause).inc()
            log.debug("wrote %s (%s), version %s", name, cause, stored.version)
            return
        raise _TooManyConflicts(f"{MAX_CONFLICTS} compare-and-swap conflicts in a row")

    async def _get(self, store: Store, name: str) -> Stored | None:
        try:
            return await self._call("get", store.get(name))
        except NotFound:
            return None

    async def _call(self, op: str, call):  # type: ignore[no-untyped-def]
        start = trio.current_time()
        try:
            result = await call
        except StoreUnavailable as exc:
            self.metrics.store_ops.labels(op=op, result="unavailable").inc()
            self.health.down(str(exc))
            raise
        except Conflict:
            self.metrics.store_ops.labels(op=op, result="conflict").inc()
            raise
        except NotFound:
            self.metrics.store_ops.labels(op=op, result="not_found").inc()
            raise
        except ForeignValue:
            self.metrics.store_ops.labels(op=op, result="foreign").inc()
            raise
        finally:
            took = trio.current_time() - start
            self.metrics.store_latency.labels(op=op).observe(took)
        self.metrics.store_ops.labels(op=op, result="ok").inc()
        self.health.up(took)
        return result


class _TooManyConflicts(Exception):
    pass

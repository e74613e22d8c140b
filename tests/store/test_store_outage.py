"""Store outages: a private etcd / MariaDB is stopped under a live store and started again.

While the server is down every call raises StoreUnavailable, quickly, and an open watch yields
Lost. Once it is back the same store object works again, and the watch yields a fresh Snapshot
and then Puts: nothing written meanwhile is missed.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from k3lab import services
from k3lab.services import EtcdServer, MariaDBServer, free_port
from k3net.config import EtcdConfig, MySQLConfig
from k3net.store.base import (
    Deleted,
    Lost,
    Put,
    Snapshot,
    Store,
    Stored,
    StoreUnavailable,
    WatchEvent,
)
from k3net.store.etcd import EtcdStore
from k3net.store.mysql import MySQLStore

from ..helpers.require import missing
from ..helpers.stores import TEST_POLL_INTERVAL, make_node

# A call to a stopped server must fail within this many seconds.
FAIL_FAST = 3.0
# After a restart, the store must work again (and the watch catch up) within this many seconds.
RECOVER = 20.0


def require_binaries(*paths: str) -> None:
    for path in paths:
        if not os.access(path, os.X_OK):
            missing(f"{path} is not installed")


async def in_thread(fn: Callable[[], object]) -> None:
    await trio.to_thread.run_sync(fn)


@pytest.fixture
def etcd_installed() -> None:
    require_binaries(services.ETCD, services.ETCDCTL)


@pytest.fixture
def mariadb_installed() -> None:
    require_binaries(services.MARIADBD, services.MARIADB, services.MARIADB_INSTALL_DB)


@pytest.fixture
async def etcd_server(etcd_installed: None, tmp_path: Path) -> AsyncIterator[EtcdServer]:
    server = EtcdServer(tmp_path / "etcd", client_port=free_port(), peer_port=free_port())
    await in_thread(server.start)
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await in_thread(server.stop)


@pytest.fixture
async def mariadb_server(mariadb_installed: None, tmp_path: Path) -> AsyncIterator[MariaDBServer]:
    server = MariaDBServer(tmp_path / "db")
    await in_thread(server.start)
    try:
        await in_thread(partial(server.sql, "CREATE DATABASE k3net"))
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await in_thread(server.stop)


class View:
    """What a watch consumer knows: the Nodes by name, how many Snapshots it saw, and whether
    it has been told that the store is lost (until the next Snapshot)."""

    def __init__(self) -> None:
        self.nodes: dict[str, Stored] = {}
        self.snapshots = 0
        self.lost = False
        self.changed = trio.Event()

    def apply(self, event: WatchEvent) -> None:
        if isinstance(event, Snapshot):
            self.nodes = {s.name: s for s in event.items}
            self.snapshots += 1
            self.lost = False
        elif isinstance(event, Lost):
            self.lost = True
        elif isinstance(event, Put):
            self.nodes[event.stored.name] = event.stored
        elif isinstance(event, Deleted):
            self.nodes.pop(event.name, None)
        self.changed.set()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self.changed = trio.Event()
            await self.changed.wait()


async def follow(store: Store, view: View, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    async with store.watch() as events:
        task_status.started()
        async for event in events:
            view.apply(event)


async def fails_fast(call: Callable[[], Awaitable[object]]) -> float:
    start = trio.current_time()
    with trio.fail_after(FAIL_FAST), pytest.raises(StoreUnavailable):
        await call()
    return trio.current_time() - start


async def until_it_works(call: Callable[[], Awaitable[Stored]]) -> Stored:
    while True:
        try:
            return await call()
        except StoreUnavailable:
            await trio.sleep(0.1)


async def outage(store: Store, other: Store, stop: Callable[[], object],
                 start: Callable[[], object]) -> None:
    """The scenario for any backend; `other` is a second store object on the same server (a
    second agent) that writes while `store`'s watch is reconnecting."""
    before = await store.create(make_node("before"))
    view = View()
    async with trio.open_nursery() as nursery:
        await nursery.start(follow, store, view)
        with trio.fail_after(5):
            await view.wait_for(lambda: view.snapshots == 1 and "before" in view.nodes)

        await in_thread(stop)
        with trio.fail_after(FAIL_FAST):
            await view.wait_for(lambda: view.lost)
        node = make_node("before", step="during")
        took = [
            await fails_fast(partial(store.get, "before")),
            await fails_fast(store.list),
            await fails_fast(partial(store.create, make_node("during"))),
            await fails_fast(partial(store.update, node, before.version)),
            await fails_fast(partial(store.delete, "before")),
        ]
        print(f"\n{store.kind} down: calls failed within {max(took):.3f}s")

        restarted = trio.current_time()
        await in_thread(start)
        with trio.fail_after(RECOVER):
            # Another agent writes first: the watch must not miss it, however it reconnects.
            current = await until_it_works(partial(other.get, "before"))
            theirs = await other.update(make_node("before", writer="other"), current.version)
            created = await until_it_works(partial(store.create, make_node("after")))
            await view.wait_for(lambda: view.nodes == {"before": theirs, "after": created})
        print(f"{store.kind} back: store and watch caught up "
              f"{trio.current_time() - restarted:.2f}s after the restart")
        assert view.snapshots == 2, "the watch yields a fresh Snapshot after the outage"
        assert not view.lost

        # And it carries on with Puts.
        ours = await store.update(make_node("before", writer="us"), theirs.version)
        with trio.fail_after(5):
            await view.wait_for(lambda: view.nodes["before"] == ours)
        assert view.snapshots == 2
        nursery.cancel_scope.cancel()


@pytest.mark.etcd
@pytest.mark.parametrize("crash", [False, True], ids=["stopped", "killed"])
async def test_etcd_outage(etcd_server: EtcdServer, aio_loop: Any, crash: bool) -> None:
    config = EtcdConfig(endpoints=(etcd_server.endpoint,), dial_timeout=1.0)
    store, other = EtcdStore(config), EtcdStore(config)
    try:
        await outage(store, other, partial(etcd_server.stop, crash=crash), etcd_server.start)
    finally:
        await store.aclose()
        await other.aclose()


@pytest.mark.mysql
async def test_mysql_outage(mariadb_server: MariaDBServer, aio_loop: Any) -> None:
    config = MySQLConfig(socket=mariadb_server.socket, database="k3net",
                         poll_interval=TEST_POLL_INTERVAL)
    store, other = MySQLStore(config), MySQLStore(config)
    try:
        await outage(store, other, mariadb_server.stop, mariadb_server.start)
    finally:
        await store.aclose()
        await other.aclose()

"""Store backends behind one protocol (see `base`): memory, etcd, mysql."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from k3net.config import StorageConfig
from k3net.store.base import (
    Conflict,
    Deleted,
    Foreign,
    ForeignTally,
    ForeignValue,
    Lost,
    NotFound,
    Put,
    Scan,
    Snapshot,
    Store,
    Stored,
    StoreError,
    StoreUnavailable,
    WatchEvent,
)

__all__ = [
    "Conflict", "Deleted", "Foreign", "ForeignTally", "ForeignValue", "Lost", "NotFound", "Put",
    "Scan", "Snapshot", "Store", "StoreError", "StoreUnavailable", "Stored", "WatchEvent",
    "open_store",
]


@asynccontextmanager
async def open_store(config: StorageConfig) -> AsyncIterator[Store]:
    """The configured backend. Does not wait for the store to answer: a backend whose server is
    down still opens, and its calls raise StoreUnavailable until the server is back. The etcd and
    MySQL backends need a running trio-asyncio loop (`trio_asyncio.open_loop()`)."""
    store: Store
    if config.type == "etcd":
        from k3net.store.etcd import EtcdStore

        store = EtcdStore(config.etcd)
    elif config.type == "mysql":
        from k3net.store.mysql import MySQLStore

        store = MySQLStore(config.mysql)
    else:
        from k3net.store.memory import MemoryStore

        store = MemoryStore()
    try:
        yield store
    finally:
        await store.aclose()

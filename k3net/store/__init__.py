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
    "make_store", "open_store",
]


def make_store(config: StorageConfig) -> Store:
    """The configured backend, not connected yet: a backend whose server is down is made all
    the same, and its calls raise StoreUnavailable until the server is back. The etcd and MySQL
    backends need a running trio-asyncio loop (`trio_asyncio.open_loop()`). Close it with
    `aclose()`."""
    if config.type == "etcd":
        from k3net.store.etcd import EtcdStore

        return EtcdStore(config.etcd)
    if config.type == "mysql":
        from k3net.store.mysql import MySQLStore

        return MySQLStore(config.mysql)
    from k3net.store.memory import MemoryStore

    return MemoryStore()


@asynccontextmanager
async def open_store(config: StorageConfig) -> AsyncIterator[Store]:
    """`make_store`, closed on the way out."""
    store = make_store(config)
    try:
        yield store
    finally:
        await store.aclose()

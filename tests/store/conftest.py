"""Fixtures for the store tests.

`store` is a fresh, empty store of each backend (memory, etcd, mysql). The etcd and MySQL ones
need the test services that scripts/test starts (env K3NET_TEST_ETCD=host:port,
K3NET_TEST_MYSQL_SOCKET, K3NET_TEST_MYSQL_DB); without them those tests are skipped, or fail
when K3NET_REQUIRE_SERVICES=1. `raw_etcd` and `raw_mysql` reach the same data the way the Go
components do, bypassing k3net, for the interop tests.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import aetcd
import pytest
import trio
import trio_asyncio
from trio_asyncio import aio_as_trio

from k3net.config import EtcdConfig, MySQLConfig, parse_endpoint
from k3net.store.base import Store
from k3net.store.etcd import EtcdStore
from k3net.store.memory import MemoryStore
from k3net.store.mysql import MySQLStore
from tests.helpers.require import missing
from tests.helpers.stores import TEST_POLL_INTERVAL, RawEtcd, RawMySQL


def service_env(name: str) -> str:
    """The value of env `name`, set by scripts/test once it has started etcd and MariaDB."""
    value = os.environ.get(name)
    if not value:
        missing(f"{name} is not set (scripts/test starts etcd and MariaDB and sets it)")
    return value


def etcd_config() -> EtcdConfig:
    return EtcdConfig(endpoints=(f"http://{service_env('K3NET_TEST_ETCD')}",), dial_timeout=2.0)


def mysql_config() -> MySQLConfig:
    return MySQLConfig(
        socket=service_env("K3NET_TEST_MYSQL_SOCKET"), database=service_env("K3NET_TEST_MYSQL_DB"),
        poll_interval=TEST_POLL_INTERVAL,
    )


@pytest.fixture
async def aio_loop() -> AsyncIterator[Any]:
    """The asyncio loop inside trio that the etcd and MySQL backends need."""
    async with trio_asyncio.open_loop() as loop:
        yield loop
        # gRPC completes the calls of a closed channel a moment later, from its poller thread.
        # Keep this loop open for that: an event for an already closed loop fails the NEXT test
        # ("Event loop is closed"). An agent has one loop per process and never sees this.
        await trio.sleep(0.2)


# The configs are sync fixtures: a skip (or failure) for a missing service is reported with its
# reason, which an async fixture's would not be.


@pytest.fixture
def etcd_settings() -> EtcdConfig:
    return etcd_config()


@pytest.fixture
def mysql_settings() -> MySQLConfig:
    return mysql_config()


@pytest.fixture
async def raw_etcd(etcd_settings: EtcdConfig, aio_loop: Any) -> AsyncIterator[RawEtcd]:
    """Raw access to the test etcd; the Node prefix is empty when the test starts."""
    host, port = parse_endpoint(etcd_settings.endpoints[0], "K3NET_TEST_ETCD")
    client = aetcd.Client(host, port)
    raw = RawEtcd(client)
    try:
        await raw.clear()
        yield raw
    finally:
        with trio.move_on_after(5, shield=True):
            await aio_as_trio(client.close)()


@pytest.fixture
async def raw_mysql(mysql_settings: MySQLConfig, aio_loop: Any) -> AsyncIterator[RawMySQL]:
    """Raw access to the test database; the Node table does not exist when the test starts."""
    raw = RawMySQL(mysql_settings)
    await raw.drop_table()
    yield raw


@pytest.fixture
async def etcd_store(etcd_settings: EtcdConfig, raw_etcd: RawEtcd) -> AsyncIterator[EtcdStore]:
    store = EtcdStore(etcd_settings)
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture
async def mysql_store(mysql_settings: MySQLConfig, raw_mysql: RawMySQL) -> AsyncIterator[MySQLStore]:
    store = MySQLStore(mysql_settings)
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture(
    params=[
        "memory",
        pytest.param("etcd", marks=pytest.mark.etcd),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def backend(request: pytest.FixtureRequest) -> EtcdConfig | MySQLConfig | None:
    """Which backend `store` is: its config (checked here, synchronously), None for memory."""
    if request.param == "etcd":
        return etcd_config()
    if request.param == "mysql":
        return mysql_config()
    return None


@pytest.fixture
async def store(backend: EtcdConfig | MySQLConfig | None, aio_loop: Any) -> AsyncIterator[Store]:
    """A fresh, empty store of each backend."""
    fresh: Store
    if isinstance(backend, EtcdConfig):
        host, port = parse_endpoint(backend.endpoints[0], "K3NET_TEST_ETCD")
        client = aetcd.Client(host, port)
        try:
            await RawEtcd(client).clear()
        finally:
            await aio_as_trio(client.close)()
        fresh = EtcdStore(backend)
    elif isinstance(backend, MySQLConfig):
        await RawMySQL(backend).drop_table()
        fresh = MySQLStore(backend)
    else:
        fresh = MemoryStore()
    try:
        yield fresh
    finally:
        await fresh.aclose()

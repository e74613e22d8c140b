"""Fixtures for the store tests.

`store` is a fresh, empty store of each backend (memory, etcd, mysql). The etcd and MySQL ones
need the test services that scripts/test starts (env K3NET_TEST_ETCD=host:port,
K3NET_TEST_MYSQL_SOCKET, K3NET_TEST_MYSQL_DB); without them those tests are skipped, or fail
when K3NET_REQUIRE_SERVICES=1. `raw_etcd` and `raw_mysql` reach the same data the way the Go
components do, bypassing k3net, for the interop tests.

Every test empties the Node prefix and drops the Node table before it starts, so two tests must
never share them. A serial run uses the services as they are; under pytest-xdist each worker
(env PYTEST_XDIST_WORKER, `gw0`, `gw1`, ...) starts an etcd of its own and uses a database of
its own, K3NET_TEST_MYSQL_DB with the worker's name appended, on the same MariaDB.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aetcd
import pymysql
import pytest
import trio
import trio_asyncio
from trio_asyncio import aio_as_trio

from k3lab.services import EtcdServer, ServiceError, free_port
from k3net.config import EtcdConfig, MySQLConfig, parse_endpoint
from k3net.store.base import Store
from k3net.store.etcd import EtcdStore
from k3net.store.memory import MemoryStore
from k3net.store.mysql import MySQLStore

from ..helpers.require import missing
from ..helpers.stores import TEST_POLL_INTERVAL, RawEtcd, RawMySQL


def service_env(name: str) -> str:
    """The value of env `name`, set by scripts/test once it has started etcd and MariaDB."""
    value = os.environ.get(name)
    if not value:
        missing(f"{name} is not set (scripts/test starts etcd and MariaDB and sets it)")
    return value


# This process's pytest-xdist worker (`gw0`, `gw1`, ...); None in a serial run.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")


def _start_etcd(data_dir: Path) -> EtcdServer:
    """A private etcd on free loopback ports. A port free when asked may be taken by another
    process before etcd binds it (etcd then exits at once): other ports are tried then."""
    attempt = 0
    while True:
        server = EtcdServer(data_dir / f"try{attempt}", client_port=free_port(),
                            peer_port=free_port())
        try:
            server.start()
            return server
        except ServiceError:
            attempt += 1
            if attempt == 3 or "address already in use" not in server.log.read_text():
                raise


@pytest.fixture(scope="session")
def etcd_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of the etcd this process's store tests own: the one scripts/test started in a
    serial run, one of its own for each pytest-xdist worker."""
    shared = service_env("K3NET_TEST_ETCD")
    if WORKER is None:
        yield shared
        return
    server = _start_etcd(tmp_path_factory.mktemp("etcd"))
    with server:
        yield server.address


def _mysql_root(socket: str, sql: str) -> None:
    conn = pymysql.connect(unix_socket=socket, user="root", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture(scope="session")
def mysql_database() -> Iterator[str]:
    """The database this process's store tests own on the test MariaDB: the one scripts/test
    made in a serial run, a fresh one for each pytest-xdist worker (dropped at the end)."""
    socket, shared = service_env("K3NET_TEST_MYSQL_SOCKET"), service_env("K3NET_TEST_MYSQL_DB")
    if WORKER is None:
        yield shared
        return
    own = f"{shared}_{WORKER}"
    _mysql_root(socket, f"DROP DATABASE IF EXISTS `{own}`")
    _mysql_root(socket, f"CREATE DATABASE `{own}`")
    try:
        yield own
    finally:
        _mysql_root(socket, f"DROP DATABASE IF EXISTS `{own}`")


def etcd_config(address: str) -> EtcdConfig:
    return EtcdConfig(endpoints=(f"http://{address}",), dial_timeout=2.0)


def mysql_config(database: str) -> MySQLConfig:
    return MySQLConfig(
        socket=service_env("K3NET_TEST_MYSQL_SOCKET"), database=database,
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
def etcd_settings(etcd_address: str) -> EtcdConfig:
    return etcd_config(etcd_address)


@pytest.fixture
def mysql_settings(mysql_database: str) -> MySQLConfig:
    return mysql_config(mysql_database)


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
        return etcd_config(request.getfixturevalue("etcd_address"))
    if request.param == "mysql":
        return mysql_config(request.getfixturevalue("mysql_database"))
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

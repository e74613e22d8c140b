"""Secured stores: etcd over https with a client certificate, MariaDB requiring TLS. Real
servers with certificates made for the test (openssl); the store must work through them, and
refuse a server its CA did not sign."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_asyncio import aio_as_trio

from k3lab.services import EtcdServer, MariaDBServer, free_port
from k3lab.tls import Certs, make_certs
from k3net.config import EtcdConfig, MySQLConfig
from k3net.store import mysql
from k3net.store.base import Conflict, Put, Snapshot, Store, StoreUnavailable
from k3net.store.etcd import EtcdStore
from k3net.store.mysql import MySQLStore

from ..helpers.require import require
from ..helpers.stores import make_node, next_event


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    require(shutil.which("openssl") is not None, "needs openssl")
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def etcd_tls(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    require(shutil.which("etcd") is not None, "needs etcd (etcd-server)")
    with EtcdServer(tmp_path_factory.mktemp("etcd"), client_port=free_port(),
                    peer_port=free_port(), tls=certs) as server:
        yield server


@pytest.fixture(scope="module")
def mariadb_tls(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    require(shutil.which("mariadb-install-db") is not None, "needs MariaDB (mariadb-server)")
    with MariaDBServer(tmp_path_factory.mktemp("db"), tls=certs, port=free_port()) as server:
        server.sql("CREATE DATABASE IF NOT EXISTS k3")
        yield server


async def works(store: Store) -> None:
    """The store does everything the agent needs: write, compare-and-swap, read, watch."""
    try:
        created = await store.create(make_node("secured"))
        with pytest.raises(Conflict):
            await store.create(make_node("secured"))
        async with store.watch() as events:
            assert await next_event(events) == Snapshot((created,))
            updated = await store.update(make_node("secured", step="2"), created.version)
            assert await next_event(events) == Put(updated)
        assert await store.list() == [updated]
        await store.delete("secured", updated.version)
    finally:
        await store.aclose()


async def refused(store: Store) -> str:
    try:
        with trio.fail_after(15), pytest.raises(StoreUnavailable) as info:
            await store.list()
    finally:
        await store.aclose()
    return str(info.value)


def etcd_config(server: EtcdServer, certs: Certs, **changes: Any) -> EtcdConfig:
    fields: dict[str, Any] = dict(
        endpoints=(server.endpoint,), dial_timeout=3.0, ca_file=str(certs.ca),
        cert_file=str(certs.client_cert), key_file=str(certs.client_key),
    )
    return EtcdConfig(**{**fields, **changes})


async def test_etcd_over_https_with_a_client_certificate(
    etcd_tls: EtcdServer, certs: Certs, aio_loop: Any
) -> None:
    assert etcd_tls.endpoint.startswith("https://")
    await works(EtcdStore(etcd_config(etcd_tls, certs)))


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"cert_file": None, "key_file": None}, id="no-client-certificate"),
        pytest.param({"ca_file": "OTHER"}, id="server-not-signed-by-our-ca"),
        pytest.param({"ca_file": "/nonexistent/ca.pem"}, id="ca-file-missing"),
    ],
)
async def test_etcd_tls_refusals_are_store_unavailable(
    etcd_tls: EtcdServer, certs: Certs, aio_loop: Any, changes: dict[str, Any]
) -> None:
    if changes.get("ca_file") == "OTHER":
        changes = {"ca_file": str(certs.other_ca)}
    message = await refused(EtcdStore(etcd_config(etcd_tls, certs, **changes)))
    assert "etcd" in message


async def test_plain_http_to_a_tls_etcd_is_refused(
    etcd_tls: EtcdServer, certs: Certs, aio_loop: Any
) -> None:
    plain = etcd_tls.endpoint.replace("https://", "http://")
    await refused(EtcdStore(etcd_config(etcd_tls, certs, endpoints=(plain,))))


def mysql_config(server: MariaDBServer, certs: Certs, **changes: Any) -> MySQLConfig:
    fields: dict[str, Any] = dict(
        host="127.0.0.1", port=server.port, user=server.TCP_USER, password=server.TCP_PASSWORD,
        database="k3", poll_interval=0.05, ca_file=str(certs.ca),
        cert_file=str(certs.client_cert), key_file=str(certs.client_key),
    )
    return MySQLConfig(**{**fields, **changes})


async def test_mariadb_over_tls(mariadb_tls: MariaDBServer, certs: Certs, aio_loop: Any) -> None:
    mariadb_tls.sql("DROP TABLE IF EXISTS k3.k8s_core_v1_node")
    await works(MySQLStore(mysql_config(mariadb_tls, certs)))
    # Server-verified TLS without a client certificate works too.
    await works(MySQLStore(mysql_config(mariadb_tls, certs, cert_file=None, key_file=None)))


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"ca_file": None, "cert_file": None, "key_file": None}, id="plain"),
        pytest.param({"ca_file": "OTHER"}, id="server-not-signed-by-our-ca"),
        pytest.param({"ca_file": "/nonexistent/ca.pem"}, id="ca-file-missing"),
    ],
)
async def test_mariadb_tls_refusals_are_store_unavailable(
    mariadb_tls: MariaDBServer, certs: Certs, aio_loop: Any, changes: dict[str, Any]
) -> None:
    if changes.get("ca_file") == "OTHER":
        changes = {"ca_file": str(certs.other_ca)}
    message = await refused(MySQLStore(mysql_config(mariadb_tls, certs, **changes)))
    assert message.startswith("mysql:")


async def test_tls_asked_of_a_server_without_it_is_refused(
    certs: Certs, tmp_path: Path, aio_loop: Any
) -> None:
    """aiomysql would quietly stay plain with a server that offers no TLS: k3net refuses."""
    require(shutil.which("mariadb-install-db") is not None, "needs MariaDB (mariadb-server)")
    with MariaDBServer(tmp_path / "db", port=free_port()) as plain:
        plain.sql("CREATE DATABASE k3")
        config = mysql_config(plain, certs)
        message = await refused(MySQLStore(config))
        assert "did not start TLS" in message


async def test_mariadb_tcp_connections_are_watched_by_the_kernel(
    mariadb_tls: MariaDBServer, certs: Certs, aio_loop: Any
) -> None:
    """aiomysql has no read timeout: a TCP connection to a server gone from the network would
    wait for TCP to give up (minutes). Each connection the store uses has keepalive probes and
    TCP_USER_TIMEOUT set, so the kernel ends it within SERVER_SILENCE."""
    mariadb_tls.sql("DROP TABLE IF EXISTS k3.k8s_core_v1_node")
    store = MySQLStore(mysql_config(mariadb_tls, certs))
    try:
        await store.create(make_node("watched"))
        pool = store._pools["write"]
        conn = await aio_as_trio(pool.acquire)()
        try:
            sock = conn._writer.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == round(
                mysql.SERVER_SILENCE * 1000)
        finally:
            pool.release(conn)
    finally:
        await store.aclose()

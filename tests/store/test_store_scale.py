"""Big stores: 10,000 Nodes preloaded (raw, as other writers would leave them) are listed and
watched whole; etcd reads them in pages, since one response would outgrow gRPC's limit."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from trio_asyncio import aio_as_trio

from k3net.convert import node_to_dict
from k3net.store import etcd as etcd_backend
from k3net.store.base import Put, Snapshot, Store
from k3net.store.etcd import PREFIX, EtcdStore
from k3net.store.mysql import TABLE, MySQLStore

from ..helpers.stores import RawEtcd, RawMySQL, make_node, next_event

MANY = 10_000


def big_node_json(i: int) -> bytes:
    """A Node of about 1.5 kB, as a k3 Node with a few annotations and conditions is."""
    data = node_to_dict(make_node(f"node-{i:05d}", note="x" * 900))
    return json.dumps(data).encode()


async def preload_etcd(raw: RawEtcd, count: int) -> None:
    client = raw.client
    tx = client.transactions
    for start in range(0, count, 100):  # etcd takes at most 128 operations per transaction
        puts = [tx.put(f"{PREFIX}node-{i:05d}".encode(), big_node_json(i))
                for i in range(start, min(start + 100, count))]
        await aio_as_trio(client.transaction)(compare=[], success=puts, failure=[])


async def snapshot_then_follows(store: Store) -> None:
    """The watch's first Snapshot holds all MANY Nodes, and it follows on right after it: the
    next write arrives."""
    async with store.watch() as events:
        with trio.fail_after(60):
            snapshot = await events.__anext__()
        assert isinstance(snapshot, Snapshot) and len(snapshot.items) == MANY
        first = snapshot.items[0]
        later = await store.update(make_node(first.name, step="2"), first.version)
        assert await next_event(events) == Put(later)

@pytest.mark.etcd
async def test_etcd_lists_and_watches_10000_nodes(
    etcd_store: EtcdStore, raw_etcd: RawEtcd
) -> None:
    await preload_etcd(raw_etcd, MANY)
    await raw_etcd.put(PREFIX + "node-05000x", "{not a node")  # foreign, in the middle
    with trio.fail_after(60):
        scan = await etcd_store.scan()
    assert len(scan.nodes) == MANY and [f.name for f in scan.foreign] == ["node-05000x"]
    assert [s.name for s in scan.nodes] == [f"node-{i:05d}" for i in range(MANY)]
    await snapshot_then_follows(etcd_store)


@pytest.mark.etcd
async def test_etcd_pages_make_one_consistent_snapshot(
    etcd_store: EtcdStore, raw_etcd: RawEtcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages are read at the first page's revision: a write between two pages is not half in
    the snapshot, and the watch reports it after."""
    monkeypatch.setattr(etcd_backend, "PAGE_SIZE", 3)
    created = [await etcd_store.create(make_node(f"n{i:02d}")) for i in range(10)]
    real_page = etcd_backend._range_page
    pages = 0

    async def page_then_write(client: Any, start: bytes, revision: int) -> Any:
        nonlocal pages
        pages += 1
        if pages == 2:  # after the first page: change a Node the snapshot has not read yet
            await client.put(f"{PREFIX}n09".encode(), json.dumps(
                node_to_dict(make_node("n09", step="between-pages"))).encode())
        return await real_page(client, start, revision)

    monkeypatch.setattr(etcd_backend, "_range_page", page_then_write)
    async with etcd_store.watch() as events:
        snapshot = await next_event(events)
        assert snapshot == Snapshot(tuple(created))
        event = await next_event(events)
        assert isinstance(event, Put) and event.stored.name == "n09"
        assert event.stored.node.metadata.annotations == {"step": "between-pages"}
    assert pages == 4


@pytest.mark.mysql
async def test_mysql_lists_and_watches_10000_nodes(
    mysql_store: MySQLStore, raw_mysql: RawMySQL
) -> None:
    await mysql_store.list()  # creates the table
    rows = []
    for i in range(MANY):
        data = node_to_dict(make_node(f"node-{i:05d}", note="x" * 900))
        rows.append((data["metadata"]["name"], f"node-{i:05d}-uid", str(1000 + i),
                     json.dumps(data["metadata"]["labels"]),
                     json.dumps(data["metadata"]["annotations"]), "Running",
                     json.dumps(data["spec"]), json.dumps(data["status"])))
    await trio.to_thread.run_sync(_insert_many, raw_mysql, rows)
    with trio.fail_after(60):
        nodes = await mysql_store.list()
    assert [s.name for s in nodes] == [f"node-{i:05d}" for i in range(MANY)]
    await snapshot_then_follows(mysql_store)


def _insert_many(raw: RawMySQL, rows: list[tuple[Any, ...]]) -> None:
    import pymysql

    # One transaction: committed row by row, the preload alone took over 30 s (a log flush
    # per row); PyMySQL sends one INSERT per row here, as NOW(3) is no parameter.
    conn = pymysql.connect(unix_socket=raw.config.socket, user=raw.config.user,
                           password=raw.config.password, database=raw.config.database,
                           autocommit=False, charset="utf8mb4")
    try:
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {TABLE} (name, uid, resource_version, labels, annotations, phase,"
                " spec, status, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s,"
                " NOW(3), NOW(3))", rows,
            )
        conn.commit()
    finally:
        conn.close()

"""What k3net writes is what the Go k3 store reads, and the other way round: raw etcd keys and
values, raw rows of the Go ORM's table. Also corrupt data and soft-deleted rows."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from k3net.convert import node_to_dict
from k3net.store.base import NotFound, Put, Snapshot
from k3net.store.etcd import EtcdStore
from k3net.store.mysql import MySQLStore, hashed_uid

from ..helpers.stores import (
    CREATED,
    GO_NODE,
    GO_ROW,
    RawEtcd,
    RawMySQL,
    insert_go_row,
    make_node,
    next_event,
)

KEY = "/kubernetes//v1/Node/"


def without_version(data: dict[str, Any]) -> dict[str, Any]:
    data = json.loads(json.dumps(data))
    data["metadata"].pop("resourceVersion", None)
    return data


# --- etcd -------------------------------------------------------------------------------------


@pytest.mark.etcd
async def test_etcd_reads_what_go_wrote(etcd_store: EtcdStore, raw_etcd: RawEtcd) -> None:
    await raw_etcd.put(KEY + "go-node", json.dumps(GO_NODE))
    stored = await etcd_store.get("go-node")
    assert without_version(node_to_dict(stored.node)) == without_version(GO_NODE)
    # The version is etcd's revision of the key, not whatever the JSON says.
    assert stored.version != "17" and stored.node.metadata.resource_version == stored.version
    assert await etcd_store.list() == [stored]

    node = stored.node
    node.metadata.annotations["k3.network/port"] = "7946"
    updated = await etcd_store.update(node, stored.version)
    written = json.loads(await raw_etcd.get(KEY + "go-node") or b"")
    expected = without_version(GO_NODE)
    expected["metadata"]["annotations"]["k3.network/port"] = "7946"
    assert written == expected
    assert int(updated.version) > int(stored.version)


@pytest.mark.etcd
async def test_etcd_writes_what_go_reads(etcd_store: EtcdStore, raw_etcd: RawEtcd) -> None:
    node = make_node("k3net-node")
    await etcd_store.create(node)
    assert await raw_etcd.keys() == ["/kubernetes//v1/Node/k3net-node"]
    value = await raw_etcd.get("/kubernetes//v1/Node/k3net-node")
    assert value is not None
    assert json.loads(value) == node_to_dict(node)
    assert json.loads(value)["metadata"]["creationTimestamp"] == "2026-11-29T10:21:14Z"


# --- MySQL ------------------------------------------------------------------------------------


async def select_row(raw: RawMySQL, name: str) -> dict[str, Any]:
    columns = ["id", "name", "namespace", "uid", "resource_version", "labels", "annotations",
               "created_at", "updated_at", "deleted_at", "phase", "spec", "status"]
    rows = await raw.sql(
        f"SELECT {', '.join(columns)} FROM k8s_core_v1_node WHERE name = %s", (name,)
    )
    assert len(rows) == 1, rows
    return dict(zip(columns, rows[0], strict=True))


@pytest.mark.mysql
async def test_mysql_reads_what_go_wrote(mysql_store: MySQLStore, raw_mysql: RawMySQL) -> None:
    await raw_mysql.create_go_table()
    await insert_go_row(raw_mysql)
    stored = await mysql_store.get("go-node")
    expected = without_version(GO_NODE)
    del expected["metadata"]["finalizers"]  # no column for it in the Go table
    assert without_version(node_to_dict(stored.node)) == expected
    assert stored.version == "17"
    assert await mysql_store.list() == [stored]

    node = stored.node
    node.metadata.annotations["k3.network/port"] = "7946"
    node.status.phase = "Unknown"
    updated = await mysql_store.update(node, "17")
    row = await select_row(raw_mysql, "go-node")
    assert row["resource_version"] == updated.version != "17"
    assert json.loads(row["annotations"]) == {"k3.io/owner": "controller",
                                              "k3.network/port": "7946"}
    assert row["phase"] == "Unknown"
    assert json.loads(row["status"]) == {**GO_NODE["status"], "phase": "Unknown"}
    assert json.loads(row["spec"]) == GO_NODE["spec"]
    assert row["uid"] == GO_NODE["metadata"]["uid"]
    assert row["created_at"] == GO_ROW["created_at"]
    assert row["updated_at"] > GO_ROW["updated_at"]


@pytest.mark.mysql
async def test_mysql_writes_what_go_reads(mysql_store: MySQLStore, raw_mysql: RawMySQL) -> None:
    node = make_node("k3net-node")
    created = await mysql_store.create(node)
    row = await select_row(raw_mysql, "k3net-node")
    data = node_to_dict(node)
    assert row["namespace"] is None
    assert row["uid"] == "node-k3net-node"
    assert row["resource_version"] == created.version
    assert json.loads(row["labels"]) == data["metadata"]["labels"]
    assert json.loads(row["annotations"]) == {}
    assert row["created_at"] == CREATED.replace(tzinfo=None)
    assert row["updated_at"] is not None and row["deleted_at"] is None
    assert row["phase"] == "Running"
    assert json.loads(row["spec"]) == data["spec"]
    assert json.loads(row["status"]) == data["status"]
    # The table k3net created has the Go ORM's columns, in its order.
    columns = await raw_mysql.sql(
        "SELECT column_name, column_type FROM information_schema.columns"
        " WHERE table_schema = DATABASE() AND table_name = 'k8s_core_v1_node'"
        " ORDER BY ordinal_position"
    )
    assert [(name, kind.split(" ")[0]) for name, kind in columns] == [
        ("id", "bigint(20)"), ("name", "varchar(255)"), ("namespace", "varchar(255)"),
        ("uid", "varchar(255)"), ("resource_version", "varchar(255)"), ("labels", "longtext"),
        ("annotations", "longtext"), ("created_at", "datetime(3)"), ("updated_at", "datetime(3)"),
        ("deleted_at", "datetime(3)"), ("phase", "varchar(50)"), ("spec", "longtext"),
        ("status", "longtext"),
    ]


@pytest.mark.mysql
async def test_mysql_soft_deleted_rows_do_not_exist(
    mysql_store: MySQLStore, raw_mysql: RawMySQL
) -> None:
    await raw_mysql.create_go_table()
    await insert_go_row(raw_mysql, deleted_at=dt.datetime(2026, 11, 29, 11, 0, 0))
    with pytest.raises(NotFound):
        await mysql_store.get("go-node")
    assert await mysql_store.list() == []
    async with mysql_store.watch() as events:
        assert await next_event(events) == Snapshot(())

    # Created again with the same uid: the tombstone's uid must not block it.
    node = make_node("go-node")
    node.metadata.uid = GO_NODE["metadata"]["uid"]
    created = await mysql_store.create(node)
    assert await mysql_store.get("go-node") == created

    # k3net deletes softly too: the row stays, with deleted_at set.
    await mysql_store.delete("go-node")
    row = await select_row(raw_mysql, "go-node")
    assert row["deleted_at"] is not None and row["uid"] == GO_NODE["metadata"]["uid"]
    with pytest.raises(NotFound):
        await mysql_store.get("go-node")


@pytest.mark.mysql
async def test_mysql_watch_sees_writers_that_keep_the_version(
    mysql_store: MySQLStore, raw_mysql: RawMySQL
) -> None:
    """The Go original writes without compare-and-swap; a change with the same
    resource_version but a new updated_at must still reach the watch."""
    await raw_mysql.create_go_table()
    await insert_go_row(raw_mysql)
    async with mysql_store.watch() as events:
        snapshot = await next_event(events)
        assert isinstance(snapshot, Snapshot) and [s.name for s in snapshot.items] == ["go-node"]
        status = {**GO_NODE["status"], "phase": "Pending"}
        await raw_mysql.sql(  # the Go ORM sets updated_at on every save
            "UPDATE k8s_core_v1_node SET phase = 'Pending', status = %s, updated_at = NOW(3)"
            " WHERE name = 'go-node'", (json.dumps(status),),
        )
        event = await next_event(events)
        assert isinstance(event, Put)
        assert event.stored.node.status.phase == "Pending" and event.stored.version == "17"


@pytest.mark.mysql
async def test_mysql_names_match_exactly(mysql_store: MySQLStore, raw_mysql: RawMySQL) -> None:
    """The Go side wrote `Worker1` (uid node-Worker1); k3net's `worker1` is another Node, even
    though the table's collation ignores case (for name and uid alike)."""
    await raw_mysql.create_go_table()
    await insert_go_row(raw_mysql, name="Worker1", uid="node-Worker1")
    with pytest.raises(NotFound):
        await mysql_store.get("worker1")
    ours = await mysql_store.create(make_node("worker1"))
    # node-worker1 would collide with node-Worker1 in the unique uid index: hashed instead.
    assert ours.node.metadata.uid == hashed_uid("worker1")
    theirs = await mysql_store.get("Worker1")
    assert theirs.node.metadata.uid == "node-Worker1"
    assert (await mysql_store.get("worker1")) == ours
    assert [s.name for s in await mysql_store.list()] == ["Worker1", "worker1"]
    updated = await mysql_store.update(make_node("worker1", step="2"), ours.version)
    await mysql_store.delete("worker1", updated.version)
    assert (await mysql_store.get("Worker1")) == theirs
    assert await raw_mysql.sql(
        "SELECT BINARY name, deleted_at IS NULL FROM k8s_core_v1_node ORDER BY id"
    ) == [(b"Worker1", 1), (b"worker1", 0)]


@pytest.mark.mysql
async def test_mysql_longest_valid_name(mysql_store: MySQLStore, raw_mysql: RawMySQL) -> None:
    """253 characters (the DNS-1123 limit): `node-<name>` would not fit uid's varchar(255)."""
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(name) == 253
    created = await mysql_store.create(make_node(name))
    assert created.name == name and len(created.node.metadata.uid or "") <= 255
    async with mysql_store.watch() as events:
        assert await next_event(events) == Snapshot((created,))
        updated = await mysql_store.update(make_node(name, step="2"), created.version)
        assert await next_event(events) == Put(updated)
    await mysql_store.delete(name, updated.version)
    again = await mysql_store.create(make_node(name))  # the tombstone's uid does not block it
    assert await mysql_store.list() == [again]


@pytest.fixture
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process runs in India (+05:30, no daylight saving) for the test."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.mysql
async def test_mysql_times_are_local_as_the_go_store_writes_them(
    mysql_store: MySQLStore, raw_mysql: RawMySQL, local_zone: None
) -> None:
    """The Go store's DSN has loc=Local: datetime columns hold local wall-clock time."""
    await raw_mysql.create_go_table()
    await insert_go_row(raw_mysql, created_at=dt.datetime(2026, 11, 29, 15, 51, 14))
    stored = await mysql_store.get("go-node")
    assert stored.node.metadata.creation_timestamp == dt.datetime(
        2026, 11, 29, 10, 21, 14, tzinfo=dt.UTC)

    before = dt.datetime.now().replace(microsecond=0)  # local, naive: as the column holds it
    await mysql_store.create(make_node("k3net-node"))  # created 2026-11-29T10:21:14Z
    row = await select_row(raw_mysql, "k3net-node")
    assert row["created_at"] == dt.datetime(2026, 11, 29, 15, 51, 14)
    assert before <= row["updated_at"] <= dt.datetime.now()

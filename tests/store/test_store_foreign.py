"""Foreign data: values under the Node prefix that are not Nodes (someone else's, or damaged).
Every read reports them instead of failing, and no write ever lands on one."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from k3net.convert import node_to_dict
from k3net.store.base import (
    Conflict,
    Deleted,
    ForeignTally,
    ForeignValue,
    NotFound,
    Put,
    Snapshot,
    Store,
)
from k3net.store.etcd import PREFIX, EtcdStore
from k3net.store.mysql import TABLE, MySQLStore

from ..helpers.stores import GO_NODE, RawEtcd, RawMySQL, insert_go_row, make_node, next_event

# etcd values of every shape that is not a Node of its key.
ETCD_DAMAGE: list[Any] = [
    pytest.param(b"{not json", id="bad-json"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\xff\xfe\x00garbage", id="binary"),
    pytest.param(b"null", id="null"),
    pytest.param(b"42", id="number"),
    pytest.param(b"[]", id="list"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested-too-deep"),
    pytest.param(json.dumps({"metadata": "go-node"}).encode(), id="metadata-string"),
    pytest.param(json.dumps({**GO_NODE, "status": [1]}).encode(), id="status-list"),
    pytest.param(json.dumps({**GO_NODE, "metadata": {**GO_NODE["metadata"], "labels": "x"}}
                            ).encode(), id="labels-string"),
    pytest.param(json.dumps(node_to_dict(make_node("someone-else"))).encode(), id="wrong-name"),
    pytest.param(json.dumps({"kind": "ConfigMap", "data": {"a": "b"}}).encode(), id="configmap"),
]


async def assert_untouchable(store: Store, name: str, version_guesses: list[str]) -> None:
    """Every write of k3net's to `name` fails without touching it."""
    with pytest.raises(ForeignValue) as info:
        await store.get(name)
    assert not isinstance(info.value, NotFound)
    assert info.value.foreign.name == name and info.value.foreign.reason
    with pytest.raises(Conflict):
        await store.create(make_node(name))
    for version in version_guesses:
        with pytest.raises((Conflict, ForeignValue)):
            await store.update(make_node(name), version)
        with pytest.raises((Conflict, ForeignValue)):
            await store.delete(name, version)


@pytest.mark.etcd
@pytest.mark.parametrize("value", ETCD_DAMAGE)
async def test_etcd_value_that_is_not_a_node_is_foreign(
    etcd_store: EtcdStore, raw_etcd: RawEtcd, value: bytes
) -> None:
    good = await etcd_store.create(make_node("good"))
    await raw_etcd.put(PREFIX + "go-node", value)
    scan = await etcd_store.scan()
    assert scan.nodes == [good] and await etcd_store.list() == [good]
    [item] = scan.foreign
    assert item.name == "go-node" and item.key == PREFIX + "go-node"
    assert item.reason and "\n" not in item.reason and len(item.reason) <= 160
    # A revision names exactly one value, and k3net never learns a foreign value's: every
    # version it can hold is some Node's, so every compare-and-swap on this key fails.
    await assert_untouchable(etcd_store, "go-node", [good.version, "0", "x"])
    assert await raw_etcd.get(PREFIX + "go-node") == value
    async with etcd_store.watch() as events:
        snapshot = await next_event(events)
        assert snapshot == Snapshot((good,), (item,))


@pytest.mark.etcd
async def test_etcd_watch_reports_a_node_turned_foreign_and_back(
    etcd_store: EtcdStore, raw_etcd: RawEtcd
) -> None:
    good = await etcd_store.create(make_node("good"))
    victim = await etcd_store.create(make_node("victim"))
    tally = ForeignTally()
    async with etcd_store.watch() as events:
        tally.observe(await next_event(events))
        assert len(tally) == 0
        await raw_etcd.put(PREFIX + "victim", "{broken")
        event = await next_event(events)
        assert isinstance(event, Deleted) and event.name == "victim"
        assert event.foreign is not None and event.foreign.key == PREFIX + "victim"
        tally.observe(event)
        assert list(tally.items) == ["victim"]
        # Writes still work next to it.
        later = await etcd_store.update(make_node("good", step="2"), good.version)
        assert await next_event(events) == Put(later)
        with pytest.raises(Conflict):
            await etcd_store.update(make_node("victim", step="2"), victim.version)
        # Its owner repairs it: a Node again.
        await raw_etcd.put(PREFIX + "victim", json.dumps(node_to_dict(make_node("victim"))))
        event = await next_event(events)
        assert isinstance(event, Put) and event.stored.name == "victim"
        tally.observe(event)
        assert len(tally) == 0


# MySQL rows whose columns do not make a Node. MariaDB checks JSON columns with json_valid, so
# the damage is JSON of the wrong shape.
MYSQL_DAMAGE: list[Any] = [
    pytest.param({"status": "[1, 2]"}, id="status-list"),
    pytest.param({"labels": '"x"'}, id="labels-string"),
    pytest.param({"annotations": "[]"}, id="annotations-list"),
    pytest.param({"spec": "42"}, id="spec-number"),
    pytest.param({"status": json.dumps({"conditions": "Ready"})}, id="conditions-string"),
    pytest.param({"status": json.dumps({"conditions": [{"type": "Ready",
                                                        "lastHeartbeatTime": "yesterday"}]})},
                 id="bad-time"),
]


async def raw_row(raw: RawMySQL, name: str) -> list[tuple[Any, ...]]:
    return await raw.sql(f"SELECT * FROM {TABLE} WHERE name = %s ORDER BY id", (name,))


@pytest.mark.mysql
@pytest.mark.parametrize("damage", MYSQL_DAMAGE)
async def test_mysql_row_that_is_not_a_node_is_foreign(
    mysql_store: MySQLStore, raw_mysql: RawMySQL, damage: dict[str, str]
) -> None:
    good = await mysql_store.create(make_node("good"))
    await insert_go_row(raw_mysql, **damage)
    before = await raw_row(raw_mysql, "go-node")
    scan = await mysql_store.scan()
    assert scan.nodes == [good] and await mysql_store.list() == [good]
    [item] = scan.foreign
    assert item.name == "go-node" and item.key == f"{TABLE} id={before[0][0]}"
    # "17" is the row's own resource_version: even a writer that names it is refused.
    await assert_untouchable(mysql_store, "go-node", ["17", good.version, ""])
    assert await raw_row(raw_mysql, "go-node") == before
    async with mysql_store.watch() as events:
        assert await next_event(events) == Snapshot((good,), (item,))


@pytest.mark.mysql
async def test_mysql_poll_reports_a_node_turned_foreign_and_back(
    mysql_store: MySQLStore, raw_mysql: RawMySQL
) -> None:
    good = await mysql_store.create(make_node("good"))
    victim = await mysql_store.create(make_node("victim"))
    async with mysql_store.watch() as events:
        assert await next_event(events) == Snapshot((good, victim))
        await raw_mysql.sql(f"UPDATE {TABLE} SET labels = '\"x\"', updated_at = NOW(3)"
                            " WHERE name = 'victim'")
        event = await next_event(events)
        assert isinstance(event, Deleted) and event.name == "victim" and event.foreign
        later = await mysql_store.update(make_node("good", step="2"), good.version)
        assert await next_event(events) == Put(later)
        with pytest.raises(ForeignValue):
            await mysql_store.update(make_node("victim", step="2"), victim.version)
        await raw_mysql.sql(f"UPDATE {TABLE} SET labels = '{{}}', updated_at = NOW(3)"
                            " WHERE name = 'victim'")
        event = await next_event(events)
        assert isinstance(event, Put) and event.stored.name == "victim"


def test_tally_follows_the_watch() -> None:
    from k3net.core.messages import Foreign

    a, b = Foreign("a", "k/a", "not JSON"), Foreign("b", "k/b", "not JSON")
    tally = ForeignTally()
    steps: list[tuple[Any, list[str]]] = [
        (Snapshot((), (a, b)), ["a", "b"]),
        (Deleted("a"), ["b"]),  # the foreign value was removed
        (Deleted("c", foreign=Foreign("c", "k/c", "x")), ["b", "c"]),
        (Snapshot(()), []),
    ]
    for event, names in steps:
        tally.observe(event)
        assert sorted(tally.items) == names and len(tally) == len(names)


async def test_memory_store_has_no_foreign_data() -> None:
    from k3net.store.memory import MemoryStore

    store = MemoryStore()
    await store.create(make_node("a"))
    scan = await store.scan()
    assert [s.name for s in scan.nodes] == ["a"] and scan.foreign == []
    await trio.lowlevel.checkpoint()


@pytest.mark.etcd
async def test_k3net_nodes_shows_foreign_values(
    etcd_store: EtcdStore, raw_etcd: RawEtcd, etcd_settings: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from k3net.commands.nodes import StoreSource
    from k3net.config import StorageConfig

    await etcd_store.create(make_node("good"))
    await raw_etcd.put(PREFIX + "broken", "{not json")
    source = StoreSource.from_config(StorageConfig(type="etcd", etcd=etcd_settings))
    assert [n.metadata.name for n in await source.list()] == ["good"]
    err = capsys.readouterr().err
    assert f"{PREFIX}broken is not a Node (not JSON" in err and "left as it is" in err
    assert await raw_etcd.get(PREFIX + "broken") == b"{not json"

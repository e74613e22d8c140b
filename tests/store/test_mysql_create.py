"""MySQL create is one transaction: re-creating a Node removes the soft-deleted row that holds
its uid and inserts the new row together, so a create that fails in between (the server refuses
the insert, the caller gives up while the insert waits) leaves the deleted row as it was.
Against the real MariaDB, with real failures: a trigger that refuses the insert, a row lock that
holds it until the caller cancels."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pymysql
import pytest
import trio

from k3net.config import MySQLConfig
from k3net.store.base import StoreUnavailable
from k3net.store.mysql import TABLE, MySQLStore

from ..helpers.stores import RawMySQL, make_node

pytestmark = pytest.mark.mysql

DELETED_AT = dt.datetime(2026, 11, 29, 11, 0, 0)


async def old_row(store: MySQLStore, raw: RawMySQL) -> list[tuple[Any, ...]]:
    """Create "phoenix", delete it (softly) and return its row: id, uid, deleted_at."""
    await store.create(make_node("phoenix"))
    await store.delete("phoenix")
    await raw.sql(f"UPDATE {TABLE} SET deleted_at = %s WHERE name = 'phoenix'", (DELETED_AT,))
    return await rows(raw)


async def rows(raw: RawMySQL) -> list[tuple[Any, ...]]:
    return await raw.sql(f"SELECT id, uid, deleted_at FROM {TABLE} WHERE name = 'phoenix'")


async def test_a_refused_insert_leaves_the_deleted_row(
    mysql_store: MySQLStore, raw_mysql: RawMySQL
) -> None:
    before = await old_row(mysql_store, raw_mysql)
    assert [(r[1], r[2]) for r in before] == [("node-phoenix", DELETED_AT)]
    # The server refuses the insert, after the soft-deleted row holding the uid was removed.
    await raw_mysql.sql(
        f"CREATE TRIGGER refuse_phoenix BEFORE INSERT ON {TABLE} FOR EACH ROW"
        " IF NEW.name = 'phoenix' THEN"
        " SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'phoenix refused'; END IF"
    )
    with pytest.raises(StoreUnavailable, match="phoenix refused"):
        await mysql_store.create(make_node("phoenix"))
    assert await rows(raw_mysql) == before

    # The store is still usable, and the create goes through once the server allows it.
    await raw_mysql.sql("DROP TRIGGER refuse_phoenix")
    created = await mysql_store.create(make_node("phoenix"))
    assert (await mysql_store.get("phoenix")) == created
    assert [(r[1], r[2]) for r in await rows(raw_mysql)] == [("node-phoenix", None)]


class Blocker:
    """Another session that holds the next-key lock above the last row, so that an insert at
    the end of the table waits for it (a plain pymysql connection, in a thread)."""

    def __init__(self, config: MySQLConfig) -> None:
        self.conn = pymysql.connect(unix_socket=config.socket, user=config.user,
                                    password=config.password, database=config.database)

    def hold(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute(f"SELECT id FROM {TABLE} WHERE id > 0 FOR UPDATE")

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


async def open_transactions(raw: RawMySQL) -> int:
    (count,) = (await raw.sql("SELECT COUNT(*) FROM information_schema.innodb_trx"))[0]
    return int(count)


async def test_a_create_cancelled_while_it_waits_leaves_the_deleted_row(
    mysql_store: MySQLStore, raw_mysql: RawMySQL, mysql_settings: MySQLConfig
) -> None:
    before = await old_row(mysql_store, raw_mysql)
    blocker = Blocker(mysql_settings)
    await trio.to_thread.run_sync(blocker.hold)
    try:
        # The removal of the deleted row is done, the insert waits for the lock: the caller
        # gives up (its connection is dropped, the server finishes the statement later).
        with trio.move_on_after(1.0) as waited:
            await mysql_store.create(make_node("phoenix"))
        assert waited.cancelled_caught
    finally:
        await trio.to_thread.run_sync(blocker.release)
    # The insert now runs on the server, then the dropped session's transaction is undone.
    with trio.fail_after(15):
        while await open_transactions(raw_mysql):  # noqa: ASYNC110 (the server has no hook)
            await trio.sleep(0.05)
    assert await rows(raw_mysql) == before

"""The MySQL watch's cost: an idle table costs its polls no row; what the quick poll cannot see
(rows removed for good, writers with an old clock) the periodic full pass finds. And no burst
of lists can starve the writer."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
import trio

from k3net.store import mysql as mysql_backend
from k3net.store.base import Deleted, Put, Snapshot
from k3net.store.mysql import TABLE, MySQLStore

from ..helpers.stores import RawMySQL, make_node, next_event


async def polls_pass(store: MySQLStore, count: int) -> None:
    """Wait (bounded) until the watch has polled `count` more times."""
    target = store.poll_stats.polls + count
    with trio.fail_after(10):
        while store.poll_stats.polls < target:  # noqa: ASYNC110 (a counter, not an event)
            await trio.sleep(0.01)


@pytest.mark.mysql
async def test_idle_polls_read_no_rows(mysql_store: MySQLStore, raw_mysql: RawMySQL) -> None:
    created = [await mysql_store.create(make_node(f"n{i:03d}")) for i in range(200)]
    send, receive = trio.open_memory_channel[Any](100)

    async def consume(events: Any) -> None:
        async for event in events:  # the watch polls while someone waits for its events
            await send.send(event)

    async with mysql_store.watch() as events, trio.open_nursery() as nursery:
        nursery.start_soon(consume, events)
        with trio.fail_after(10):
            assert await receive.receive() == Snapshot(tuple(created))
        # Rows written less than WINDOW_MARGIN ago are read again (correctly): wait until a
        # poll reads nothing, then count.
        with trio.fail_after(10):
            while True:
                before = mysql_store.poll_stats.rows_read
                await polls_pass(mysql_store, 1)
                if mysql_store.poll_stats.rows_read == before:
                    break
        await polls_pass(mysql_store, 10)
        assert mysql_store.poll_stats.rows_read == before  # ten idle polls: not one row
        assert mysql_store.poll_stats.full_passes == 0

        updated = await mysql_store.update(make_node("n007", step="2"), created[7].version)
        with trio.fail_after(10):
            assert await receive.receive() == Put(updated)
        # The changed row, read a few times while it is inside the window: not the table.
        assert mysql_store.poll_stats.rows_read - before < 100
        nursery.cancel_scope.cancel()


@pytest.mark.mysql
async def test_full_pass_finds_what_the_quick_poll_cannot(
    mysql_store: MySQLStore, raw_mysql: RawMySQL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mysql_backend, "FULL_PASS_SECONDS", 0.5)
    a = await mysql_store.create(make_node("a"))
    b = await mysql_store.create(make_node("b"))
    async with mysql_store.watch() as events:
        assert await next_event(events) == Snapshot((a, b))
        # Removed for good, and written by a writer whose clock is a day behind.
        await raw_mysql.sql(f"DELETE FROM {TABLE} WHERE name = 'a'")
        await raw_mysql.sql(
            f"UPDATE {TABLE} SET annotations = '{{\"late\": \"yes\"}}', resource_version = '1',"
            " updated_at = %s WHERE name = 'b'", (dt.datetime.now() - dt.timedelta(days=1),),
        )
        seen = [await next_event(events), await next_event(events)]
    assert mysql_store.poll_stats.full_passes >= 1
    put = next(e for e in seen if isinstance(e, Put))
    assert put.stored.node.metadata.annotations == {"late": "yes"}
    assert Deleted("a") in seen


@pytest.mark.mysql
async def test_lists_cannot_starve_the_mysql_writer(
    mysql_store: MySQLStore, raw_mysql: RawMySQL, monkeypatch: pytest.MonkeyPatch,
    mysql_settings: Any,
) -> None:
    """Twenty /nodes requests stuck in a slow list hold no connection the writer needs."""
    store = MySQLStore(mysql_settings.__class__(**{**_fields(mysql_settings), "max_open_conns": 1}))
    release = asyncio.Event()
    real_list = mysql_backend._list
    stuck = 0

    async def slow_list(cur: Any) -> Any:
        nonlocal stuck
        stuck += 1
        await release.wait()
        return await real_list(cur)

    try:
        first = await store.create(make_node("w"))
        monkeypatch.setattr(mysql_backend, "_list", slow_list)
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(store.list)
            with trio.fail_after(10):  # every read connection is taken by a stuck list
                while stuck < mysql_backend.READ_CONNECTIONS:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            with trio.fail_after(10):  # the writer's calls go through meanwhile
                got = await store.get("w")
                updated = await store.update(make_node("w", step="2"), got.version)
                await store.create(make_node("x"))
            assert updated.version != first.version
            release.set()
    finally:
        await store.aclose()


def _fields(config: Any) -> dict[str, Any]:
    import attrs

    return attrs.asdict(config)

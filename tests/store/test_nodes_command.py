"""`k3net nodes --config ... [-w]` on every backend: the list and the changes as they commit."""

from __future__ import annotations

import io
import json
from contextlib import nullcontext
from typing import Any

import attrs
import pytest
import trio

from k3net.commands import CommandError
from k3net.commands.nodes import Query, StoreSource, follow, show
from k3net.config import EtcdConfig, MySQLConfig, StorageConfig
from k3net.store.base import Store

from ..helpers.commands import Output, free_port
from ..helpers.nodes import make_node


def source(store: Store) -> StoreSource:
    return StoreSource(store.kind, lambda: nullcontext(store))


async def test_nodes_lists_the_store(store: Store) -> None:
    await store.create(make_node("n2"))
    await store.create(make_node("n1", ready="False", reason="PeerLeft"))
    out = io.StringIO()
    assert await show(source(store), Query(), "json", out) == 0
    items = json.loads(out.getvalue())["items"]
    assert [(n["metadata"]["name"], n["status"]["conditions"][0]["reason"]) for n in items] == [
        ("n1", "PeerLeft"), ("n2", "PeerAlive")]


async def test_nodes_watch_prints_each_committed_change(store: Store) -> None:
    await store.create(make_node("n1"))
    out = Output()

    async def lines(count: int) -> list[dict]:
        return await out.messages(count)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow, source(store), Query(), "json", out)
        assert [n["metadata"]["name"] for n in await lines(1)] == ["n1"]
        # One change at a time: a polling backend (MySQL) folds changes made between two polls.
        await store.create(make_node("n2"))
        await lines(2)
        stored = await store.get("n1")
        await store.update(make_node("n1", ready="Unknown", reason="PeerExpired"), stored.version)
        await lines(3)
        await store.delete("n2")
        got = await lines(4)
        nursery.cancel_scope.cancel()
    assert [(n["metadata"]["name"], n["status"]["conditions"][0]["reason"]) for n in got] == [
        ("n1", "PeerAlive"), ("n2", "PeerAlive"), ("n1", "PeerExpired"), ("n2", "PeerAlive")]


async def test_nodes_watch_of_a_store_that_does_not_answer_says_so_at_once(
    backend: EtcdConfig | MySQLConfig | None, aio_loop: Any,
) -> None:
    """`k3net nodes -w --config` with the store down: one line at once, unless --retry."""
    if backend is None:
        pytest.skip("the memory store always answers")
    port = free_port()
    down: EtcdConfig | MySQLConfig
    if isinstance(backend, EtcdConfig):
        down = attrs.evolve(backend, endpoints=(f"http://127.0.0.1:{port}",))
        storage = StorageConfig(type="etcd", etcd=down)
    else:
        down = MySQLConfig(host="127.0.0.1", port=port, database="k3net")
        storage = StorageConfig(type="mysql", mysql=down)
    with trio.fail_after(5), pytest.raises(CommandError, match="store unavailable.*--retry"):
        await follow(StoreSource.from_config(storage), Query(), "table", io.StringIO())
    out = Output()
    with trio.move_on_after(1.5) as waited:  # --retry: still waiting for the store
        await follow(StoreSource.from_config(storage, retry=True), Query(), "table", out)
    assert waited.cancelled_caught and out.getvalue() == ""

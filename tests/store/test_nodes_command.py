"""`k3net nodes --config ... [-w]` on every backend: the list and the changes as they commit."""

from __future__ import annotations

import io
import json
from contextlib import nullcontext

import trio

from k3net.commands.nodes import Query, StoreSource, follow, show
from k3net.store.base import Store
from tests.helpers.commands import Output
from tests.helpers.nodes import make_node


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

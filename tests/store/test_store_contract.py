"""The contract every store backend keeps: the same tests run on memory, etcd and mysql."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from k3net.convert import node_from_dict, node_to_dict
from k3net.model import Node
from k3net.store.base import (
    Conflict,
    Deleted,
    NotFound,
    Put,
    Snapshot,
    Store,
    Stored,
)

from ..helpers.stores import make_node, next_event

COUNTER = "test/counter"


def content(node: Node) -> dict[str, Any]:
    """What a Node says, without the version the store assigns."""
    data = node_to_dict(node)
    data["metadata"].pop("resourceVersion", None)
    return data


def assert_stored(stored: Stored, node: Node) -> None:
    assert content(stored.node) == content(node)
    assert stored.node.metadata.resource_version == stored.version
    assert stored.name == node.metadata.name


async def test_create_get_list_update_delete(store: Store) -> None:
    a, b = make_node("node-a"), make_node("node-b")
    created_b = await store.create(b)
    created_a = await store.create(a)
    assert_stored(created_a, a)
    assert_stored(await store.get("node-a"), a)
    assert [s.name for s in await store.list()] == ["node-a", "node-b"]
    assert (await store.get("node-b")).version == created_b.version

    a.metadata.annotations["k3.network/port"] = "7946"
    a.status.conditions[0].status = "False"
    updated = await store.update(a, created_a.version)
    assert_stored(updated, a)
    assert updated.version != created_a.version
    assert await store.get("node-a") == updated

    await store.delete("node-a")
    with pytest.raises(NotFound):
        await store.get("node-a")
    assert [s.name for s in await store.list()] == ["node-b"]


async def test_missing_node_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.get("ghost")
    with pytest.raises(NotFound):
        await store.delete("ghost")
    other = await store.create(make_node("other"))
    with pytest.raises(NotFound):
        await store.update(make_node("ghost"), other.version)
    assert await store.list() == [other]


async def test_stale_version_conflicts(store: Store) -> None:
    first = await store.create(make_node("n1"))
    second = await store.update(make_node("n1", step="2"), first.version)
    with pytest.raises(Conflict):
        await store.update(make_node("n1", step="stale"), first.version)
    assert await store.get("n1") == second


async def test_duplicate_create_conflicts(store: Store) -> None:
    first = await store.create(make_node("n1"))
    with pytest.raises(Conflict):
        await store.create(make_node("n1", other="yes"))
    assert await store.get("n1") == first


async def test_concurrent_creates_have_one_winner(store: Store) -> None:
    outcomes: list[str] = []

    async def create(i: int) -> None:
        node = make_node("contested", writer=str(i))
        node.metadata.uid = f"uid-{i}"  # different uids: the name alone must decide
        try:
            await store.create(node)
            outcomes.append(str(i))
        except Conflict:
            outcomes.append("conflict")

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(create, i)
    winners = [o for o in outcomes if o != "conflict"]
    assert len(winners) == 1 and len(outcomes) == 8
    [stored] = await store.list()
    assert stored.node.metadata.annotations["writer"] == winners[0]


async def test_concurrent_increments_lose_nothing(store: Store) -> None:
    await store.create(make_node("shared", **{COUNTER: "0"}))
    conflicts = 0

    async def writer() -> None:
        nonlocal conflicts
        for _ in range(10):
            while True:  # read, modify, compare-and-swap, retry on conflict
                current = await store.get("shared")
                node = current.node
                node.metadata.annotations[COUNTER] = str(int(node.metadata.annotations[COUNTER]) + 1)
                try:
                    await store.update(node, current.version)
                    break
                except Conflict:
                    conflicts += 1

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(writer)
    assert (await store.get("shared")).node.metadata.annotations[COUNTER] == "80"
    print(f"{store.kind}: 80 increments, {conflicts} conflicts retried")


async def test_watch_starts_with_snapshot_then_puts_in_commit_order(store: Store) -> None:
    existing = await store.create(make_node("existing"))
    async with store.watch() as events:
        first = await next_event(events)
        assert first == Snapshot((existing,))

        commits = []
        for name, step in [("a", "1"), ("b", "1"), ("a", "2"), ("c", "1"), ("b", "2"),
                           ("existing", "2"), ("a", "3")]:
            node = make_node(name, step=step)
            try:
                current = await store.get(name)
                commits.append(await store.update(node, current.version))
            except NotFound:
                commits.append(await store.create(node))
            # Different writes need different timestamps for a polling backend to order them.
            await trio.sleep(0.002)

        final = {s.name: s for s in commits}
        seen: list[Stored] = []
        while {s.name: s for s in seen} != final:
            event = await next_event(events)
            assert isinstance(event, Put), event
            seen.append(event.stored)

    if store.kind == "mysql":
        # Polling: several writes between two polls arrive as one Put of the latest state, but
        # what arrives is in commit order.
        positions = [commits.index(s) for s in seen]
        assert positions == sorted(positions)
    else:
        assert seen == commits


async def test_watch_reports_deletes(store: Store) -> None:
    await store.create(make_node("doomed"))
    kept = await store.create(make_node("kept"))
    async with store.watch() as events:
        snapshot = await next_event(events)
        assert isinstance(snapshot, Snapshot)
        assert [s.name for s in snapshot.items] == ["doomed", "kept"]
        await store.delete("doomed")
        assert await next_event(events) == Deleted("doomed")
        again = await store.create(make_node("doomed", again="yes"))
        assert await next_event(events) == Put(again)
    assert await store.list() == [again, kept]


async def test_versions_of_a_deleted_node_do_not_match_its_successor(store: Store) -> None:
    old = await store.create(make_node("phoenix"))
    await store.delete("phoenix")
    new = await store.create(make_node("phoenix", life="2"))
    assert new.version != old.version
    with pytest.raises(Conflict):
        await store.update(make_node("phoenix", life="stale"), old.version)


async def test_unknown_fields_are_kept(store: Store) -> None:
    data = node_to_dict(make_node("future"))
    data["spec"]["taints"] = [{"key": "k3/x", "effect": "NoSchedule"}]
    data["spec"]["providerID"] = "k3://future"
    data["status"]["capacity"] = {"cpu": "4", "memory": "8Gi"}
    data["status"]["nodeInfo"] = {"kubeletVersion": "v1.31.0", "futureField": {"a": [1, 2]}}
    data["status"]["conditions"][0]["futureConditionField"] = "kept"
    data["status"]["addresses"][0]["futureAddressField"] = 7
    data["futureTopLevel"] = {"x": 1}
    data["metadata"]["futureMeta"] = "y"
    node = node_from_dict(data)

    created = await store.create(node)
    for stored in (created, await store.get("future"), (await store.list())[0]):
        got = content(stored.node)
        assert got["spec"] == data["spec"]
        assert got["status"] == data["status"]
        if store.kind == "mysql":
            # The Go table has no column for these (see k3net.store.mysql).
            assert "futureTopLevel" not in got and "futureMeta" not in got["metadata"]
        else:
            assert got == data


async def test_returned_nodes_are_private_copies(store: Store) -> None:
    node = make_node("copy")
    created = await store.create(node)
    node.metadata.labels["mutated"] = "after create"
    created.node.status.conditions.clear()
    got = await store.get("copy")
    assert "mutated" not in got.node.metadata.labels
    assert got.node.status.conditions


async def test_delete_at_a_version_is_compare_and_swap(store: Store) -> None:
    old = await store.create(make_node("stale"))
    current = await store.update(make_node("stale", step="2"), old.version)
    # Someone (an agent that reached it) wrote the Node since it was read: it stays.
    with pytest.raises(Conflict):
        await store.delete("stale", old.version)
    assert await store.get("stale") == current
    await store.delete("stale", current.version)
    with pytest.raises(NotFound):
        await store.get("stale")
    with pytest.raises(NotFound):
        await store.delete("stale", current.version)
    assert await store.list() == []


async def test_delete_at_a_version_is_seen_by_the_watch(store: Store) -> None:
    doomed = await store.create(make_node("doomed"))
    async with store.watch() as events:
        assert await next_event(events) == Snapshot((doomed,))
        await store.delete("doomed", doomed.version)
        assert await next_event(events) == Deleted("doomed")

"""`k3net delete node` on every backend: a managed Node goes, anything else is refused unless
--force, and a Node rewritten between the read and the delete stays (compare-and-swap)."""

from __future__ import annotations

import io

import pytest
import trio

from k3net.commands.delete import delete_node, delete_nodes
from k3net.commands.delete import main as delete_main
from k3net.config import EtcdConfig, MySQLConfig, StorageConfig
from k3net.store.base import NotFound, Store, Stored

from ..helpers.nodes import make_node


async def names(store: Store) -> list[str]:
    return [s.name for s in await store.list()]


async def test_a_managed_node_is_deleted(store: Store) -> None:
    await store.create(make_node("gone", ready="Unknown", reason="PeerExpired"))
    await store.create(make_node("other"))
    outcome = await delete_node(store, "gone", force=False)
    assert (outcome.deleted, outcome.detail) == (True, "node 'gone' deleted")
    assert await names(store) == ["other"]


async def test_a_ready_node_is_deleted_with_a_warning(store: Store) -> None:
    await store.create(make_node("alive"))
    outcome = await delete_node(store, "alive", force=False)
    assert outcome.deleted and "an agent that reaches it writes it again" in outcome.detail


async def test_a_node_not_managed_is_refused_unless_forced(store: Store) -> None:
    await store.create(make_node("worker-1", ready="False", reason="KubeletDown", managed=False))
    refused = await delete_node(store, "worker-1", force=False)
    assert not refused.deleted
    assert "not managed by k3net" in refused.detail and "--force" in refused.detail
    assert await names(store) == ["worker-1"]
    forced = await delete_node(store, "worker-1", force=True)
    assert forced.deleted
    assert await names(store) == []


async def test_a_missing_node_is_said(store: Store) -> None:
    outcome = await delete_node(store, "ghost", force=False)
    assert (outcome.deleted, outcome.detail) == (False, "node 'ghost' not found")


class Rewritten:
    """The store as seen by a delete that an agent overtakes: right after the Node is read,
    the agent writes it again (Ready), as a machine that comes back would."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.kind = store.kind

    async def get(self, name: str) -> Stored:
        read = await self.store.get(name)
        await self.store.update(make_node(name, reason="PeerAlive"), read.version)
        return read

    async def delete(self, name: str, version: str | None = None) -> None:
        await self.store.delete(name, version)


async def test_a_node_rewritten_after_the_read_stays(store: Store) -> None:
    await store.create(make_node("back", ready="Unknown", reason="PeerExpired"))
    outcome = await delete_node(Rewritten(store), "back", force=False)  # type: ignore[arg-type]
    assert not outcome.deleted and "changed since it was read" in outcome.detail
    assert (await store.get("back")).node.ready_status == "True"


async def test_several_names_each_on_its_own(store: Store) -> None:
    await store.create(make_node("a", ready="False", reason="PeerLeft"))
    await store.create(make_node("s", managed=False))
    outcomes = await delete_nodes(store, ["a", "s", "a", "z"], force=False)
    assert [(o.name, o.deleted) for o in outcomes] == [("a", True), ("s", False), ("z", False)]
    with pytest.raises(NotFound):
        await store.get("a")


async def test_delete_command_on_the_shared_store(
    store: Store, backend: EtcdConfig | MySQLConfig | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """`k3net delete node` as run from a shell: its own trio run and store connection."""
    if backend is None:
        pytest.skip("the memory store lives in one process: nothing to share")
    storage = (StorageConfig(type="etcd", etcd=backend) if isinstance(backend, EtcdConfig)
               else StorageConfig(type="mysql", mysql=backend))
    await store.create(make_node("gone", ready="Unknown", reason="PeerExpired"))
    await store.create(make_node("worker-1", managed=False))
    out = io.StringIO()
    code = await trio.to_thread.run_sync(delete_main, storage, ["gone", "worker-1"], False, out)
    assert code == 1  # one of the two was refused
    assert out.getvalue() == "node 'gone' deleted\n"
    err = capsys.readouterr().err
    assert err.startswith("k3net delete: node 'worker-1' is not managed by k3net")
    assert len(err.splitlines()) == 1
    assert await names(store) == ["worker-1"]
    out = io.StringIO()
    assert await trio.to_thread.run_sync(delete_main, storage, ["worker-1"], True, out) == 0
    assert await names(store) == []

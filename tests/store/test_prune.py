"""`k3net prune` on every backend: only old managed not-Ready Nodes go, and a Node an agent
brings back between the read and the delete stays (compare-and-swap)."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import pytest
import trio

from k3lab.agents import AgentFactory
from k3lab.netns import LoopbackHost
from k3lab.raw import write_config
from k3net.commands.prune import apply, plan, prune
from k3net.commands.prune import main as prune_main
from k3net.config import EtcdConfig, MySQLConfig, StorageConfig
from k3net.store.base import Store
from k3net.store.mysql import MySQLStore
from tests.helpers.nodes import T0, make_node

DAYS_LATER = T0 + dt.timedelta(days=4)
OLDER_THAN = 72 * 3600.0


async def fill(store: Store) -> None:
    await store.create(make_node("gone", ready="Unknown", reason="PeerExpired"))
    await store.create(make_node("left", ready="False", reason="PeerLeft"))
    await store.create(make_node("alive"))
    await store.create(make_node("controller-s", ready="False", reason="KubeletDown",
                                 managed=False))


async def names(store: Store) -> list[str]:
    return [s.name for s in await store.list()]


async def test_prune_removes_only_old_managed_not_ready_nodes(store: Store) -> None:
    await fill(store)
    outcomes = await prune(store, DAYS_LATER, OLDER_THAN, dry_run=False)
    assert {o.verdict.name: o.result for o in outcomes} == {
        "alive": "kept", "controller-s": "kept", "gone": "deleted", "left": "deleted"}
    assert await names(store) == ["alive", "controller-s"]


async def test_dry_run_deletes_nothing(store: Store) -> None:
    await fill(store)
    outcomes = await prune(store, DAYS_LATER, OLDER_THAN, dry_run=True)
    assert sorted(o.verdict.name for o in outcomes if o.result == "would-delete") == [
        "gone", "left"]
    assert await names(store) == ["alive", "controller-s", "gone", "left"]


async def test_a_node_brought_back_meanwhile_stays(store: Store) -> None:
    await fill(store)
    verdicts = plan(await store.list(), DAYS_LATER, OLDER_THAN)
    # Between prune's read and its delete, an agent finds the machine again and writes it Ready.
    stored = await store.get("gone")
    await store.update(make_node("gone", reason="PeerAlive"), stored.version)
    # And someone else removes "left" first.
    await store.delete("left")
    outcomes = await apply(store, verdicts, dry_run=False)
    assert {o.verdict.name: o.result for o in outcomes} == {
        "alive": "kept", "controller-s": "kept", "gone": "changed", "left": "gone"}
    back = await store.get("gone")
    assert back.node.ready_status == "True"


async def test_prune_command_on_the_shared_store(
    store: Store, backend: EtcdConfig | MySQLConfig | None
) -> None:
    """`k3net prune` as run from a shell: its own trio run (here in a thread), its own
    connection to the store the agents share, output that parses."""
    await fill(store)  # not Ready since T0, a day or more before the wall clock of this run
    out = io.StringIO()
    if backend is None:
        # The memory store lives in one process: the command opens an empty one of its own.
        storage = StorageConfig(type="memory")
        expected = {}
    else:
        storage = (StorageConfig(type="etcd", etcd=backend) if isinstance(backend, EtcdConfig)
                   else StorageConfig(type="mysql", mysql=backend))
        expected = {"alive": "kept", "controller-s": "kept", "gone": "deleted", "left": "deleted"}
    assert await trio.to_thread.run_sync(prune_main, storage, 3600.0, False, "json", out) == 0
    assert {d["name"]: d["result"] for d in json.loads(out.getvalue())} == expected
    if backend is not None:
        assert await names(store) == ["alive", "controller-s"]


@pytest.mark.mysql
@pytest.mark.netns
@pytest.mark.usefixtures("netns_ok")
async def test_prune_races_safely_with_a_real_agent_that_brings_a_node_back(
    mysql_store: MySQLStore, mysql_settings: MySQLConfig, agents: AgentFactory, tmp_path: Path,
) -> None:
    """A machine comes back while prune runs: prune read its Node as dead, its agent (its own
    process, on the same MariaDB) writes it Ready before prune's delete; the Node stays."""
    store = mysql_store
    await store.create(make_node("node-b", ready="Unknown", reason="PeerExpired"))
    await store.create(make_node("node-x", ready="Unknown", reason="PeerExpired"))
    verdicts = plan(await store.list(), DAYS_LATER, OLDER_THAN)
    assert [(v.name, v.action) for v in verdicts] == [("node-b", "delete"), ("node-x", "delete")]

    config = write_config(tmp_path / "k3.yaml", {
        "type": "mysql", "mysql": {"socket": mysql_settings.socket, "user": "root",
                                   "database": mysql_settings.database, "poll_interval": "200ms"},
    })
    with LoopbackHost() as host:
        agent = agents.start(host, "node-b", "--peer-ttl", "3s", port=7131, config=config)
        with trio.fail_after(20):
            while True:
                back = await store.get("node-b")
                if back.node.ready_status == "True":
                    break
                assert agent.proc.poll() is None, agent.log()
                await trio.sleep(0.1)

        outcomes = await apply(store, verdicts, dry_run=False)
        assert {o.verdict.name: o.result for o in outcomes} == {
            "node-b": "changed", "node-x": "deleted"}
        assert await names(store) == ["node-b"]
        assert (await store.get("node-b")).node.condition().reason == "AgentReady"  # type: ignore[union-attr]
        assert agent.stop() == 0

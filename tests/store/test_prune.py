"""`k3net prune` on every backend: only old managed not-Ready Nodes that carry nothing of
others' go; a Node whose clock-less host wrote a 1970 transition but that was seen lately stays;
a Node an agent brings back, or an administrator cordons, between the read and the delete stays
(compare-and-swap)."""

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
from k3net.convert import format_time_precise
from k3net.model import ANN_LAST_SEEN
from k3net.store.base import Store
from k3net.store.mysql import MySQLStore

from ..helpers.nodes import T0, make_node

DAYS_LATER = T0 + dt.timedelta(days=4)
OLDER_THAN = 72 * 3600.0


EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
KEPT = ["alive", "clockless", "controller-s", "cordoned"]


async def fill(store: Store) -> None:
    await store.create(make_node("gone", ready="Unknown", reason="PeerExpired"))
    await store.create(make_node("left", ready="False", reason="PeerLeft"))
    await store.create(make_node("alive"))
    await store.create(make_node("controller-s", ready="False", reason="KubeletDown",
                                 managed=False))
    # Its host wrote it down without a set clock; agents with good clocks saw it lately.
    clockless = make_node("clockless", ready="Unknown", reason="PeerExpired", last_seen=EPOCH)
    clockless.condition().last_transition_time = EPOCH  # type: ignore[union-attr]
    clockless.metadata.annotations[ANN_LAST_SEEN] = format_time_precise(
        dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    await store.create(clockless)
    # Down for days, and cordoned by an administrator, who has a say in it.
    cordoned = make_node("cordoned", ready="Unknown", reason="PeerExpired")
    cordoned.spec["unschedulable"] = True
    cordoned.spec["taints"] = [{"key": "node.kubernetes.io/unschedulable",
                                "effect": "NoSchedule"}]
    await store.create(cordoned)


async def names(store: Store) -> list[str]:
    return [s.name for s in await store.list()]


async def test_prune_removes_only_old_managed_not_ready_nodes(store: Store) -> None:
    await fill(store)
    outcomes = await prune(store, DAYS_LATER, OLDER_THAN, dry_run=False)
    assert {o.verdict.name: o.result for o in outcomes} == {
        **dict.fromkeys(KEPT, "kept"), "gone": "deleted", "left": "deleted"}
    assert await names(store) == KEPT


async def test_dry_run_lists_and_changes_nothing(store: Store) -> None:
    await fill(store)
    before = await store.list()
    outcomes = await prune(store, DAYS_LATER, OLDER_THAN, dry_run=True)
    assert sorted(o.verdict.name for o in outcomes if o.result == "would-delete") == [
        "gone", "left"]
    assert await store.list() == before  # not one version moved


async def test_force_also_removes_what_others_marked_never_what_they_own(store: Store) -> None:
    await fill(store)
    outcomes = await prune(store, DAYS_LATER, OLDER_THAN, dry_run=False, force=True)
    assert sorted(o.verdict.name for o in outcomes if o.result == "deleted") == [
        "cordoned", "gone", "left"]
    assert await names(store) == ["alive", "clockless", "controller-s"]


async def test_a_node_cordoned_after_the_read_stays(store: Store) -> None:
    await fill(store)
    verdicts = plan(await store.list(), DAYS_LATER, OLDER_THAN)
    # Between prune's read and its delete, an administrator cordons "gone".
    stored = await store.get("gone")
    stored.node.spec["unschedulable"] = True
    await store.update(stored.node, stored.version)
    outcomes = await apply(store, verdicts, dry_run=False)
    assert {o.verdict.name: o.result for o in outcomes}["gone"] == "changed"
    assert (await store.get("gone")).node.spec["unschedulable"] is True


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
        **dict.fromkeys(KEPT, "kept"), "gone": "changed", "left": "gone"}
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
        expected = {**dict.fromkeys(KEPT, "kept"), "gone": "deleted", "left": "deleted"}
    assert await trio.to_thread.run_sync(prune_main, storage, 3600.0, False, "json", out) == 0
    results = json.loads(out.getvalue())
    assert {d["name"]: d["result"] for d in results} == expected
    if backend is not None:
        assert await names(store) == KEPT
        held = next(d for d in results if d["name"] == "cordoned")
        assert held["foreign"] == ["spec.unschedulable",
                                   "taint node.kubernetes.io/unschedulable"]


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


async def test_prune_command_line_dry_run_then_force(
    store: Store, backend: EtcdConfig | MySQLConfig | None, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """From the command line: --dry-run lists and changes nothing, --force also takes the
    cordoned Node, never what is not k3net's or was seen lately."""
    from k3net import cli

    storage: dict[str, object]
    if backend is None:
        storage = {"type": "memory"}  # the command's own, empty store
    elif isinstance(backend, EtcdConfig):
        storage = {"type": "etcd", "etcd": {"endpoints": list(backend.endpoints)}}
    else:
        storage = {"type": "mysql", "mysql": {"socket": backend.socket, "user": backend.user,
                                              "database": backend.database}}
    config = write_config(tmp_path / "k3.yaml", storage)
    await fill(store)
    before = await store.list()

    def prune_cli(*flags: str) -> int:
        return cli.main(["prune", "--older-than=72h", f"--config={config}", *flags])

    assert await trio.to_thread.run_sync(prune_cli, "--dry-run") == 0
    listed = capsys.readouterr().out
    assert await store.list() == before
    if backend is None:
        assert listed == "Nothing to prune.\n"
        return
    assert [line.split()[0] for line in listed.splitlines()[1:]] == ["cordoned", "gone", "left"]
    assert "--force" in listed and listed.count("would delete (dry run)") == 2

    assert await trio.to_thread.run_sync(prune_cli, "--force") == 0
    assert await names(store) == ["alive", "clockless", "controller-s"]

"""--node-label: labels an operator puts on this machine's own Node, as kubelet's --node-labels
or Serf's tags. Declared once with the other flags; written by the table's heartbeat; taken off
when no longer given; known to k3net prune as k3net's own."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
import trio
import trio.lowlevel

from k3net import cli
from k3net.agent import Agent
from k3net.commands.prune import foreign_marks
from k3net.core.messages import Put, SelfHeartbeat, Snapshot
from k3net.core.nodes import Alive, label_problem, labels_differ, render
from k3net.core.table import PeerTable, SelfInfo, Write
from k3net.model import ANN_NODE_LABELS, Node
from k3net.settings import Settings
from k3net.store.base import Stored
from k3net.store.memory import MemoryStore

from .helpers.inprocess import HERE, FakeLan, Recorder, fake_http, running
from .helpers.nodes import make_node

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
_versions = itertools.count(1)


def own(labels: tuple[tuple[str, str], ...]) -> Alive:
    return Alive("me", ("192.168.1.2",), 7946, 100, "AgentReady", refresh=True, labels=labels)


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("env", "prod", None),
        ("topology.kubernetes.io/zone", "eu-1a", None),
        ("tier", "", None),
        ("a" * 63, "b" * 63, None),
        ("a" * 64, "x", "at most 63"),
        ("env", "-prod", "label value"),
        ("Bad_Prefix/env", "x", "DNS subdomain"),
        ("/env", "x", "DNS subdomain"),
        ("k3.network/managed", "false", "written by k3net"),
        ("kubernetes.io/hostname", "other", "written by k3net"),
        ("env", "a b", "label value"),
    ],
)
def test_label_syntax(key: str, value: str, problem: str | None) -> None:
    found = label_problem(key, value)
    assert (found is None) if problem is None else (found is not None and problem in found)


def _settings(argv: list[str], env: dict[str, str]) -> Settings:
    return cli.settings_from_args(cli.parse_args(["run", *argv]), {"NODE_NAME": "me", **env})


def test_the_flag_and_the_environment_give_the_labels() -> None:
    flags = ["--node-label", "env=prod", "--node-label", "zone=a"]
    assert _settings(flags, {}).node_labels == (("env", "prod"), ("zone", "a"))
    env = {"K3NET_NODE_LABEL": "env=dev,rack=r1"}
    assert _settings([], env).node_labels == (("env", "dev"), ("rack", "r1"))
    assert _settings(flags, env).node_labels == (("env", "prod"), ("zone", "a"))  # flag wins


@pytest.mark.parametrize("bad", ["env", "k3.network/managed=false", "=x", "env=a/b"])
def test_a_bad_label_stops_run_with_one_line(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--node-label", bad]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("k3net run: error: --node-label:"), err


def test_render_puts_the_labels_and_takes_off_those_no_longer_given() -> None:
    node = render(None, own((("env", "prod"), ("zone", "a"))), NOW)
    assert node is not None
    assert node.metadata.labels["env"] == "prod" and node.metadata.labels["zone"] == "a"
    assert node.metadata.annotations[ANN_NODE_LABELS] == "env,zone"
    node.metadata.labels["team"] = "ops"  # an administrator's label
    again = render(node, own((("env", "staging"),)), NOW)
    assert again is not None
    assert again.metadata.labels.get("env") == "staging" and "zone" not in again.metadata.labels
    assert again.metadata.labels["team"] == "ops"  # not ours: kept
    assert again.metadata.annotations[ANN_NODE_LABELS] == "env"
    cleared = render(again, own(()), NOW)
    assert cleared is not None and "env" not in cleared.metadata.labels
    assert ANN_NODE_LABELS not in cleared.metadata.annotations
    assert render(cleared, own(()), NOW) is None  # nothing left to change


def test_a_peers_probe_never_touches_labels() -> None:
    node = render(None, own((("env", "prod"),)), NOW)
    assert node is not None
    probe = Alive("me", ("192.168.1.2",), 7946, 100, "PeerAlive")
    assert render(node, probe, NOW) is None


def _table(labels: tuple[tuple[str, str], ...], *stored: Node) -> tuple[PeerTable, list[Write]]:
    """A table whose store watch delivered its first Snapshot (with `stored` in it), and the
    writes that first reading of the store asks for (our own Node, once the store is read)."""
    t = PeerTable(peer_ttl=90.0, refresh_interval=30.0,
                  me=SelfInfo("me", lambda: ("192.168.1.2",), 7946, 100, labels),
                  register_self=True)
    items = tuple(Stored(node, str(next(_versions))) for node in stored)
    actions = t.handle(Snapshot(items), 0.0)
    return t, [a for a in actions if isinstance(a, Write)]


def _put(node: Node) -> Put:
    return Put(Stored(node, str(next(_versions))))


def test_the_heartbeat_writes_labels_once_and_again_when_they_change() -> None:
    t, [write] = _table((("env", "prod"),))
    node = render(None, write.intent, NOW)
    assert node is not None and node.metadata.labels["env"] == "prod"
    t.handle(_put(node), 0.0)
    assert t.handle(SelfHeartbeat(), 1.0) == []  # carried already: nothing to write
    assert not labels_differ(node, (("env", "prod"),))
    changed, _ = _table((("env", "staging"),), node)  # restarted with another label
    [rewrite] = [a for a in changed.handle(SelfHeartbeat(), 1.0) if isinstance(a, Write)]
    after = render(node, rewrite.intent, NOW)
    assert after is not None and after.metadata.labels["env"] == "staging"


def test_prune_counts_the_agents_own_labels_as_k3nets() -> None:
    node = render(make_node("gone", ready="Unknown", reason="PeerExpired"),
                  own((("env", "prod"),)), NOW)
    assert node is not None
    assert not any("env" in mark for mark in foreign_marks(node))
    node.metadata.labels["team"] = "ops"
    assert "label team" in foreign_marks(node)


async def test_the_running_agent_writes_its_labels() -> None:
    store, log = MemoryStore(), Recorder()
    s = Settings(node_name="node-a", listen_port=7946, peer_ttl=9.0, probe_interval=1.5,
                 node_labels=(("env", "prod"), ("rack", "r7")))
    a = Agent(s, store=store, lan=FakeLan(log), addresses=HERE, serve=fake_http(log))
    async with running(a, store):
        [stored] = [x for x in await store.list() if x.name == "node-a"]
        assert stored.node.metadata.labels["env"] == "prod"
        assert stored.node.metadata.labels["rack"] == "r7"
        await trio.lowlevel.checkpoint()

"""`k3net prune`: which Nodes it removes (pure, table-driven) and what it prints."""

from __future__ import annotations

import datetime as dt
import json

import attrs
import pytest
import trio
import trio.testing
import yaml

from k3net import cli
from k3net.commands.prune import Outcome, Verdict, format_outcomes, judge, plan
from k3net.model import Node
from k3net.store.base import Stored
from k3net.store.memory import MemoryStore
from k3net.tasks import prune as prune_task
from tests.helpers.nodes import T0, make_node

HOUR = 3600.0


def down_since(node: Node, when: dt.datetime | None) -> Node:
    cond = node.condition()
    assert cond is not None
    cond.last_transition_time = when
    return node


# (what, node, hours since the Ready condition changed, --older-than hours, action)
CASES = [
    ("long gone", make_node(ready="Unknown", reason="PeerExpired"), 80, 72, "delete"),
    ("left long ago", make_node(ready="False", reason="PeerLeft"), 73, 72, "delete"),
    ("not long enough", make_node(ready="Unknown", reason="PeerExpired"), 71, 72, "keep"),
    ("exactly the limit", make_node(ready="Unknown", reason="PeerExpired"), 72, 72, "keep"),
    ("ready", make_node(), 500, 72, "keep"),
    ("unmanaged and down", make_node(ready="False", reason="KubeletDown", managed=False), 500, 72,
     "keep"),
    ("no Ready condition", make_node(ready=None), 500, 72, "keep"),
]


@pytest.mark.parametrize(("what", "node", "hours", "limit", "action"), CASES,
                         ids=[c[0] for c in CASES])
def test_judge(what: str, node: Node, hours: float, limit: float, action: str) -> None:
    now = T0 + dt.timedelta(hours=hours)
    assert judge(Stored(node, "7"), now, limit * HOUR).action == action


def test_unknown_transition_time_is_kept() -> None:
    node = down_since(make_node(ready="Unknown", reason="PeerExpired"), None)
    verdict = judge(Stored(node, "1"), T0 + dt.timedelta(days=30), HOUR)
    assert (verdict.action, verdict.why) == ("keep", "not Ready since an unknown time")


def test_plan_keeps_the_version_read() -> None:
    nodes = [Stored(make_node("b", ready="Unknown"), "12"), Stored(make_node("a"), "3")]
    verdicts = plan(nodes, T0 + dt.timedelta(hours=2), HOUR)
    assert [(v.name, v.version, v.action) for v in verdicts] == [
        ("a", "3", "keep"), ("b", "12", "delete")]


def outcomes() -> list[Outcome]:
    gone = Verdict("old", "4", "delete", "Unknown/PeerExpired for 3d4h", 76 * HOUR)
    back = Verdict("back", "5", "delete", "False/PeerLeft for 4d", 96 * HOUR)
    ready = Verdict("up", "6", "keep", "Ready")
    return [Outcome(back, "changed"), Outcome(gone, "deleted"), Outcome(ready, "kept")]


def test_format_table_and_wide() -> None:
    assert format_outcomes(outcomes()) == (
        "NAME   NOT-READY-FOR   RESULT\n"
        "back   4d              kept: changed since read\n"
        "old    3d4h            deleted\n"
    )
    assert format_outcomes(outcomes(), "wide").splitlines()[-1].split() == [
        "up", "<unknown>", "kept:", "Ready"]
    assert format_outcomes([Outcome(attrs.evolve(outcomes()[2].verdict), "kept")]) == \
        "Nothing to prune.\n"


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_format_json_and_yaml(output: str) -> None:
    text = format_outcomes(outcomes(), output)
    data = json.loads(text) if output == "json" else yaml.safe_load(text)
    assert [(d["name"], d["result"]) for d in data] == [
        ("back", "changed"), ("old", "deleted"), ("up", "kept")]
    assert data[1]["notReadySeconds"] == 76 * HOUR


@pytest.mark.parametrize(
    "argv",
    [["prune"], ["prune", "--older-than=soon"], ["prune", "--older-than=0"],
     ["prune", "--older-than", "1h", "--server", "x"]],
)
def test_bad_prune_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(argv)
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_prune_needs_a_store(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("K3NET_CONFIG", "CONFIG_PATH"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["prune", "--older-than", "72h"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--config" in err


@pytest.mark.parametrize(("after", "every"), [(72 * HOUR, HOUR), (HOUR, 360.0), (60.0, 60.0)])
def test_the_agent_looks_every_tenth_of_prune_after_within_bounds(after: float, every: float) -> None:
    assert prune_task.interval(after) == every


async def test_the_agents_prune_task_removes_old_managed_nodes() -> None:
    store = MemoryStore()
    # Not Ready since T0: a day or more before the wall clock of this run.
    await store.create(make_node("gone", ready="Unknown", reason="PeerExpired"))
    await store.create(make_node("alive"))
    await store.create(make_node("theirs", ready="False", managed=False))
    async with trio.open_nursery() as nursery:
        await nursery.start(prune_task.run, store, HOUR)
        await trio.testing.wait_all_tasks_blocked()  # the first pass is done, the task sleeps
        assert [s.name for s in await store.list()] == ["alive", "theirs"]
        nursery.cancel_scope.cancel()


def test_prune_after_is_off_unless_asked() -> None:
    from k3net.settings import Settings, resolve

    assert Settings(node_name="n").prune_after == 0
    assert resolve({"prune-after": 3 * 86400.0}, {"NODE_NAME": "n"}).prune_after == 3 * 86400.0

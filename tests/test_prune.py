"""`k3net prune`: which Nodes it removes (pure, table-driven) and what it prints."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
import yaml

from k3net import cli
from k3net.commands.prune import Outcome, Verdict, foreign_marks, format_outcomes, judge, plan
from k3net.model import (
    ANN_LAST_SEEN,
    ANN_PID,
    LABEL_DISCOVERED,
    LABEL_HOSTNAME,
    Node,
    NodeCondition,
)
from k3net.store.base import Stored
from k3net.store.memory import MemoryStore
from k3net.tasks import prune as prune_task

from .helpers.nodes import T0, make_node

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


def test_no_time_known_is_kept() -> None:
    node = down_since(make_node(ready="Unknown", reason="PeerExpired"), None)
    node.condition().last_heartbeat_time = None  # type: ignore[union-attr]
    del node.metadata.annotations[ANN_LAST_SEEN]
    verdict = judge(Stored(node, "1"), T0 + dt.timedelta(days=30), HOUR)
    assert (verdict.action, verdict.why) == ("keep", "not Ready since an unknown time")


EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def aged(
    transition: dt.datetime | None, heartbeat: dt.datetime | None, last_seen: str | None
) -> Node:
    node = make_node(ready="Unknown", reason="PeerExpired")
    cond = node.condition()
    assert cond is not None
    cond.last_transition_time, cond.last_heartbeat_time = transition, heartbeat
    if last_seen is None:
        del node.metadata.annotations[ANN_LAST_SEEN]
    else:
        node.metadata.annotations[ANN_LAST_SEEN] = last_seen
    return node


NOW = T0 + dt.timedelta(days=10)
RECENT = NOW - dt.timedelta(minutes=5)
OLD = NOW - dt.timedelta(days=5)

# (what, transition, heartbeat, lastSeen, action with --older-than 72h): the latest time wins.
AGE_CASES = [
    ("1970 transition, recent lastSeen", EPOCH, EPOCH, "2026-12-09T11:55:00.000000Z", "keep"),
    ("1970 transition, recent heartbeat", EPOCH, RECENT, None, "keep"),
    ("old transition, recent heartbeat", OLD, RECENT, OLD.isoformat(), "keep"),
    ("everything old", OLD, OLD, "2026-12-04T12:00:00Z", "delete"),
    ("1970 everywhere", EPOCH, EPOCH, "1970-01-01T00:00:00Z", "delete"),
    ("lastSeen not a time, the rest old", OLD, None, "yesterday", "delete"),
    ("lastSeen not a time, nothing else", None, None, "²", "keep"),
    ("lastSeen in the future (a clock ahead)", OLD, OLD, "2030-01-01T00:00:00Z", "keep"),
]


@pytest.mark.parametrize(("what", "transition", "heartbeat", "last_seen", "action"), AGE_CASES,
                         ids=[c[0] for c in AGE_CASES])
def test_age_is_judged_from_the_latest_sign_of_life(
    what: str, transition: dt.datetime | None, heartbeat: dt.datetime | None,
    last_seen: str | None, action: str,
) -> None:
    assert judge(Stored(aged(transition, heartbeat, last_seen), "1"), NOW, 72 * HOUR).action == \
        action


def test_older_than_has_a_floor_of_an_hour() -> None:
    node = aged(OLD, NOW - dt.timedelta(minutes=30), None)
    assert judge(Stored(node, "1"), NOW, 60.0).action == "keep"
    assert judge(Stored(node, "1"), NOW + dt.timedelta(minutes=31), 60.0).action == "delete"


def marked(change: str) -> Node:
    """An old not-Ready managed Node with one thing on it that someone else put there."""
    node = make_node(ready="Unknown", reason="PeerExpired")
    meta = node.metadata
    if change == "cordoned":
        node.spec["unschedulable"] = True
    elif change == "tainted":
        node.spec["taints"] = [{"key": "maintenance", "effect": "NoSchedule"}]
    elif change == "podCIDR":
        node.spec["podCIDR"] = "10.244.1.0/24"
    elif change == "label":
        meta.labels["team"] = "storage"
    elif change == "annotation":
        meta.annotations["admin.example.com/keep"] = "until the disks are back"
    elif change == "finalizer":
        meta.extra["finalizers"] = ["example.com/drain"]
    elif change == "condition":
        node.status.conditions.append(NodeCondition(type="DiskPressure", status="True"))
    return node


@pytest.mark.parametrize(("change", "mark"), [
    ("cordoned", "spec.unschedulable"), ("tainted", "taint maintenance"),
    ("podCIDR", "spec.podCIDR"), ("label", "label team"),
    ("annotation", "annotation admin.example.com/keep"), ("finalizer", "metadata.finalizers"),
    ("condition", "condition DiskPressure"),
])
def test_a_node_with_what_k3net_does_not_own_is_kept_unless_forced(change: str, mark: str) -> None:
    stored = Stored(marked(change), "9")
    verdict = judge(stored, NOW, 72 * HOUR)
    assert (verdict.action, verdict.foreign) == ("keep", (mark,))
    assert mark in verdict.why and "--force" in verdict.why
    assert judge(stored, NOW, 72 * HOUR, force=True).action == "delete"


def test_k3net_own_labels_and_annotations_are_not_foreign() -> None:
    node = make_node(ready="Unknown", reason="PeerExpired")
    node.metadata.labels |= {LABEL_HOSTNAME: "node-b", LABEL_DISCOVERED: "true"}
    node.metadata.annotations |= {ANN_PID: "42", "k3.network/anything-later": "x"}
    node.spec["unschedulable"] = False  # written as false: not cordoned
    node.spec["taints"] = []
    assert foreign_marks(node) == []
    assert judge(Stored(node, "1"), NOW, 72 * HOUR).action == "delete"


def test_many_foreign_marks_are_summed_up() -> None:
    node = marked("cordoned")
    node.metadata.labels |= {"a": "1", "b": "2", "c": "3"}
    verdict = judge(Stored(node, "1"), NOW, 72 * HOUR)
    assert len(verdict.foreign) == 4 and "and 1 more" in verdict.why


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
        "NAME   LAST-SEEN   RESULT\n"
        "back   4d          kept: changed since read\n"
        "old    3d4h        deleted\n"
    )
    assert format_outcomes(outcomes(), "wide").splitlines()[-1].split() == [
        "up", "<unknown>", "kept:", "Ready"]
    # An old Node kept for what others put on it is shown without -o wide: the operator decides.
    held = Verdict("held", "7", "keep", "not k3net's alone: spec.unschedulable (prune --force "
                   "removes it)", 80 * HOUR, ("spec.unschedulable",))
    assert format_outcomes([Outcome(held, "kept")]).splitlines()[1].split()[:4] == [
        "held", "3d8h", "kept:", "not"]
    assert format_outcomes([Outcome(attrs.evolve(outcomes()[2].verdict), "kept")]) == \
        "Nothing to prune.\n"


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_format_json_and_yaml(output: str) -> None:
    text = format_outcomes(outcomes(), output)
    data = json.loads(text) if output == "json" else yaml.safe_load(text)
    assert [(d["name"], d["result"]) for d in data] == [
        ("back", "changed"), ("old", "deleted"), ("up", "kept")]
    assert data[1]["lastSeenSecondsAgo"] == 76 * HOUR


@pytest.mark.parametrize(
    "argv",
    [["prune"], ["prune", "--older-than=soon"], ["prune", "--older-than=0"],
     ["prune", "--older-than=59m"], ["prune", "--older-than", "1h", "--server", "x"]],
)
def test_bad_prune_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(argv)
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


@pytest.mark.parametrize("value", ["1ms", "59m59s"])
def test_prune_after_below_an_hour_stops_run_with_one_line(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", "--prune-after", value]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--prune-after" in err[0] and "hour" in err[0]


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
    assert resolve({}, {"NODE_NAME": "n", "K3NET_PRUNE_AFTER": "1h"}).prune_after == HOUR
    assert resolve({}, {"NODE_NAME": "n", "K3NET_PRUNE_AFTER": "off"}).prune_after == 0


@pytest.mark.parametrize("where", ["env", "file"])
def test_prune_after_below_an_hour_exits_2_from_anywhere(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("K3NET_CONFIG", "CONFIG_PATH", "K3NET_PRUNE_AFTER"):
        monkeypatch.delenv(name, raising=False)
    argv = ["run", "--node-name=n1"]
    if where == "env":
        monkeypatch.setenv("K3NET_PRUNE_AFTER", "30m")
    else:
        config = tmp_path / "k3.yaml"
        config.write_text("network:\n  prune-after: 1800\n")
        argv.append(f"--config={config}")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "less than an hour" in err


async def test_the_agent_says_once_why_it_keeps_an_old_node(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore()
    await store.create(marked("cordoned"))  # not Ready since T0: days before this run
    with caplog.at_level("INFO"):
        async with trio.open_nursery() as nursery:
            await nursery.start(prune_task.run, store, HOUR)
            await trio.sleep(3 * prune_task.interval(HOUR) + 1)
            nursery.cancel_scope.cancel()
    kept = [r.getMessage() for r in caplog.records if r.getMessage().startswith("kept Node")]
    assert kept == ["kept Node node-b: not k3net's alone: spec.unschedulable (prune --force "
                    "removes it)"]
    assert [s.name for s in await store.list()] == ["node-b"]

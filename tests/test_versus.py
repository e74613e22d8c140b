"""The pure parts of `nox -s versus` and of the silence scenarios of `nox -s lan`: what they read
from Serf's log and from `ip -s -j link`, how they count, and the table they print; and the CPU
limit they put on a starved agent, on the real kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from k3lab import cpulimit
from k3lab.sim.common import cpu_seconds
from k3lab.sim.silence import false_failures, gray_false_count, gray_hosts, pause_times
from k3lab.sim.store_watch import Transition
from k3lab.versus import measure
from k3lab.versus.serf import Event, alive_members, parse_line

ROOT = Path(__file__).resolve().parent.parent

# --- Serf's log ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "kind", "member"), [
    ("    2026/12/03 06:20:14 [INFO] serf: EventMemberFailed: s2 10.78.0.3", "failed", "s2"),
    ("    2026/12/03 06:20:02 [INFO] serf: EventMemberJoin: serf-1 10.77.0.2\n", "join", "serf-1"),
    ("[INFO] serf: EventMemberLeave: serf-4 10.77.0.5", "leave", "serf-4"),
    ("[INFO] serf: EventMemberReap: serf-4", "reap", "serf-4"),
    ("[INFO] memberlist: Suspect serf-3 has failed, no acks received", "suspect", "serf-3"),
])
def test_serf_membership_lines_are_events(line: str, kind: str, member: str) -> None:
    assert parse_line(12.5, line) == Event(12.5, kind, member)


@pytest.mark.parametrize("line", [
    "    2026/12/03 06:20:03 [INFO] agent: Received event: member-join",  # the handler's, late
    "    2026/12/03 06:20:14 [INFO] memberlist: Marking s2 as failed, suspect timeout reached",
    "==> Serf agent running!",
    "",
    "serf: EventMemberFailed:",  # no member: not an event
])
def test_other_serf_lines_are_not_events(line: str) -> None:
    assert parse_line(1.0, line) is None


def test_alive_members_follow_the_events_in_order() -> None:
    events = [Event(1, "join", "a"), Event(1, "join", "b"), Event(2, "suspect", "b"),
              Event(3, "failed", "b"), Event(4, "join", "c"), Event(5, "leave", "c"),
              Event(6, "join", "b")]
    assert alive_members(events) == {"a", "b"}
    assert alive_members(events[:4]) == {"a"}  # a suspicion alone removes nobody
    assert alive_members([]) == set()


# --- costs --------------------------------------------------------------------------------------


def _ip_json(rx: int, tx: int, key: str = "stats64") -> str:
    return json.dumps([{"ifname": "eth0", key: {"rx": {"bytes": rx, "packets": 1},
                                                 "tx": {"bytes": tx, "packets": 1}}}])


def test_link_bytes_adds_both_directions() -> None:
    assert measure.link_bytes(_ip_json(1000, 234)) == 1234
    assert measure.link_bytes(_ip_json(5, 6, key="stats")) == 11


@pytest.mark.parametrize("text", ["[]", "{}", json.dumps([{"ifname": "eth0"}])])
def test_link_without_counters_is_an_error_not_zero(text: str) -> None:
    with pytest.raises(ValueError):
        measure.link_bytes(text)


def test_cost_between_two_readings() -> None:
    before = measure.Reading(t=10.0, cpu_seconds=1.0, rss_kb=1000, link_bytes=5000)
    after = measure.Reading(t=30.0, cpu_seconds=1.5, rss_kb=30720, link_bytes=9000)
    assert measure.cost(before, after) == {"cpu_percent": 2.5, "rss_mb": 30.0,
                                           "bytes_per_second": 200.0}
    with pytest.raises(ValueError):
        measure.cost(after, before)


def test_times_count_the_trials_that_saw_nothing() -> None:
    t = measure.times([1.0, None, 3.0])
    assert (t["n"], t["p50"], t["max"], t["missed"]) == (2, 1.0, 3.0, 1)
    assert measure.fmt_time(t) == "1.00s / 3.00s (n=2)"
    assert measure.fmt_time(measure.times([None])) == "- (none seen)"


def test_table_has_one_column_per_contestant_and_says_what_was_not_measured() -> None:
    per_agent = {"a": {"cpu_percent": 1.0, "rss_mb": 20.0, "bytes_per_second": 100.0},
                 "b": {"cpu_percent": 3.0, "rss_mb": 40.0, "bytes_per_second": 300.0}}
    serf = {"join": measure.times([0.2]), "crash": measure.times([5.9, 6.1]),
            "alive_again_while_cut": 0,
            "loss": {"false_failures": 2, "seconds": 60.0},
            "starved": {"not_measured": "no cgroup cpu controller"},
            "steady": {"per_agent": per_agent}}
    headers, rows = measure.table({"serf": serf, "k3net": None})
    assert headers == ["measure", "serf", "k3net"]
    by_label = {r[0]: r[1:] for r in rows}
    assert by_label["join: start -> seen alive by another member"] == ["0.20s / 0.20s (n=1)", "-"]
    assert by_label["crash: SIGKILL, host alive -> failed"][0] == "5.90s / 6.10s (n=2)"
    assert by_label["20% frame loss on one host: false failures"][0] == "2 in 60s"
    assert by_label["host loss: alive again while still cut (10 s held)"] == ["0", "-"]
    assert by_label["starved member (5% of a core): false failures"][0] == (
        "not measured: no cgroup cpu controller")
    assert by_label["CPU per agent, steady (mean / max)"][0] == "2.00 / 3.00 % of a core"
    assert by_label["bytes/s per host link, steady (mean / max)"][0] == "200 / 300 B/s"
    text = measure.markdown(headers, rows)
    assert text.splitlines()[1].startswith("|---")
    assert len({len(line) for line in text.splitlines()}) == 1  # columns line up


# --- the gray scenario's arithmetic ------------------------------------------------------------


def test_gray_sickens_three_different_hosts_never_host_0() -> None:
    assert gray_hosts(5) == (4, 3, 2)
    assert len(set(gray_hosts(4))) == 3
    assert 0 not in gray_hosts(3)


def test_pauses_fall_evenly_inside_the_window() -> None:
    assert pause_times(180) == [60.0, 120.0]
    assert pause_times(30, 1) == [15.0]


def test_false_failures_are_live_nodes_written_not_ready() -> None:
    trs = [Transition(1, "n1", None, ("True", "AgentReady")),          # appeared: not a failure
           Transition(2, "n2", ("True", "PeerAlive"), ("True", "AgentReady")),  # reason only
           Transition(3, "n3", ("True", "PeerAlive"), ("Unknown", "PeerExpired")),
           Transition(4, "n3", ("Unknown", "PeerExpired"), ("True", "PeerAlive")),
           Transition(5, "n4", ("True", "PeerAlive"), None)]            # deleted
    assert [tr.t for tr in false_failures(trs)] == [3, 5]


def test_gray_false_count_trusts_etcd_history_over_polls() -> None:
    # A blip between two polls shows only in etcd's history.
    r = {"false_not_ready_polled": 0, "not_ready_values_etcd": {"node-1": 1, "node-2": 0}}
    assert gray_false_count(r) == 1
    assert gray_false_count({"false_not_ready_polled": 2}) == 2


# --- the CPU limit, on the kernel ----------------------------------------------------------------


def test_quota_of_a_share() -> None:
    assert cpulimit.quota_us(0.05) == 5000
    assert cpulimit.quota_us(0.001) == 1000  # the kernel's minimum
    for bad in (0, -1, 65):
        with pytest.raises(ValueError):
            cpulimit.quota_us(bad)


def test_cpu_limit_holds_a_busy_process_to_its_share() -> None:
    if cpulimit.support() is None:
        pytest.skip("no cgroup cpu controller here, or not root")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    limit = cpulimit.CpuLimit.create(f"test-{os.getpid()}", 0.05)
    assert limit is not None
    try:
        limit.add(busy.pid)
        assert limit.pids() == [busy.pid]
        cpu0, t0 = cpu_seconds(busy.pid), time.monotonic()
        time.sleep(2)
        share = (cpu_seconds(busy.pid) - cpu0) / (time.monotonic() - t0)
    finally:
        limit.close()
        busy.kill()
        busy.wait(5)
    assert share < 0.2  # unlimited it would be ~1.0 (a whole core)
    assert not limit.path.exists()  # removed, its process given back first


def test_cpu_limit_names_are_checked() -> None:
    with pytest.raises(ValueError):
        cpulimit.CpuLimit.create("../escape", 0.05)


# --- the runner ----------------------------------------------------------------------------------


def _versus(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "versus.py"), *args],
                          capture_output=True, text=True, timeout=60)


def test_versus_help_names_every_fault() -> None:
    done = _versus("--help")
    assert done.returncode == 0
    for fault in ("join", "leave", "crash", "hostloss", "loss", "starved", "paused", "steady"):
        assert f"\n  {fault} " in done.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--trials", "0"], "--trials must be between 1 and 10"),
    (["--hosts", "3"], "--hosts must be between 4 and 20"),
    (["--window", "5"], "--window must be between 20 and 600"),
])
def test_versus_bad_option_exits_2_with_one_line(args: list[str], message: str) -> None:
    done = _versus(*args)
    assert done.returncode == 2
    assert message in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr


def test_lan_lists_the_silence_scenarios_and_bounds_gray() -> None:
    def lan(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "lan.py"), *args],
                              capture_output=True, text=True, timeout=60)

    listed = lan("--help").stdout.split("scenarios:\n", 1)[1].split()
    assert "hostloss" in listed and "gray" in listed
    done = lan("--gray", "10")
    assert done.returncode == 2
    assert "--gray must be between 30 and 900" in done.stderr.strip().splitlines()[-1]


def test_versus_markdown_names_the_run_and_keeps_the_table(tmp_path: Path) -> None:
    from k3lab.versus.run import _write_md

    results = {"trials": 3, "window_seconds": 60.0, "steady_seconds": 60.0, "hosts": 5,
               "runtime_seconds": 1000.0, "k3net_revision": "abc1234",
               "k3net_timings": "defaults", "serf": {"version": "Serf v0.9.4", "discovery": "mDNS"},
               "k3net": {"join": measure.times([0.5])}}
    _write_md(tmp_path / "v.md", results, "| measure | serf |")
    text = (tmp_path / "v.md").read_text()
    assert "k3net abc1234" in text and "Serf v0.9.4" in text and "--trials 3" in text
    assert text.rstrip().endswith("| measure | serf |")


def test_silence_rows_judge_the_goals_and_say_what_was_not_measured() -> None:
    import argparse

    from k3lab.sim import silence
    from k3lab.sim.report import Context

    ctx = Context(argparse.Namespace(store="etcd"), 6.0, 1.0)
    fast = {"to_not_ready": measure.times([2.1, 2.9, 4.0]),
            "back_to_ready": measure.times([0.5, 0.7, 0.9]),
            "state_while_cut": [["Unknown", "PeerUnreachable"]] * 3, "other_nodes_flaps": 0}
    cut, up = silence._hostloss_rows({"hostloss": fast}, ctx)
    assert "PeerUnreachable" in cut[0] and cut[-1].startswith("met")
    assert up[-1].startswith("met")
    slow = {**fast, "to_not_ready": measure.times([2.0, 3.0, 80.0])}  # one cut seen late
    assert silence._hostloss_rows({"hostloss": slow}, ctx)[0][-1].startswith("MISSED")
    missed = {**fast, "to_not_ready": measure.times([2.0, None, 2.5])}  # one never seen
    assert silence._hostloss_rows({"hostloss": missed}, ctx)[0][-1].startswith("MISSED")
    relapsed = {**fast, "ready_again_while_cut": [{"t": 9.0, "node": "node-4"}]}
    row = silence._hostloss_rows({"hostloss": relapsed}, ctx)[0]
    assert row[-1].startswith("MISSED") and "Ready again while cut 1x" in row[-1]

    gray = {"seconds": 180.0, "lossy": {"loss_percent_each_way": 20},
            "starved": {"share_of_a_core": 0.05, "not_measured": "no cgroup cpu controller"},
            "paused": {"pauses": 2, "seconds_each": 5.0}, "false_not_ready_polled": 1,
            "writes_per_node_per_minute": 2.0, "per_node_writes": {"node-0": 6}}
    rows = silence._gray_rows({"gray": gray}, ctx)
    assert rows[0][3] == 1 and rows[0][-1].startswith("MISSED")
    assert rows[1][-1].startswith("met")
    assert rows[2][-1] == "not measured: no cgroup cpu controller"

"""Metrics per Node, as kube-state-metrics exports Nodes; `k3net_peers` counts peers only; the
exposition passes `promtool check metrics` and contrib/prometheus/alerts.yaml passes `promtool
check rules` (Debian's prometheus package; scripts/test installs it)."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import trio
import trio.testing
from prometheus_client import generate_latest

from k3net.metrics import Metrics
from k3net.model import Node

from .helpers.inprocess import ME, Recorder, RecordingStore, agent, running
from .helpers.nodes import T0, make_node

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "contrib" / "prometheus" / "alerts.yaml"


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def scrape_of_nodes() -> Metrics:
    metrics = Metrics()
    nodes = [make_node(ME, reason="AgentReady"),
             make_node("node-b", ready="False", reason="PeerRefused"),
             make_node("node-c", ready="Unknown", reason="PeerExpired"),
             make_node("worker-1", ready=None, managed=False)]
    metrics.watch_table(lambda: nodes, ME)
    return metrics


def test_a_series_per_node_as_kube_state_metrics() -> None:
    m = scrape_of_nodes()
    cond = "k3net_node_status_condition"
    assert [sample(m, cond, node="node-b", condition="Ready", status=s)
            for s in ("true", "false", "unknown")] == [0.0, 1.0, 0.0]
    assert [sample(m, cond, node="node-c", condition="Ready", status=s)
            for s in ("true", "false", "unknown")] == [0.0, 0.0, 1.0]
    # No Ready condition: Unknown, as `k3net nodes` shows it; no reason series.
    assert sample(m, cond, node="worker-1", condition="Ready", status="unknown") == 1.0
    assert sample(m, "k3net_node_status_reason", node="node-b", condition="Ready",
                  reason="PeerRefused") == 1.0
    assert sample(m, "k3net_node_status_reason", node="worker-1", condition="Ready",
                  reason="PeerAlive") is None
    assert sample(m, "k3net_node_last_seen_timestamp_seconds", node="node-c") == T0.timestamp()
    assert [sample(m, "k3net_node_managed", node=n) for n in ("node-b", "worker-1")] == [1.0, 0.0]


def test_peers_counts_other_machines_only() -> None:
    m = scrape_of_nodes()
    assert {s: sample(m, "k3net_peers", state=s) for s in ("ready", "not_ready", "unknown")} == {
        "ready": 0.0, "not_ready": 1.0, "unknown": 2.0}


async def test_an_agent_alone_has_no_peers_and_its_own_node_series(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Recorder()
    store = RecordingStore(log)
    a = agent(log, store)
    async with running(a, store):
        # Scrapes on the autojump clock: polling costs no real time.
        with trio.fail_after(30):
            while sample(a.metrics, "k3net_node_status_condition", node=ME,  # noqa: ASYNC110
                         condition="Ready", status="true") != 1.0:
                await trio.sleep(0.1)
        assert sample(a.metrics, "k3net_peers", state="ready") == 0.0  # was 1: its own Node
        await store.create(make_node("node-b", ready="False", reason="PeerLeft"))
        with trio.fail_after(30):
            while sample(a.metrics, "k3net_peers", state="not_ready") != 1.0:  # noqa: ASYNC110
                await trio.sleep(0.1)
        assert sample(a.metrics, "k3net_node_status_reason", node="node-b", condition="Ready",
                      reason="PeerLeft") == 1.0
        assert sample(a.metrics, "k3net_name_conflict") == 0.0


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing (Debian's prometheus package; scripts/test installs it)")
    return path


def test_promtool_accepts_the_metrics() -> None:
    text = generate_latest(scrape_of_nodes().registry)
    done = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True,
                          timeout=60, check=False)
    # promtool's linter names every problem (bad names, missing HELP, counters without
    # _total, ...) and exits 1 (or 3 for lint problems only).
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


def test_promtool_accepts_the_alert_rules() -> None:
    done = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 5 rules found" in done.stdout


def test_promtool_fails_on_a_bad_rule(tmp_path: Path) -> None:
    """The check can fail: a rule with a broken expression is refused."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(ALERTS.read_text().replace("k3net_store_up == 0", "k3net_store_up == ("))
    done = subprocess.run([promtool(), "check", "rules", str(bad)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode != 0


def test_the_alerts_name_the_series_the_agent_exports() -> None:
    text = ALERTS.read_text()
    exported = generate_latest(scrape_of_nodes().registry).decode()
    for name in ("k3net_node_status_condition", "k3net_node_managed", "k3net_store_up",
                 "k3net_name_conflict"):
        assert name in text and f"# TYPE {name} gauge" in exported


async def test_a_scrape_lists_the_nodes_on_the_trio_thread_and_writes_in_a_worker() -> None:
    listed_on = []
    nodes = [make_node(ME), make_node("node-b", ready="False", reason="PeerRefused")]

    def table_nodes() -> list[Node]:
        listed_on.append(threading.current_thread())
        return nodes

    metrics = Metrics()
    metrics.watch_table(table_nodes, ME)
    text = (await metrics.exposition()).decode()
    assert listed_on == [threading.main_thread()]  # the table is read where it changes
    assert 'k3net_node_status_condition{condition="Ready",node="node-b",status="false"} 1.0' \
        in text
    assert 'k3net_peers{state="not_ready"} 1.0' in text

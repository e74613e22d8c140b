"""End to end: what an operator sees of real agents. The /events stream followed by
`k3net watch`, /metrics, `k3net nodes` against the shared etcd, `k3net peers` on the LAN, and
the agent's own errors (a taken port, an unknown interface)."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from k3lab.netns import LoopbackHost
from k3lab.nsclient import wait_for
from k3lab.raw import ETCD_PEER_PORT, ETCD_PORT, RawEtcd, write_config
from k3lab.services import EtcdServer

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("netns_ok")]

K3NET = [sys.executable, "-m", "k3net"]


class Lines:
    """A process's stdout, line by line, read by a thread so the test can wait with a bound."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def until(self, predicate: Any, timeout: float) -> list[dict[str, Any]]:
        """Messages read so far, once one satisfies `predicate`."""
        def check() -> bool:
            while True:
                try:
                    self.seen.append(self.lines.get_nowait())
                except queue.Empty:
                    break
            return any(predicate(json.loads(line)) for line in self.seen)

        wait_for(check, timeout, what="a matching event")
        return [json.loads(line) for line in self.seen]


def _metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.mark.usefixtures("etcd_ok")
def test_operator_views_of_real_agents(agents, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with LoopbackHost() as host, EtcdServer(tmp_path / "etcd", client_port=ETCD_PORT,
                                            peer_port=ETCD_PEER_PORT, netns=host.name) as etcd:
        config = write_config(tmp_path / "k3.yaml", {
            "type": "etcd", "etcd": {"endpoints": [etcd.endpoint]},
        })
        raw = RawEtcd(host, etcd.address)
        a = agents.start(host, "node-a", "--peer-ttl", "3s", port=7101, config=config)
        a.wait_ready()
        watch = host.popen(K3NET + ["watch", "--json", "ws://127.0.0.1:7101/events"],
                           stdout=subprocess.PIPE, text=True)
        events = Lines(watch)
        events.until(lambda m: m["type"] == "snapshot", 10)

        b = agents.start(host, "node-b", "--peer-ttl", "3s", port=7102, config=config)
        b.wait_ready()
        events.until(lambda m: m["type"] == "joined" and m["node"] == "node-b", 10)
        wait_for(lambda: raw.ready("node-b") == ("True", "AgentReady"), 10, what="node-b Ready")
        # node-a must have found node-b over mDNS and probed it before it leaves.
        wait_for(lambda: _metrics(a.client.get(a.url + "/metrics")[1]).get(
            ("k3net_probes_total", (("result", "confirmed"),))), 10, what="node-b probed by node-a")

        b.signal(signal.SIGTERM)
        assert b.proc.wait(3) == 0
        seen = events.until(lambda m: m["type"] == "not_ready" and m["node"] == "node-b", 5)

        # The stream: a snapshot, then node-b joining, then leaving; seq strictly increasing.
        assert seen[0]["type"] == "snapshot"
        seqs = [m["seq"] for m in seen]
        assert seqs == sorted(set(seqs))
        about_b = [m["type"] for m in seen[1:] if m.get("node") == "node-b"]
        assert about_b[0] == "joined" and about_b[-1] == "not_ready"
        left = [m for m in seen if m.get("node") == "node-b"][-1]
        assert left["ready"] == "False" and left["reason"] in ("PeerLeft", "AgentShutdown")
        # The event came after the commit: the store already says so.
        assert (raw.ready("node-b") or ("",))[0] == "False"

        # /metrics parses and its numbers moved as the scenario did.
        metrics = _metrics(a.client.get(a.url + "/metrics")[1])
        assert metrics[("k3net_probes_total", (("result", "confirmed"),))] >= 1
        assert metrics[("k3net_mdns_events_total", (("kind", "added"),))] >= 1
        assert metrics[("k3net_mdns_events_total", (("kind", "removed"),))] >= 1
        assert metrics[("k3net_event_subscribers", ())] == 1
        assert metrics[("k3net_store_up", ())] == 1
        assert metrics[("k3net_node_writes_total", (("cause", "alive"),))] >= 1

        # k3net nodes reads the shared store, like kubectl get nodes.
        table = host.run(K3NET + ["nodes", "--config", str(config)]).stdout
        rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
        assert table.splitlines()[0].split()[:3] == ["NAME", "STATUS", "REASON"]
        assert rows["node-a"][1:3] == ["Ready", "AgentReady"]
        assert rows["node-b"][1] == "NotReady"
        as_json = json.loads(host.run(K3NET + ["nodes", "--config", str(config), "-o", "json"]).stdout)
        assert {n["metadata"]["name"] for n in as_json["items"]} == {"node-a", "node-b"}
        # Without --config it asks the agent, which says the same.
        as_yaml = yaml.safe_load(host.run(
            K3NET + ["nodes", "--server", "http://127.0.0.1:7101", "-o", "yaml", "node-b"]).stdout)
        assert [n["metadata"]["name"] for n in as_yaml["items"]] == ["node-b"]
        assert as_yaml["items"][0]["status"]["conditions"][0]["status"] == "False"

        # k3net peers browses the LAN once and probes what it finds.
        peers = json.loads(host.run(
            K3NET + ["peers", "--timeout", "4s", "--json", "--interface", "lo"]).stdout)
        by_name = {p["name"]: p for p in peers}
        assert set(by_name) == {"node-a"}
        assert by_name["node-a"]["port"] == 7101

        # Agent shutdown closes the stream with 1001; the watcher reports it and keeps trying.
        a.signal(signal.SIGTERM)
        assert a.proc.wait(3) == 0
        watch.terminate()
        watch.wait(5)


def test_taken_port_and_unknown_interface_are_one_line_errors(agents) -> None:  # type: ignore[no-untyped-def]
    with LoopbackHost() as host:
        a = agents.start(host, "node-a", port=7101)
        a.wait_ready()
        taken = host.run(K3NET + ["run", "--node-name", "node-z", "--listen", "127.0.0.1:7101",
                                  "--interface", "lo"], check=False, timeout=15)
        assert taken.returncode == 1
        errors = [line for line in taken.stderr.splitlines() if "k3net run:" in line]
        assert len(errors) == 1 and "7101" in errors[0] and "in use" in errors[0]
        assert "Traceback" not in taken.stderr

        unknown = host.run(K3NET + ["run", "--node-name", "node-z", "--listen", "127.0.0.1:7102",
                                    "--interface", "eth9"], check=False, timeout=15)
        assert unknown.returncode == 2
        assert unknown.stderr.strip().count("\n") == 0 and "eth9" in unknown.stderr

"""End to end: managed, Ready Nodes whose own fields are foreign (a port annotation "²", which
`str.isdigit()` accepts and `int()` refuses; a pid "٣"; an address that is none) in a real etcd,
there before an agent starts and put while it runs. The agent keeps running, across a restart,
counts and logs the values once, follows none of those Nodes as a peer and rewrites none of
them."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from k3lab.agents import AgentProc
from k3lab.netns import LoopbackHost
from k3lab.nsclient import wait_for
from k3lab.raw import ETCD_PEER_PORT, ETCD_PORT, RawEtcd, write_config
from k3lab.services import EtcdServer

from ..helpers.require import require

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("netns_ok")]

PORT_FIELD = {"field": "k3.network/port"}


def managed_ready(name: str, port: str, *, pid: str = "4242",
                  address: str = "127.0.0.9") -> dict[str, Any]:
    """A Node as another agent would have written it, Ready, with the given port and pid."""
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name, "uid": f"node-{name}",
            "labels": {"kubernetes.io/hostname": name, "k3.network/managed": "true",
                       "k3.network/discovered": "true"},
            "annotations": {"k3.network/port": port, "k3.network/pid": pid,
                            "k3.network/lastSeen": "2026-12-01T10:00:00.000000Z"},
        },
        "status": {
            "phase": "Running",
            "addresses": [{"type": "Hostname", "address": name},
                          {"type": "InternalIP", "address": address}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "PeerAlive",
                            "lastHeartbeatTime": "2026-12-01T10:00:00Z",
                            "lastTransitionTime": "2026-12-01T10:00:00Z"}],
        },
    }


def test_foreign_port_annotation_stops_no_agent(agents: Any, tmp_path: Path) -> None:
    require(shutil.which("etcd") is not None, "needs etcd (etcd-server)")
    with LoopbackHost() as host, EtcdServer(tmp_path / "etcd", client_port=ETCD_PORT,
                                            peer_port=ETCD_PEER_PORT, netns=host.name) as etcd:
        raw = RawEtcd(host, etcd.address)
        raw.put("node-x", managed_ready("node-x", "²"))
        config = write_config(tmp_path / "k3.yaml",
                              {"type": "etcd", "etcd": {"endpoints": [etcd.endpoint]}})

        def revisions() -> dict[str, int]:
            return {name: rev for name, (_node, rev) in raw.nodes().items() if name != "node-a"}

        def running(agent: AgentProc) -> None:
            assert agent.proc.poll() is None, f"the agent exited:\n{agent.log()}"

        a = agents.start(host, "node-a", port=7101, config=config)
        a.wait_ready()
        wait_for(lambda: a.metric("k3net_foreign_values_total", **PORT_FIELD) >= 1, 10,
                 what="the foreign port annotation of node-x counted")

        # Put while it runs: a port "٣" (int() reads it as 3), a pid "²", an address that is
        # none beside a real one.
        raw.put("node-y", managed_ready("node-y", "٣", pid="²", address="10.0.0.300"))
        wait_for(lambda: a.metric("k3net_foreign_values_total", field="k3.network/pid") >= 1
                 and a.metric("k3net_foreign_values_total", field="address") >= 1, 10,
                 what="node-y's foreign pid and address counted")
        before = revisions()
        assert set(before) == {"node-x", "node-y"}
        running(a)
        peers = a.get_json("/peers")["peers"]
        assert [p["name"] for p in peers] == [], "a Node with a foreign port was followed"
        # It goes on reading them (another change to the store, a second Put of each)...
        raw.put("node-x", managed_ready("node-x", "²", pid="4243"))
        wait_for(lambda: a.metric("k3net_foreign_values_total", **PORT_FIELD) >= 3, 10,
                 what="node-x read again")
        running(a)
        # ...logs each (Node, field) once...
        log = a.log()
        assert log.count("Node node-x: foreign k3.network/port") == 1, log
        assert log.count("Node node-y: foreign k3.network/pid") == 1, log
        # ...and a restart reads them again without stopping.
        assert a.stop() == 0, a.log()
        after_first = revisions()
        a2 = agents.start(host, "node-a", port=7101, config=config)
        a2.wait_ready()
        wait_for(lambda: a2.metric("k3net_foreign_values_total", **PORT_FIELD) >= 2, 10,
                 what="the restarted agent read both foreign ports")
        running(a2)
        assert a2.get_json("/peers")["peers"] == []
        # Nothing rewrote them: only our own put of node-x changed its revision.
        assert revisions() == after_first
        assert after_first["node-y"] == before["node-y"]
        stored = raw.nodes()
        assert stored["node-x"][0]["metadata"]["annotations"]["k3.network/port"] == "²"
        assert stored["node-y"][0]["metadata"]["annotations"]["k3.network/port"] == "٣"
        assert stored["node-a"][0]["status"]["conditions"][0]["status"] == "True"

"""End to end: two hosts cloned with one node name share etcd, and mDNS cannot show them to each
other (here: each announces under its own service type). The second one says so out loud and
stands down; the Node is not rewritten back and forth (design.md section 6)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from k3lab.agents import AgentFactory
from k3lab.netns import Lan
from k3lab.nsclient import wait_for
from k3lab.raw import ETCD_PEER_PORT, ETCD_PORT, RawEtcd, write_config
from k3lab.services import EtcdServer

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("netns_ok", "etcd_ok")]


def test_a_twin_on_a_shared_etcd_stands_down_and_the_node_is_not_fought_over(
    agents: AgentFactory, tmp_path: Path
) -> None:
    with Lan(2) as lan, EtcdServer(tmp_path / "etcd", client_host=lan[0].address,
                                   client_port=ETCD_PORT, peer_port=ETCD_PEER_PORT,
                                   netns=lan[0].name) as etcd:
        raw = RawEtcd(lan[0], etcd.address)
        config = write_config(tmp_path / "k3.yaml", {
            "type": "etcd", "etcd": {"endpoints": [etcd.endpoint], "dial_timeout": "2s"}})
        first = agents.start(lan[0], "node-t", "--service", "_k3first._tcp", config=config)
        first.wait_ready()
        wait_for(lambda: raw.ready("node-t") == ("True", "AgentReady"), 10,
                 what="node-t Ready in etcd")
        node, revision = raw.nodes()["node-t"]
        pid = node["metadata"]["annotations"]["k3.network/pid"]
        twin = agents.start(lan[1], "node-t", "--service", "_k3twin._tcp", port=7950,
                            config=config)
        started = time.monotonic()
        wait_for(lambda: "held by another live agent" in twin.log(), 20,
                 what="the twin's conflict logged")
        logged = time.monotonic() - started
        assert f"at {lan[0].address}:7946" in twin.log()
        status, text = twin.client.get(twin.url + "/readyz?verbose")
        assert status == 503 and "[-]name failed: node name node-t is held" in text, text
        assert twin.client.get(twin.url + "/info")[0] == 409  # it no longer answers as node-t
        # The first agent stays ready (its mDNS registration may still be under way here).
        wait_for(lambda: first.client.get(first.url + "/readyz")[0] == 200, 10,
                 what="the first agent ready")
        wait_for(lambda: twin.metric("k3net_name_conflict") == 1, 5, what="conflict gauge")
        changes = set()
        until = time.monotonic() + 6
        while time.monotonic() < until:
            node, revision = raw.nodes()["node-t"]
            changes.add(node["metadata"]["annotations"]["k3.network/pid"])
            time.sleep(0.2)
        assert changes == {pid}  # never written by the twin
        print(f"\nmeasured: twin conflict logged {logged:.2f}s after its start")


def test_a_twin_mdns_can_see_exits_without_writing_the_node(
    agents: AgentFactory, tmp_path: Path
) -> None:
    """Where mDNS shows both, the second cannot take the name there and exits with one line
    naming the holder; it never wrote the Node first."""
    with Lan(2) as lan, EtcdServer(tmp_path / "etcd", client_host=lan[0].address,
                                   client_port=ETCD_PORT, peer_port=ETCD_PEER_PORT,
                                   netns=lan[0].name) as etcd:
        raw = RawEtcd(lan[0], etcd.address)
        config = write_config(tmp_path / "k3.yaml", {
            "type": "etcd", "etcd": {"endpoints": [etcd.endpoint], "dial_timeout": "2s"}})
        first = agents.start(lan[0], "node-t", config=config)
        first.wait_ready()
        wait_for(lambda: raw.ready("node-t") == ("True", "AgentReady"), 10,
                 what="node-t Ready in etcd")
        _, revision = raw.nodes()["node-t"]
        twin = agents.start(lan[1], "node-t", config=config, port=7950)
        assert twin.proc.wait(20) != 0
        assert lan[0].address in twin.log()
        node, after = raw.nodes()["node-t"]
        # only the first agent's own refreshes (lastSeen) may have changed it since
        assert node["metadata"]["annotations"]["k3.network/port"] == "7946"
        assert node["metadata"]["annotations"]["k3.network/pid"] == str(first.proc.pid)

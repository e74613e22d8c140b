"""End to end with shared stores: agents on namespace hosts share one etcd or one MariaDB, as
machines of a k3 cluster do. The store is read raw (etcdctl, SQL), the way the Go k3
components read it, never through k3net."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from k3lab.agents import AgentFactory, ready
from k3lab.netns import Lan, LoopbackHost
from k3lab.nsclient import wait_for
from k3lab.raw import ETCD_PEER_PORT, ETCD_PORT, RawEtcd, RawMariaDB, write_config
from k3lab.services import EtcdServer, MariaDBServer

from .helpers.require import require

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("netns_ok", "etcd_ok")]

UNMANAGED_C = {
    "apiVersion": "v1", "kind": "Node",
    "metadata": {"name": "node-c", "uid": "controller-uid-c",
                 "labels": {"kubernetes.io/hostname": "node-c", "team": "infra"}},
    "spec": {"podCIDR": "10.244.3.0/24"},
    "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletDown"}]},
}

MANAGED_B_WITH_EXTRAS = {
    "apiVersion": "v1", "kind": "Node",
    "metadata": {
        "name": "node-b", "uid": "node-node-b",
        "labels": {"k3.network/managed": "true", "zone": "rack-2"},
        "annotations": {"k3.network/lastSeen": "2020-01-01T00:00:00Z", "owner": "ops"},
        "finalizers": ["k3.io/keep"],
    },
    "spec": {"podCIDR": "10.244.2.0/24", "taints": [{"key": "gpu", "effect": "NoSchedule"}]},
    "status": {
        "capacity": {"cpu": "4", "memory": "8Gi"},
        "nodeInfo": {"kubeletVersion": "v1.30.0"},
        "conditions": [
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
            {"type": "Ready", "status": "Unknown", "reason": "PeerExpired"},
        ],
        "addresses": [{"type": "ExternalIP", "address": "203.0.113.7"}],
    },
    "futureField": {"kept": True},
}


def test_agents_share_etcd_and_respect_other_writers(agents: AgentFactory, tmp_path: Path) -> None:
    with Lan(3) as lan:
        store_host = lan[0]
        with EtcdServer(tmp_path / "etcd", client_host=store_host.address,
                        client_port=ETCD_PORT, peer_port=ETCD_PEER_PORT, netns=store_host.name) as etcd:
            raw = RawEtcd(store_host, etcd.address)
            raw.put("node-c", UNMANAGED_C)
            raw.put("node-b", MANAGED_B_WITH_EXTRAS)
            c_before = raw.nodes()["node-c"]
            config = write_config(tmp_path / "k3.yaml", {
                "type": "etcd", "etcd": {"endpoints": [etcd.endpoint], "dial_timeout": "2s"},
            })
            names = ["node-a", "node-b", "node-c"]
            procs = [agents.start(h, n, "--peer-ttl", "3s", config=config)
                     for h, n in zip(lan.hosts, names, strict=True)]
            for proc in procs:
                proc.wait_ready()
            wait_for(lambda: raw.ready("node-a") == ("True", "AgentReady")
                     and raw.ready("node-b") == ("True", "AgentReady"), 10,
                     what="node-a and node-b Ready in etcd")
            # Let k3net rewrite node-b a few times (lastSeen refreshes, every ttl/3) while
            # every agent probes node-c: each write is a chance to lose a field, each probe of
            # node-c a chance to touch a Node that is not ours.
            revisions = {raw.nodes()["node-b"][1]}

            def rewritten() -> bool:
                revisions.add(raw.nodes()["node-b"][1])
                return len(revisions) >= 4

            wait_for(rewritten, 10, what="three more writes of node-b")
            assert all(agent.metric("k3net_probes_total") > 0 for agent in procs)

            # The unmanaged node-c (the k3 controller's) is exactly as it was: same revision.
            assert raw.nodes()["node-c"] == c_before
            # node-b was updated by k3net, and everything k3net does not own survived.
            node_b, _ = raw.nodes()["node-b"]
            assert ready(node_b) == ("True", "AgentReady")
            assert node_b["futureField"] == {"kept": True}
            assert node_b["metadata"]["finalizers"] == ["k3.io/keep"]
            assert node_b["metadata"]["labels"]["zone"] == "rack-2"
            assert node_b["metadata"]["annotations"]["owner"] == "ops"
            assert node_b["spec"] == MANAGED_B_WITH_EXTRAS["spec"]
            assert node_b["status"]["capacity"] == {"cpu": "4", "memory": "8Gi"}
            assert node_b["status"]["nodeInfo"] == {"kubeletVersion": "v1.30.0"}
            assert {"type": "MemoryPressure", "status": "False",
                    "reason": "KubeletHasSufficientMemory"} in node_b["status"]["conditions"]
            assert {"type": "ExternalIP", "address": "203.0.113.7"} in node_b["status"]["addresses"]
            assert {"type": "InternalIP", "address": lan[1].address} in node_b["status"]["addresses"]

            # Graceful stop of node-a: False in the shared store, whoever writes it first.
            procs[0].signal(signal.SIGTERM)
            wait_for(lambda: (raw.ready("node-a") or ("",))[0] == "False", 3,
                     what="node-a False in etcd")
            assert procs[0].proc.wait(3) == 0


def test_agents_share_mariadb(agents: AgentFactory, tmp_path: Path) -> None:
    require(shutil.which("mariadb-install-db") is not None, "needs MariaDB (mariadb-server)")
    with MariaDBServer(tmp_path / "db") as db, Lan(3) as lan:
        db.sql("CREATE DATABASE k3")
        config = write_config(tmp_path / "k3.yaml", {
            "type": "mysql",
            "mysql": {"socket": db.socket, "user": "root", "database": "k3",
                      "poll_interval": "200ms"},
        })
        names = ["node-a", "node-b", "node-c"]
        # Without self-registration every Node is written by the OTHER agents: all three Ready
        # proves that they found each other over mDNS and share the store.
        procs = [agents.start(h, n, "--peer-ttl", "3s", "--register-self=false", config=config)
                 for h, n in zip(lan.hosts, names, strict=True)]
        for proc in procs:
            proc.wait_ready()

        raw = RawMariaDB(db.sql, "k3")

        def all_ready() -> bool:
            rows = raw.nodes()
            return all(ready(rows.get(n)) == ("True", "PeerAlive") for n in names)

        wait_for(all_ready, 10, what="every node Ready in MariaDB")
        procs[2].signal(signal.SIGTERM)
        wait_for(lambda: raw.ready("node-c") == ("False", "PeerLeft"), 3,
                 what="node-c PeerLeft in MariaDB")


def _outage(agents: AgentFactory, store_config: dict[str, Any], stop: Callable[[], None],
            start: Callable[[], None],
            read_ready: Callable[[str], tuple[str, str] | None],
            host: LoopbackHost, tmp_path: Path) -> None:
    config = write_config(tmp_path / "k3.yaml", store_config)
    # Without self-registration each Node is written by the other agent: both Ready means both
    # found each other over mDNS before the outage starts.
    a = agents.start(host, "node-a", "--peer-ttl", "3s", "--register-self=false", port=7101,
                     config=config)
    b = agents.start(host, "node-b", "--peer-ttl", "3s", "--register-self=false", port=7102,
                     config=config)
    a.wait_ready()
    b.wait_ready()
    wait_for(lambda: read_ready("node-a") == ("True", "PeerAlive")
             and read_ready("node-b") == ("True", "PeerAlive"), 10, what="both Ready")
    # Peers can find us before our own registration completes: ready waits for it too.
    wait_for(lambda: a.client.get(a.url + "/readyz")[0] == 200, 10, what="/readyz 200")

    stop()
    wait_for(lambda: a.client.get(a.url + "/readyz")[0] == 503, 10, what="/readyz 503")
    status, body = a.client.get(a.url + "/readyz")
    assert "store" in body
    assert a.client.get(a.url + "/healthz") == (200, "ok\n")
    b.signal(signal.SIGTERM)  # a peer leaves while the store is down
    assert b.proc.wait(3) == 0  # within 3 s although its last write cannot land
    # a has news to write (node-b left) and no store: it must keep trying, and keep running.
    failed = a.metric("k3net_store_operations_total", result="unavailable")
    wait_for(lambda: a.metric("k3net_store_operations_total", result="unavailable")
             >= failed + 2, 15, what="node-a retrying its writes while the store is down")
    assert a.proc.poll() is None, "the agent must keep running while the store is down"

    start()
    # Bounded polling, not a timing goal: how fast is measured by `nox -s lan` (outage).
    wait_for(lambda: read_ready("node-b") == ("False", "PeerLeft"), 10,
             what="node-b PeerLeft in the store after the outage")
    wait_for(lambda: a.client.get(a.url + "/readyz")[0] == 200, 5, what="/readyz 200 again")
    assert a.proc.poll() is None


def test_agent_survives_etcd_outage(agents: AgentFactory, tmp_path: Path) -> None:
    with LoopbackHost() as host, EtcdServer(tmp_path / "etcd", client_port=ETCD_PORT,
                                            peer_port=ETCD_PEER_PORT, netns=host.name) as etcd:
        raw = RawEtcd(host, etcd.address)
        _outage(agents, {"type": "etcd", "etcd": {"endpoints": [etcd.endpoint]}},
                etcd.stop, etcd.start, raw.ready, host, tmp_path)


def test_agent_survives_mariadb_outage(agents: AgentFactory, tmp_path: Path) -> None:
    require(shutil.which("mariadb-install-db") is not None, "needs MariaDB (mariadb-server)")
    with MariaDBServer(tmp_path / "db") as db, LoopbackHost() as host:
        db.sql("CREATE DATABASE k3")

        _outage(
            agents,
            {"type": "mysql", "mysql": {"socket": db.socket, "database": "k3",
                                        "poll_interval": "200ms"}},
            db.stop, db.start, RawMariaDB(db.sql, "k3").ready, host, tmp_path,
        )


def test_a_store_that_blips_more_often_than_peer_ttl_still_expires_a_dead_node(
    agents: AgentFactory, tmp_path: Path,
) -> None:
    # A dead machine's Node (managed, Ready, no port: nobody can probe it, only expiry judges
    # it) in an etcd that restarts more often than peer-ttl. Every restart is a watch
    # reconnect; the time before each one still counts, so the Node expires all the same.
    dead = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-dead", "uid": "node-node-dead",
                     "labels": {"k3.network/managed": "true"},
                     "annotations": {"k3.network/lastSeen": "2026-01-01T00:00:00.000000Z"}},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "PeerAlive"}]},
    }
    with LoopbackHost() as host, EtcdServer(tmp_path / "etcd", client_port=ETCD_PORT,
                                            peer_port=ETCD_PEER_PORT, netns=host.name) as etcd:
        raw = RawEtcd(host, etcd.address)
        raw.put("node-dead", dead)
        config = write_config(tmp_path / "k3.yaml", {
            "type": "etcd", "etcd": {"endpoints": [etcd.endpoint], "dial_timeout": "1s"},
        })
        a = agents.start(host, "node-a", "--peer-ttl", "4s", config=config)
        a.wait_ready()
        deadline = time.monotonic() + 40
        blips = 0
        while raw.ready("node-dead") == ("True", "PeerAlive"):
            assert time.monotonic() < deadline, f"node-dead still Ready after {blips} blips"
            time.sleep(2.0)  # up for 2 s (half of peer-ttl), then a restart
            etcd.stop(crash=True)
            etcd.start()
            blips += 1
        assert raw.ready("node-dead") == ("Unknown", "PeerExpired")
        assert blips >= 2, "the store must have blipped while the Node aged"
        assert "store watch resumed" in a.log()

"""End to end: values under the Node prefix that are not Nodes, next to live agents. The agents
keep running, report the values on /metrics, keep writing every other Node, and leave the
foreign values exactly as they were (byte for byte), even the one that sits under a live
agent's own name."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from k3lab.agents import AgentProc, ready
from k3lab.netns import LoopbackHost
from k3lab.nsclient import wait_for
from k3lab.raw import ETCD_PEER_PORT, ETCD_PORT, PREFIX, RawEtcd, write_config
from k3lab.services import EtcdServer, MariaDBServer
from k3net.store.mysql import CREATE_TABLE

from ..helpers.require import require

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("netns_ok")]

CONFIGMAP = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}})


def metric(agent: AgentProc, name: str, **labels: str) -> float:
    """One sample of the agent's /metrics (0 if absent)."""
    status, text = agent.client.get(agent.url + "/metrics")
    assert status == 200
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z0-9_:]+)(?:\{(.*)\})? (\S+)", line)
        if match and match.group(1) == name and ",".join(
            sorted((match.group(2) or "").split(","))
        ).strip(",") == want:
            return float(match.group(3))
    return 0.0


def run_agents_next_to_foreign_data(
    agents: Any, host: LoopbackHost, config: Path, node_ready: Any, snapshot: Any
) -> None:
    before = snapshot()
    a = agents.start(host, "node-a", "--peer-ttl", "3s", port=7101, config=config)
    b = agents.start(host, "node-b", "--peer-ttl", "3s", port=7102, config=config)
    a.wait_ready()
    b.wait_ready()

    def settled() -> bool:
        for agent in (a, b):
            assert agent.proc.poll() is None, f"{agent.name} exited:\n{agent.log()}"
        return (
            node_ready("node-a") == ("True", "AgentReady")
            and all(metric(x, "k3net_store_foreign_values") == 2 for x in (a, b))
            # node-b's own registration, and node-a's write for its peer node-b, both found
            # the foreign value and left it alone.
            and all(metric(x, "k3net_store_operations_total", op="get", result="foreign") >= 1
                    for x in (a, b))
        )

    wait_for(settled, 15, what="node-a Ready, both agents seeing and sparing the foreign values")
    assert a.proc.poll() is None and b.proc.poll() is None
    assert snapshot() == before
    names = sorted(n["metadata"]["name"] for n in a.get_json("/nodes")["items"])
    assert names == ["node-a"]


def test_etcd_values_that_are_not_nodes(agents: Any, tmp_path: Path) -> None:
    require(shutil.which("etcd") is not None, "needs etcd (etcd-server)")
    with LoopbackHost() as host, EtcdServer(tmp_path / "etcd", client_port=ETCD_PORT,
                                            peer_port=ETCD_PEER_PORT, netns=host.name) as etcd:
        raw = RawEtcd(host, etcd.address)
        raw._ctl("put", PREFIX + "node-b", stdin="{damaged")
        raw._ctl("put", PREFIX + "settings", stdin=CONFIGMAP)

        def kvs(name: str) -> list[tuple[str, bytes, int]]:
            out = json.loads(raw._ctl("get", PREFIX + name, "-w", "json"))
            return [(base64.b64decode(kv["key"]).decode(), base64.b64decode(kv["value"]),
                     int(kv["mod_revision"])) for kv in out.get("kvs", [])]

        def snapshot() -> list[tuple[str, bytes, int]]:
            return kvs("node-b") + kvs("settings")

        def node_ready(name: str) -> tuple[str, str] | None:
            found = kvs(name)
            return ready(json.loads(found[0][1])) if found else None

        config = write_config(tmp_path / "k3.yaml",
                              {"type": "etcd", "etcd": {"endpoints": [etcd.endpoint]}})
        run_agents_next_to_foreign_data(agents, host, config, node_ready, snapshot)


def test_mariadb_rows_that_are_not_nodes(agents: Any, tmp_path: Path) -> None:
    require(shutil.which("mariadb-install-db") is not None, "needs MariaDB (mariadb-server)")
    with MariaDBServer(tmp_path / "db") as db, LoopbackHost() as host:
        db.sql("CREATE DATABASE k3")
        config = write_config(tmp_path / "k3.yaml", {
            "type": "mysql",
            "mysql": {"socket": db.socket, "database": "k3", "poll_interval": "200ms"},
        })
        # The table as k3net creates it, with two rows that are not Nodes (as another writer
        # could leave them): under a live agent's own name, and under a name nobody uses.
        db.sql(f"USE k3; {CREATE_TABLE}")
        db.sql("INSERT INTO k3.k8s_core_v1_node (name, uid, resource_version, labels, status,"
               " updated_at) VALUES ('node-b', 'go-b', '17', '\"x\"', '{}', NOW(3)),"
               " ('settings', 'go-s', '3', '{}', '[1, 2]', NOW(3))")

        def snapshot() -> str:
            return db.sql("SELECT * FROM k3.k8s_core_v1_node WHERE name IN ('node-b', 'settings')"
                          " ORDER BY id")

        def node_ready(name: str) -> tuple[str, str] | None:
            out = db.sql("SELECT status FROM k3.k8s_core_v1_node WHERE deleted_at IS NULL"
                         f" AND name = '{name}'")
            return ready({"status": json.loads(out)}) if out.strip() else None

        run_agents_next_to_foreign_data(agents, host, config, node_ready, snapshot)

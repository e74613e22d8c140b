"""The shared stores read and written raw, as the Go k3 store does: never through k3net."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from k3lab.agents import ready
from k3lab.netns import Host
from k3lab.services import EtcdServer

PREFIX = "/kubernetes//v1/Node/"
TABLE = "k8s_core_v1_node"
ETCD_PORT, ETCD_PEER_PORT = 23795, 23805
SLOW_PORT = 23796  # k3lab.slowlink in front of etcd (`lan_etcd(delay=...)`)


class RawEtcd:
    """etcdctl run in the store's namespace: reads and writes exactly what the Go store does."""

    def __init__(self, host: Host, address: str) -> None:
        self.host, self.address = host, address

    def _ctl(self, *args: str, stdin: str | None = None) -> str:
        done = self.host.run(["etcdctl", f"--endpoints={self.address}", "--command-timeout=3s",
                              *args], input=stdin, timeout=10)
        return done.stdout

    def put(self, name: str, node: dict[str, Any]) -> None:
        # `etcdctl put KEY` reads the value from stdin when none is given.
        self._ctl("put", PREFIX + name, stdin=json.dumps(node))

    def nodes(self) -> dict[str, tuple[dict[str, Any], int]]:
        """name -> (Node JSON, mod_revision)."""
        out = json.loads(self._ctl("get", "--prefix", PREFIX, "-w", "json"))
        result = {}
        for kv in out.get("kvs", []):
            key = base64.b64decode(kv["key"]).decode()
            result[key.removeprefix(PREFIX)] = (
                json.loads(base64.b64decode(kv["value"])), int(kv["mod_revision"])
            )
        return result

    def ready(self, name: str) -> tuple[str, str] | None:
        entry = self.nodes().get(name)
        return ready(entry[0]) if entry else None


class RawMariaDB:
    """The Node table read with plain SQL as root, through `run_sql` (for example
    `MariaDBServer.sql`): what the Go store's rows hold, never through k3net."""

    def __init__(self, run_sql: Callable[[str], str], database: str) -> None:
        self.run_sql, self.database = run_sql, database

    def nodes(self) -> dict[str, dict[str, Any]]:
        """name -> {"status": the status column} of every row not soft-deleted."""
        out = self.run_sql(f"SELECT name, status FROM {self.database}.{TABLE} "
                           "WHERE deleted_at IS NULL")
        rows = {}
        for line in out.splitlines():
            name, status = line.split("\t", 1)
            rows[name] = {"status": json.loads(status)}
        return rows

    def ready(self, name: str) -> tuple[str, str] | None:
        return ready(self.nodes().get(name))


def write_config(path: Path, storage: dict[str, Any]) -> Path:
    """A k3 config file with this storage section (JSON is YAML)."""
    path.write_text(json.dumps({"storage": storage}))
    return path


@contextmanager
def lan_etcd(host: Host, workdir: Path, *, delay: float = 0.0
             ) -> Iterator[tuple[EtcdServer, RawEtcd, Path]]:
    """An etcd in `host`'s namespace on its LAN address (the LAN's shared store), raw access to
    it, and a k3 config file (in `workdir`) that points agents at it; stopped at the end. With a
    `delay`, the agents reach it through `k3lab.slowlink`, every byte that much late each way (a
    store far away or slow to answer); raw access goes to etcd itself."""
    with EtcdServer(workdir / "etcd", client_host=host.address, client_port=ETCD_PORT,
                    peer_port=ETCD_PEER_PORT, netns=host.name) as etcd:
        endpoint = etcd.endpoint
        relay = None
        if delay:
            relay = host.popen([sys.executable, "-m", "k3lab.slowlink",
                                "--listen", f"{host.address}:{SLOW_PORT}",
                                "--to", etcd.address, "--delay", str(delay)],
                               stdout=subprocess.PIPE, text=True)
            assert relay.stdout is not None
            if "listening" not in relay.stdout.readline():
                raise RuntimeError("k3lab.slowlink did not start")
            endpoint = f"http://{host.address}:{SLOW_PORT}"
        config = write_config(workdir / "k3.yaml", {
            "type": "etcd", "etcd": {"endpoints": [endpoint], "dial_timeout": "2s"},
        })
        try:
            yield etcd, RawEtcd(host, etcd.address), config
        finally:
            if relay is not None:
                relay.terminate()
                relay.wait(10)

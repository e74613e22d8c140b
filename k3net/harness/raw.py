"""The shared stores read and written raw, as the Go k3 store does: never through k3net."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from k3net.harness.agents import ready
from k3net.harness.netns import Host

PREFIX = "/kubernetes//v1/Node/"
ETCD_PORT, ETCD_PEER_PORT = 23795, 23805


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


def write_config(path: Path, storage: dict[str, Any]) -> Path:
    """A k3 config file with this storage section (JSON is YAML)."""
    path.write_text(json.dumps({"storage": storage}))
    return path

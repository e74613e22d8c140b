"""The one shared store of a simulated LAN, reachable from every host, and its watcher.

- etcd: a private etcd (k3lab.services.EtcdServer) inside the LAN's bridge namespace,
  listening on STORE_ADDRESS, an address added to the bridge br0: every host reaches it over its
  eth0, and a host whose link is cut cannot reach it (as on a real LAN).
- mysql: a private MariaDB (k3lab.services.MariaDBServer) reached through its unix
  socket, which crosses namespaces; the database DATABASE is created for the run and dropped at the end. A
  private server, so that the outage scenario can stop it without touching the machine's
  MariaDB; `--mysql-socket` uses an existing server instead (no outage scenario then).
- memory: every agent has its own store; the watcher reads agent 0's /nodes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from k3lab.netns import Lan
from k3lab.nsclient import NetnsClient
from k3lab.services import EtcdServer, MariaDBServer
from k3lab.sim.store_watch import AgentNodesReader, EtcdReader, MySQLReader, StoreWatcher

DATABASE = "k3net_lan"
ETCD_PORT, ETCD_PEER_PORT = 2379, 2380
SLOW_PORT = 2378  # k3lab.slowlink in front of etcd (`delay`)


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(10)


def store_address(subnet: str) -> str:
    """The bridge's own address: the last host address of the LAN's subnet."""
    return str(list(ipaddress.ip_network(subnet).hosts())[-1])


class SimStore:
    """kind, config (path for `k3net run --config`, None for memory), watcher, stop/start."""

    def __init__(self, kind: str, workdir: Path, lan: Lan, subnet: str,
                 mysql_socket: str | None = None, delay: float = 0.0) -> None:
        self.kind = kind
        # etcd only: agents reach it through k3lab.slowlink, every byte `delay` s late each way
        # (a store far away or slow to sync); the watcher reads etcd itself.
        self.delay = delay
        self.workdir = workdir
        self.lan = lan
        self.config: Path | None = None
        self.where = ""
        self.can_stop = kind != "memory"
        # The store's address and port on the LAN (etcd; None: not on the LAN).
        self.address: str | None = None
        self.port: int | None = None
        self._stack = contextlib.ExitStack()
        self._server: Any = None
        self._reader: Any = None
        self._shared_socket = mysql_socket
        try:
            if kind == "etcd":
                self._etcd(subnet)
            elif kind == "mysql":
                self._mysql()
        except BaseException:
            self.close()
            raise

    def _etcd(self, subnet: str) -> None:
        br = self.lan.bridge_namespace
        address = store_address(subnet)
        prefix = ipaddress.ip_network(subnet).prefixlen
        subprocess.run(["ip", "-n", br, "addr", "add", f"{address}/{prefix}", "dev", "br0"],
                       check=True, capture_output=True, timeout=15)
        self._server = EtcdServer(self.workdir / "etcd", client_host=address,
                                  client_port=ETCD_PORT, peer_port=ETCD_PEER_PORT, netns=br)
        self._server.start()
        self._stack.callback(self._server.stop)
        self.address, self.port = address, ETCD_PORT  # where agents reach it
        client = NetnsClient(br)
        self._stack.callback(client.close)
        self._reader = EtcdReader(self._server.address, call=client.call)
        self.where = f"etcd {self._server.endpoint} on br0 (bridge namespace)"
        endpoint = self._server.endpoint
        if self.delay:
            self.port = SLOW_PORT
            relay = subprocess.Popen(
                ["ip", "netns", "exec", br, sys.executable, "-m", "k3lab.slowlink",
                 "--listen", f"{address}:{SLOW_PORT}", "--to", self._server.address,
                 "--delay", str(self.delay)], stdout=subprocess.PIPE, text=True)
            self._stack.callback(_stop, relay)
            assert relay.stdout is not None
            if "listening" not in relay.stdout.readline():
                raise RuntimeError("k3lab.slowlink did not start")
            endpoint = f"http://{address}:{SLOW_PORT}"
            self.where += f", reached through a relay {self.delay * 1000:g} ms late each way"
        self.config = self._write_config(
            "storage:\n  type: etcd\n  etcd:\n"
            f"    endpoints: [\"{endpoint}\"]\n    dial_timeout: 2s\n")

    def _mysql(self) -> None:
        if self._shared_socket:
            socket = self._shared_socket
            self.can_stop = False
            sql = self._shared_sql
            self.where = f"MariaDB at {socket} (shared server), database {DATABASE}"
        else:
            self._server = MariaDBServer(self.workdir / "db")
            self._server.start()
            self._stack.callback(self._server.stop)
            socket = self._server.socket
            sql = self._server.sql
            self.where = f"private MariaDB, socket {socket}, database {DATABASE}"
        self._sql = sql
        sql(f"DROP DATABASE IF EXISTS {DATABASE}; CREATE DATABASE {DATABASE}")
        self._stack.callback(self._drop_database)
        self._reader = MySQLReader(socket, DATABASE)
        self.config = self._write_config(
            "storage:\n  type: mysql\n  mysql:\n"
            f"    socket: {socket}\n    database: {DATABASE}\n    user: root\n"
            "    password: \"\"\n")

    def _shared_sql(self, statement: str) -> str:
        done = subprocess.run(
            ["mariadb", "--protocol=socket", f"--socket={self._shared_socket}", "-uroot",
             "--connect-timeout=2", "--batch", "--skip-column-names", "-e", statement],
            capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"mariadb: {statement!r}: {done.stderr.strip()}")
        return done.stdout

    def _drop_database(self) -> None:
        if self._server is None or self._server.running:
            with contextlib.suppress(Exception):
                self._sql(f"DROP DATABASE IF EXISTS {DATABASE}")

    def _write_config(self, text: str) -> Path:
        path = self.workdir / f"k3-{self.kind}.yaml"
        path.write_text(text)
        return path

    def watcher(self, agent0: Any = None, interval: float = 0.05) -> StoreWatcher:
        reader = self._reader
        if self.kind == "memory":
            reader = AgentNodesReader(agent0.url, call=agent0.client.call)
        return StoreWatcher(reader, interval)

    def stop(self) -> float:
        """Stop the store (SIGTERM); the time it was stopped."""
        self._server.stop()
        return time.monotonic()

    def start(self) -> float:
        """Start it again on the same data; the time it answers again."""
        self._server.start()
        return time.monotonic()

    def close(self) -> None:
        self._stack.close()

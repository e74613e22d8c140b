"""Watch the Nodes in a store from the store's point of view, for the LAN simulation.

A thread polls the store every `interval` (50 ms by default) and keeps, per Node, its Ready
condition (status, reason), its pid annotation and how many times it was written, plus a history
of every (status, reason) change with the time it was first seen (time.monotonic(), which is the
same clock in every process of the machine, so it compares with the start times of agents).

Readers, one per store, all independent of k3net's own store code:

- etcd: the gRPC gateway of etcd (`POST /v3/kv/range` over HTTP) from inside the namespace the
  store lives in; writes are counted exactly by each key's `version` (etcd counts every put), and
  the header revision counts every write to the whole store;
- mysql: `SELECT` over the unix socket with PyMySQL; writes are counted as changes of
  `resource_version` between polls (two writes within one poll interval count as one);
- memory: each agent has its own store, so this is agent 0's `GET /nodes` (its view only).

A poll that fails marks the store down (`up` False) and keeps the last known state.

    watcher = StoreWatcher(EtcdReader(ns_client, "10.77.0.250:2379"))
    watcher.start()
    t = watcher.wait_until(lambda s: s.ready("node-1") == ("False", "PeerLeft"), timeout=5)

Standalone, it prints every change as one JSON line until Ctrl-C (at most --duration seconds):

    ip netns exec <ns> python -m k3lab.sim.store_watch --etcd 10.77.0.250:2379
    python -m k3lab.sim.store_watch --mysql-socket /run/mysqld/mysqld.sock --database k3net_lan
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ETCD_PREFIX = "/kubernetes//v1/Node/"
MYSQL_TABLE = "k8s_core_v1_node"
# One HTTP or SQL call of the poller may take at most this long.
CALL_TIMEOUT = 2.0


@dataclass
class NodeView:
    status: str | None
    reason: str | None
    pid: str | None
    last_seen: str | None
    version: str  # whatever changes on every write of this Node


@dataclass
class Reading:
    nodes: dict[str, NodeView]
    writes: dict[str, int] | None = None  # exact per-Node write counters, if the store has them
    revision: int | None = None  # store-wide write counter, if the store has one


class StoreDown(Exception):
    pass


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def ready_of(node: dict[str, Any]) -> tuple[str | None, str | None]:
    """The Ready condition's (status, reason); (None, None) if there is none, also in a Node
    whose fields have the wrong JSON types (hostile or broken writers put those in stores)."""
    conditions = _dict(node.get("status")).get("conditions")
    for cond in conditions if isinstance(conditions, list) else []:
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            return cond.get("status"), cond.get("reason")
    return None, None


def view_of(node: dict[str, Any], version: str) -> NodeView:
    status, reason = ready_of(node)
    ann = _dict(_dict(node.get("metadata")).get("annotations"))
    return NodeView(status, reason, ann.get("k3.network/pid"), ann.get("k3.network/lastSeen"),
                    version)


# --- readers ----------------------------------------------------------------------------------


class EtcdReader:
    """etcd's JSON gateway. `call` runs a function where the store is reachable (e.g. a
    NetnsClient's thread inside the store's namespace); default: this thread."""

    kind = "etcd"

    def __init__(self, address: str, call: Callable[..., Any] | None = None) -> None:
        self.url = f"http://{address}/v3/kv/range"
        self.call = call or (lambda fn: fn())
        end = ETCD_PREFIX[:-1] + chr(ord(ETCD_PREFIX[-1]) + 1)
        self.body = json.dumps({
            "key": base64.b64encode(ETCD_PREFIX.encode()).decode(),
            "range_end": base64.b64encode(end.encode()).decode(),
        }).encode()

    def _fetch(self) -> dict[str, Any]:
        req = urllib.request.Request(self.url, data=self.body, method="POST")
        with urllib.request.urlopen(req, timeout=CALL_TIMEOUT) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def read(self) -> Reading:
        try:
            data = self.call(self._fetch)
        except (OSError, ValueError) as exc:
            raise StoreDown(str(exc)) from None
        nodes, writes = {}, {}
        for kv in data.get("kvs", []):
            name = base64.b64decode(kv["key"]).decode().removeprefix(ETCD_PREFIX)
            try:
                node = json.loads(base64.b64decode(kv.get("value", "")))
            except ValueError:
                continue
            if not isinstance(node, dict):
                continue
            nodes[name] = view_of(node, kv["mod_revision"])
            writes[name] = int(kv.get("version", 0))
        return Reading(nodes, writes, int(data["header"]["revision"]))


class MySQLReader:
    kind = "mysql"

    def __init__(self, socket: str, database: str, user: str = "root", password: str = "") -> None:
        self.args = dict(unix_socket=socket, database=database, user=user, password=password,
                         autocommit=True, connect_timeout=CALL_TIMEOUT,
                         read_timeout=CALL_TIMEOUT, write_timeout=CALL_TIMEOUT)
        self.conn: Any = None

    def read(self) -> Reading:
        import pymysql

        try:
            if self.conn is None:
                self.conn = pymysql.connect(**self.args)
            with self.conn.cursor() as cur:
                cur.execute(f"SELECT name, resource_version, annotations, status FROM {MYSQL_TABLE}"
                            " WHERE deleted_at IS NULL ORDER BY id")
                rows = cur.fetchall()
        except pymysql.err.ProgrammingError as exc:
            if exc.args and exc.args[0] == 1146:  # table not created yet: no Nodes
                return Reading({})
            self._drop()
            raise StoreDown(str(exc)) from None
        except (pymysql.err.Error, OSError) as exc:
            self._drop()
            raise StoreDown(str(exc)) from None
        nodes = {}
        for name, version, ann, status in rows:
            if name in nodes:
                continue  # the lowest id is the Node, as the Go ORM's First
            node = {"metadata": {"annotations": json.loads(ann or "{}")},
                    "status": json.loads(status or "{}")}
            nodes[name] = view_of(node, str(version))
        return Reading(nodes)

    def _drop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass
        self.conn = None


class AgentNodesReader:
    """The memory store: agent's own `GET /nodes` (what this one agent's store holds)."""

    kind = "memory"

    def __init__(self, url: str, call: Callable[..., Any] | None = None) -> None:
        self.url = url.rstrip("/") + "/nodes"
        self.call = call or (lambda fn: fn())

    def _fetch(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url, timeout=CALL_TIMEOUT) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def read(self) -> Reading:
        try:
            data = self.call(self._fetch)
        except (OSError, ValueError) as exc:
            raise StoreDown(str(exc)) from None
        nodes: dict[str, NodeView] = {}
        for node in data.get("items", []):
            meta = node.get("metadata") or {}
            nodes[str(meta.get("name"))] = view_of(node, str(meta.get("resourceVersion")))
        return Reading(nodes)


# --- the watcher ------------------------------------------------------------------------------


@dataclass
class Transition:
    t: float
    node: str
    old: tuple[str | None, str | None] | None
    new: tuple[str | None, str | None] | None


@dataclass
class State:
    """What the watcher knows, as one consistent copy (see StoreWatcher.snapshot)."""

    t: float = 0.0
    up: bool = False
    nodes: dict[str, NodeView] = field(default_factory=dict)
    writes: dict[str, int] = field(default_factory=dict)  # cumulative, since the watcher began
    revision: int | None = None
    polls: int = 0
    failures: int = 0

    def ready(self, name: str) -> tuple[str | None, str | None] | None:
        v = self.nodes.get(name)
        return None if v is None else (v.status, v.reason)

    def status(self, name: str) -> str | None:
        v = self.nodes.get(name)
        return None if v is None else v.status


class StoreWatcher:
    def __init__(self, reader: Any, interval: float = 0.05) -> None:
        self.reader = reader
        self.interval = interval
        self.kind = reader.kind
        self.history: list[Transition] = []
        self.outages: list[tuple[float, float | None]] = []  # (down since, up again at)
        self._state = State()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-watch", daemon=True)
        self._counted: dict[str, int] = {}  # writes base (etcd) or last version (others)
        self._last_version: dict[str, str] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(CALL_TIMEOUT * 3)

    def pause(self, paused: bool) -> None:
        """Stop polling for a while (e.g. not to load an agent whose CPU is being measured)."""
        if paused:
            self._paused.set()
        else:
            self._paused.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._paused.is_set():
                time.sleep(self.interval)
                continue
            try:
                reading = self.reader.read()
            except StoreDown:
                now = time.monotonic()
                with self._cond:
                    if self._state.up or not self.outages:
                        self.outages.append((now, None))
                    self._state.up = False
                    self._state.failures += 1
                    self._state.t = now
                    self._cond.notify_all()
            else:
                self._apply(reading, time.monotonic())
            self._stop.wait(self.interval)

    def _apply(self, reading: Reading, now: float) -> None:
        with self._cond:
            s = self._state
            if not s.up and self.outages and self.outages[-1][1] is None:
                self.outages[-1] = (self.outages[-1][0], now)
            s.up, s.t, s.polls = True, now, s.polls + 1
            s.revision = reading.revision
            for name in set(s.nodes) | set(reading.nodes):
                old, new = s.nodes.get(name), reading.nodes.get(name)
                old_r = None if old is None else (old.status, old.reason)
                new_r = None if new is None else (new.status, new.reason)
                if old_r != new_r:
                    self.history.append(Transition(now, name, old_r, new_r))
            for name, view in reading.nodes.items():
                if reading.writes is not None:
                    count = reading.writes[name]
                    base = self._counted.setdefault(name, count if s.polls == 1 else 0)
                    s.writes[name] = count - base
                elif self._last_version.get(name) != view.version:
                    if name in self._last_version or s.polls > 1:
                        s.writes[name] = s.writes.get(name, 0) + 1
                    self._last_version[name] = view.version
            s.nodes = dict(reading.nodes)
            self._cond.notify_all()

    def snapshot(self) -> State:
        with self._cond:
            s = self._state
            return State(s.t, s.up, dict(s.nodes), dict(s.writes), s.revision, s.polls, s.failures)

    def wait_until(self, pred: Callable[[State], bool], timeout: float) -> float | None:
        """The time (monotonic) of the first poll at which pred(state) held, or None if it did
        not within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._state.polls and pred(self._state):
                    return self._state.t
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.5))

    def transitions(self, since: float, until: float | None = None,
                    nodes: set[str] | None = None) -> list[Transition]:
        with self._cond:
            return [tr for tr in self.history
                    if tr.t >= since and (until is None or tr.t <= until)
                    and (nodes is None or tr.node in nodes)]


def status_flips(transitions: list[Transition]) -> list[Transition]:
    """The transitions that changed the Ready *status* (a reason change within True is not a
    flap), ignoring a Node's first appearance."""
    return [tr for tr in transitions
            if tr.old is not None and (tr.new is None or tr.old[0] != tr.new[0])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--etcd", metavar="HOST:PORT")
    parser.add_argument("--mysql-socket")
    parser.add_argument("--database", default="k3net_lan")
    parser.add_argument("--agent", metavar="URL", help="an agent's base URL (memory store)")
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--duration", type=float, default=600, help="stop after this (s)")
    args = parser.parse_args()
    if args.etcd:
        reader: Any = EtcdReader(args.etcd)
    elif args.mysql_socket:
        reader = MySQLReader(args.mysql_socket, args.database)
    elif args.agent:
        reader = AgentNodesReader(args.agent)
    else:
        parser.error("one of --etcd, --mysql-socket, --agent")
    watcher = StoreWatcher(reader, args.interval)
    watcher.start()
    seen = 0
    deadline = time.monotonic() + args.duration
    try:
        while time.monotonic() < deadline:
            time.sleep(0.2)
            for tr in watcher.transitions(0)[seen:]:
                print(json.dumps({"t": round(tr.t, 3), "node": tr.node, "old": tr.old,
                                  "new": tr.new}), flush=True)
                seen += 1
    except KeyboardInterrupt:
        pass
    finally:
        watcher.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

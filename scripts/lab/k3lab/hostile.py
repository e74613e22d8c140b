"""Hostile and careless hosts against real k3net agents on a netns LAN (`nox -s hostile`).

    nox -s hostile -- --store etcd [--clusters keyed,open] [--out results/hostile.json]
                      [--md docs/hostile-sample.md]

For each cluster (keyed: every agent has `--cluster-key-file`; open: none) a LAN of four
namespace hosts on 10.77.0.0/16 (k3lab.netns.Lan) shares one private etcd in the bridge
namespace (k3lab.sim.stores.SimStore): host 0 runs agent a (`node-0`), host 1 agent b
(`node-1`), host 2 is the stranger (no agent, no key), host 3 takes newcomers and the twin.
Agents run at short timings (--peer-ttl, 6s: a probe every second) unless a measure needs the
defaults. Every attack runs once, bounded in count and time, and is measured from
the store (etcd revisions, Ready transitions) and from /proc:

  key bypass   the stranger announces `node=node-1` at b's real address plus two of its own
               choosing, pid 31337: foreign facts written into Node b; b's rewrites
  departures   `node=node-1` announced where nothing listens, then its goodbye, as b's own
               instance name and as one of the stranger's: flaps of b
  bad records  managed Nodes with odd values in etcd: agents dead after 10 s, and after restart
  floods       40 fake peers x 200 unreachable addresses (in 10.77.64.0/18, inside the LAN):
               open files, RSS, /healthz p99, probing after the sender left, a newcomer's
               discovery time; then one packet of 8 PTR-only records, a newcomer again
  hogs         520 /hold connections on b while a restarts; 3,000 idle /events subscribers;
               4 partial 15 MiB websocket messages: a /hold left for another host, b's crash
               seen by a, a's RSS
  twins        a second `node-1` on host 3, its mDNS blocked by nftables, then visible:
               changes to Node node-1 in 30 s, the conflict logged within 5 s
  prune        `k3net prune --older-than 1h` on a cordoned old Node and a Node whose Ready
               time is 1970 but whose lastSeen is recent: Nodes deleted

It prints one table (cluster, attack, measure, value, goal, met), writes the JSON results
(--out) and the markdown report (--md). Every namespace and process it made is removed at the
end, also on failure, SIGINT or SIGTERM. Traffic never leaves the namespaces: the addresses the
stranger announces are inside the LAN's own prefix.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import itertools
import json
import math
import re
import resource
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from k3lab.agents import AgentProc
from k3lab.attacks import (
    Hog,
    LatencyPoller,
    Row,
    Sampler,
    annotation,
    at_least,
    at_most,
    flood_addresses,
    foreign_facts,
    hold_request,
    markdown_table,
    material,
    node_addresses,
    open_files,
    ptr_only_packet,
    rss_mb,
    send_multicast,
    ws_handshake,
)
from k3lab.netns import Host, Lan, _nft
from k3lab.nsclient import NetnsClient
from k3lab.sim.common import (
    Reported,
    begin_run,
    k3net_revision,
    log,
    percentile,
    print_table,
    wall_to_mono,
    write_json,
)
from k3lab.sim.store_watch import ETCD_PREFIX, StoreWatcher, ready_of
from k3lab.sim.stores import ETCD_PORT, SimStore, store_address
from k3net.config import parse_duration

SUBNET = "10.77.0.0/16"
FLOOD_PREFIX = "10.77.64.0/18"  # inside SUBNET, no host there: probes go nowhere
FOREIGN = ("10.77.0.201", "10.77.0.202")  # the stranger's "addresses of b"; nobody has them
ODD_ADDRESS = "10.77.0.240"  # where the bad records say their machine is; nobody is
PORT = 7946
CONFLICT_WITHIN = 5.0  # seconds a twin has to be logged in
HISTORY = 5000  # store revisions read back at most per measure (Cluster.history)
A, B, STRANGER, SPARE = 0, 1, 2, 3  # host indices
FORGED_PID = "31337"
NFT_TABLE = "k3net_hostile"
ALL_ATTACKS = ("key-bypass", "departures", "bad-records", "floods", "hogs", "twins", "prune")


# --- one cluster: its LAN, store, agents ------------------------------------------------------


class Cluster:
    """A LAN, its etcd and its agents, all of one cluster (keyed or open)."""

    def __init__(self, kind: str, args: argparse.Namespace, workdir: Path,
                 stack: contextlib.ExitStack) -> None:
        self.kind = kind
        self.args = args
        self.ttl: float = args.peer_ttl
        self.workdir = workdir / kind
        self.workdir.mkdir(parents=True)
        self.lan = stack.enter_context(Lan(4, SUBNET))
        log(f"{kind}: LAN of 4 hosts on {SUBNET}, namespaces {self.lan.prefix}-*")
        self.store = SimStore("etcd", self.workdir, self.lan, SUBNET)
        stack.callback(self.store.close)
        self.etcd_url = f"http://{store_address(SUBNET)}:{ETCD_PORT}"
        self.etcd = NetnsClient(self.lan.bridge_namespace)
        stack.callback(self.etcd.close)
        self.watcher: StoreWatcher = self.store.watcher()
        self.watcher.start()
        stack.callback(self.watcher.stop)
        self.key: Path | None = None
        self.keygen = "-"
        if kind == "keyed":
            self.key, self.keygen = make_key(self.workdir / "cluster.key")
        self.agents: dict[str, AgentProc] = {}
        self.started: list[AgentProc] = []
        self._starts = 0
        stack.callback(self.close)
        self.results: dict[str, Any] = {"keygen": self.keygen}

    @property
    def hosts(self) -> list[Host]:
        return self.lan.hosts

    def start(self, name: str, host: int, *, ttl: float | None = -1.0,
              key: bool = True) -> AgentProc:
        """Agent `name` on host `host` (ttl: -1 the run's short timings, None the defaults)."""
        self._starts += 1
        log_dir = self.workdir / "logs" / f"{self._starts:02d}"
        log_dir.mkdir(parents=True)
        args = ["--log-format", "json"]
        ttl = self.ttl if ttl == -1.0 else ttl
        if ttl is not None:
            args += ["--peer-ttl", f"{ttl:g}s"]
        if key and self.key is not None:
            args += ["--cluster-key-file", str(self.key)]
        agent = AgentProc(self.hosts[host], name, PORT, log_dir, *args, config=self.store.config)
        self.started.append(agent)
        return agent

    def up(self, name: str, host: int, ttl: float | None = -1.0) -> AgentProc:
        """Start agent `name` (stopping the one of that name first) and wait until it answers
        and its Node is Ready in the store."""
        self.down(name)
        agent = self.agents[name] = self.start(name, host, ttl=ttl)
        agent.wait_ready()
        self.wait_ready([name])
        return agent

    def down(self, name: str, sig: int = signal.SIGTERM) -> int | None:
        agent = self.agents.pop(name, None)
        if agent is None:
            return None
        if agent.proc.poll() is None:
            agent.proc.send_signal(sig)
        try:
            code = agent.proc.wait(8)
        except subprocess.TimeoutExpired:
            agent.proc.kill()
            code = agent.proc.wait(5)
        agent.close()
        return code

    def wait_ready(self, names: Sequence[str], timeout: float = 30) -> None:
        if self.watcher.wait_until(lambda s: all(s.status(n) == "True" for n in names),
                                   timeout) is None:
            raise AssertionError(f"{self.kind}: {', '.join(names)} not Ready at the store "
                                 f"within {timeout:g}s")

    def base(self, fresh: bool = False) -> None:
        """a and b running at the short timings, both Ready; `fresh`: both restarted first, so
        that nothing an earlier attack left in their memory is measured again (what every
        attack starts from)."""
        for name, host in (("node-0", A), ("node-1", B)):
            agent = self.agents.get(name)
            if fresh or agent is None or agent.proc.poll() is not None:
                self.up(name, host)
        self.wait_ready(["node-0", "node-1"])

    # --- the store, raw (etcd's JSON gateway, from the bridge namespace) -------------------

    def _gateway(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            req = urllib.request.Request(self.etcd_url + path, data=json.dumps(body).encode(),
                                         method="POST")
            with urllib.request.urlopen(req, timeout=5) as resp:
                data: dict[str, Any] = json.loads(resp.read())
                return data

        return self.etcd.call(call)

    def nodes(self) -> dict[str, tuple[dict[str, Any], int]]:
        """name -> (Node JSON or {} if it is not JSON, etcd's version of its key)."""
        end = ETCD_PREFIX[:-1] + chr(ord(ETCD_PREFIX[-1]) + 1)
        data = self._gateway("/v3/kv/range", {"key": _b64(ETCD_PREFIX), "range_end": _b64(end)})
        out = {}
        for kv in data.get("kvs", []):
            name = base64.b64decode(kv["key"]).decode().removeprefix(ETCD_PREFIX)
            try:
                node = json.loads(base64.b64decode(kv.get("value", "")))
            except ValueError:
                node = {}
            out[name] = (node if isinstance(node, dict) else {}, int(kv.get("version", 0)))
        return out

    def node(self, name: str) -> tuple[dict[str, Any], int]:
        return self.nodes().get(name, ({}, 0))

    def revision(self) -> int:
        """The store's revision now (every write to etcd makes a new one)."""
        data = self._gateway("/v3/kv/range", {"key": _b64(ETCD_PREFIX), "count_only": True})
        return int(data["header"]["revision"])

    def history(self, name: str, since: int, until: int) -> list[dict[str, Any]]:
        """Every value Node `name` had at the revisions in (since, until], in order: each write
        exactly, also one that the next write replaced a millisecond later (etcd keeps the old
        revisions; the lab's etcd never compacts). At most HISTORY revisions are read."""
        out = []
        for rev in range(max(since + 1, until - HISTORY + 1), until + 1):
            data = self._gateway("/v3/kv/range", {"key": _b64(ETCD_PREFIX + name),
                                                  "revision": rev})
            for kv in data.get("kvs", []):
                if int(kv.get("mod_revision", 0)) == rev:
                    with contextlib.suppress(ValueError):
                        node = json.loads(base64.b64decode(kv.get("value", "")))
                        out.append(node if isinstance(node, dict) else {})
        return out

    def put(self, name: str, node: dict[str, Any]) -> None:
        self._gateway("/v3/kv/put", {"key": _b64(ETCD_PREFIX + name),
                                     "value": _b64(json.dumps(node))})

    def delete(self, name: str) -> None:
        self._gateway("/v3/kv/deleterange", {"key": _b64(ETCD_PREFIX + name)})

    # --- the stranger --------------------------------------------------------------------------

    @contextlib.contextmanager
    def announcing(self, name: str, spec: list[dict[str, Any]],
                   lifetime: float = 180) -> Iterator[subprocess.Popen[str]]:
        """The stranger announces `spec` (k3lab.attacks announce) until the block ends, then
        sends its goodbyes (SIGTERM)."""
        path = self.workdir / f"{name}.json"
        path.write_text(json.dumps(spec))
        stranger = self.hosts[STRANGER]
        proc = stranger.popen([sys.executable, "-m", "k3lab.attacks", "announce",
                               "--bind", stranger.address, "--spec", str(path),
                               "--lifetime", f"{lifetime:g}"],
                              stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # {"event": "registered"} (or EOF if it died)
            if '"registered"' not in line:
                raise RuntimeError(f"the announcer of {name} did not start: {line!r}")
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def close(self) -> None:
        for agent in self.started:
            with contextlib.suppress(Exception):
                agent.close()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def make_key(path: Path) -> tuple[Path, str]:
    """A cluster key made by `k3net keygen PATH`; where this k3net has no keygen yet, 32
    random bytes in hex with mode 0600 (what a key file holds). Says which."""
    done = subprocess.run([sys.executable, "-m", "k3net", "keygen", str(path)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode == 0 and path.exists():
        return path, "k3net keygen"
    path.write_text(secrets.token_hex(32) + "\n")
    path.chmod(0o600)
    return path, "k3net keygen unavailable: 32 random bytes (hex), mode 0600"


def now_rfc3339(offset: float = 0.0) -> str:
    t = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset)
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


def managed_node(name: str, *, port: Any = "7946", pid: Any = "4242", last_seen: Any = None,
                 ready: str = "True", since: str | None = None) -> dict[str, Any]:
    """A managed Node as an agent writes it (the values given as they should be stored)."""
    t = since or now_rfc3339()
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"k3.network/managed": "true",
                                              "kubernetes.io/hostname": name},
                     "annotations": {"k3.network/port": port, "k3.network/pid": pid,
                                     "k3.network/lastSeen": last_seen or now_rfc3339()}},
        "spec": {},
        "status": {"addresses": [{"type": "InternalIP", "address": ODD_ADDRESS}],
                   "conditions": [{"type": "Ready", "status": ready, "reason": "PeerSeen",
                                   "lastHeartbeatTime": t, "lastTransitionTime": t}]},
    }


SUPERSCRIPT = "odd-port-superscript"


def bad_records() -> dict[str, dict[str, Any]]:
    """Managed Nodes with values no agent writes, as a broken or hostile writer leaves them."""
    nodes = {
        "odd-port-superscript": managed_node("odd-port-superscript", port="²"),
        "odd-port-huge": managed_node("odd-port-huge", port="9" * 30),
        "odd-port-negative": managed_node("odd-port-negative", port="-7946"),
        "odd-port-arabic": managed_node("odd-port-arabic", port="٧٩٤٦"),
        "odd-pid": managed_node("odd-pid", pid="-1e9"),
        "odd-seen-1970": managed_node("odd-seen-1970", last_seen="1970-01-01T00:00:00Z"),
        "odd-seen-9999": managed_node("odd-seen-9999", last_seen="9999-12-31T23:59:59Z"),
        "odd-seen-garbage": managed_node("odd-seen-garbage", last_seen="yesterday"),
        "odd-types": managed_node("odd-types", port=7946, pid=[1], last_seen=12),
    }
    types = nodes["odd-types"]
    types["status"]["addresses"] = "10.77.0.240"
    types["status"]["conditions"] = {"type": "Ready"}
    nulls = managed_node("odd-nulls")
    nulls["metadata"]["annotations"] = None
    nulls["status"] = None
    nodes["odd-nulls"] = nulls
    return nodes


def _changes(first: dict[str, Any], later: Sequence[dict[str, Any]]) -> int:
    """How many of the values `later` (in order, after `first`) changed more than what a
    heartbeat refreshes."""
    changes, last = 0, material(first)
    for node in later:
        if material(node) != last:
            changes, last = changes + 1, material(node)
    return changes


def log_entries(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    out.append(entry)
    return out


def entry_time(entry: dict[str, Any]) -> float:
    """A JSON log entry's time on the run's monotonic clock."""
    return dt.datetime.fromisoformat(entry["ts"]).timestamp() + wall_to_mono()


_EXCEPTION = re.compile(r"\b([A-Z]\w*(?:Error|Exception)): (.{0,120})")


def last_error(agent: AgentProc) -> str:
    """The last exception an agent's log names (`ValueError: ...`), or its last line."""
    found: list[tuple[str, str]] = []
    lines = [line for line in agent.log().splitlines() if line.strip()]
    for line in lines:
        text = line
        if line.startswith("{"):
            with contextlib.suppress(ValueError, AttributeError):
                entry = json.loads(line)
                text = f"{entry.get('msg', '')}\n{entry.get('exc', '')}"
        found += _EXCEPTION.findall(text)
    if found:
        return "{}: {}".format(*found[-1])
    return lines[-1][-160:] if lines else ""


def found_over_mdns(agent: AgentProc, name: str, started: float,
                    timeout: float) -> float | None:
    """Seconds from `started` until `agent` follows peer `name` as found over mDNS (its
    /peers says `foundBy: mdns`; from the store alone does not count: every agent writes its
    own Node before it advertises). None if not within `timeout`."""
    deadline = started + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, AssertionError, ValueError):
            peers = agent.get_json("/peers")["peers"]
            if any(p.get("name") == name and p.get("foundBy") == "mdns" for p in peers):
                return time.monotonic() - started
        time.sleep(0.1)
    return None


def newcomer(c: Cluster, name: str, timeout: float = 40) -> float | None:
    """Start agent `name` on the spare host: seconds until agent a found it over mDNS;
    stopped again after."""
    agent = c.start(name, SPARE)
    try:
        return found_over_mdns(c.agents["node-0"], name, agent.started_at, timeout)
    finally:
        agent.close()
        with contextlib.suppress(Exception):
            c.delete(name)


# --- the attacks ----------------------------------------------------------------------------


def baseline(c: Cluster) -> list[Row]:
    """b's writes per 10 s when nobody attacks (the lastSeen refresh), a newcomer's discovery
    time on a clean LAN."""
    c.base()
    time.sleep(3)
    node, v0 = c.node("node-1")
    r0 = c.revision()
    time.sleep(10)
    rate = c.node("node-1")[1] - v0
    changes = _changes(node, c.history("node-1", r0, c.revision()))
    clean = newcomer(c, "new-clean")
    c.results["baseline"] = {"b_writes_per_10s": rate, "b_changes_per_10s": changes,
                             "newcomer_discovery_clean_s": clean}
    log(f"{c.kind}: baseline: b written {rate}x in 10 s ({changes} changes besides lastSeen); "
        f"newcomer discovered in {clean}s")
    return [Row(c.kind, "baseline", "Node b writes per 10 s, nobody attacking (lastSeen)",
                rate, str(rate), None, f"{changes} changes besides lastSeen"),
            Row(c.kind, "baseline", "newcomer discovered by a, clean LAN", clean, _s(clean),
                None)]


def key_bypass(c: Cluster) -> list[Row]:
    c.base(fresh=True)
    b = c.hosts[B].address
    rate = c.results["baseline"]["b_writes_per_10s"]
    spec = [{"instance": "stranger", "node": "node-1", "port": PORT, "pid": FORGED_PID,
             "addresses": [b, *FOREIGN]}]
    r0, v0 = c.revision(), c.node("node-1")[1]
    with c.announcing("key-bypass", spec):
        time.sleep(10)
        v1 = c.node("node-1")[1]
    time.sleep(10)
    node, v2 = c.node("node-1")
    during, after = v1 - v0, v2 - v1
    # Every value Node b had meanwhile, also one the next write undid at once.
    facts = {f for old in c.history("node-1", r0, c.revision())
             for f in foreign_facts(old, [b], FORGED_PID)}
    c.results["key_bypass"] = {"foreign_facts": sorted(facts), "writes_during_10s": during,
                               "writes_after_10s": after, "baseline_per_10s": rate,
                               "node_b_after": {"addresses": node_addresses(node),
                                                "pid": annotation(node, "k3.network/pid")}}
    log(f"{c.kind}: key bypass: foreign facts {sorted(facts)}; writes {during} during, "
        f"{after} after")
    limit = rate + 1
    return [Row(c.kind, "key bypass", "foreign facts written into Node b", len(facts),
                f"{len(facts)}" + (f" ({', '.join(sorted(facts))})" if facts else ""),
                at_most(0, "0")),
            Row(c.kind, "key bypass", "Node b writes in 10 s while announced", during,
                str(during), at_most(limit, f"<= {limit} (lastSeen rate + 1)")),
            Row(c.kind, "key bypass", "Node b writes in 10 s after the stranger left", after,
                str(after), at_most(limit, f"<= {limit} (lastSeen rate + 1)"))]


def departures(c: Cluster) -> list[Row]:
    rows = []
    # As b's own instance (its goodbye is one for b's service), and as an instance of the
    # stranger's own whose TXT says node-1.
    for instance, label in (("node-1", "b's own instance"), ("stranger-gone", "own instance")):
        c.base(fresh=True)
        spec = [{"instance": instance, "node": "node-1", "port": PORT, "pid": FORGED_PID,
                 "addresses": [c.hosts[STRANGER].address]}]  # nothing listens there: refused
        t0, r0 = time.monotonic(), c.revision()
        first = c.node("node-1")[0]
        with c.announcing(f"departures-{instance}", spec):
            time.sleep(5)
        time.sleep(8)  # the goodbye was sent as the block ended
        # Every Ready status Node b had meanwhile (each write, however short-lived).
        statuses = [ready_of(n)[0] for n in [first, *c.history("node-1", r0, c.revision())]]
        flaps = [new for old, new in itertools.pairwise(statuses)
                 if old == "True" and new != "True"]
        moves = c.watcher.transitions(t0, nodes={"node-1"})
        c.results[f"departures ({label})"] = {
            "statuses_written": statuses,
            "watcher_transitions": [[round(m.t - t0, 2), m.old, m.new] for m in moves]}
        log(f"{c.kind}: departures as {label}: {len(flaps)} flaps of b")
        shown = str(len(flaps)) + (f" (to {', '.join(map(str, flaps))})" if flaps else "")
        rows.append(Row(c.kind, "forged departure",
                        f"flaps of live Node b: refused + goodbye, {label}", len(flaps), shown,
                        at_most(0, "0")))
    return rows


def bad_records_attack(c: Cluster) -> list[Row]:
    c.base(fresh=True)
    records = bad_records()
    for name, node in records.items():
        c.put(name, node)
    time.sleep(10)
    dead = {n: a.proc.returncode for n, a in c.agents.items() if a.proc.poll() is not None}
    why = {n: last_error(c.agents[n]) for n in dead}
    # Every agent restarted with the records still there (as after a reboot).
    for name, host in (("node-0", A), ("node-1", B)):
        c.down(name)
        c.agents[name] = c.start(name, host)
    time.sleep(10)
    dead_again = {n: a.proc.returncode for n, a in c.agents.items()
                  if a.proc.poll() is not None}
    why.update({f"{n} (restarted)": last_error(c.agents[n]) for n in dead_again})
    # The others alone: the port "²" kills first and would hide what they do.
    c.delete(SUPERSCRIPT)
    for name, host in (("node-0", A), ("node-1", B)):
        c.down(name)
        c.agents[name] = c.start(name, host)
    time.sleep(10)
    dead_others = {n: a.proc.returncode for n, a in c.agents.items()
                   if a.proc.poll() is not None}
    why.update({f"{n} (without {SUPERSCRIPT})": last_error(c.agents[n]) for n in dead_others})
    for name in records:
        c.delete(name)
    for name in list(c.agents):
        if c.agents[name].proc.poll() is not None:
            c.down(name)
    c.base()
    c.results["bad_records"] = {"records": list(records), "dead_after_10s": dead,
                                "dead_after_restart": dead_again,
                                "dead_without_superscript": dead_others, "why": why}
    log(f"{c.kind}: bad records: {len(dead)} dead, {len(dead_again)} after restart, "
        f"{len(dead_others)} without {SUPERSCRIPT}; {why}")
    reasons = sorted(set(why.values()))
    return [Row(c.kind, "bad records", f"agents exited within 10 s ({len(records)} odd Nodes)",
                len(dead), f"{len(dead)} of 2", at_most(0, "0"), "; ".join(reasons)),
            Row(c.kind, "bad records", "agents exited within 10 s of a restart",
                len(dead_again), f"{len(dead_again)} of 2", at_most(0, "0")),
            Row(c.kind, "bad records", "agents exited, the same without port \"²\"",
                len(dead_others), f"{len(dead_others)} of 2", at_most(0, "0"))]


def _nft_syn_counter(host: Host, prefix: str) -> None:
    _nft(host.name, f"add table inet {NFT_TABLE}\n"
         f"add chain inet {NFT_TABLE} out {{ type filter hook output priority 0 ; }}\n"
         f"add rule inet {NFT_TABLE} out ip daddr {prefix} tcp flags & (syn | ack) == syn "
         "counter\n")


def _syn_count(host: Host) -> int:
    out = host.run(["nft", "list", "table", "inet", NFT_TABLE], check=False).stdout
    match = re.search(r"counter packets (\d+)", out)
    return int(match.group(1)) if match else 0


def _nft_clear(host: Host) -> None:
    _nft(host.name, f"add table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n")


def floods(c: Cluster) -> list[Row]:
    c.base(fresh=True)
    a = c.agents["node-0"]
    pid = a.proc.pid
    clean = c.results["baseline"]["newcomer_discovery_clean_s"]
    peers, per_peer, seconds = c.args.flood_peers, c.args.flood_addresses, c.args.flood_seconds
    spec = [{"instance": f"flood-{i}", "node": f"flood-{i}", "port": PORT, "pid": "4242",
             "addresses": addresses}
            for i, addresses in enumerate(flood_addresses(FLOOD_PREFIX, peers, per_peer))]
    _nft_syn_counter(c.hosts[A], FLOOD_PREFIX)
    try:
        with Sampler(lambda: open_files(pid), 0.5) as fds, Sampler(lambda: rss_mb(pid), 0.5) \
                as rss, LatencyPoller(c.hosts[A].name, a.url + "/healthz") as latency:
            with c.announcing("floods", spec):
                t0 = time.monotonic()
                time.sleep(min(5, seconds / 3))
                during = newcomer(c, "new-flood", timeout=max(10, seconds))
                time.sleep(max(0.0, t0 + seconds - time.monotonic()))
            left = time.monotonic()
            # How long a keeps probing the flood's addresses after the sender said goodbye.
            last_probe, count = left, _syn_count(c.hosts[A])
            while time.monotonic() < left + c.args.after:
                time.sleep(1)
                now = _syn_count(c.hosts[A])
                if now > count:
                    last_probe, count = time.monotonic(), now
        probing_after = last_probe - left
        syns = count
    finally:
        _nft_clear(c.hosts[A])
    p99 = percentile(latency.values, 99)
    # One packet of PTR-only records to agents that never saw the flood, then a newcomer.
    c.base(fresh=True)
    packet = ptr_only_packet([f"ghost-{i}" for i in range(8)])
    stranger = NetnsClient(c.hosts[STRANGER].name)
    try:
        stranger.call(send_multicast, packet, c.hosts[STRANGER].address)
    finally:
        stranger.close()
    time.sleep(1)
    after_ptr = newcomer(c, "new-ptr")
    max_fd, max_rss = max(fds.values, default=None), max(rss.values, default=None)
    c.results["floods"] = {
        "peers": peers, "addresses_per_peer": per_peer, "seconds": seconds,
        "open_files_max": max_fd, "rss_mb_max": _r(max_rss), "healthz_p99_s": _r(p99),
        "healthz_samples": len(latency.values), "syns_to_flood_prefix": syns,
        "probing_after_sender_left_s": _r(probing_after), "observed_after_s": c.args.after,
        "newcomer_during_flood_s": during, "newcomer_after_ptr_packet_s": after_ptr,
        "newcomer_clean_s": clean, "ptr_packet_bytes": len(packet)}
    log(f"{c.kind}: floods: {c.results['floods']}")
    twice = None if clean is None else 2 * clean
    after_cap = f">= {c.args.after:g}s" if probing_after >= c.args.after - 1.5 else \
        _s(probing_after)
    return [
        Row(c.kind, "mDNS flood", f"a's open files ({peers} peers x {per_peer} addresses)",
            max_fd, str(max_fd), at_most(1024, "<= 1024 (soft NOFILE)")),
        Row(c.kind, "mDNS flood", "a's RSS (MB)", max_rss, _mb(max_rss), at_most(150)),
        Row(c.kind, "mDNS flood", f"a's /healthz p99 ({len(latency.values)} polls)", p99,
            _ms(p99), at_most(0.1, "<= 100 ms")),
        Row(c.kind, "mDNS flood", "a probes the flood after its goodbye for", probing_after,
            after_cap, at_most(c.ttl, f"<= {c.ttl:g}s (peer-ttl)"), f"{syns} SYNs in all"),
        Row(c.kind, "mDNS flood", "newcomer discovered during the flood", _never(during),
            _s(during),
            None if twice is None else at_most(twice, f"<= {twice:.1f}s (2x clean)")),
        Row(c.kind, "PTR-only packet", "newcomer discovered after 8 PTR-only records",
            _never(after_ptr), _s(after_ptr),
            None if twice is None else at_most(twice, f"<= {twice:.1f}s (2x clean)")),
    ]


def _crash_seen(c: Cluster, hog: Callable[[], object] = lambda: None) -> float | None:
    """a restarted at the default timings (a probe every 15 s: only its /hold on b sees a crash
    at once), `hog` run while a is down (so that the slot a held is not its again); SIGKILL b:
    seconds until the store shows b not Ready (None: not in 20 s)."""
    c.down("node-0")
    hog()
    c.up("node-0", A, ttl=None)
    time.sleep(4)  # a discovers b and holds it
    t0 = time.monotonic()
    c.down("node-1", signal.SIGKILL)
    seen = c.watcher.wait_until(lambda s: s.status("node-1") != "True", 20)
    return None if seen is None else max(0.0, seen - t0)


def hogs(c: Cluster) -> list[Row]:
    c.base(fresh=True)
    rows: list[Row] = []
    clean_crash = _crash_seen(c)
    c.up("node-1", B)
    b_host = c.hosts[B]
    stranger = NetnsClient(c.hosts[STRANGER].name)
    try:
        hold = Hog(b_host.address, PORT, c.args.holds, hold_request(b_host.address),
                   b"HTTP/1.1 200")
        try:  # a restarts while the hog takes every slot it can: a needs one on b
            crash = _crash_seen(c, lambda: stranger.call(hold.open))
            got = hold.got
        finally:
            stranger.call(hold.close)
        # The crash killed b: a live b, hogged again, for the host that is not the hog.
        c.up("node-1", B)
        hold = Hog(b_host.address, PORT, c.args.holds, hold_request(b_host.address),
                   b"HTTP/1.1 200")
        other = NetnsClient(c.hosts[SPARE].name)
        try:  # a host that is not the hog asks for one /hold too
            stranger.call(hold.open)
            one = Hog(b_host.address, PORT, 1, hold_request(b_host.address), b"HTTP/1.1 200")
            left_for_others = other.call(one.open)
            other.call(one.close)
        finally:
            stranger.call(hold.close)
            other.close()
        c.up("node-1", B)
        c.up("node-0", A)
        a = c.agents["node-0"]
        pid = a.proc.pid
        rss0 = rss_mb(pid)
        events = Hog(a.address, PORT, c.args.subscribers, ws_handshake(a.address),
                     b"HTTP/1.1 101")
        subscribed = stranger.call(events.open)
        time.sleep(3)
        rss_events, fds_events = rss_mb(pid), open_files(pid)
        alive_events = a.proc.poll() is None
        stranger.call(events.close)
        # A fresh a: what the subscribers left in its memory is not counted twice.
        a = c.up("node-0", A)
        pid = a.proc.pid
        time.sleep(2)
        rss1 = rss_mb(pid)
        partial = Hog(a.address, PORT, 4, ws_handshake(a.address), b"HTTP/1.1 101")
        stranger.call(partial.open)
        sent = stranger.call(partial.send_partial, 15 << 20, time.monotonic() + 60)
        time.sleep(3)
        rss_partial = rss_mb(pid)
        alive_partial = a.proc.poll() is None
        stranger.call(partial.close)
    finally:
        stranger.close()
    crash_goal = 1.5  # what a held connection gives: about a second
    c.results["hogs"] = {
        "holds_asked": c.args.holds, "holds_got": got, "hold_answers": hold.answers,
        "hold_for_another_host": left_for_others,
        "crash_seen_clean_s": _r(clean_crash), "crash_seen_hogged_s": _r(crash),
        "subscribers_asked": c.args.subscribers, "subscribers_got": subscribed,
        "rss_mb_before": _r(rss0), "rss_mb_subscribers": _r(rss_events),
        "open_files_subscribers": fds_events, "alive_after_subscribers": alive_events,
        "partial_bytes_sent": sent, "rss_mb_partial": _r(rss_partial),
        "alive_after_partial": alive_partial, "rss_mb_before_partial": _r(rss1), "agent_nofile": _nofile(pid)}
    log(f"{c.kind}: hogs: {c.results['hogs']}")
    rows += [
        Row(c.kind, "/hold hog", f"/hold for another host after one client asked {c.args.holds}",
            left_for_others, f"{left_for_others} (the client got {got})",
            at_least(1, "1 (slots left for peers)")),
        Row(c.kind, "/hold hog", "b's crash seen by a restarted a (default timings)",
            _never(crash), _s(crash), at_most(crash_goal, f"<= {crash_goal:.1f}s"),
            f"without the hog: {_s(clean_crash)}"),
        Row(c.kind, "/events hog", f"a's RSS with {subscribed} idle subscribers (MB)",
            rss_events, _mb(rss_events), at_most(150),
            f"before {_mb(rss0)}, {fds_events} open files, alive {alive_events}"),
        Row(c.kind, "websocket", "a's RSS with 4 x 15 MiB unfinished messages (MB)",
            rss_partial, _mb(rss_partial), at_most(150),
            f"before {_mb(rss1)}, {sent >> 20} MiB sent, alive {alive_partial}"),
    ]
    return rows


def _twin(c: Cluster, blocked: bool, window: float) -> dict[str, Any]:
    c.base(fresh=True)
    b, spare = c.agents["node-1"], c.hosts[SPARE]
    if blocked:  # the twin's mDNS neither heard nor heard of
        _nft(spare.name, f"add table inet {NFT_TABLE}\n"
             f"add chain inet {NFT_TABLE} in {{ type filter hook input priority 0 ; }}\n"
             f"add chain inet {NFT_TABLE} out {{ type filter hook output priority 0 ; }}\n"
             f"add rule inet {NFT_TABLE} in udp dport 5353 drop\n"
             f"add rule inet {NFT_TABLE} out udp dport 5353 drop\n")
    try:
        node, v0 = c.node("node-1")
        r0 = c.revision()
        twin = c.start("node-1", SPARE)
        t0 = twin.started_at
        others = {b.log_path: spare.address, twin.log_path: b.address}
        time.sleep(max(0.0, t0 + CONFLICT_WITHIN - time.monotonic()))
        # A plain line (a fatal error on stderr) has no time: it counts if there by now.
        plain = any(other in line and not line.startswith("{")
                    for path, other in others.items()
                    for line in path.read_text(errors="replace").splitlines())
        time.sleep(max(0.0, t0 + window - time.monotonic()))
        v1, r1 = c.node("node-1")[1], c.revision()
        written = c.history("node-1", r0, r1)
        changes = _changes(node, written)
        pids = {annotation(n, "k3.network/pid") for n in [node, *written]}
        twin_code = twin.proc.poll()
        named = [entry_time(e) - t0 for path, other in others.items()
                 for e in log_entries(path)
                 if other in json.dumps(e) and e.get("level") in ("warning", "error",
                                                                    "critical")
                 and entry_time(e) >= t0]
        twin.close()
    finally:
        if blocked:
            _nft_clear(spare)
    logged = min(named, default=CONFLICT_WITHIN if plain else None)
    return {"node_changes": changes, "etcd_revisions": v1 - v0, "pids_seen": sorted(
        p or "-" for p in pids), "conflict_logged_after_s": _r(logged),
        "twin_exit_code": twin_code, "window_s": window}


def twins(c: Cluster) -> list[Row]:
    rows = []
    rate = c.results["baseline"]["b_writes_per_10s"]
    for blocked, label in ((True, "twin, mDNS blind"), (False, "twin, mDNS sees both")):
        r = _twin(c, blocked, c.args.twin_seconds)
        c.results["twin_blocked" if blocked else "twin_visible"] = r
        log(f"{c.kind}: {label}: {r}")
        window = r["window_s"]
        logged = r["conflict_logged_after_s"]
        rows += [
            Row(c.kind, label, f"changes to Node node-1 in {window:g}s (besides lastSeen)",
                r["node_changes"], str(r["node_changes"]), at_most(1, "<= 1"),
                f"{r['etcd_revisions']} etcd revisions (lastSeen alone: ~{rate * window / 10:g}),"
                f" pids {','.join(r['pids_seen'])}, twin exit {r['twin_exit_code']}"),
            Row(c.kind, label, "conflict logged naming the other address", _never(logged),
                "no" if logged is None else f"after {_s(logged)}",
                at_most(CONFLICT_WITHIN, f"within {CONFLICT_WITHIN:g}s")),
        ]
    return rows


def prune(c: Cluster) -> list[Row]:
    c.base(fresh=True)
    long_ago = now_rfc3339(-3 * 86400)
    cordoned = managed_node("old-cordoned", ready="False", since=long_ago, last_seen=long_ago)
    cordoned["spec"] = {"unschedulable": True,
                        "taints": [{"key": "maintenance", "effect": "NoSchedule"}]}
    cordoned["metadata"]["labels"]["team.example/owner"] = "storage"
    clock = managed_node("clock-1970", ready="Unknown", since="1970-01-01T00:00:00Z",
                         last_seen=now_rfc3339(-20))
    targets = {"old-cordoned": cordoned, "clock-1970": clock}
    for name, node in targets.items():
        c.put(name, node)
    older = "1h"
    done = None
    for older in ("1h", "72h"):  # 1h, or the floor if this k3net has one above it
        done = c.hosts[A].run([sys.executable, "-m", "k3net", "prune", "--older-than", older,
                               "--config", str(c.store.config)], check=False, timeout=60)
        if done.returncode != 2:
            break
    assert done is not None
    left = c.nodes()
    deleted = sorted(n for n in targets if n not in left)
    for name in targets:
        c.delete(name)
    c.results["prune"] = {"older_than": older, "exit_code": done.returncode,
                          "deleted": deleted, "output": (done.stdout + done.stderr)[-2000:]}
    log(f"{c.kind}: prune --older-than {older}: deleted {deleted}")
    return [Row(c.kind, "prune", f"deleted by prune --older-than {older} (cordoned, 1970)",
                len(deleted), f"{len(deleted)}" + (f" ({', '.join(deleted)})" if deleted
                                                   else ""), at_most(0, "0"),
                f"exit {done.returncode}")]


ATTACKS: dict[str, Callable[[Cluster], list[Row]]] = {
    "key-bypass": key_bypass, "departures": departures, "bad-records": bad_records_attack,
    "floods": floods, "hogs": hogs, "twins": twins, "prune": prune,
}


def attempt(c: Cluster, name: str) -> list[Row]:
    """Attack `name`; one that fails is a row saying why, and the next attack still runs."""
    try:
        return ATTACKS[name](c)
    except Exception as exc:  # an attack the agents made impossible is itself a result
        log(f"{c.kind}: {name} failed: {type(exc).__name__}: {exc}")
        c.results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
        return [Row(c.kind, name, "the attack could not run", None,
                    f"{type(exc).__name__}: {str(exc)[:80]}", None)]


# --- formatting ----------------------------------------------------------------------------------


def _r(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)


def _s(v: float | None) -> str:
    return "never" if v is None or v == math.inf else f"{v:.2f}s"


def _never(v: float | None) -> float:
    """A time that did not come within its bound counts as infinite (a goal is not met)."""
    return math.inf if v is None else v


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f} ms"


def _mb(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} MB"


def _nofile(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return " ".join(line.split()[3:5])
    except OSError:
        pass
    return "-"


def _raise_nofile(want: int = 65536) -> None:
    """Room for the hogs' sockets here, and the same limit for the agents (they inherit it),
    as systemd's LimitNOFILE gives a service: the measure is the agent's, not the limit's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def markdown(results: dict[str, Any], rows: Sequence[Row]) -> str:
    met = sum(1 for r in rows if r.met)
    judged = sum(1 for r in rows if r.met is not None)
    notes = [f"- {r.cluster}, {r.attack}, {r.measure}: {r.note}" for r in rows if r.note]
    keyed = results["results"].get("keyed", {})
    return "\n".join([
        "# k3net against hostile and careless hosts (`nox -s hostile`)",
        "",
        f"k3net {results['k3net']}, {results['date']}, store etcd, clusters "
        f"{', '.join(results['clusters'])}, agents at {results['timings']} unless "
        f"a measure says otherwise; {met} of {judged} goals met; runtime "
        f"{results.get('runtime_seconds', '-')}s.",
        "",
        "Each attack runs once against real agents on a network-namespace LAN "
        "(scripts/lab/k3lab/hostile.py, the attacks in scripts/lab/k3lab/attacks.py): agent a "
        "(`node-0`), agent b (`node-1`), a stranger without the key and without an agent, a "
        "spare host for newcomers and the twin; one private etcd shared by all. Both agents are "
        "restarted before each attack. Writes are etcd versions of the Node's key; foreign "
        "facts, flaps and twin changes are read from every etcd revision of the Node (none is "
        "missed, however short-lived); open files and RSS are agent a's `/proc`; a newcomer "
        "counts as discovered when a's `/peers` has it `foundBy: mdns`. The keyed cluster's "
        f"key: {keyed.get('keygen', '-')}.",
        "",
        markdown_table(rows),
        "",
        *(["Notes:", "", *notes, ""] if notes else []),
        "Everything measured is in the JSON results (`--out`, default results/hostile.json). "
        "Rerun: `nox -s hostile -- --store etcd` (root).",
        "",
    ])


# --- the run -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nox -s hostile --", description=(__doc__ or "").split("\n\n")[0],
        epilog=(__doc__ or "").split("\n\n", 2)[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=["etcd"], default="etcd",
                        help="the shared store (etcd: writes are counted as key revisions)")
    parser.add_argument("--clusters", default="keyed,open", help="keyed, open or both")
    parser.add_argument("--attacks", default="all", help=f"{', '.join(ALL_ATTACKS)} or all")
    parser.add_argument("--out", default="results/hostile.json", help="JSON results")
    parser.add_argument("--md", default="docs/hostile-sample.md", help="markdown report "
                        "('' for none)")
    parser.add_argument("--peer-ttl", type=parse_duration, default=6.0,
                        help="the agents' peer-ttl (default 6s: a probe every second)")
    parser.add_argument("--flood-peers", type=int, default=40)
    parser.add_argument("--flood-addresses", type=int, default=200, help="per flood peer")
    parser.add_argument("--flood-seconds", type=float, default=30)
    parser.add_argument("--after", type=float, default=60,
                        help="seconds to watch for probes after the flood's goodbye")
    parser.add_argument("--holds", type=int, default=520)
    parser.add_argument("--subscribers", type=int, default=3000)
    parser.add_argument("--twin-seconds", type=float, default=30)
    parser.add_argument("--keep-logs", default="results/hostile-logs",
                        help="copy the agents' logs here ('' for none)")
    args = parser.parse_args(argv)
    args.cluster_kinds = [k for k in args.clusters.split(",") if k]
    if not args.cluster_kinds or set(args.cluster_kinds) - {"keyed", "open"}:
        parser.error("--clusters: keyed, open or keyed,open")
    args.attack_names = list(ALL_ATTACKS) if args.attacks == "all" else args.attacks.split(",")
    unknown = set(args.attack_names) - set(ALL_ATTACKS)
    if unknown:
        parser.error(f"unknown attack {sorted(unknown)[0]!r} (use {', '.join(ALL_ATTACKS)})")
    for name, low, high in (("flood_peers", 1, 100), ("flood_addresses", 1, 400),
                            ("flood_seconds", 5, 120), ("after", 5, 120), ("holds", 1, 2000),
                            ("subscribers", 1, 5000), ("twin_seconds", 5, 120)):
        if not low <= getattr(args, name) <= high:
            parser.error(f"--{name.replace('_', '-')} must be between {low} and {high}")
    if not 2 <= args.peer_ttl <= 60:
        parser.error("--peer-ttl must be between 2s and 60s")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = begin_run("k3hostile-")
    _raise_nofile()
    started = time.monotonic()
    rows: list[Row] = []
    results: dict[str, Any] = {
        "k3net": k3net_revision(), "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "store": args.store, "clusters": args.cluster_kinds, "attacks": args.attack_names,
        "timings": f"peer-ttl {args.peer_ttl:g}s, probe every {args.peer_ttl / 6:g}s",
        "results": {}}
    with Reported(results, workdir) as run:
        for kind in args.cluster_kinds:
            with contextlib.ExitStack() as stack:
                cluster = Cluster(kind, args, workdir, stack)
                results["results"][kind] = cluster.results
                if args.keep_logs:
                    stack.callback(_keep_logs, cluster.workdir / "logs",
                                   Path(args.keep_logs) / kind)
                rows += baseline(cluster)
                for name in args.attack_names:
                    log(f"{kind}: {name} ...")
                    rows += attempt(cluster, name)
    results["runtime_seconds"] = round(time.monotonic() - started, 1)
    results["rows"] = [r.as_json() for r in rows]
    print(f"\nk3net {results['k3net']} against hostile hosts, store {args.store}", flush=True)
    results["table"] = print_table(["cluster", "attack", "measure", "value", "goal", "met"],
                                   [r.cells() for r in rows])
    path = write_json(args.out, results)
    if args.md and rows:
        md = Path(args.md)
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(markdown(results, rows))
        log(f"report in {md}")
    log(f"results in {path}; runtime {results['runtime_seconds']:g}s")
    return run.code


def _keep_logs(src: Path, dest: Path) -> None:
    import shutil

    if src.exists():
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src, dest)


if __name__ == "__main__":
    sys.exit(main())

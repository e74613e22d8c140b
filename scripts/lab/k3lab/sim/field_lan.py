"""The field LAN scenarios of `nox -s lan`: machines as people actually run them.

    field           every host carries libvirt's virbr0 192.168.122.1 and the last host a second
                    LAN address; SIGKILL one agent (its host lives): time to not-Ready at the
                    store, and steady writes per node per minute at the DEFAULT timings
    crash-defaults  SIGKILL one agent (host alive) at the DEFAULT timings (peer-ttl 90s, probe
                    15s), several kills on several hosts: p50 and max to not-Ready at the store
    readdress       a host's LAN address changes mid-run (a DHCP renewal): time until its Node and
                    its mDNS record show the new one; no Node may go not-Ready
    asymmetric      one host's TCP connections to another are rejected (a one-way firewall):
                    Ready transitions of that Node at the store (at most one blip)
    two-clusters    two cluster keys on one LAN and one multicast domain: each agent's Node list
                    holds its own cluster only

The field shape (`field_shape`) stays once made: the bridge on every host, with a veth on it as a
running guest would have, and the second address (10.77.0.100, which sorts before the host's
first address as text and after it as a number). With `--field` the whole run is on a field LAN
from the start (sim/cli.py's shape, host 1 with the second address) and these scenarios use it. In `field` and `crash-defaults` every agent
listens on all addresses of its port (the default `:7946`, so that 192.168.122.1:7946 on any host
reaches that host's OWN agent) and announces its LAN addresses AND the bridge's, as the Go agent
does (it announces every interface): each probe then has an address that leads back to the
prober's own machine, the worst case for identity probes. By default k3net announces no bridge.
`readdress` and `asymmetric` run with k3net's default addressing (--listen :7946, the addresses
of eth0), so that a new address is followed.

Failure scenarios run at the short timings (--peer-ttl, default 6s); times are taken at the
store by the run's watcher (sim/store_watch.py), or from etcd's own history where a short blip
must not hide between two polls.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from functools import partial
from typing import Any

from k3lab.agents import AgentProc, ready
from k3lab.netns import VIRBR, Host
from k3lab.sim.common import by_label, fmt_s, log, summary
from k3lab.sim.report import Context, Row, rows, verdict
from k3lab.sim.scenarios import (
    DEFAULT_TTL,
    SETTLE,
    Sim,
    not_ready,
    scenario,
    transition,
)
from k3lab.sim.store_watch import ETCD_PREFIX, EtcdReader, status_flips

PORT = 7946
BRIDGE = VIRBR[1].split("/")[0]
SECOND_ADDRESS = "10.77.0.100/24"
DEFAULT_PROBE = DEFAULT_TTL / 6
# crash-defaults: kills per run (at least this many, or 2 x --repeat), and their goals.
DEFAULT_KILLS = 10
CRASH_DEFAULT_P50_GOAL, CRASH_DEFAULT_MAX_GOAL = 5.0, 17.0
# How long after a Node went not-Ready we keep watching that nothing (the bridge, a second
# address) makes it Ready again: two probe intervals, at most 15 s (one at the defaults).
HOLD_INTERVALS, HOLD_MAX = 2, 15.0
# The kills' random phases (_kill_samples) are the same in every run.
KILL_SEED = 9
# asymmetric: the firewall stays for this many peer-ttls.
ASYMMETRIC_TTLS = 4
# readdress: the move must show within this (bounded), then the LAN is watched for 2 x peer-ttl.
FOLLOW_TIMEOUT = 30.0
# two-clusters: every agent must hold its own cluster Ready within this.
CLUSTER_JOIN_TIMEOUT = 30.0

# What each run's fleet runs now: (addressing mode, peer-ttl or None for the defaults).
_running: dict[int, tuple[str, float | None]] = {}
_shaped: set[int] = set()


# --- the shape and the fleet ----------------------------------------------------------------


def field_shape(sim: Sim) -> None:
    """The shared bridge on every host, a second LAN address on the last one (once per run)."""
    if id(sim) in _shaped:
        return
    if getattr(sim.args, "field", False):  # --field shaped the whole run's LAN already
        _shaped.add(id(sim))
        sim.results["field_lan"] = {"shape": sim.results.get("lan", "--field")}
        return
    sim.lan.add_shared_bridge()
    sim.lan[sim.n - 1].add_address(SECOND_ADDRESS)
    _shaped.add(id(sim))
    sim.results["field_lan"] = {
        "bridge": f"{VIRBR[0]} {VIRBR[1]} on every host",
        "second_address": f"{SECOND_ADDRESS} on node-{sim.n - 1}'s eth0",
    }
    log(f"field LAN: {VIRBR[0]} {VIRBR[1]} on every host, {SECOND_ADDRESS} on host {sim.n - 1}")


def _flags(sim: Sim, mode: str, i: int) -> list[str]:
    flags = ["--listen", f":{PORT}"]
    if mode == "go-like":  # announce every address, the bridge's included, as the Go agent
        host = sim.lan[i]
        for address in [a.split("/")[0] for a in host.addresses()] + [BRIDGE]:
            flags += ["--advertise-address", address]
    return flags


def run_fleet(sim: Sim, mode: str, ttl: float | None) -> None:
    """Every agent running with `mode`'s addressing at `ttl` (None: the defaults), all Ready at
    the store; restarts them only when they run otherwise."""
    if _running.get(id(sim)) == (mode, ttl) and len(sim.fleet.agents) == sim.n:
        return
    log(f"fleet: {sim.n} agents, {mode} addressing, "
        f"{sim.timings(ttl) if ttl else 'default timings'}")
    sim.fleet_up = False  # the clean-LAN scenarios restart it as they want it
    sim.fleet.stop_all()
    sim.fleet.extra_args = lambda i: _flags(sim, mode, i)
    sim.fleet.start_all(ttl)
    for agent in sim.fleet.agents.values():
        agent.wait_ready()
    sim.rewatch()
    if sim.wait_all_ready(60) is None:
        raise RuntimeError(f"not every Node Ready within 60 s: {sim.ensure_watcher().snapshot().nodes}")
    _running[id(sim)] = (mode, ttl)
    time.sleep(SETTLE)  # every agent discovered and probed every peer


def _mode(sim: Sim) -> str:
    return _running.get(id(sim), ("default", None))[0]


def _restart(sim: Sim, i: int) -> None:
    sim.restart(i, _running[id(sim)][1])
    if sim.wait_all_ready(30) is None:
        raise RuntimeError(f"node-{i} not Ready again within 30 s")
    time.sleep(SETTLE)


def _kill_samples(sim: Sim, kills: int, ttl: float) -> dict[str, Any]:
    """SIGKILL `kills` agents in turn (the host lives); time to not-Ready at the store, the state
    then, and whether it went Ready again before its agent was restarted."""
    watcher = sim.ensure_watcher()
    probe = ttl / 6
    samples: list[float | None] = []
    states, back = [], []
    rng = random.Random(KILL_SEED)
    for k in range(kills):
        i = sim.victim(k)
        name = f"node-{i}"
        # Each kill at a random point of the probe interval: without it the kills come at a
        # fixed period (detection + hold + restart), a whole number of intervals at the
        # defaults, so each victim is killed at the same phase of the probes every time and the
        # samples are one sample repeated.
        time.sleep(rng.uniform(0, probe))
        t0 = time.monotonic()
        sim.fleet.stop(i, signal.SIGKILL)
        t = watcher.wait_until(not_ready(name), ttl + probe + 10)
        samples.append(None if t is None else t - t0)
        states.append(watcher.snapshot().ready(name))
        if t is not None:
            time.sleep(min(HOLD_INTERVALS * probe, HOLD_MAX))  # does anything make it Ready again?
            back += [transition(tr) for tr in watcher.transitions(t, nodes={name})
                     if tr.new and tr.new[0] == "True"]
        log(f"  kill {k + 1}/{kills}: {name} {fmt_s(samples[-1])} {states[-1]}")
        _restart(sim, i)
    return {"to_not_ready": summary(samples), "state": [list(s) if s else None for s in states],
            "ready_again_while_dead": back}


# --- field -----------------------------------------------------------------------------------


@scenario("field", needs_fleet=False)
def field(sim: Sim) -> None:
    """shared bridge on every host, two LAN addresses on one: SIGKILL -> not-Ready; steady writes"""
    field_shape(sim)
    run_fleet(sim, "go-like", sim.ttl)
    log(f"field: SIGKILL at {sim.timings(sim.ttl)}")
    result: dict[str, Any] = {"timings": sim.timings(sim.ttl),
                              "addressing": "go-like: LAN addresses and 192.168.122.1 announced",
                              **_kill_samples(sim, sim.args.repeat, sim.ttl)}
    result["goal"] = sim.ttl + sim.probe + 0.5
    result["addresses"] = _stored_addresses(sim)
    if sim.store.kind == "memory":
        result["steady"] = {"skipped": "memory store: every agent has its own store"}
    else:
        run_fleet(sim, "go-like", None)
        log(f"field: counting writes for {sim.args.steady:g}s at the defaults")
        result["steady"] = _steady(sim, sim.args.steady)
    sim.results["field"] = result
    log(f"field: not-Ready p50 {fmt_s(result['to_not_ready']['p50'])}, "
        f"steady {result['steady'].get('writes_per_node_per_minute', '-')} writes/node/min")


def _stored_addresses(sim: Sim) -> dict[str, list[str]]:
    """Each Node's InternalIPs, as agent 0 reads them from the store."""
    try:
        items = sim.fleet.agents[0].get_json("/nodes")["items"]
    except (OSError, AssertionError, KeyError, ValueError):
        return {}
    return {n["metadata"]["name"]: [a["address"] for a in n["status"].get("addresses", [])
                                    if a["type"] == "InternalIP"] for n in items}


def _steady(sim: Sim, seconds: float) -> dict[str, Any]:
    watcher = sim.ensure_watcher()
    names = sim.watched_names()
    before, metrics_before, t0 = watcher.snapshot(), sim.fleet.metrics(), time.monotonic()
    time.sleep(seconds)
    after, metrics_after, t1 = watcher.snapshot(), sim.fleet.metrics(), time.monotonic()
    minutes = (t1 - t0) / 60
    total = sum(after.writes.get(n, 0) - before.writes.get(n, 0) for n in names)
    causes: dict[str, float] = {}
    for agent, m in metrics_after.items():
        old = by_label(metrics_before.get(agent, {}), "k3net_node_writes_total", "cause")
        for cause, v in by_label(m, "k3net_node_writes_total", "cause").items():
            causes[cause] = causes.get(cause, 0) + v - old.get(cause, 0)
    out: dict[str, Any] = {
        "timings": sim.timings(DEFAULT_TTL) + " (defaults)", "nodes": len(names),
        "seconds": round(t1 - t0, 1), "writes_total": total,
        "writes_per_node_per_minute": round(total / len(names) / minutes, 3),
        "writes_by_cause_from_agents": causes,
        "flaps": len(status_flips(watcher.transitions(t0, t1))),
    }
    if before.revision is not None and after.revision is not None:
        out["etcd_revision_delta"] = after.revision - before.revision
    return out


# --- crash at the defaults -------------------------------------------------------------------


@scenario("crash-defaults", needs_fleet=False)
def crash_defaults(sim: Sim) -> None:
    """SIGKILL one agent (host alive) at DEFAULT timings (peer-ttl 90s, probe 15s): p50/max to not-Ready"""
    mode = _mode(sim) if _running.get(id(sim)) else "default"
    run_fleet(sim, mode, None)
    kills = max(DEFAULT_KILLS, 2 * sim.args.repeat)
    log(f"crash-defaults: {kills} kills at the default timings ({mode} addressing)")
    result: dict[str, Any] = {
        "timings": sim.timings(DEFAULT_TTL) + " (defaults)",
        "lan": "field (shared bridge, two addresses)" if id(sim) in _shaped else "clean",
        "addressing": mode,
        **_kill_samples(sim, kills, DEFAULT_TTL),
        "goal": {"p50": CRASH_DEFAULT_P50_GOAL, "max": CRASH_DEFAULT_MAX_GOAL},
    }
    sim.results["crash-defaults"] = result
    c = result["to_not_ready"]
    log(f"crash-defaults: p50 {fmt_s(c['p50'])} max {fmt_s(c['max'])}")


# --- readdress -------------------------------------------------------------------------------


@scenario("readdress", needs_fleet=False)
def readdress(sim: Sim) -> None:
    """a host's address changes mid-run: its Node and mDNS record follow; no Node goes not-Ready"""
    run_fleet(sim, "default", sim.ttl)
    watcher = sim.ensure_watcher()
    i = sim.victim(1) if sim.n > 2 else 1
    name, host = f"node-{i}", sim.lan[i]
    old = host.address
    new = f"10.77.0.{60 + i}"
    browser = _follow_record(sim.lan[0], name)
    try:
        if _wait_record(browser, lambda addrs: old in addrs, 15) is None:
            raise RuntimeError(f"readdress: the browser on host 0 never resolved {name} at {old}")
        t0 = time.monotonic()
        host.readdress(f"{new}/24")
        log(f"readdress: {name} {old} -> {new}")
        t_node = _wait(lambda: _stored_addresses(sim).get(name) == [new], FOLLOW_TIMEOUT)
        t_mdns = _wait_record(browser, lambda addrs: new in addrs and old not in addrs,
                              max(0.1, t0 + FOLLOW_TIMEOUT - time.monotonic()))
        time.sleep(2 * sim.ttl)  # long enough for an expiry to show
        t1 = time.monotonic()
    finally:
        browser.terminate()
        try:
            browser.wait(10)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait(5)
    flips = status_flips(watcher.transitions(t0, t1))
    sim.results["readdress"] = {
        "timings": sim.timings(sim.ttl),
        "node": name, "old": old, "new": new,
        "node_follows": None if t_node is None else round(t_node - t0, 3),
        "mdns_record_follows": None if t_mdns is None else round(t_mdns - t0, 3),
        "observed_for": round(t1 - t0, 1),
        "not_ready_transitions": len(flips),
        "transitions": [transition(tr) for tr in watcher.transitions(t0, t1)],
        "stored_addresses_after": _stored_addresses(sim).get(name),
        "how": "Node: its InternalIPs in agent 0's /nodes (the store as agent 0 reads it); "
               "record: a zeroconf browser on host 0 (k3lab/sim/field_browse.py)",
    }
    log(f"readdress: Node {fmt_s(None if t_node is None else t_node - t0)}, record "
        f"{fmt_s(None if t_mdns is None else t_mdns - t0)}, {len(flips)} not-Ready transitions")
    # Its agent listens everywhere and follows its address: no restart needed.


def _follow_record(host: Host, name: str) -> subprocess.Popen[str]:
    return host.popen([sys.executable, "-m", "k3lab.sim.field_browse", "--address", host.address, "--name", name,
                       "--timeout", str(FOLLOW_TIMEOUT + 120)], stdout=subprocess.PIPE, text=True)


def _wait_record(proc: subprocess.Popen[str], pred: Any, timeout: float) -> float | None:
    """Read the browser's lines until an `addresses` event satisfies pred: its time, or None."""
    import select

    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([proc.stdout], [], [], left)[0]:
            return None
        line = proc.stdout.readline()
        if not line:
            return None
        event = json.loads(line)
        if event.get("event") == "addresses" and pred(event["addresses"]):
            return float(event["t"])
    return None


def _wait(check: Any, timeout: float, interval: float = 0.1) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(interval)
    return None


# --- asymmetric ------------------------------------------------------------------------------


@scenario("asymmetric", needs_fleet=False)
def asymmetric(sim: Sim) -> None:
    """one host rejects TCP to another (one-way firewall): Ready transitions of that Node"""
    run_fleet(sim, _mode(sim) if id(sim) in _running else "default", sim.ttl)
    watcher = sim.ensure_watcher()
    shared = sim.store.kind != "memory"
    # With a shared store the other agents can contradict the rejecting one; with the memory
    # store each agent judges alone, so the rejecting agent is not agent 0 (the watcher's eyes).
    r = 0 if shared else 1
    v = sim.victim(0)
    rejecter, victim = sim.lan[r], sim.lan[v]
    name = f"node-{v}"
    others = {n for n in sim.watched_names() if n != name}
    refused0 = _probes(sim, r, "refused")
    since_rev = watcher.snapshot().revision
    t0 = time.monotonic()
    targets = [a.split("/")[0] for a in victim.addresses()]
    for address in targets:
        rejecter.reject_tcp(address, PORT)
    log(f"asymmetric: node-{r} -> {name} ({', '.join(targets)}) rejected for "
        f"{ASYMMETRIC_TTLS} x peer-ttl")
    try:
        time.sleep(ASYMMETRIC_TTLS * sim.ttl)
        t1 = time.monotonic()
        refused = _probes(sim, r, "refused") - refused0
    finally:
        rejecter.clear_rejects()
    tr = watcher.transitions(t0, t1, nodes={name})
    result: dict[str, Any] = {
        "timings": sim.timings(sim.ttl),
        "rejecting": f"node-{r}", "rejected": name, "seconds": round(t1 - t0, 1),
        "refused_probes_by_rejecting_agent": refused,
        "status_transitions_polled": len(status_flips(tr)),
        "transitions": [transition(x) for x in tr],
        "other_nodes_flaps": len(status_flips(watcher.transitions(t0, t1, nodes=others))),
    }
    if isinstance(watcher.reader, EtcdReader) and since_rev is not None:
        history = etcd_history(watcher.reader, name, since_rev)
        result["status_transitions_etcd"] = history_flips(history)
        result["etcd_values"] = len(history)
    if not shared:
        result["note"] = ("memory store: each agent judges alone; agent 0's view is shown, "
                          "the rejecting agent's own store holds its refusal")
    sim.results["asymmetric"] = result
    n_tr = result.get("status_transitions_etcd", result["status_transitions_polled"])
    log(f"asymmetric: {n_tr} Ready transitions of {name} in {t1 - t0:.0f}s, "
        f"{refused:g} refused probes")
    sim.wait_all_ready(30)


def _probes(sim: Sim, i: int, result: str) -> float:
    agent = sim.fleet.agents.get(i)
    if agent is None:
        return 0.0
    try:
        return agent.metric("k3net_probes_total", result=result)
    except (OSError, AssertionError):
        return 0.0


def etcd_history(reader: EtcdReader, name: str, since: int, limit: int = 400) -> list[Any]:
    """Every Ready value of Node `name` from store revision `since` on, oldest first, read back
    from etcd's own history (one revision before the other): no write hides between polls."""
    import urllib.request

    key = base64.b64encode((ETCD_PREFIX + name).encode()).decode()

    def get(rev: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"key": key}
        if rev:
            body["revision"] = rev
        req = urllib.request.Request(reader.url, data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=2) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    values: list[Any] = []
    rev: int | None = None
    while len(values) < limit:
        kvs = reader.call(partial(get, rev)).get("kvs", [])
        if not kvs:
            break
        mod, created = int(kvs[0]["mod_revision"]), int(kvs[0]["create_revision"])
        values.append(ready(json.loads(base64.b64decode(kvs[0]["value"]))))
        if mod <= since or mod <= created:
            break
        rev = mod - 1
    return values[::-1]


def history_flips(history: list[Any]) -> int:
    return sum(1 for old, new in zip(history, history[1:], strict=False)
               if (old or (None,))[0] != (new or (None,))[0])


# --- two clusters ----------------------------------------------------------------------------


@scenario("two-clusters", needs_fleet=False)
def two_clusters(sim: Sim) -> None:
    """two cluster keys on one LAN: each agent's Node list holds its own cluster only"""
    # Two clusters have two stores: every agent here runs on its own memory store, and the
    # fleet (on the run's shared store, without a key) is stopped meanwhile.
    sim.fleet_up = False
    _running.pop(id(sim), None)
    if sim.store.kind == "memory" and sim.watcher is not None:
        sim.watcher.stop()  # it reads agent 0, stopped now; the next fleet gets a new one
        sim.watcher = None
    sim.fleet.stop_all()
    workdir = sim.fleet.log_dir.parent / "two-clusters"
    workdir.mkdir(parents=True, exist_ok=True)
    keys = {}
    for color in ("red", "blue"):
        path = workdir / f"{color}.key"
        path.write_text(secrets.token_hex(32) + "\n")
        os.chmod(path, 0o600)
        keys[color] = path
    members = {i: ("red" if i % 2 == 0 else "blue", f"{'red' if i % 2 == 0 else 'blue'}-{i}")
               for i in range(sim.n)}
    procs: dict[int, AgentProc] = {}
    try:
        t0 = time.monotonic()
        for i, (color, name) in members.items():
            procs[i] = AgentProc(sim.lan[i], name, PORT, workdir, "--listen", f":{PORT}",
                                 "--peer-ttl", f"{sim.ttl:g}s", "--log-format", "json",
                                 "--cluster-key-file", str(keys[color]))
        for p in procs.values():
            p.wait_ready()
        own = {color: {n for c, n in members.values() if c == color} for color in keys}

        def holds_own(i: int) -> bool:
            nodes = procs[i].nodes()
            return all((ready(nodes.get(n)) or ("",))[0] == "True" for n in own[members[i][0]])

        joined = {members[i][1]: _wait(partial(holds_own, i), CLUSTER_JOIN_TIMEOUT)
                  for i in procs}
        # Evidence that the clusters met: every agent refused each foreign agent's probe.
        foreign_count = {i: sim.n - len(own[members[i][0]]) for i in procs}
        met = _wait(lambda: all(_metric(p, "k3net_probes_total", result="unauthenticated")
                                >= foreign_count[i] for i, p in procs.items()), 20)
        time.sleep(2 * sim.ttl / 6)  # two more probe rounds: would anything foreign be written?
        lists = {members[i][1]: sorted(p.nodes()) for i, p in procs.items()}
        foreign = {members[i][1]: sorted(set(lists[members[i][1]]) - own[members[i][0]])
                   for i in procs}
        rejected = {members[i][1]: _metric(p, "k3net_rejected_peers_total",
                                           reason="unauthenticated") for i, p in procs.items()}
        logs_leak = [members[i][1] for i, p in procs.items()
                     if any(k.read_text().strip() in p.log() for k in keys.values())]
    finally:
        for p in procs.values():
            with contextlib.suppress(Exception):
                p.close()
    sim.results["two-clusters"] = {
        "timings": sim.timings(sim.ttl),
        "clusters": {c: sorted(v) for c, v in own.items()},
        "store": "each agent's own memory store (two clusters, two stores)",
        "own_cluster_ready_after": {n: None if t is None else round(t - t0, 3)
                                    for n, t in joined.items()},
        "clusters_met": met is not None,
        "node_lists": lists,
        "foreign_nodes": foreign,
        "foreign_total": sum(len(v) for v in foreign.values()),
        "unauthenticated_rejections": rejected,
        "key_in_logs": logs_leak,
    }
    log(f"two-clusters: {sum(len(v) for v in foreign.values())} foreign Nodes written, "
        f"clusters met: {met is not None}")


def _metric(agent: AgentProc, name: str, **labels: str) -> float:
    try:
        return agent.metric(name, **labels)
    except (OSError, AssertionError):
        return 0.0


# --- rows ------------------------------------------------------------------------------------


@rows("field")
def _field_rows(results: dict[str, Any], ctx: Context) -> list[Row]:
    f = results["field"]
    c = f["to_not_ready"]
    goal = ctx.ttl + ctx.probe + 0.5
    reasons = ",".join(sorted({str(s[1]) for s in f["state"] if s}))
    back = len(f["ready_again_while_dead"])
    ok = None if c["max"] is None else c["max"] <= goal and c["n"] > 0 and back == 0
    out: list[Row] = [[f"field: SIGKILL -> not-Ready ({reasons})", ctx.short, c["n"],
                       fmt_s(c["p50"]), fmt_s(c["max"]), f"<= {goal:g}s",
                       verdict(ok, f"Ready again while dead {back}x")]]
    st = f["steady"]
    if "skipped" in st:
        out.append(["field: steady writes", "-", 0, "-", "-", "<= 2.2/node/min",
                    "skipped: " + st["skipped"]])
    else:
        w = st["writes_per_node_per_minute"]
        out.append([f"field: steady writes/node/min ({st['nodes']} nodes, {st['seconds']:g}s)",
                    "defaults ttl 90s/probe 15s", st["nodes"], f"{w:.2f}", "-", "<= 2.2",
                    verdict(w <= 2.2, f"{st['flaps']} flaps")])
    return out


@rows("crash-defaults")
def _crash_defaults_rows(results: dict[str, Any], ctx: Context) -> list[Row]:
    r = results["crash-defaults"]
    c = r["to_not_ready"]
    reasons = ",".join(sorted({str(s[1]) for s in r["state"] if s}))
    ok = None if c["p50"] is None else (c["p50"] <= CRASH_DEFAULT_P50_GOAL
                                         and c["max"] <= CRASH_DEFAULT_MAX_GOAL)
    return [[f"crash at defaults: SIGKILL -> not-Ready ({reasons})",
             "defaults ttl 90s/probe 15s", c["n"], fmt_s(c["p50"]), fmt_s(c["max"]),
             f"p50 <= {CRASH_DEFAULT_P50_GOAL:g}s, max <= {CRASH_DEFAULT_MAX_GOAL:g}s",
             verdict(ok, f"{r['lan']} LAN")]]


@rows("readdress")
def _readdress_rows(results: dict[str, Any], ctx: Context) -> list[Row]:
    r = results["readdress"]
    node, rec = r["node_follows"], r["mdns_record_follows"]
    ok = node is not None and rec is not None and r["not_ready_transitions"] == 0
    return [["readdress: Node / mDNS record follow", ctx.short, 1,
             f"{fmt_s(node)} / {fmt_s(rec)}", "-", "a few s, 0 not-Ready",
             verdict(ok, f"{r['not_ready_transitions']} not-Ready")]]


@rows("asymmetric")
def _asymmetric_rows(results: dict[str, Any], ctx: Context) -> list[Row]:
    a = results["asymmetric"]
    n_tr = a.get("status_transitions_etcd", a["status_transitions_polled"])
    how = "etcd history" if "status_transitions_etcd" in a else "polled"
    return [[f"asymmetric reject: Ready transitions ({a['seconds']:g}s)", ctx.short, 1, n_tr,
             "-", "<= 2 (one blip)",
             verdict(n_tr <= 2 and a["other_nodes_flaps"] == 0,
                     f"{how}, {a['refused_probes_by_rejecting_agent']:g} refused probes, "
                     f"others {a['other_nodes_flaps']} flaps")]]


@rows("two-clusters")
def _two_clusters_rows(results: dict[str, Any], ctx: Context) -> list[Row]:
    t = results["two-clusters"]
    joins = [v for v in t["own_cluster_ready_after"].values() if v is not None]
    s = summary(joins)
    ok = t["foreign_total"] == 0 and t["clusters_met"] and len(joins) == len(
        t["own_cluster_ready_after"]) and not t["key_in_logs"]
    return [["two clusters: own cluster Ready / foreign Nodes", ctx.short, s["n"],
             fmt_s(s["p50"]), fmt_s(s["max"]), "0 foreign",
             verdict(ok, f"{t['foreign_total']} foreign")]]

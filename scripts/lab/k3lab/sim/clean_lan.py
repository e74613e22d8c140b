"""The scenarios of a clean LAN: floor, join, leave, crash, linkcut, restart, outage, steady.

Failure scenarios run at short timings (--peer-ttl, default 6s, so probes every 1s); steady
state restarts every agent at the defaults (peer-ttl 90s). Every time is measured from the
STORE's point of view (sim/store_watch.py).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

from k3lab.sim.common import by_label, discoveries, fmt_s, log, summary, wall_to_mono
from k3lab.sim.scenarios import (
    DEFAULT_TTL,
    SETTLE,
    Sim,
    add,
    all_ready,
    not_ready,
    scenario,
    status_is,
    transition,
)
from k3lab.sim.store_watch import State, status_flips

OUTAGE_SECONDS = 15.0
OUTAGE_LEAVE_AFTER = 3.0


@scenario("floor", needs_fleet=False)
def floor(sim: Sim) -> None:
    """bare zeroconf: advertiser start -> browser on host 0 resolved it (what mDNS allows)

    Advertisers on hosts 1..N-1 started together, a browser on host 0."""
    log("floor: bare zeroconf joins")
    rounds, samples, registered = sim.args.repeat, [], []
    script = ["-m", "k3lab.sim.floor"]
    for r in range(rounds):
        h0 = sim.lan[0]
        browser = h0.popen([sys.executable, *script, "browse", "--address", h0.address,
                            "--count", str(sim.n - 1), "--timeout", "20"],
                           stdout=subprocess.PIPE, text=True)
        try:
            first = json.loads(browser.stdout.readline() or "{}")  # type: ignore[union-attr]
            if first.get("event") != "ready":
                raise RuntimeError(f"floor browser did not start: {first}")
            starts, advertisers = {}, []
            for i in range(1, sim.n):
                host = sim.lan[i]
                name = f"floor{r}-{i}"
                starts[name] = time.monotonic()
                advertisers.append(host.popen(
                    [sys.executable, *script, "advertise", "--address", host.address,
                     "--name", name], stdout=subprocess.PIPE, text=True))
            lines = browser.communicate(timeout=30)[0].splitlines()
            for line in lines:
                ev = json.loads(line)
                if ev.get("event") == "resolved" and ev["name"] in starts:
                    samples.append(ev["t"] - starts[ev["name"]])
            for name, adv in zip(starts, advertisers, strict=True):
                adv.send_signal(signal.SIGTERM)
                out = adv.communicate(timeout=10)[0]
                for line in out.splitlines():
                    ev = json.loads(line)
                    if ev.get("event") == "registered":
                        registered.append(ev["t"] - starts[name])
        finally:
            if browser.poll() is None:
                browser.kill()
                browser.wait(5)
        time.sleep(0.5)
    sim.results["floor"] = {
        "what": "bare zeroconf: advertiser process start -> browser on host 0 resolved it "
                f"({sim.n - 1} advertisers started together, {rounds} rounds)",
        "resolved": summary(samples),
        "registered": summary(registered),
    }
    log(f"floor: p50 {fmt_s(sim.results['floor']['resolved']['p50'])}")



def start_fleet(sim: Sim) -> None:
    """Start every agent at the short timings and wait until all are Ready at the store; the
    scenarios that need the fleet run after this. The first start is the join scenario's
    measurement. A later one (a scenario such as steady ran the agents otherwise meanwhile)
    stops them first and measures nothing: a join into a store that holds every Node Ready
    already would time nothing."""
    if sim.fleet.agents or "join" in sim.results:
        log(f"fleet: restarting {sim.n} agents ({sim.timings(sim.ttl)})")
        sim.fleet.stop_all()
        sim.fleet.extra_args = lambda i: ()
        sim.fleet.start_all(sim.ttl)
        for agent in sim.fleet.agents.values():
            agent.wait_ready()
        sim.rewatch()
        time.sleep(SETTLE)  # every agent discovered and probed every peer
    else:
        log(f"join: starting {sim.n} agents ({sim.timings(sim.ttl)})")
        join(sim, sim.ttl)
    if sim.wait_all_ready(30) is None:
        raise RuntimeError("not every Node became Ready within 30 s: "
                           f"{sim.ensure_watcher().snapshot().nodes}")
    sim.fleet_up = True


# Measured by start_fleet, which every fleet scenario runs first.
add("join", None, needs_fleet=True,
    doc="every agent started at once; time from each agent's start to its Node Ready at the "
        "store (and until every other agent discovered it)")


def join(sim: Sim, ttl: float | None) -> None:
    """Every agent started at once; time from each agent's start to its Node Ready at the
    store (and, from the agents' logs, until every other agent discovered it)."""
    offset = wall_to_mono()
    starts = sim.fleet.start_all(ttl)
    watcher = sim.ensure_watcher()
    first_logs = set(sim.fleet.logs)
    names = sim.fleet.names
    per_node: dict[str, float | None] = {}
    reasons: dict[str, str | None] = {}
    deadline = time.monotonic() + 30
    for i, name in enumerate(names):
        t = watcher.wait_until(status_is(name, "True"),
                               max(0.1, deadline - time.monotonic()))
        per_node[name] = None if t is None else t - starts[i]
        first = next((tr for tr in watcher.transitions(starts[i], nodes={name})
                      if tr.new and tr.new[0] == "True"), None)
        reasons[name] = first.new[1] if first and first.new else None
    t_all = watcher.wait_until(all_ready(names), 1)
    time.sleep(1.5)  # let the last discoveries reach the logs
    # Discovery: the time from agent i's start until every other agent saw it Ready after
    # discovering it over mDNS (from their logs).
    # Agents log "peer X Ready ..s after its first sighting" only for a peer whose Node
    # was not Ready yet when they first saw it (memory store); in a shared store the Node is
    # already Ready (its own agent wrote it), so the first PeerAlive a peer writes for it
    # marks its discovery instead.
    seen = {p: discoveries(p, offset) for p in first_logs}
    discovery: dict[str, float | None] = {}
    how = {}
    for i, name in enumerate(names):
        times = [found.get(name) for p, found in seen.items() if p.stem != name]
        if times and all(t is not None for t in times):
            discovery[name] = max(times) - starts[i]  # type: ignore[type-var,operator]
            how[name] = "logs: every other agent saw it Ready after discovering it"
            continue
        # Older agents wrote PeerAlive over AgentReady; current ones leave a Ready reason
        # as it is, and then a peer's discovery does not show in a shared store.
        alive = next((tr for tr in watcher.transitions(starts[i], nodes={name})
                      if tr.new == ("True", "PeerAlive")), None)
        discovery[name] = None if alive is None else alive.t - starts[i]
        how[name] = ("store: first PeerAlive written by a peer" if alive else
                     "not observable: in a shared store the Node is Ready (AgentReady) "
                     "before any peer discovers it, and peers leave it as it is")
    view = "agent 0's own store (/nodes)" if sim.store.kind == "memory" else sim.store.where
    nodes = names[1:] if sim.store.kind == "memory" else names
    sim.results["join"] = {
        "timings": sim.timings(ttl or DEFAULT_TTL),
        "view": view,
        "store_ready": summary(per_node[n] for n in nodes),
        "first_ready_reason": {n: reasons[n] for n in nodes},
        "all_ready_after": None if t_all is None else round(t_all - min(starts.values()), 3),
        "discovered": summary(discovery[n] for n in nodes),
        "discovered_how": sorted(set(how.values())),
        "per_node": {n: per_node[n] for n in names},
    }
    if sim.store.kind == "memory":
        sim.results["join"]["note"] = (
            "memory store: node-0's own Node is left out (written by itself at start); the "
            "others are Ready in node-0's store once node-0 discovered and probed them")
    log(f"join: p50 {fmt_s(sim.results['join']['store_ready']['p50'])}, all Ready "
        f"{fmt_s(sim.results['join']['all_ready_after'])}")


@scenario("leave", needs_fleet=True)
def leave(sim: Sim) -> None:
    """SIGTERM one agent; time to Ready False, and whose reason (PeerLeft or AgentShutdown)"""
    watcher = sim.ensure_watcher()
    samples, reasons, final_reasons, codes = [], [], [], []
    for k in range(sim.args.repeat):
        i = sim.victim(k)
        name = f"node-{i}"
        t0 = time.monotonic()
        sim.fleet.agents[i].proc.send_signal(signal.SIGTERM)
        t = watcher.wait_until(status_is(name, "False"), 10)
        samples.append(None if t is None else t - t0)
        first = next((tr for tr in watcher.transitions(t0, nodes={name})
                      if tr.new and tr.new[0] == "False"), None)
        reasons.append(first.new[1] if first and first.new else None)
        codes.append(sim.fleet.reap(i))
        time.sleep(0.5)
        final_reasons.append(watcher.snapshot().ready(name))
        sim.restart(i, sim.ttl)
        sim.wait_all_ready(20)
        time.sleep(SETTLE)
    sim.results["leave"] = {
        "timings": sim.timings(sim.ttl),
        "to_false": summary(samples),
        "first_reason": reasons,
        "state_after_exit": [list(r) if r else None for r in final_reasons],
        "exit_codes": codes,
    }
    log(f"leave: p50 {fmt_s(sim.results['leave']['to_false']['p50'])} reasons {reasons}")


@scenario("crash", needs_fleet=True)
def crash(sim: Sim) -> None:
    """SIGKILL one agent; time to Unknown/PeerExpired"""
    watcher = sim.ensure_watcher()
    samples, reasons = [], []
    for k in range(sim.args.repeat):
        i = sim.victim(k)
        name = f"node-{i}"
        t0 = time.monotonic()
        sim.fleet.stop(i, signal.SIGKILL)
        t = watcher.wait_until(not_ready(name),
                               sim.ttl + 10)
        samples.append(None if t is None else t - t0)
        reasons.append(watcher.snapshot().ready(name))
        sim.restart(i, sim.ttl)
        sim.wait_all_ready(20)
        time.sleep(SETTLE)
    sim.results["crash"] = {
        "timings": sim.timings(sim.ttl),
        "to_not_ready": summary(samples),
        "state": [list(r) if r else None for r in reasons],
        "goal": sim.ttl + sim.probe + 0.5,
    }
    log(f"crash: p50 {fmt_s(sim.results['crash']['to_not_ready']['p50'])}")


@scenario("linkcut", needs_fleet=True)
def linkcut(sim: Sim) -> None:
    """one host's link down: time to Unknown; link up again: time to Ready"""
    watcher = sim.ensure_watcher()
    down_s, up_s, states, flaps = [], [], [], []
    for k in range(max(1, sim.args.repeat - 1)):
        i = sim.victim(k + 1)
        name, host = f"node-{i}", sim.lan[i]
        others = {n for n in sim.watched_names() if n != name}
        t0 = time.monotonic()
        host.link_down()
        t = watcher.wait_until(not_ready(name),
                               sim.ttl + 10)
        down_s.append(None if t is None else t - t0)
        went_down = t is not None
        states.append(watcher.snapshot().ready(name))
        t1 = time.monotonic()
        host.link_up()
        t = watcher.wait_until(status_is(name, "True"), 30)
        # Only a Node that went down can come back; the first poll after link_up counts.
        up_s.append(None if t is None or not went_down else max(0.0, t - t1))
        time.sleep(sim.ttl)  # after the return: do the others stay Ready?
        flaps += [tr for tr in status_flips(watcher.transitions(t0, nodes=others))]
        sim.wait_all_ready(20)
    sim.results["linkcut"] = {
        "timings": sim.timings(sim.ttl),
        "to_not_ready": summary(down_s),
        "state_while_cut": [list(r) if r else None for r in states],
        "back_to_ready": summary(up_s),
        "other_nodes_flaps": len(flaps),
        "flaps": [transition(tr) for tr in flaps],
        "goal": sim.ttl + sim.probe + 0.5,
    }
    if sim.store.kind == "etcd":
        sim.results["linkcut"]["note"] = ("etcd lives on the LAN: the cut host's agent "
                                           "cannot reach the store either")
    elif sim.store.kind == "mysql":
        sim.results["linkcut"]["note"] = (
            "MariaDB is reached through its unix socket, which a cut link does not cut: the "
            "cut host's agent keeps refreshing its own Node, so the store rightly keeps it "
            "Ready (no agent-independent way to tell); over TCP on the LAN it would behave "
            "as with etcd")
    log(f"linkcut: down {down_s} up {up_s} flaps {len(flaps)}")


@scenario("restart", needs_fleet=True)
def restart(sim: Sim) -> None:
    """SIGKILL one agent and start it again at once: the other Nodes must not flap"""
    watcher = sim.ensure_watcher()
    i = sim.victim(2)
    name = f"node-{i}"
    others = {n for n in sim.watched_names() if n != name}
    old_pid = sim.fleet.agents[i].proc.pid
    t0 = time.monotonic()
    sim.fleet.stop(i, signal.SIGKILL)
    agent = sim.fleet.start(i, sim.ttl)
    new_pid = str(agent.proc.pid)
    t = watcher.wait_until(
        lambda s: (v := s.nodes.get(name)) is not None and v.pid == new_pid
        and v.status == "True", 20)
    time.sleep(2 * sim.ttl)  # long enough for a flap to show
    t_end = time.monotonic()
    others_tr = watcher.transitions(t0, t_end, nodes=others)
    own_tr = watcher.transitions(t0, t_end, nodes={name})
    sim.results["restart"] = {
        "timings": sim.timings(sim.ttl),
        "node": name,
        "old_pid": old_pid,
        "new_pid_ready_after": None if t is None else round(t - t0, 3),
        "observed_for": round(t_end - t0, 1),
        "other_nodes_flaps": len(status_flips(others_tr)),
        "other_nodes_transitions": [transition(tr) for tr in others_tr],
        "restarted_node_transitions": [transition(tr) for tr in own_tr],
    }
    log(f"restart: others flapped {len(status_flips(others_tr))} times, own transitions "
        f"{[transition(tr) for tr in own_tr]}")


@scenario("outage", needs_fleet=True)
def outage(sim: Sim) -> None:
    """the store stops for 15 s while an agent leaves; time to the true state (etcd, mysql)"""
    if not sim.store.can_stop:
        sim.results["outage"] = {"skipped": "memory store: no shared store to stop"
                                  if sim.store.kind == "memory"
                                  else "shared MariaDB: not stopped by the simulation"}
        return
    watcher = sim.ensure_watcher()
    i = sim.victim(0)
    name = f"node-{i}"
    others = [n for n in sim.watched_names() if n != name]
    t_stop = sim.store.stop()
    log(f"outage: store stopped; SIGTERM {name} in {OUTAGE_LEAVE_AFTER:g}s")
    time.sleep(OUTAGE_LEAVE_AFTER)
    sim.fleet.agents[i].proc.send_signal(signal.SIGTERM)
    t_leave = time.monotonic()
    time.sleep(max(0.0, t_stop + OUTAGE_SECONDS - time.monotonic()))
    t_back = sim.store.start()
    log(f"outage: store back after {t_back - t_stop:.1f}s")

    def truth(s: State) -> bool:
        return (s.up and s.status(name) == "False"
                and all(s.status(n) == "True" for n in others))

    t = watcher.wait_until(truth, 30)
    t_down = next((tr.t for tr in watcher.transitions(t_back, nodes={name})
                   if tr.new is None or tr.new[0] != "True"), None)
    code = sim.fleet.reap(i)
    time.sleep(2 * sim.ttl)  # the true state must also stay
    final = watcher.snapshot()
    expected = {n: "True" for n in others} | {name: "False"}
    lost = [n for n, status in expected.items() if final.status(n) != status]
    tr_after = watcher.transitions(t_back)
    sim.results["outage"] = {
        "timings": sim.timings(sim.ttl),
        "outage_seconds": round(t_back - t_stop, 1),
        "left_during_outage": f"{name} (SIGTERM {t_leave - t_stop:.1f}s into the outage,"
                              f" exit code {code})",
        "true_state_after_store_back": None if t is None else round(t - t_back, 3),
        "victim_not_ready_after_store_back": None if t_down is None
        else round(t_down - t_back, 3),
        "victim_state": final.ready(name),
        "expected_transitions": 1,
        "transitions_lost": len(lost),
        "wrong_nodes": {n: final.ready(n) for n in lost},
        "other_nodes_flaps": len(status_flips([tr for tr in tr_after if tr.node != name])),
        "transitions_after_store_back": [transition(tr) for tr in tr_after],
    }
    log(f"outage: true state {fmt_s(None if t is None else t - t_back)} after the store "
        f"returned, lost {len(lost)}")
    sim.restart(i, sim.ttl)
    sim.wait_all_ready(30)


@scenario("steady", needs_fleet=False)
def steady(sim: Sim) -> None:
    """store writes per node per minute at DEFAULT timings, over --steady seconds"""
    seconds = sim.args.steady
    if sim.store.kind == "memory":
        sim.results["steady"] = {"skipped": "memory store: every agent has its own store, "
                                             "so there are no shared writes to count"}
        return
    log("steady: restarting every agent at default timings")
    sim.fleet_up = False  # from here on the agents run at the defaults
    sim.fleet.stop_all()
    sim.fleet.start_all(None)
    for agent in sim.fleet.agents.values():
        agent.wait_ready()
    watcher = sim.ensure_watcher()
    t_ready = sim.wait_all_ready(60)
    time.sleep(5)  # joins settled
    before = watcher.snapshot()
    metrics_before = sim.fleet.metrics()
    t0 = time.monotonic()
    log(f"steady: counting writes for {seconds:g}s")
    time.sleep(seconds)
    after = watcher.snapshot()
    t1 = time.monotonic()
    metrics_after = sim.fleet.metrics()
    minutes = (t1 - t0) / 60
    names = sim.watched_names()
    per_node = {n: (after.writes.get(n, 0) - before.writes.get(n, 0)) / minutes
                for n in names}
    total = sum(after.writes.get(n, 0) - before.writes.get(n, 0) for n in names)
    causes: dict[str, float] = {}
    for agent_name, m in metrics_after.items():
        for cause, v in by_label(m, "k3net_node_writes_total", "cause").items():
            prev = by_label(metrics_before.get(agent_name, {}), "k3net_node_writes_total",
                            "cause").get(cause, 0)
            causes[cause] = causes.get(cause, 0) + v - prev
    flips = status_flips(watcher.transitions(t0, t1))
    result: dict[str, Any] = {
        "timings": sim.timings(DEFAULT_TTL) + " (defaults)",
        "nodes": len(names),
        "seconds": round(t1 - t0, 1),
        "writes_total": total,
        "writes_per_node_per_minute": round(total / len(names) / minutes, 3),
        "per_node": {n: round(v, 2) for n, v in per_node.items()},
        "writes_by_cause_from_agents": causes,
        "flaps": len(flips),
        "all_ready_after_start": t_ready is not None,
    }
    if before.revision is not None and after.revision is not None:
        result["etcd_revision_delta"] = after.revision - before.revision
        result["revision_writes_per_node_per_minute"] = round(
            (after.revision - before.revision) / len(names) / minutes, 3)
    if sim.store.kind == "mysql":
        result["note"] = "counted as resource_version changes seen by a 50 ms poll"
    if len(names) < 5:
        result["note_n"] = "fewer than 5 nodes: the goal asks for N >= 5"
    sim.results["steady"] = result
    log(f"steady: {result['writes_per_node_per_minute']} writes/node/min")

"""A simulated multi-host LAN, and the numbers that prove k3net.

    nox -s lan -- --hosts 5 --store etcd --scenario all [--out results/lan.json]

Builds an N-host LAN from network namespaces (k3net.harness.netns.Lan: a bridge in a namespace
of its own, a veth per host, private 10.x addresses only inside the namespaces, multicast on), runs one
`k3net run` per host against ONE shared store reachable from every host (sim/stores.py), runs
the scenarios, prints a table and writes JSON. Every namespace, link and process it made is
removed at the end, also on failure, SIGINT or SIGTERM.

Every time is measured from the STORE's point of view: a watcher polls the store every 50 ms
(sim/store_watch.py) and notes when each Node's Ready condition changed. With the memory store
every agent has its own store, so the watcher reads agent 0's /nodes instead (agent 0 is never
stopped, and the results say so).

Scenarios (`--scenario` takes one name, several separated by commas, or `all`):

  floor     bare zeroconf: an advertiser process per host, a browser on host 0; the time from
            an advertiser's start to the browser resolving it (what mDNS itself allows)
  join      every agent started at once; time from each agent's start to its Node Ready at the
            store (and, from the agents' logs, until every other agent discovered it)
  leave     SIGTERM one agent; time to Ready False, and whose reason (PeerLeft or AgentShutdown)
  crash     SIGKILL one agent; time to Unknown/PeerExpired
  linkcut   one host's link down: time to Unknown; link up again: time to Ready
  restart   SIGKILL one agent and start it again at once: the other Nodes must not flap
  outage    the store stops for 15 s while an agent leaves (SIGTERM during the outage); time from
            the store's return until it holds the true state, and transitions lost (etcd, mysql)
  steady    store writes per node per minute over --steady seconds at DEFAULT timings (etcd:
            per-key version and header revision; mysql: resource_version changes; memory: n/a)

Failure scenarios run at short timings (--peer-ttl, default 6s, so probes every 1s); steady state
restarts every agent at the defaults (peer-ttl 90s). The output says which timings each used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sim.common import (
    Interrupted,
    begin_run,
    by_label,
    discoveries,
    fmt_s,
    k3net_revision,
    log,
    parse_metrics,
    print_table,
    summary,
    wall_to_mono,
    write_json,
)
from sim.store_watch import State, StoreWatcher, status_flips
from sim.stores import SimStore

from k3net.harness.agents import AgentProc
from k3net.harness.netns import Lan

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ["floor", "join", "leave", "crash", "linkcut", "restart", "outage", "steady"]
SUBNET = "10.77.0.0/24"
PORT = 7946
DEFAULT_TTL = 90.0
OUTAGE_SECONDS = 15.0
OUTAGE_LEAVE_AFTER = 3.0
# After an agent (re)starts, give it this long to finish its mDNS registration and first
# browse before the next disturbance, so that samples do not overlap.
SETTLE = 2.5


def parse_duration(text: str) -> float:
    from k3net.config import parse_duration as parse

    return parse(text)


class Fleet:
    """One k3net agent per host; agent i is `node-i` on host i, port 7946."""

    def __init__(self, lan: Lan, store: SimStore, log_dir: Path) -> None:
        self.lan = lan
        self.store = store
        self.log_dir = log_dir
        self.agents: dict[int, AgentProc] = {}
        self.incarnation = 0
        self.logs: list[Path] = []  # every agent log of the run, for discovery times

    @property
    def names(self) -> list[str]:
        return [f"node-{i}" for i in range(len(self.lan))]

    def start(self, i: int, ttl: float | None) -> AgentProc:
        self.incarnation += 1
        log_dir = self.log_dir / f"run{self.incarnation:02d}"
        log_dir.mkdir(parents=True, exist_ok=True)
        args = ["--log-format", "json"]
        if ttl is not None:
            args += ["--peer-ttl", f"{ttl:g}s"]
        agent = AgentProc(self.lan[i], f"node-{i}", PORT, log_dir, *args, config=self.store.config)
        self.agents[i] = agent
        self.logs.append(agent.log_path)
        return agent

    def start_all(self, ttl: float | None) -> dict[int, float]:
        return {i: self.start(i, ttl).started_at for i in range(len(self.lan))}

    def stop(self, i: int, sig: int = signal.SIGTERM, wait: float = 5) -> int | None:
        self.agents[i].proc.send_signal(sig)
        return self.reap(i, wait)

    def reap(self, i: int, wait: float = 5) -> int | None:
        """Wait for agent i, already signalled, to exit (a second SIGTERM would kill it
        mid-shutdown); SIGKILL after `wait` seconds."""
        agent = self.agents.pop(i)
        try:
            code = agent.proc.wait(wait)
        except subprocess.TimeoutExpired:
            agent.proc.kill()
            code = agent.proc.wait(5)
        agent.close()
        return code

    def stop_all(self) -> None:
        for i in list(self.agents):
            with contextlib.suppress(Exception):
                self.stop(i)

    def metrics(self) -> dict[str, dict[str, float]]:
        out = {}
        for agent in self.agents.values():
            try:
                status, body = agent.client.get(agent.url + "/metrics")
                if status == 200:
                    out[agent.name] = parse_metrics(body)
            except OSError:
                pass
        return out


def all_ready(names: list[str]):  # type: ignore[no-untyped-def]
    return lambda s: all(s.status(n) == "True" for n in names)


class Sim:
    def __init__(self, args: argparse.Namespace, lan: Lan, store: SimStore, fleet: Fleet,
                 watcher: StoreWatcher | None) -> None:
        self.args = args
        self.lan = lan
        self.store = store
        self.fleet = fleet
        self.watcher = watcher
        self.ttl = args.peer_ttl
        self.probe = args.peer_ttl / 6
        self.results: dict[str, Any] = {}
        self.n = len(lan)

    # --- helpers -----------------------------------------------------------------------------

    def timings(self, ttl: float) -> str:
        return f"peer-ttl {ttl:g}s, probe {ttl / 6:g}s, timeout 700ms"

    def victim(self, k: int) -> int:
        """Hosts to disturb, from the last one down; never host 0 (the memory store's eyes)."""
        return self.n - 1 - (k % (self.n - 1))

    def ensure_watcher(self) -> StoreWatcher:
        if self.watcher is None:
            self.watcher = self.store.watcher(self.fleet.agents.get(0))
            self.watcher.start()
        return self.watcher

    def wait_all_ready(self, timeout: float = 30) -> float | None:
        names = self.watched_names()
        return self.ensure_watcher().wait_until(all_ready(names), timeout)

    def watched_names(self) -> list[str]:
        return self.fleet.names

    def restart(self, i: int, ttl: float | None) -> None:
        agent = self.fleet.start(i, ttl)
        agent.wait_ready()

    # --- scenarios ---------------------------------------------------------------------------

    def floor(self) -> None:
        """Bare zeroconf: advertisers on hosts 1..N-1 started together, a browser on host 0."""
        rounds, samples, registered = self.args.repeat, [], []
        script = str(ROOT / "scripts" / "sim" / "floor.py")
        for r in range(rounds):
            h0 = self.lan[0]
            browser = h0.popen([sys.executable, script, "browse", "--address", h0.address,
                                "--count", str(self.n - 1), "--timeout", "20"],
                               stdout=subprocess.PIPE, text=True)
            try:
                first = json.loads(browser.stdout.readline() or "{}")  # type: ignore[union-attr]
                if first.get("event") != "ready":
                    raise RuntimeError(f"floor browser did not start: {first}")
                starts, advertisers = {}, []
                for i in range(1, self.n):
                    host = self.lan[i]
                    name = f"floor{r}-{i}"
                    starts[name] = time.monotonic()
                    advertisers.append(host.popen(
                        [sys.executable, script, "advertise", "--address", host.address,
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
        self.results["floor"] = {
            "what": "bare zeroconf: advertiser process start -> browser on host 0 resolved it "
                    f"({self.n - 1} advertisers started together, {rounds} rounds)",
            "resolved": summary(samples),
            "registered": summary(registered),
        }
        log(f"floor: p50 {fmt_s(self.results['floor']['resolved']['p50'])}")

    def join(self, ttl: float | None) -> None:
        offset = wall_to_mono()
        starts = self.fleet.start_all(ttl)
        watcher = self.ensure_watcher()
        first_logs = set(self.fleet.logs)
        names = self.fleet.names
        per_node: dict[str, float | None] = {}
        reasons: dict[str, str | None] = {}
        deadline = time.monotonic() + 30
        for i, name in enumerate(names):
            t = watcher.wait_until(lambda s, n=name: s.status(n) == "True",
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
        view = "agent 0's own store (/nodes)" if self.store.kind == "memory" else self.store.where
        nodes = names[1:] if self.store.kind == "memory" else names
        self.results["join"] = {
            "timings": self.timings(ttl or DEFAULT_TTL),
            "view": view,
            "store_ready": summary(per_node[n] for n in nodes),
            "first_ready_reason": {n: reasons[n] for n in nodes},
            "all_ready_after": None if t_all is None else round(t_all - min(starts.values()), 3),
            "discovered": summary(discovery[n] for n in nodes),
            "discovered_how": sorted(set(how.values())),
            "per_node": {n: per_node[n] for n in names},
        }
        if self.store.kind == "memory":
            self.results["join"]["note"] = (
                "memory store: node-0's own Node is left out (written by itself at start); the "
                "others are Ready in node-0's store once node-0 discovered and probed them")
        log(f"join: p50 {fmt_s(self.results['join']['store_ready']['p50'])}, all Ready "
            f"{fmt_s(self.results['join']['all_ready_after'])}")

    def leave(self) -> None:
        watcher = self.ensure_watcher()
        samples, reasons, final_reasons, codes = [], [], [], []
        for k in range(self.args.repeat):
            i = self.victim(k)
            name = f"node-{i}"
            t0 = time.monotonic()
            self.fleet.agents[i].proc.send_signal(signal.SIGTERM)
            t = watcher.wait_until(lambda s, n=name: s.status(n) == "False", 10)
            samples.append(None if t is None else t - t0)
            first = next((tr for tr in watcher.transitions(t0, nodes={name})
                          if tr.new and tr.new[0] == "False"), None)
            reasons.append(first.new[1] if first and first.new else None)
            codes.append(self.fleet.reap(i))
            time.sleep(0.5)
            final_reasons.append(watcher.snapshot().ready(name))
            self.restart(i, self.ttl)
            self.wait_all_ready(20)
            time.sleep(SETTLE)
        self.results["leave"] = {
            "timings": self.timings(self.ttl),
            "to_false": summary(samples),
            "first_reason": reasons,
            "state_after_exit": [list(r) if r else None for r in final_reasons],
            "exit_codes": codes,
        }
        log(f"leave: p50 {fmt_s(self.results['leave']['to_false']['p50'])} reasons {reasons}")

    def crash(self) -> None:
        watcher = self.ensure_watcher()
        samples, reasons = [], []
        for k in range(self.args.repeat):
            i = self.victim(k)
            name = f"node-{i}"
            t0 = time.monotonic()
            self.fleet.stop(i, signal.SIGKILL)
            t = watcher.wait_until(lambda s, n=name: s.status(n) not in ("True", None),
                                   self.ttl + 10)
            samples.append(None if t is None else t - t0)
            reasons.append(watcher.snapshot().ready(name))
            self.restart(i, self.ttl)
            self.wait_all_ready(20)
            time.sleep(SETTLE)
        self.results["crash"] = {
            "timings": self.timings(self.ttl),
            "to_not_ready": summary(samples),
            "state": [list(r) if r else None for r in reasons],
            "goal": self.ttl + self.probe + 0.5,
        }
        log(f"crash: p50 {fmt_s(self.results['crash']['to_not_ready']['p50'])}")

    def linkcut(self) -> None:
        watcher = self.ensure_watcher()
        down_s, up_s, states, flaps = [], [], [], []
        for k in range(max(1, self.args.repeat - 1)):
            i = self.victim(k + 1)
            name, host = f"node-{i}", self.lan[i]
            others = {n for n in self.watched_names() if n != name}
            t0 = time.monotonic()
            host.link_down()
            t = watcher.wait_until(lambda s, n=name: s.status(n) not in ("True", None),
                                   self.ttl + 10)
            down_s.append(None if t is None else t - t0)
            went_down = t is not None
            states.append(watcher.snapshot().ready(name))
            t1 = time.monotonic()
            host.link_up()
            t = watcher.wait_until(lambda s, n=name: s.status(n) == "True", 30)
            # Only a Node that went down can come back; the first poll after link_up counts.
            up_s.append(None if t is None or not went_down else max(0.0, t - t1))
            time.sleep(self.ttl)  # after the return: do the others stay Ready?
            flaps += [tr for tr in status_flips(watcher.transitions(t0, nodes=others))]
            self.wait_all_ready(20)
        self.results["linkcut"] = {
            "timings": self.timings(self.ttl),
            "to_not_ready": summary(down_s),
            "state_while_cut": [list(r) if r else None for r in states],
            "back_to_ready": summary(up_s),
            "other_nodes_flaps": len(flaps),
            "flaps": [_tr(tr) for tr in flaps],
            "goal": self.ttl + self.probe + 0.5,
        }
        if self.store.kind == "etcd":
            self.results["linkcut"]["note"] = ("etcd lives on the LAN: the cut host's agent "
                                               "cannot reach the store either")
        elif self.store.kind == "mysql":
            self.results["linkcut"]["note"] = (
                "MariaDB is reached through its unix socket, which a cut link does not cut: the "
                "cut host's agent keeps refreshing its own Node, so the store rightly keeps it "
                "Ready (no agent-independent way to tell); over TCP on the LAN it would behave "
                "as with etcd")
        log(f"linkcut: down {down_s} up {up_s} flaps {len(flaps)}")

    def restart_scenario(self) -> None:
        watcher = self.ensure_watcher()
        i = self.victim(2)
        name = f"node-{i}"
        others = {n for n in self.watched_names() if n != name}
        old_pid = self.fleet.agents[i].proc.pid
        t0 = time.monotonic()
        self.fleet.stop(i, signal.SIGKILL)
        agent = self.fleet.start(i, self.ttl)
        new_pid = str(agent.proc.pid)
        t = watcher.wait_until(
            lambda s: (v := s.nodes.get(name)) is not None and v.pid == new_pid
            and v.status == "True", 20)
        time.sleep(2 * self.ttl)  # long enough for a flap to show
        t_end = time.monotonic()
        others_tr = watcher.transitions(t0, t_end, nodes=others)
        own_tr = watcher.transitions(t0, t_end, nodes={name})
        self.results["restart"] = {
            "timings": self.timings(self.ttl),
            "node": name,
            "old_pid": old_pid,
            "new_pid_ready_after": None if t is None else round(t - t0, 3),
            "observed_for": round(t_end - t0, 1),
            "other_nodes_flaps": len(status_flips(others_tr)),
            "other_nodes_transitions": [_tr(tr) for tr in others_tr],
            "restarted_node_transitions": [_tr(tr) for tr in own_tr],
        }
        log(f"restart: others flapped {len(status_flips(others_tr))} times, own transitions "
            f"{[_tr(tr) for tr in own_tr]}")

    def outage(self) -> None:
        if not self.store.can_stop:
            self.results["outage"] = {"skipped": "memory store: no shared store to stop"
                                      if self.store.kind == "memory"
                                      else "shared MariaDB: not stopped by the simulation"}
            return
        watcher = self.ensure_watcher()
        i = self.victim(0)
        name = f"node-{i}"
        others = [n for n in self.watched_names() if n != name]
        t_stop = self.store.stop()
        log(f"outage: store stopped; SIGTERM {name} in {OUTAGE_LEAVE_AFTER:g}s")
        time.sleep(OUTAGE_LEAVE_AFTER)
        self.fleet.agents[i].proc.send_signal(signal.SIGTERM)
        t_leave = time.monotonic()
        time.sleep(max(0.0, t_stop + OUTAGE_SECONDS - time.monotonic()))
        t_back = self.store.start()
        log(f"outage: store back after {t_back - t_stop:.1f}s")

        def truth(s: State) -> bool:
            return (s.up and s.status(name) == "False"
                    and all(s.status(n) == "True" for n in others))

        t = watcher.wait_until(truth, 30)
        t_down = next((tr.t for tr in watcher.transitions(t_back, nodes={name})
                       if tr.new is None or tr.new[0] != "True"), None)
        code = self.fleet.reap(i)
        time.sleep(2 * self.ttl)  # the true state must also stay
        final = watcher.snapshot()
        expected = {n: "True" for n in others} | {name: "False"}
        lost = [n for n, status in expected.items() if final.status(n) != status]
        tr_after = watcher.transitions(t_back)
        self.results["outage"] = {
            "timings": self.timings(self.ttl),
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
            "transitions_after_store_back": [_tr(tr) for tr in tr_after],
        }
        log(f"outage: true state {fmt_s(None if t is None else t - t_back)} after the store "
            f"returned, lost {len(lost)}")
        self.restart(i, self.ttl)
        self.wait_all_ready(30)

    def steady(self) -> None:
        seconds = self.args.steady
        if self.store.kind == "memory":
            self.results["steady"] = {"skipped": "memory store: every agent has its own store, "
                                                 "so there are no shared writes to count"}
            return
        log("steady: restarting every agent at default timings")
        self.fleet.stop_all()
        self.fleet.start_all(None)
        for agent in self.fleet.agents.values():
            agent.wait_ready()
        watcher = self.ensure_watcher()
        t_ready = self.wait_all_ready(60)
        time.sleep(5)  # joins settled
        before = watcher.snapshot()
        metrics_before = self.fleet.metrics()
        t0 = time.monotonic()
        log(f"steady: counting writes for {seconds:g}s")
        time.sleep(seconds)
        after = watcher.snapshot()
        t1 = time.monotonic()
        metrics_after = self.fleet.metrics()
        minutes = (t1 - t0) / 60
        names = self.watched_names()
        per_node = {n: (after.writes.get(n, 0) - before.writes.get(n, 0)) / minutes
                    for n in names}
        total = sum(after.writes.get(n, 0) - before.writes.get(n, 0) for n in names)
        causes: dict[str, float] = {}
        for agent, m in metrics_after.items():
            for cause, v in by_label(m, "k3net_node_writes_total", "cause").items():
                prev = by_label(metrics_before.get(agent, {}), "k3net_node_writes_total",
                                "cause").get(cause, 0)
                causes[cause] = causes.get(cause, 0) + v - prev
        flips = status_flips(watcher.transitions(t0, t1))
        result: dict[str, Any] = {
            "timings": self.timings(DEFAULT_TTL) + " (defaults)",
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
        if self.store.kind == "mysql":
            result["note"] = "counted as resource_version changes seen by a 50 ms poll"
        if len(names) < 5:
            result["note_n"] = "fewer than 5 nodes: the goal asks for N >= 5"
        self.results["steady"] = result
        log(f"steady: {result['writes_per_node_per_minute']} writes/node/min")


def _tr(tr: Any) -> dict[str, Any]:
    return {"t": round(tr.t, 3), "node": tr.node, "old": tr.old, "new": tr.new}


# --- report -----------------------------------------------------------------------------------


def report(results: dict[str, Any], args: argparse.Namespace, store: str) -> str:
    rows: list[list[Any]] = []
    ttl, probe = args.peer_ttl, args.peer_ttl / 6
    short = f"ttl {ttl:g}s/probe {probe:g}s"
    floor = results.get("floor", {}).get("resolved", {}).get("p50")

    def verdict(ok: bool | None, detail: str) -> str:
        return "-" if ok is None else ("met" if ok else "MISSED") + (f" ({detail})" if detail else "")

    if "floor" in results:
        f = results["floor"]["resolved"]
        rows.append(["floor (bare mDNS join)", "zeroconf", f["n"], fmt_s(f["p50"]),
                     fmt_s(f["max"]), "-", "-"])
    if "join" in results:
        j = results["join"]
        s, d = j["store_ready"], j["discovered"]
        goal = None if floor is None else 1.2 * floor + 0.2
        ok = None if goal is None or s["p50"] is None else s["p50"] <= goal
        rows.append(["join: start -> Ready at store", short, s["n"], fmt_s(s["p50"]),
                     fmt_s(s["max"]), "-" if goal is None else f"<= {goal:.2f}s (1.2x floor+0.2)",
                     verdict(ok, "" if ok is None else f"{s['p50'] / floor:.2f}x floor")])
        if d["n"]:
            okd = None if goal is None or d["p50"] is None else d["p50"] <= goal
            rows.append(["join: start -> discovered by peers", short, d["n"], fmt_s(d["p50"]),
                         fmt_s(d["max"]), "-" if goal is None else f"<= {goal:.2f}s",
                         verdict(okd, "" if okd is None else f"{d['p50'] / floor:.2f}x floor")])
    if "leave" in results:
        lv = results["leave"]["to_false"]
        reasons = ",".join(sorted({str(r) for r in results["leave"]["first_reason"]}))
        ok = None if lv["p50"] is None else lv["p50"] <= 0.5
        rows.append([f"leave: SIGTERM -> False ({reasons})", short, lv["n"], fmt_s(lv["p50"]),
                     fmt_s(lv["max"]), "p50 <= 0.5s", verdict(ok, "")])
    goal = ttl + probe + 0.5
    for key, label in (("crash", "crash: SIGKILL -> Unknown"),
                       ("linkcut", "link cut: down -> Unknown")):
        if key in results:
            c = results[key]["to_not_ready"]
            ok = None if c["max"] is None else c["max"] <= goal and c["n"] > 0
            note = verdict(ok, "")
            if key == "linkcut" and c["n"] == 0:
                note = "stayed Ready: " + ("its agent still reaches the store (unix socket)"
                                           if args.store == "mysql" else "see JSON")
            rows.append([label, short, c["n"], fmt_s(c["p50"]), fmt_s(c["max"]),
                         f"<= {goal:g}s", note])
    if "linkcut" in results:
        u = results["linkcut"]["back_to_ready"]
        rows.append(["link cut: up -> Ready", short, u["n"], fmt_s(u["p50"]), fmt_s(u["max"]),
                     "-", f"other nodes flapped {results['linkcut']['other_nodes_flaps']}x"])
    if "restart" in results:
        r = results["restart"]
        flaps = r["other_nodes_flaps"]
        rows.append(["restart: others' flaps", short, 1,
                     f"new pid Ready {fmt_s(r['new_pid_ready_after'])}", "-", "0 flaps",
                     verdict(flaps == 0, f"{flaps} flaps")])
    if "outage" in results:
        o = results["outage"]
        if "skipped" in o:
            rows.append(["store outage", "-", 0, "-", "-", "0 lost", "skipped: " + o["skipped"]])
        else:
            rows.append([f"outage {o['outage_seconds']:g}s: back -> true state", short, 1,
                         fmt_s(o["true_state_after_store_back"]), "-", "0 lost",
                         verdict(o["transitions_lost"] == 0,
                                 f"{o['transitions_lost']} lost, {o['other_nodes_flaps']} flaps")])
    if "steady" in results:
        st = results["steady"]
        if "skipped" in st:
            rows.append(["steady writes", "-", 0, "-", "-", "<= 2.2/node/min",
                         "skipped: " + st["skipped"]])
        else:
            w = st["writes_per_node_per_minute"]
            rows.append([f"steady writes/node/min ({st['nodes']} nodes, {st['seconds']:g}s)",
                         "defaults ttl 90s/probe 15s", st["nodes"], f"{w:.2f}", "-",
                         "<= 2.2", verdict(w <= 2.2, f"{st['flaps']} flaps")])
    print(f"\nk3net {results.get('k3net', '')} on a simulated LAN: {args.hosts} hosts, "
          f"store {store}", flush=True)
    return print_table(["scenario", "timings", "n", "p50", "max", "goal", "result"], rows)


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nox -s lan --", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=5, help="hosts on the LAN (default 5)")
    parser.add_argument("--store", choices=["memory", "etcd", "mysql"], default="etcd")
    parser.add_argument("--scenario", default="all",
                        help=f"{', '.join(SCENARIOS)}, several separated by commas, or all")
    parser.add_argument("--out", default="results/lan.json", help="JSON results")
    parser.add_argument("--peer-ttl", type=parse_duration, default=6.0,
                        help="peer-ttl of the failure scenarios (default 6s: probes every 1s)")
    parser.add_argument("--steady", type=float, default=120,
                        help="seconds of steady state to count writes over (default 120)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="samples of floor, leave, crash (default 3)")
    parser.add_argument("--mysql-socket", help="use this existing MariaDB instead of a private "
                        "one (the outage scenario is then skipped)")
    parser.add_argument("--keep-logs", default="results/lan-logs",
                        help="copy the agents' logs here (default results/lan-logs)")
    args = parser.parse_args(argv)
    names = SCENARIOS if args.scenario == "all" else args.scenario.split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r} (use {', '.join(SCENARIOS)} or all)")
    args.scenarios = names
    if not 2 <= args.hosts <= 60:
        parser.error("--hosts must be between 2 and 60")
    if args.store == "memory" and args.hosts < 3:
        parser.error("--store memory needs --hosts 3 or more (agent 0 only watches)")
    if not 10 <= args.steady <= 900:
        parser.error("--steady must be between 10 and 900 seconds")
    args.repeat = max(1, min(args.repeat, 10))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = begin_run("k3lan-")
    started = time.monotonic()
    results: dict[str, Any] = {
        "hosts": args.hosts, "store": args.store, "scenarios": args.scenarios,
        "k3net": k3net_revision(),
        "short_timings": f"peer-ttl {args.peer_ttl:g}s, probe-interval {args.peer_ttl / 6:g}s",
        "default_timings": "peer-ttl 90s, probe-interval 15s (steady state only)",
    }
    code = 0
    sim: Sim | None = None
    try:
        with contextlib.ExitStack() as stack:
            lan = stack.enter_context(Lan(args.hosts, SUBNET))
            log(f"LAN: {args.hosts} hosts on {SUBNET}, namespaces {lan.prefix}-*")
            store = SimStore(args.store, workdir, lan, SUBNET, args.mysql_socket)
            stack.callback(store.close)
            results["store_where"] = store.where or "each agent's own memory store"
            log(f"store: {results['store_where']}")
            fleet = Fleet(lan, store, workdir / "logs")
            stack.callback(_keep_logs, workdir / "logs", args.keep_logs)
            stack.callback(fleet.stop_all)
            sim = Sim(args, lan, store, fleet, None)
            stack.callback(lambda: sim.watcher and sim.watcher.stop())  # type: ignore[union-attr]
            sim.results = results
            if args.store != "memory":
                sim.ensure_watcher()
            if "floor" in args.scenarios:
                log("floor: bare zeroconf joins")
                sim.floor()
            needs_agents = [s for s in args.scenarios if s not in ("floor", "steady")]
            if needs_agents:
                log(f"join: starting {args.hosts} agents ({sim.timings(args.peer_ttl)})")
                sim.join(args.peer_ttl)
                if sim.wait_all_ready(30) is None:
                    raise RuntimeError("not every Node became Ready within 30 s: "
                                       f"{sim.ensure_watcher().snapshot().nodes}")
                if "join" not in args.scenarios:
                    results.pop("join", None)
                for name, fn in (("leave", sim.leave), ("crash", sim.crash),
                                 ("linkcut", sim.linkcut), ("restart", sim.restart_scenario),
                                 ("outage", sim.outage)):
                    if name in args.scenarios:
                        log(f"{name} ...")
                        fn()
            if "steady" in args.scenarios:
                sim.steady()
    except Interrupted as exc:
        log(f"interrupted ({exc}): cleaning up")
        results["error"] = f"interrupted by {exc}"
        code = 130
    except Exception as exc:  # report what we have, then fail
        log(f"failed: {type(exc).__name__}: {exc}")
        results["error"] = f"{type(exc).__name__}: {exc}"
        code = 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["runtime_seconds"] = round(time.monotonic() - started, 1)
    results["table"] = report(results, args, results.get("store_where", args.store))
    path = write_json(args.out, results)
    log(f"results in {path}; runtime {results['runtime_seconds']:g}s")
    return code


def _keep_logs(src: Path, dest: str) -> None:
    if dest and src.exists():
        target = Path(dest)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(src, target)


if __name__ == "__main__":
    sys.exit(main())

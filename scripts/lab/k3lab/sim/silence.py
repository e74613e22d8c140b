"""Silence scenarios of `nox -s lan` (design section 7, "a vanished host seen in seconds"), at the
DEFAULT timings (peer-ttl 90 s, a probe every 15 s), where silence costs the most:

    hostloss  a host vanishes: its link goes down and nothing is closed (no FIN, no RST, no mDNS
              goodbye), as with a power cut, a pulled cable, a kernel panic. Three trials, each
              on another host (never host 0), each at a random point of the probe interval,
              the cut held one probe interval after its Node went not-Ready. Goals: cut -> its
              Node not-Ready at the store p50 <= 3 s, max <= 5 s, and not Ready again while
              cut; link up -> Ready again <= 3 s. The reason written is reported.
    gray      for --gray seconds (default 180) three hosts are sick but alive: one drops 20 % of
              its frames both ways, one agent may use 5 % of a core (k3lab.cpulimit), one agent
              is paused twice for 5 s (SIGSTOP, SIGCONT). Every host is live throughout, so a
              Node written not-Ready is a false failure: goal 0. Writes per node per minute over
              the window: goal <= 2.2, the steady state's (sickness must not become a write storm).
    partition the LAN splits in two halves (hosts 0..n/2-1 apart from the rest) for 2 minutes,
              both still reaching the store: every host lives, so a Node written not-Ready is
              a false failure: goal 0 (each suspect answers through the store). Writes per node
              per minute in the split's second half: goal <= 2.2 (the first holds the
              suspicions, a mark and an answer each).

A fast detector that accuses the sick is worse than a slow one: the two scenarios are the two
sides of one trade, and run together (`--scenario hostloss,gray`). Times are taken at the store
by the run's watcher (sim/store_watch.py); with etcd, the Ready changes of the gray window are
also read back from etcd's own history, so no short blip hides between two polls.
"""

from __future__ import annotations

import contextlib
import random
import signal
import time
from typing import Any

from k3lab import cpulimit
from k3lab.sim.common import cpu_seconds, fmt_s, log, summary
from k3lab.sim.field_lan import etcd_history, history_flips, run_fleet
from k3lab.sim.report import Context, Row, rows, verdict
from k3lab.sim.scenarios import (
    DEFAULT_TTL,
    SETTLE,
    Sim,
    not_ready,
    scenario,
    status_is,
    transition,
)
from k3lab.sim.store_watch import EtcdReader, Transition, status_flips

DEFAULT_PROBE = DEFAULT_TTL / 6
HOSTLOSS_TRIALS = 3
HOSTLOSS_P50_GOAL, HOSTLOSS_MAX_GOAL, HOSTLOSS_BACK_GOAL = 3.0, 5.0, 3.0
# How long a cut may take to show before the trial gives up: what peer-ttl expiry alone allows
# (peer-ttl, a probe interval, a poll), plus room.
HOSTLOSS_WAIT = DEFAULT_TTL + DEFAULT_PROBE + 15
BACK_WAIT = 30.0
HOSTLOSS_SEED = 11  # the cuts' random phases are the same in every run
# Once its Node is not-Ready, the host stays cut this long (one probe interval): a suspicion
# that lapses while the host is still gone (a Node Ready again) would be a false recovery.
HOSTLOSS_HOLD = DEFAULT_PROBE

GRAY_LOSS = 20  # percent of the lossy host's frames dropped, each way
GRAY_SHARE = 0.05  # of one core, for the starved agent
GRAY_PAUSES, GRAY_PAUSE_SECONDS = 2, 5.0
GRAY_MIN, GRAY_MAX = 30.0, 900.0  # bounds of --gray (sim/cli.py says so to the user)
# After the faults end, keep watching one probe interval: a false expiry may land just after.
GRAY_TAIL = DEFAULT_PROBE
WRITES_GOAL = 2.2


# --- hostloss --------------------------------------------------------------------------------


@scenario("hostloss", needs_fleet=False)
def hostloss(sim: Sim) -> None:
    """a host's link cut at the DEFAULT timings (nothing closes): p50/max to not-Ready, back to Ready"""
    run_fleet(sim, "default", None)
    watcher = sim.ensure_watcher()
    rng = random.Random(HOSTLOSS_SEED)
    down: list[float | None] = []
    back: list[float | None] = []
    states, flaps, recovered = [], [], []
    trials = min(HOSTLOSS_TRIALS, sim.n - 1)
    log(f"hostloss: {trials} link cuts at the default timings")
    for k in range(trials):
        i = sim.victim(k)
        name, host = f"node-{i}", sim.lan[i]
        others = {n for n in sim.watched_names() if n != name}
        time.sleep(rng.uniform(0, DEFAULT_PROBE))  # any point of the probe interval
        t0 = time.monotonic()
        host.link_down()
        try:
            t = watcher.wait_until(not_ready(name), HOSTLOSS_WAIT)
            down.append(None if t is None else t - t0)
            states.append(watcher.snapshot().ready(name))
            if t is not None:
                time.sleep(HOSTLOSS_HOLD)
                recovered += [tr for tr in watcher.transitions(t, nodes={name})
                              if tr.new is not None and tr.new[0] == "True"]
        finally:
            t1 = time.monotonic()
            host.link_up()
        t = watcher.wait_until(status_is(name, "True"), BACK_WAIT)
        # Only a Node that went down can come back; the first poll after link up counts.
        back.append(None if t is None or down[-1] is None else max(0.0, t - t1))
        log(f"  cut {k + 1}/{trials}: {name} not-Ready after {fmt_s(down[-1])} {states[-1]}, "
            f"Ready {fmt_s(back[-1])} after link up")
        flaps += status_flips(watcher.transitions(t0, nodes=others))
        if sim.wait_all_ready(BACK_WAIT) is None:
            raise RuntimeError(f"hostloss: not every Node Ready again after {name}'s cut")
        time.sleep(SETTLE)
    result: dict[str, Any] = {
        "timings": sim.timings(DEFAULT_TTL) + " (defaults)",
        "to_not_ready": summary(down),
        "state_while_cut": [list(s) if s else None for s in states],
        "back_to_ready": summary(back),
        "other_nodes_flaps": len(flaps),
        "flaps": [transition(tr) for tr in flaps],
        "held_cut_after_not_ready_seconds": HOSTLOSS_HOLD,
        "ready_again_while_cut": [transition(tr) for tr in recovered],
        "goal": {"p50": HOSTLOSS_P50_GOAL, "max": HOSTLOSS_MAX_GOAL, "back": HOSTLOSS_BACK_GOAL},
    }
    if sim.store.kind == "mysql":
        result["note"] = ("MariaDB is reached through its unix socket, which a cut link does "
                          "not cut: the cut host's agent keeps its own Node Ready")
    sim.results["hostloss"] = result
    log(f"hostloss: not-Ready p50 {fmt_s(result['to_not_ready']['p50'])} max "
        f"{fmt_s(result['to_not_ready']['max'])}, back p50 "
        f"{fmt_s(result['back_to_ready']['p50'])}")


# --- gray ------------------------------------------------------------------------------------


def gray_hosts(n: int) -> tuple[int, int, int]:
    """(lossy, starved, paused): three different hosts counted from the last one down, never
    host 0 (the memory store's eyes); on a LAN of three or fewer hosts some share one."""
    pick = [n - 1 - (k % (n - 1)) for k in range(3)]
    return pick[0], pick[1], pick[2]


def pause_times(seconds: float, pauses: int = GRAY_PAUSES) -> list[float]:
    """When the pauses start, in seconds from the window's start: evenly inside it."""
    return [seconds * (k + 1) / (pauses + 1) for k in range(pauses)]


def false_failures(transitions: list[Transition]) -> list[Transition]:
    """Transitions that write a live Node not-Ready (Ready True -> anything else, or gone)."""
    return [tr for tr in transitions
            if tr.old is not None and tr.old[0] == "True" and (tr.new is None or tr.new[0] != "True")]


@scenario("gray", needs_fleet=False)
def gray(sim: Sim) -> None:
    """sick but alive hosts at the DEFAULT timings: 20% loss, 5% of a core, 2 x 5 s pauses: 0 not-Ready"""
    seconds = min(max(float(getattr(sim.args, "gray", 180.0)), GRAY_MIN), GRAY_MAX)
    run_fleet(sim, "default", None)
    watcher = sim.ensure_watcher()
    lossy_i, starved_i, paused_i = gray_hosts(sim.n)
    starved, paused = sim.fleet.agents[starved_i], sim.fleet.agents[paused_i]
    names = sim.watched_names()
    result: dict[str, Any] = {
        "timings": sim.timings(DEFAULT_TTL) + " (defaults)",
        "seconds": seconds,
        "lossy": {"node": f"node-{lossy_i}", "loss_percent_each_way": GRAY_LOSS},
        "starved": {"node": f"node-{starved_i}", "share_of_a_core": GRAY_SHARE},
        "paused": {"node": f"node-{paused_i}", "pauses": GRAY_PAUSES,
                   "seconds_each": GRAY_PAUSE_SECONDS},
    }
    before = watcher.snapshot()
    since_rev = before.revision
    log(f"gray: {seconds:g}s: node-{lossy_i} loses {GRAY_LOSS}% of its frames, node-{starved_i} "
        f"gets {GRAY_SHARE:.0%} of a core, node-{paused_i} paused {GRAY_PAUSES} x "
        f"{GRAY_PAUSE_SECONDS:g}s")
    with contextlib.ExitStack() as stack:
        result["lossy"]["how"] = sim.lan.lose_host(lossy_i, GRAY_LOSS)
        stack.callback(sim.lan.lose_host, lossy_i, 0)
        limit = cpulimit.CpuLimit.create(f"gray-node-{starved_i}", GRAY_SHARE)
        if limit is None:
            result["starved"]["not_measured"] = ("this machine cannot limit a process's CPU "
                                                 "(no cgroup cpu controller, or not root)")
        else:
            stack.callback(limit.close)
            limit.add(starved.proc.pid)
            result["starved"]["how"] = limit.kind
        cpu0 = cpu_seconds(starved.proc.pid)
        t0 = time.monotonic()
        for at in pause_times(seconds):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            paused.signal(signal.SIGSTOP)
            try:
                time.sleep(GRAY_PAUSE_SECONDS)
            finally:
                paused.signal(signal.SIGCONT)
        time.sleep(max(0.0, t0 + seconds - time.monotonic()))
        t1 = time.monotonic()
        after = watcher.snapshot()
        result["starved"]["cpu_share_used"] = round(
            (cpu_seconds(starved.proc.pid) - cpu0) / (t1 - t0), 4)
    time.sleep(GRAY_TAIL)
    t_end = time.monotonic()
    trs = watcher.transitions(t0, t_end)
    false = false_failures(trs)
    minutes = (t1 - t0) / 60
    writes = sum(after.writes.get(n, 0) - before.writes.get(n, 0) for n in names)
    result.update({
        "observed_seconds": round(t_end - t0, 1),
        "status_changes_polled": len(status_flips(trs)),
        "false_not_ready_polled": len(false),
        "false_transitions": [transition(tr) for tr in false],
        "writes_per_node_per_minute": round(writes / len(names) / minutes, 3),
        "per_node_writes": {n: after.writes.get(n, 0) - before.writes.get(n, 0) for n in names},
    })
    if isinstance(watcher.reader, EtcdReader) and since_rev is not None:
        history = {n: etcd_history(watcher.reader, n, since_rev) for n in names}
        result["status_changes_etcd"] = {n: history_flips(h) for n, h in history.items()}
        result["not_ready_values_etcd"] = {
            n: sum(1 for v in h if v is not None and v[0] != "True") for n, h in history.items()}
    sim.results["gray"] = result
    log(f"gray: {len(false)} live Nodes written not-Ready, "
        f"{result['writes_per_node_per_minute']} writes/node/min, starved agent used "
        f"{result['starved']['cpu_share_used']:.1%} of a core")
    sim.wait_all_ready(BACK_WAIT)


def gray_false_count(r: dict[str, Any]) -> int:
    """The false not-Ready count: from etcd's history when there is one, else the polls."""
    if "not_ready_values_etcd" in r:
        return max(sum(r["not_ready_values_etcd"].values()), r["false_not_ready_polled"])
    return int(r["false_not_ready_polled"])


# --- rows ------------------------------------------------------------------------------------

DEFAULTS = "defaults ttl 90s/probe 15s"


@rows("hostloss")
def _hostloss_rows(results: dict[str, Any], ctx: Context) -> list[Row]:
    r = results["hostloss"]
    c, b = r["to_not_ready"], r["back_to_ready"]
    reasons = ",".join(sorted({str(s[1]) for s in r["state_while_cut"] if s})) or "-"
    recovered = len(r.get("ready_again_while_cut", ()))
    ok = None if c["p50"] is None else (c["p50"] <= HOSTLOSS_P50_GOAL
                                         and c["max"] <= HOSTLOSS_MAX_GOAL
                                         and c["n"] == len(r["state_while_cut"])
                                         and recovered == 0)
    okb = None if b["max"] is None else b["max"] <= HOSTLOSS_BACK_GOAL
    return [
        [f"hostloss: link cut -> not-Ready ({reasons})", DEFAULTS, c["n"], fmt_s(c["p50"]),
         fmt_s(c["max"]), f"p50 <= {HOSTLOSS_P50_GOAL:g}s, max <= {HOSTLOSS_MAX_GOAL:g}s",
         verdict(ok, "; ".join([f"Ready again while cut {recovered}x",
                                *([r["note"]] if "note" in r else [])]))],
        ["hostloss: link up -> Ready", DEFAULTS, b["n"], fmt_s(b["p50"]), fmt_s(b["max"]),
         f"<= {HOSTLOSS_BACK_GOAL:g}s",
         verdict(okb, f"other nodes flapped {r['other_nodes_flaps']}x")],
    ]


@rows("gray")
def _gray_rows(results: dict[str, Any], ctx: Context) -> list[Row]:
    r = results["gray"]
    false = gray_false_count(r)
    starved = r["starved"]
    sick = (f"{r['lossy']['loss_percent_each_way']}% loss, "
            + ("CPU not limited" if "not_measured" in starved
               else f"{starved['share_of_a_core']:.0%} core") + f", {r['paused']['pauses']}x"
            f"{r['paused']['seconds_each']:g}s pause")
    w = r["writes_per_node_per_minute"]
    how = "etcd history" if "not_ready_values_etcd" in r else "polled"
    if "cpu_share_used" in starved:  # at rest an agent may need far less than its limit
        how += f"; the starved agent used {starved['cpu_share_used']:.1%} of a core"
    out: list[Row] = [
        [f"gray {r['seconds']:g}s ({sick}): live Nodes not-Ready", DEFAULTS, 1, false, "-",
         "0", verdict(false == 0, how)],
        [f"gray {r['seconds']:g}s: writes/node/min", DEFAULTS, len(r["per_node_writes"]),
         f"{w:.2f}", "-", f"<= {WRITES_GOAL:g}", verdict(w <= WRITES_GOAL, "")],
    ]
    if "not_measured" in starved:
        out.append(["gray: starved agent (5% of a core)", "-", 0, "-", "-", "-",
                    "not measured: " + starved["not_measured"]])
    return out


# --- partition -------------------------------------------------------------------------------

# Longer than peer-ttl: past it, a half knows the other only through the store, where the other
# half keeps its own Nodes' lastSeen fresh.
PARTITION_SECONDS = 120.0


@scenario("partition", needs_fleet=False)
def partition(sim: Sim) -> None:
    """the LAN split in two halves for 2 min at the DEFAULT timings, the store reached by both: live Nodes written not-Ready"""
    run_fleet(sim, "default", None)
    watcher = sim.ensure_watcher()
    names = sim.watched_names()
    side = list(range(max(1, sim.n // 2)))
    before = watcher.snapshot()
    since_rev = before.revision
    log(f"partition: hosts {side} cut off from the others for {PARTITION_SECONDS:g}s "
        "(each half still reaches the store)")
    t0 = time.monotonic()
    sim.lan.split(side)
    try:
        time.sleep(PARTITION_SECONDS / 2)
        middle, t_mid = watcher.snapshot(), time.monotonic()
        time.sleep(PARTITION_SECONDS / 2)
    finally:
        t1 = time.monotonic()
        sim.lan.split(())
    end = watcher.snapshot()
    time.sleep(GRAY_TAIL)
    t_end = time.monotonic()
    trs = watcher.transitions(t0, t_end)
    false = false_failures(trs)

    def per_node_minute(a: Any, b: Any, seconds: float) -> float:
        writes = sum(b.writes.get(n, 0) - a.writes.get(n, 0) for n in names)
        return round(writes / len(names) / (seconds / 60), 3)

    result: dict[str, Any] = {
        "timings": sim.timings(DEFAULT_TTL) + " (defaults)",
        "seconds": PARTITION_SECONDS,
        "side": [f"node-{i}" for i in side],
        "observed_seconds": round(t_end - t0, 1),
        "status_changes_polled": len(status_flips(trs)),
        "false_not_ready_polled": len(false),
        "false_transitions": [transition(tr) for tr in false],
        # The split's first half holds its suspicions (a mark and an answer each); the second
        # half shows whether writing settles back to the steady state while it lasts.
        "writes_per_node_per_minute_first_half": per_node_minute(before, middle, t_mid - t0),
        "writes_per_node_per_minute": per_node_minute(middle, end, t1 - t_mid),
    }
    if isinstance(watcher.reader, EtcdReader) and since_rev is not None:
        history = {n: etcd_history(watcher.reader, n, since_rev) for n in names}
        result["status_changes_etcd"] = {n: history_flips(h) for n, h in history.items()}
        result["not_ready_values_etcd"] = {
            n: sum(1 for v in h if v is not None and v[0] != "True") for n, h in history.items()}
        result["values_etcd"] = {n: [list(v) if v else None for v in h]
                                 for n, h in history.items()}
    sim.results["partition"] = result
    log(f"partition: {gray_false_count(result)} live Nodes written not-Ready, "
        f"{result['writes_per_node_per_minute_first_half']} writes/node/min in its first "
        f"half, {result['writes_per_node_per_minute']} in its second")
    if sim.wait_all_ready(BACK_WAIT) is None:
        raise RuntimeError("partition: not every Node Ready again after the LAN joined")


@rows("partition")
def _partition_rows(results: dict[str, Any], ctx: Context) -> list[Row]:
    r = results["partition"]
    false = gray_false_count(r)
    w = r["writes_per_node_per_minute"]
    how = "etcd history" if "not_ready_values_etcd" in r else "polled"
    return [
        [f"partition {r['seconds']:g}s ({len(r['side'])} hosts apart): live Nodes not-Ready",
         DEFAULTS, 1, false, "-", "0", verdict(false == 0, how)],
        [f"partition {r['seconds']:g}s: writes/node/min, its second half", DEFAULTS, 1,
         f"{w:.2f}", "-", f"<= {WRITES_GOAL:g}",
         verdict(w <= WRITES_GOAL, f"first half {r['writes_per_node_per_minute_first_half']:.2f}"
                 " (its suspicions: a mark and an answer each)")],
    ]

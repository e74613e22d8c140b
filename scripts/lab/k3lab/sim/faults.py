"""Scenarios of faults no clean LAN shows, on the run's fleet at its short timings:

- `lossy`: the LAN drops 20 % of its frames (a busy Wi-Fi, a bad cable) for a while. Goal: no
  Node flaps; probes that fail are counted by result; and a crash (SIGKILL) under that loss is
  still seen, measured at the store.
- `pause`: one agent does not run for longer than peer-ttl (SIGSTOP: a paused or migrated VM, a
  host swapping hard). Its Node rightly expires; on waking up (SIGCONT) it must expire nobody
  (0 `expired` writes of its own, 0 flaps of the others), and its Node is Ready again.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from k3lab.sim.common import fmt_s, log, summary
from k3lab.sim.report import Context, Row, rows, verdict
from k3lab.sim.scenarios import Sim, not_ready, scenario, status_is, transition
from k3lab.sim.store_watch import status_flips

LOSS = 20  # percent of the frames the LAN drops
LOSSY_SECONDS = 45.0
PROBE_RESULTS = ("confirmed", "timeout", "unverified", "refused", "wrong-node")


def _probes(sim: Sim) -> dict[str, float]:
    """Every running agent's k3net_probes_total, summed by result, and under "spared" the
    scheduled probes of held peers that a beat stood in for (k3net_probes_spared_total)."""
    totals = dict.fromkeys((*PROBE_RESULTS, "spared"), 0.0)
    for agent in sim.fleet.agents.values():
        try:
            for result in PROBE_RESULTS:
                totals[result] += agent.metric("k3net_probes_total", result=result)
            totals["spared"] += agent.metric("k3net_probes_spared_total") or 0.0
        except (AssertionError, OSError):
            pass  # an agent that cannot answer right now: its share is missing
    return totals


@scenario("lossy", needs_fleet=True)
def lossy(sim: Sim) -> None:
    """the LAN drops 20% of its frames: Node flaps, probe results; a crash under that loss"""
    watcher = sim.ensure_watcher()
    names = set(sim.watched_names())
    before = _probes(sim)
    t0 = time.monotonic()
    sim.lan.lose(LOSS)
    try:
        time.sleep(LOSSY_SECONDS)
        t_end = time.monotonic()
        after = _probes(sim)
        flaps = status_flips(watcher.transitions(t0, t_end, nodes=names))
        i = sim.victim(1)
        name = f"node-{i}"
        t1 = time.monotonic()
        sim.fleet.stop(i, signal.SIGKILL)
        t = watcher.wait_until(not_ready(name), sim.ttl + 10)
        crash = None if t is None else t - t1
        crash_state = watcher.snapshot().ready(name)
    finally:
        sim.lan.lose(0)
    sim.restart(i, sim.ttl)
    sim.wait_all_ready(30)
    counts = {r: after[r] - before[r] for r in (*PROBE_RESULTS, "spared")}
    total = sum(counts[r] for r in PROBE_RESULTS) or 1.0
    sim.results["lossy"] = {
        "timings": sim.timings(sim.ttl),
        "loss_percent": LOSS,
        "observed_seconds": round(t_end - t0, 1),
        "flaps": len(flaps),
        "flap_transitions": [transition(tr) for tr in flaps],
        "probes": counts,
        "probes_failed_share": round(1 - counts["confirmed"] / total, 3),
        "crash_to_not_ready": summary([crash]),
        "crash_state": list(crash_state or ()),
        "goal": sim.ttl + sim.probe + 0.5,
    }
    log(f"lossy: {LOSS}% loss for {t_end - t0:.0f}s: {len(flaps)} flaps, probes {counts}; "
        f"crash seen after {fmt_s(crash)}")


@scenario("pause", needs_fleet=True)
def pause(sim: Sim) -> None:
    """one agent stopped (SIGSTOP) for longer than peer-ttl: on waking it expires nobody"""
    watcher = sim.ensure_watcher()
    i = sim.victim(1)
    name = f"node-{i}"
    agent = sim.fleet.agents[i]
    others = {n for n in sim.watched_names() if n != name}
    expired_before = agent.metric("k3net_node_writes_total", cause="expired")
    stopped = sim.ttl + 2 * sim.probe + 2
    t0 = time.monotonic()
    agent.signal(signal.SIGSTOP)
    try:
        t = watcher.wait_until(not_ready(name), stopped)
        expired = None if t is None else t - t0
        time.sleep(max(0.0, stopped - (time.monotonic() - t0)))
    finally:
        agent.signal(signal.SIGCONT)
    t1 = time.monotonic()
    t = watcher.wait_until(status_is(name, "True"), 30)
    # Only a Node that went down can come back; the first poll after waking counts.
    back = None if t is None or expired is None else max(0.0, t - t1)
    time.sleep(sim.ttl)  # long enough for its wrong expiries to show
    t_end = time.monotonic()
    flaps = status_flips(watcher.transitions(t0, t_end, nodes=others))
    wrote_expired = agent.metric("k3net_node_writes_total", cause="expired") - expired_before
    sim.results["pause"] = {
        "timings": sim.timings(sim.ttl),
        "node": name,
        "stopped_seconds": round(stopped, 1),
        "own_node_not_ready_after": summary([expired]),
        "ready_again_after_waking": summary([back]),
        "its_expired_writes": wrote_expired,
        "paused_seconds_counted": agent.metric("k3net_paused_seconds_total"),
        "other_nodes_flaps": len(flaps),
        "flap_transitions": [transition(tr) for tr in flaps],
    }
    log(f"pause: {name} stopped {stopped:.0f}s: not Ready after {fmt_s(expired)}, Ready "
        f"{fmt_s(back)} after waking; it wrote {wrote_expired:g} expiries, others flapped "
        f"{len(flaps)} times")


@rows("lossy")
def _lossy(results: dict[str, Any], ctx: Context) -> list[Row]:
    r = results["lossy"]
    c = r["crash_to_not_ready"]
    return [
        [f"lossy {r['loss_percent']}%: flaps in {r['observed_seconds']:g}s", ctx.short, 1,
         f"{r['probes_failed_share'] * 100:.1f}% probes failed"
         + (f" ({r['probes']['spared']:g} beats stood in)" if r["probes"].get("spared") else ""),
         "-", "0 flaps",
         verdict(r["flaps"] == 0, f"{r['flaps']} flaps")],
        [f"lossy {r['loss_percent']}%: SIGKILL -> not Ready", ctx.short, c["n"], fmt_s(c["p50"]),
         fmt_s(c["max"]), f"<= {r['goal']:g}s",
         verdict(c["n"] > 0 and c["max"] <= r["goal"], r["crash_state"][1]
                 if r["crash_state"] else "")],
    ]


@rows("pause")
def _pause(results: dict[str, Any], ctx: Context) -> list[Row]:
    r = results["pause"]
    bad = r["its_expired_writes"] + r["other_nodes_flaps"]
    return [[f"pause {r['stopped_seconds']:g}s: woken agent's expiries, others' flaps", ctx.short,
             1, f"Ready again {fmt_s(r['ready_again_after_waking']['p50'])}", "-", "0 and 0",
             verdict(bad == 0, f"{r['its_expired_writes']:g} and {r['other_nodes_flaps']}")]]

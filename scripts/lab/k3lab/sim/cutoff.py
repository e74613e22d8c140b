"""Scenario `cutoff`: one agent loses the shared store while its LAN works (a firewall rule, a
route gone on that host alone, the store's network partitioned from one rack).

Its peers still reach it, so nothing about it is wrong: its Node must stay Ready (they refresh
its lastSeen), nobody's Node may flap, and a crash elsewhere during the cut is still written by
the agents that have the store. The cut agent says so (/readyz `store`; how long it took is
measured, polling every 0.1 s through the cut), keeps its intents, and
when the store comes back it writes nothing false from what it decided while cut off: 0 live
Nodes written not-Ready, the crashed one left not-Ready. Done twice: connections to the store
reset at once (`reject`), then dropped without a word (`drop`: every request waits for its
timeout). etcd only: the lab's MariaDB is this machine's own, not on the LAN's bridge.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from k3lab.sim.common import fmt_s, log, summary
from k3lab.sim.report import Context, Row, rows, verdict
from k3lab.sim.scenarios import Sim, all_ready, not_ready, scenario, transition
from k3lab.sim.store_watch import status_flips

# How long the agent is cut off, in peer-ttls: long enough for its own Node to expire if
# nobody else kept it alive.
CUT_TTLS = 3
# After the store is back: how long to watch for false writes, in peer-ttls.
AFTER_TTLS = 2
# The cut agent's /readyz says the store is gone within this (seconds): its next request fails
# at etcd's request deadline (5 s), and a connection nobody asks anything of fails at gRPC's
# keepalive (10 s + 5 s), whichever comes first.
NOTICE_GOAL = 15.0


def _cut(sim: Sim, i: int, how: str) -> None:
    host, address, port = sim.lan[i], sim.store.address, sim.store.port
    assert address is not None and port is not None
    if how == "reject":
        host.reject_tcp(address, port)
    else:
        host.drop_tcp(address, port)


def _store_check(sim: Sim, i: int) -> int | None:
    """The cut agent's /readyz/store status code (None: no answer)."""
    agent = sim.fleet.agents[i]
    try:
        return agent.client.get(agent.url + "/readyz/store")[0]
    except OSError:
        return None


def _one_cut(sim: Sim, how: str, i: int, j: int) -> dict[str, Any]:
    watcher = sim.ensure_watcher()
    cut, crashed = f"node-{i}", f"node-{j}"
    live = {n for n in sim.watched_names() if n != crashed}
    seconds = CUT_TTLS * sim.ttl
    t0 = time.monotonic()
    _cut(sim, i, how)
    try:
        noticed = crash = None
        killed = False
        while time.monotonic() < t0 + seconds:
            if noticed is None and _store_check(sim, i) == 503:
                noticed = time.monotonic() - t0  # the cut agent's /readyz/store says so
            if not killed and time.monotonic() >= t0 + seconds / 3:
                killed, t_kill = True, time.monotonic()
                sim.fleet.stop(j, signal.SIGKILL)
                t = watcher.wait_until(not_ready(crashed), sim.ttl + 10)
                crash = None if t is None else t - t_kill
            time.sleep(0.1)
    finally:
        sim.lan[i].clear_rejects()
    t_back = time.monotonic()
    time.sleep(AFTER_TTLS * sim.ttl)
    t_end = time.monotonic()
    during = status_flips(watcher.transitions(t0, t_back, nodes=live))
    after = status_flips(watcher.transitions(t_back, t_end, nodes=live))
    crashed_after = [transition(tr) for tr in watcher.transitions(t_back, t_end,
                                                                   nodes={crashed})]
    store_ok = _store_check(sim, i)
    sim.restart(j, sim.ttl)
    t = watcher.wait_until(all_ready(sim.watched_names()), 30)
    return {
        "how": how,
        "cut_node": cut,
        "cut_seconds": round(t_back - t0, 1),
        "cut_noticed_after": None if noticed is None else round(noticed, 3),
        "cut_agent_readyz_store_after": store_ok,
        "live_flaps_while_cut": len(during),
        "live_flaps_after": len(after),
        "flap_transitions": [transition(tr) for tr in (*during, *after)],
        "crash_during_cut_to_not_ready": crash,
        "crashed_node_transitions_after": crashed_after,
        "all_ready_again": t is not None,
    }


@scenario("cutoff", needs_fleet=True)
def cutoff(sim: Sim) -> None:
    """one agent loses the store (reset, then silent) while its LAN works; a crash meanwhile"""
    if sim.store.address is None:
        sim.results["cutoff"] = {"skipped": "etcd only (the store must be on the LAN)"}
        return
    i, j = sim.victim(0), sim.victim(1)
    cuts = []
    for how in ("reject", "drop"):
        cut = _one_cut(sim, how, i, j)
        cuts.append(cut)
        log(f"cutoff ({how}): {cut['cut_node']} cut off {cut['cut_seconds']:g}s, its /readyz "
            f"said so after {fmt_s(cut['cut_noticed_after'])}: live flaps "
            f"{cut['live_flaps_while_cut']} while, {cut['live_flaps_after']} after; crash "
            f"meanwhile seen {fmt_s(cut['crash_during_cut_to_not_ready'])}; /readyz/store "
            f"{cut['cut_agent_readyz_store_after']} after")
    sim.results["cutoff"] = {
        "timings": sim.timings(sim.ttl),
        "cuts": cuts,
        "crash": summary([c["crash_during_cut_to_not_ready"] for c in cuts]),
        "goal": sim.ttl + sim.probe + 0.5,
    }


@rows("cutoff")
def _cutoff(results: dict[str, Any], ctx: Context) -> list[Row]:
    r = results["cutoff"]
    if "skipped" in r:
        return [["cutoff: one agent without the store", ctx.short, 0, "-", "-", "-",
                 f"skipped ({r['skipped']})"]]
    out: list[Row] = []
    for c in r["cuts"]:
        flaps = c["live_flaps_while_cut"] + c["live_flaps_after"]
        noticed = c["cut_noticed_after"]
        back = c["cut_agent_readyz_store_after"] == 200
        out.append([f"cutoff ({c['how']}): live flaps, {c['cut_seconds']:g}s cut + after",
                    ctx.short, 1, str(flaps), "-", "0",
                    verdict(flaps == 0 and c["all_ready_again"], f"{flaps} flaps")])
        out.append([f"cutoff ({c['how']}): cut -> its /readyz/store 503, back -> 200",
                    ctx.short, 1, fmt_s(noticed), "-",
                    f"<= {NOTICE_GOAL:g}s, then 200",
                    verdict(noticed is not None and noticed <= NOTICE_GOAL and back,
                            f"then {c['cut_agent_readyz_store_after']}")])
    crash = r["crash"]
    out.append(["cutoff: SIGKILL elsewhere meanwhile -> not Ready", ctx.short, crash["n"],
                fmt_s(crash["p50"]), fmt_s(crash["max"]), f"<= {r['goal']:g}s",
                verdict(crash["n"] == len(r["cuts"]) and crash["max"] <= r["goal"], "")])
    return out

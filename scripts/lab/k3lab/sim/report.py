"""The table `nox -s lan` prints at the end: one or more rows per scenario that ran.

Each scenario's rows come from a function registered under the scenario's name; rows appear in
the order the scenarios were registered (sim/scenarios.py). A scenario without a rows function
still has its numbers in the JSON results.

    @rows("bridges")
    def _bridges(results: dict[str, Any], ctx: Context) -> list[Row]:
        b = results["bridges"]["to_not_ready"]
        return [["bridges: SIGKILL -> not Ready", ctx.short, b["n"], fmt_s(b["p50"]),
                 fmt_s(b["max"]), "-", "-"]]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from k3lab.sim.common import fmt_s, print_table
from k3lab.sim.scenarios import SCENARIOS

HEADERS = ["scenario", "timings", "n", "p50", "max", "goal", "result"]
Row = list[Any]


@dataclass(frozen=True)
class Context:
    """What rows need besides the results: the run's options and short timings."""

    args: argparse.Namespace
    ttl: float
    probe: float

    @property
    def short(self) -> str:
        return f"ttl {self.ttl:g}s/probe {self.probe:g}s"


RowsFn = Callable[[dict[str, Any], Context], list[Row]]
ROWS: dict[str, RowsFn] = {}


def rows(name: str) -> Callable[[RowsFn], RowsFn]:
    """Register the table rows of scenario `name` (called only when its results exist)."""

    def register(fn: RowsFn) -> RowsFn:
        ROWS[name] = fn
        return fn

    return register


def verdict(ok: bool | None, detail: str) -> str:
    return "-" if ok is None else ("met" if ok else "MISSED") + (f" ({detail})" if detail else "")


def report(results: dict[str, Any], args: argparse.Namespace, store: str) -> str:
    ctx = Context(args, args.peer_ttl, args.peer_ttl / 6)
    table: list[Row] = []
    for name in SCENARIOS:
        if name in results and name in ROWS:
            table += ROWS[name](results, ctx)
    field = " (field LAN)" if results.get("lan", "clean") != "clean" else ""
    print(f"\nk3net {results.get('k3net', '')} on a simulated LAN{field}: {args.hosts} hosts, "
          f"store {store}", flush=True)
    return print_table(HEADERS, table)


@rows("floor")
def _floor(results: dict[str, Any], ctx: Context) -> list[Row]:
    f = results["floor"]["resolved"]
    return [["floor (bare mDNS join)", "zeroconf", f["n"], fmt_s(f["p50"]), fmt_s(f["max"]),
             "-", "-"]]


@rows("join")
def _join(results: dict[str, Any], ctx: Context) -> list[Row]:
    floor = results.get("floor", {}).get("resolved", {}).get("p50")
    j = results["join"]
    s, d = j["store_ready"], j["discovered"]
    goal = None if floor is None else 1.2 * floor + 0.2
    ok = None if goal is None or s["p50"] is None else s["p50"] <= goal
    out = [["join: start -> Ready at store", ctx.short, s["n"], fmt_s(s["p50"]),
            fmt_s(s["max"]), "-" if goal is None else f"<= {goal:.2f}s (1.2x floor+0.2)",
            verdict(ok, "" if ok is None else f"{s['p50'] / floor:.2f}x floor")]]
    if d["n"]:
        okd = None if goal is None or d["p50"] is None else d["p50"] <= goal
        out.append(["join: start -> discovered by peers", ctx.short, d["n"], fmt_s(d["p50"]),
                    fmt_s(d["max"]), "-" if goal is None else f"<= {goal:.2f}s",
                    verdict(okd, "" if okd is None else f"{d['p50'] / floor:.2f}x floor")])
    return out


@rows("leave")
def _leave(results: dict[str, Any], ctx: Context) -> list[Row]:
    lv = results["leave"]["to_false"]
    reasons = ",".join(sorted({str(r) for r in results["leave"]["first_reason"]}))
    ok = None if lv["p50"] is None else lv["p50"] <= 0.5
    return [[f"leave: SIGTERM -> False ({reasons})", ctx.short, lv["n"], fmt_s(lv["p50"]),
             fmt_s(lv["max"]), "p50 <= 0.5s", verdict(ok, "")]]


def _to_not_ready(key: str, label: str, results: dict[str, Any], ctx: Context) -> Row:
    goal = ctx.ttl + ctx.probe + 0.5
    c = results[key]["to_not_ready"]
    ok = None if c["max"] is None else c["max"] <= goal and c["n"] > 0
    note = verdict(ok, "")
    if key == "linkcut" and c["n"] == 0:
        note = "stayed Ready: " + ("its agent still reaches the store (unix socket)"
                                   if ctx.args.store == "mysql" else "see JSON")
    return [label, ctx.short, c["n"], fmt_s(c["p50"]), fmt_s(c["max"]), f"<= {goal:g}s", note]


@rows("crash")
def _crash(results: dict[str, Any], ctx: Context) -> list[Row]:
    reasons = ",".join(sorted({str(s[1]) for s in results["crash"]["state"] if s}))
    return [_to_not_ready("crash", f"crash: SIGKILL -> not-Ready ({reasons})", results, ctx)]


@rows("linkcut")
def _linkcut(results: dict[str, Any], ctx: Context) -> list[Row]:
    u = results["linkcut"]["back_to_ready"]
    return [_to_not_ready("linkcut", "link cut: down -> Unknown", results, ctx),
            ["link cut: up -> Ready", ctx.short, u["n"], fmt_s(u["p50"]), fmt_s(u["max"]),
             "-", f"other nodes flapped {results['linkcut']['other_nodes_flaps']}x"]]


@rows("restart")
def _restart(results: dict[str, Any], ctx: Context) -> list[Row]:
    r = results["restart"]
    flaps = r["other_nodes_flaps"]
    return [["restart: others' flaps", ctx.short, 1,
             f"new pid Ready {fmt_s(r['new_pid_ready_after'])}", "-", "0 flaps",
             verdict(flaps == 0, f"{flaps} flaps")]]


@rows("outage")
def _outage(results: dict[str, Any], ctx: Context) -> list[Row]:
    o = results["outage"]
    if "skipped" in o:
        return [["store outage", "-", 0, "-", "-", "0 lost", "skipped: " + o["skipped"]]]
    return [[f"outage {o['outage_seconds']:g}s: back -> true state", ctx.short, 1,
             fmt_s(o["true_state_after_store_back"]), "-", "0 lost",
             verdict(o["transitions_lost"] == 0,
                     f"{o['transitions_lost']} lost, {o['other_nodes_flaps']} flaps")]]


@rows("steady")
def _steady(results: dict[str, Any], ctx: Context) -> list[Row]:
    st = results["steady"]
    if "skipped" in st:
        return [["steady writes", "-", 0, "-", "-", "<= 2.2/node/min", "skipped: " + st["skipped"]]]
    w = st["writes_per_node_per_minute"]
    return [[f"steady writes/node/min ({st['nodes']} nodes, {st['seconds']:g}s)",
             "defaults ttl 90s/probe 15s", st["nodes"], f"{w:.2f}", "-", "<= 2.2",
             verdict(w <= 2.2, f"{st['flaps']} flaps")]]

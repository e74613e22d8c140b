"""The scenario `subnets`: two subnets joined by a router that forwards unicast, not multicast
(k3lab.netns.RoutedLan), sharing one etcd that runs in the router namespace (both
subnets reach it). mDNS stays on each segment; each side follows the other through the store.

    subnet 1 (10.79.1.0/24): s1-0, s1-1, s1-2        subnet 2 (10.79.2.0/24): s2-0

- crash (SIGKILL) and leave (SIGTERM) within a segment: s1-2, which its segment's agents see
  over mDNS; across the router: s2-0, alone on its segment, so that only the other side's probes
  (of a peer found in the store) can find its crash, and no mDNS goodbye reaches anyone.
  Goal: the same times within 0.5 s (p50). Measured at the store, as every scenario.
- probes per second on the LAN: every agent's k3net_probes_total over a quiet window, and the
  scan's connection attempts apart;
- the cost of a scan of a /24: s1-0 runs `--scan 10.79.2.0/24 --scan-interval 10s`; its
  k3net_scan_seconds and connection attempts per scan, by result.

It builds and removes its own network, etcd and agents (needs_fleet=False), at the run's short
timings (--peer-ttl).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import time
from typing import Any

from k3lab.agents import AgentProc
from k3lab.netns import RoutedLan
from k3lab.nsclient import NetnsClient
from k3lab.services import EtcdServer
from k3lab.sim.common import by_label, fmt_s, log, parse_metrics, summary
from k3lab.sim.report import Context, Row, rows, verdict
from k3lab.sim.scenarios import SETTLE, Sim, all_ready, not_ready, scenario
from k3lab.sim.store_watch import EtcdReader, StoreWatcher

SUBNETS = ("10.79.1.0/24", "10.79.2.0/24")
SCAN_INTERVAL = 10.0
# A quiet window over which probes per second are counted.
WINDOW = 15.0
GOAL = 0.5  # seconds: across the router as fast as within a segment, within this


class _Site:
    """The two subnets, their etcd and agents."""

    def __init__(self, sim: Sim, stack: contextlib.ExitStack) -> None:
        self.sim = sim
        self.workdir = sim.store.workdir / "subnets"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.net = stack.enter_context(RoutedLan((3, 1), SUBNETS))
        router = self.net.router
        self.etcd = EtcdServer(self.workdir / "etcd", client_host=self.net.gateways[0],
                               client_port=2379, peer_port=2380, netns=router.name)
        self.etcd.start()
        stack.callback(self.etcd.stop)
        self.config = self.workdir / "k3-etcd.yaml"
        self.config.write_text("storage:\n  type: etcd\n  etcd:\n"
                               f"    endpoints: [\"{self.etcd.endpoint}\"]\n"
                               "    dial_timeout: 2s\n")
        client = NetnsClient(router.name)
        stack.callback(client.close)
        self.watcher = StoreWatcher(EtcdReader(self.etcd.address, call=client.call))
        self.watcher.start()
        stack.callback(self.watcher.stop)
        self.hosts = {f"s{k + 1}-{i}": host for k, segment in enumerate(self.net.segments)
                      for i, host in enumerate(segment)}
        self.agents: dict[str, AgentProc] = {}
        self.runs = 0
        stack.callback(self.stop_all)

    def start(self, name: str) -> AgentProc:
        self.runs += 1
        log_dir = self.workdir / f"run{self.runs:02d}"
        log_dir.mkdir(exist_ok=True)
        extra = ["--scan", SUBNETS[1], "--scan-interval", f"{SCAN_INTERVAL:g}s"] \
            if name == "s1-0" else []
        agent = AgentProc(self.hosts[name], name, 7946, log_dir, "--log-format", "json",
                          "--peer-ttl", f"{self.sim.ttl:g}s", *extra, config=self.config)
        self.agents[name] = agent
        return agent

    def stop(self, name: str, sig: int) -> None:
        agent = self.agents.pop(name)
        agent.signal(sig)
        agent.proc.wait(10)
        agent.close()

    def stop_all(self) -> None:
        for agent in self.agents.values():
            agent.close()
        self.agents.clear()

    def metrics(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, agent in self.agents.items():
            status, text = agent.client.get(agent.url + "/metrics")
            if status == 200:
                out[name] = parse_metrics(text)
        return out

    def peers(self, name: str) -> dict[str, str]:
        agent = self.agents[name]
        return {p["name"]: p["foundBy"] for p in agent.get_json("/peers")["peers"]}

    def wait_all_ready(self, timeout: float = 30) -> bool:
        return self.watcher.wait_until(all_ready(list(self.hosts)), timeout) is not None

    def time_to_not_ready(self, name: str, sig: int) -> tuple[float | None, Any]:
        t0 = time.monotonic()
        self.stop(name, sig)
        t = self.watcher.wait_until(not_ready(name), self.sim.ttl + 10)
        state = self.watcher.snapshot().ready(name)
        self.start(name).wait_ready()
        self.wait_all_ready()
        time.sleep(SETTLE)
        return (None if t is None else t - t0), state


def _scan_counts(metrics: dict[str, float]) -> dict[str, float]:
    counts: dict[str, float] = {}
    for key, value in metrics.items():
        if key.startswith("k3net_discovery_probes_total{") and 'via="scan"' in key:
            result = key.split('result="', 1)[1].split('"', 1)[0]
            counts[result] = counts.get(result, 0) + value
    return counts


@scenario("subnets", needs_fleet=False)
def subnets(sim: Sim) -> None:
    """two subnets behind a router, one etcd: crash/leave across vs within; probes/s; /24 scan"""
    if shutil.which("etcd") is None:
        sim.results["subnets"] = {"skipped": "needs etcd (Debian etcd-server)"}
        return
    with contextlib.ExitStack() as stack:
        site = _Site(sim, stack)
        log("subnets: 3 agents on 10.79.1.0/24, 1 on 10.79.2.0/24, etcd in the router")
        for name in site.hosts:
            site.start(name)
        for agent in site.agents.values():
            agent.wait_ready()
        ready = site.wait_all_ready(60)
        time.sleep(SETTLE)
        found_by = {name: site.peers(name) for name in site.hosts}

        crash: dict[str, list[float | None]] = {"within": [], "across": []}
        leave: dict[str, list[float | None]] = {"within": [], "across": []}
        states: dict[str, list[Any]] = {"crash": [], "leave": []}
        for k in range(sim.args.repeat):
            for where, victim in (("within", "s1-2"), ("across", "s2-0")):
                seconds, state = site.time_to_not_ready(victim, signal.SIGKILL)
                crash[where].append(seconds)
                states["crash"].append([where, state])
                seconds, state = site.time_to_not_ready(victim, signal.SIGTERM)
                leave[where].append(seconds)
                states["leave"].append([where, state])
            log(f"subnets: round {k + 1}: crash within {fmt_s(crash['within'][-1])}, "
                f"across {fmt_s(crash['across'][-1])}; leave within {fmt_s(leave['within'][-1])}"
                f", across {fmt_s(leave['across'][-1])}")

        # Probes per second over a quiet window: every agent is up, nobody changes.
        site.wait_all_ready()
        before, t0 = site.metrics(), time.monotonic()
        time.sleep(WINDOW)
        after, t1 = site.metrics(), time.monotonic()
        seconds = t1 - t0
        probes = sum(sum(by_label(after[n], "k3net_probes_total", "result").values())
                     - sum(by_label(before[n], "k3net_probes_total", "result").values())
                     for n in after if n in before)
        scan_before = _scan_counts(before.get("s1-0", {}))
        scan_after = _scan_counts(after.get("s1-0", {}))
        attempts = sum(scan_after.values()) - sum(scan_before.values())
        totals = _scan_counts(after.get("s1-0", {}))
        per_scan = sum(totals.values())
        scans = max(1, round(per_scan / 254))
        scan_seconds = after.get("s1-0", {}).get("k3net_scan_seconds")
        sim.results["subnets"] = {
            "timings": sim.timings(sim.ttl),
            "layout": "RoutedLan((3, 1)): s1-0..s1-2 on 10.79.1.0/24, s2-0 on 10.79.2.0/24; "
                      "etcd in the router namespace",
            "all_ready": ready,
            "found_by": found_by,
            "crash_within": summary(crash["within"]),
            "crash_across": summary(crash["across"]),
            "leave_within": summary(leave["within"]),
            "leave_across": summary(leave["across"]),
            "states": states,
            "probes_per_second": round(probes / seconds, 2),
            "agents": len(after),
            "scan": {
                "range": SUBNETS[1], "interval": SCAN_INTERVAL,
                "last_scan_seconds": scan_seconds,
                "scans": scans,
                "attempts_per_scan": round(per_scan / scans, 1),
                "results_per_scan": {k: round(v / scans, 1) for k, v in sorted(totals.items())},
                "attempts_per_second_over_window": round(attempts / seconds, 2),
            },
        }
    r = sim.results["subnets"]
    log(f"subnets: crash p50 within {fmt_s(r['crash_within']['p50'])}, across "
        f"{fmt_s(r['crash_across']['p50'])}; {r['probes_per_second']} probes/s; "
        f"scan of a /24 {fmt_s(scan_seconds)}")


def _goal(within: float | None, across: float | None) -> str:
    if within is None or across is None:
        return verdict(None, "")
    return verdict(abs(across - within) <= GOAL, f"{across - within:+.3f}s")


@rows("subnets")
def _subnets(results: dict[str, Any], ctx: Context) -> list[Row]:
    r = results["subnets"]
    if "skipped" in r:
        return [["subnets", "-", 0, "-", "-", "-", "skipped: " + r["skipped"]]]
    out: list[Row] = []
    for kind, label in (("crash", "SIGKILL -> not Ready"), ("leave", "SIGTERM -> not Ready")):
        within, across = r[f"{kind}_within"], r[f"{kind}_across"]
        out.append([f"subnets {kind}: {label}, within segment", ctx.short, within["n"],
                    fmt_s(within["p50"]), fmt_s(within["max"]), "-", "-"])
        out.append([f"subnets {kind}: {label}, across router", ctx.short, across["n"],
                    fmt_s(across["p50"]), fmt_s(across["max"]), f"p50 within {GOAL:g}s",
                    _goal(within["p50"], across["p50"])])
    out.append([f"subnets: probes/s on the LAN ({r['agents']} agents)", ctx.short, r["agents"],
                f"{r['probes_per_second']:.1f}/s", "-", "-", "-"])
    scan = r["scan"]
    out.append([f"subnets: scan of a /24 every {scan['interval']:g}s", "rate 100/s, 64 open",
                scan["scans"], fmt_s(scan["last_scan_seconds"]), "-", "-",
                f"{scan['attempts_per_scan']:g} attempts/scan: "
                + ", ".join(f"{k} {v:g}" for k, v in scan["results_per_scan"].items())])
    return out

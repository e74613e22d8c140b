"""Benchmark: one k3net agent tracking P simulated peers on a namespace LAN.

    nox -s bench -- [--peers 50 200 500] [--out results/bench.json]

For each P: a fresh LAN (k3lab.netns.Lan) of 1 + --helpers hosts. Host 0 runs
`k3net run` on its memory store at the default timings (peer-ttl 90s, probes every 15s) and the
default log level (info). Each other host runs
one helper process (k3lab/sim/peers.py) that announces P/helpers peers with AsyncZeroconf, each a
service with its own live TCP listener (same address, different ports) that answers the
agent's identity probes (`GET /info`) with its name, as real agents would.

Reported per P:
- join: from the helpers' start until all P Nodes are Ready in the agent's store, and the
  spread of the single peers' Ready times: each the moment the agent's store showed it Ready
  (its `k3net.nodes` log line, to the millisecond), confirmed on its /nodes (read every 2 s:
  read every 250 ms, as before, the listing took a third of the agent's CPU during the join);
- CPU: the agent's utime+stime from /proc/<pid>/stat over a steady-state window (--window
  seconds, from SETTLE = 50 s after all are Ready: held peers' schedules have set in), as % of
  one core; nothing polls the agent meanwhile;
- memory: the agent's peak RSS (VmHWM) and RSS now (VmRSS) from /proc/<pid>/status;
- probes: the peers' listeners note when each probe connects, so the probes per interval are
  measured on the peers' side (each peer is probed at a phase of its own, once per interval, or
  once per refresh while the agent holds its /hold, and not at all while that hold brings its
  beats: the peers serve one with beats as agents do, unless --no-beat or --no-hold);
  the agent's /metrics give the outcomes (every one should be `confirmed`) and the probe
  latency histogram.
Goals are reported against, never asserted. Everything it starts is stopped and every namespace
removed at the end, also on failure, SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from k3lab.agents import AgentProc
from k3lab.netns import Lan
from k3lab.sim.common import (
    Interrupted,
    begin_run,
    by_label,
    cpu_seconds,
    fmt_s,
    k3net_revision,
    log,
    parse_metrics,
    percentile,
    print_table,
    status_kb,
    summary,
    write_json,
)
from k3lab.sim.store_watch import AgentNodesReader, StoreWatcher

SUBNET = "10.78.0.0/24"
PORT = 7946
FIRST_PEER_PORT = 20000
JOIN_TIMEOUT = 60.0
# Seconds from all Ready to the CPU window: a held peer's probe period (33.75 s at the
# defaults) and its hold's first beat (15 s) take this long to set in after the join; a window
# at once would measure the end of the join (every peer's probes at the plain interval).
SETTLE = 50.0
GOALS = {"join_s": 5.0, "cpu_pct": 10.0, "rss_mb": 120.0}
# Seconds between two reads of the agent's /nodes (the watcher that confirms the store).
WATCH_EVERY = 2.0


def ready_times(log_text: str, since: float) -> dict[str, float]:
    """Each Node's first turn to Ready, in seconds after `since` (wall clock), from the agent's
    JSON log: the `k3net.nodes` line it writes when its store's watch shows the Node Ready (the
    memory store is the agent's own: what its /nodes would show, to the millisecond)."""
    firsts: dict[str, float] = {}
    for line in log_text.splitlines():
        if '"k3net.nodes"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        node = record.get("node")
        if record.get("status") == "Ready" and node and node not in firsts:
            at = dt.datetime.fromisoformat(record["ts"]).timestamp() - since
            if at >= 0:
                firsts[node] = at
    return firsts


class Helper:
    """One k3lab.sim.peers process on a host; its JSON lines are read by a thread."""

    def __init__(self, host: Any, count: int, prefix: str, accept_log: Path,
                 no_probe: bool = False, no_hold: bool = False, no_beat: bool = False) -> None:
        self.accept_log = accept_log
        self.events: dict[str, dict[str, Any]] = {}
        self.proc = host.popen(
            [sys.executable, "-m", "k3lab.sim.peers", "--address", host.address, "--count", str(count), "--first-port", str(FIRST_PEER_PORT),
             "--prefix", prefix, "--accept-log", str(accept_log)]
            + (["--no-probe"] if no_probe else []) + (["--no-hold"] if no_hold else [])
            + (["--no-beat"] if no_beat else []),
            stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            with contextlib.suppress(ValueError):
                ev = json.loads(line)
                self.events[ev.get("event", "")] = ev

    def stop(self) -> list[float]:
        """SIGTERM; the times of every probe its listeners accepted."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        try:
            return json.loads(self.accept_log.read_text())
        except (OSError, ValueError):
            return []


def rounds(times: list[float], interval: float) -> list[dict[str, float]]:
    """Group probe times into rounds: a new round starts after a pause of half an interval."""
    out: list[list[float]] = []
    for t in sorted(times):
        if out and t - out[-1][-1] < interval / 2:
            out[-1].append(t)
        else:
            out.append([t])
    return [{"start": r[0], "duration": r[-1] - r[0], "probes": len(r)} for r in out]


def histogram_quantile(metrics: dict[str, float], name: str, q: float) -> float | None:
    """The upper bound of the bucket holding quantile q of a Prometheus histogram."""
    buckets: list[tuple[float, float]] = []
    for key, value in metrics.items():
        if key.startswith(name + "_bucket{"):
            text = key.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if text == "+Inf" else float(text), value))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    for le, count in buckets:
        if count >= q * total:
            return le
    return None


def udp_counters(host: Any) -> dict[str, int]:
    """The kernel's UDP counters in `host`'s namespace (/proc/net/snmp): `RcvbufErrors` counts the
    datagrams (mDNS, here) dropped because a socket's receive buffer was full."""
    lines = [line.split() for line in host.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
             if line.startswith("Udp:")]
    if len(lines) < 2:
        return {}
    return {k: int(v) for k, v in zip(lines[0][1:], lines[1][1:], strict=False)}


def bench_one(peers: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    helpers_n = max(1, min(args.helpers, peers))
    interval = args.peer_ttl / 6
    result: dict[str, Any] = {"peers": peers, "helpers": helpers_n, "peers_probe": not args.no_probe,
                              "peers_hold": not args.no_hold,
                              "peers_beat": not (args.no_hold or args.no_beat),
                              "timings": f"peer-ttl {args.peer_ttl:g}s, probe-interval "
                                         f"{interval:g}s, probe-timeout 700ms"}
    with contextlib.ExitStack() as stack:
        lan = stack.enter_context(Lan(1 + helpers_n, SUBNET))
        log_dir = workdir / f"p{peers}"
        log_dir.mkdir(parents=True, exist_ok=True)
        # At the default log level, as an installed agent runs (the lab's agents log at debug:
        # a line per write and per held connection, a cost of the lab, not of the agent).
        agent = AgentProc(lan[0], "bench-agent", PORT, log_dir, "--log-format", "json",
                          "--log-level", "info", "--peer-ttl", f"{args.peer_ttl:g}s")
        stack.callback(agent.close)
        agent.wait_ready()
        pid = agent.proc.pid
        # The Ready times come from the agent's log (`ready_times`); this watcher only confirms
        # them in the store, slowly: listing 2,000 Nodes 4 times a second took a third of the
        # agent's CPU while its peers joined, and slowed down the join it measured.
        watcher = StoreWatcher(AgentNodesReader(agent.url, call=agent.client.call), WATCH_EVERY)
        watcher.start()
        stack.callback(watcher.stop)
        time.sleep(1.0)  # the agent's own registration and first browse

        per = [peers // helpers_n + (1 if h < peers % helpers_n else 0) for h in range(helpers_n)]
        names = [f"peer-{h + 1}-{i}" for h in range(helpers_n) for i in range(per[h])]
        cpu_join0 = cpu_seconds(pid)
        udp0 = udp_counters(lan[0])
        t_start, wall_start = time.monotonic(), time.time()
        helpers = [Helper(lan[h + 1], per[h], f"peer-{h + 1}", log_dir / f"accepts-{h + 1}.json",
                          args.no_probe, args.no_hold, args.no_beat)
                   for h in range(helpers_n)]
        for helper in helpers:
            stack.callback(helper.stop)
        log(f"P={peers}: {helpers_n} helpers started, waiting for {peers} Nodes Ready")
        t_all = watcher.wait_until(lambda s: all(s.status(n) == "True" for n in names),
                                   JOIN_TIMEOUT)
        cpu_join = cpu_seconds(pid) - cpu_join0
        udp1 = udp_counters(lan[0])
        m_join = parse_metrics(agent.client.get(agent.url + "/metrics")[1])
        state = watcher.snapshot()
        ready_n = sum(1 for n in names if state.status(n) == "True")
        firsts = ready_times(agent.log(), wall_start)
        last = max((firsts.get(n, float("inf")) for n in names), default=None)
        result["join"] = {
            "all_ready_after": None if t_all is None or last is None or last == float("inf")
            else round(last, 3),
            "ready": ready_n,
            "peer_ready": summary(firsts.get(n) for n in names),
            "agent_cpu_during_join_s": round(cpu_join, 2),
            # What the agent's host received over UDP meanwhile, and dropped for a full buffer.
            "udp_datagrams_in": udp1.get("InDatagrams", 0) - udp0.get("InDatagrams", 0),
            "udp_rcvbuf_drops": udp1.get("RcvbufErrors", 0) - udp0.get("RcvbufErrors", 0),
            "mdns_events": {k: v for k, v in by_label(m_join, "k3net_mdns_events_total",
                                                      "kind").items() if v},
            # The probes so far (nearly all made during the join): how long the peers took to
            # answer, which paces the join as much as the agent does (the helpers are busy).
            "probe_latency_p50_le_s": histogram_quantile(m_join, "k3net_probe_latency_seconds",
                                                         0.5),
            "probe_latency_p99_le_s": histogram_quantile(m_join, "k3net_probe_latency_seconds",
                                                         0.99),
        }
        log(f"P={peers}: {ready_n}/{peers} Ready, all after {fmt_s(result['join']['all_ready_after'])}")

        watcher.pause(True)  # nothing polls the agent during the CPU window
        time.sleep(SETTLE)
        m0 = parse_metrics(agent.client.get(agent.url + "/metrics")[1])
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(args.window)
        cpu1, t1 = cpu_seconds(pid), time.monotonic()
        m1 = parse_metrics(agent.client.get(agent.url + "/metrics")[1])
        hwm, rss = status_kb(pid, "VmHWM"), status_kb(pid, "VmRSS")
        watcher.pause(False)
        final = watcher.wait_until(lambda s: True, 5)
        still_ready = sum(1 for n in names if watcher.snapshot().status(n) == "True")
        probes = sum(by_label(m1, "k3net_probes_total", "result").values()) - sum(
            by_label(m0, "k3net_probes_total", "result").values())
        good = ("confirmed",)  # identity probes: anything else is a failure here
        outcomes = {k: v - by_label(m0, "k3net_probes_total", "result").get(k, 0)
                    for k, v in by_label(m1, "k3net_probes_total", "result").items()}
        fails = sum(v for k, v in by_label(m1, "k3net_probes_total", "result").items()
                    if k not in good) - sum(v for k, v in by_label(
                        m0, "k3net_probes_total", "result").items() if k not in good)
        lat_sum = m1.get("k3net_probe_latency_seconds_sum", 0) - m0.get(
            "k3net_probe_latency_seconds_sum", 0)
        lat_count = m1.get("k3net_probe_latency_seconds_count", 0) - m0.get(
            "k3net_probe_latency_seconds_count", 0)
        writes = sum(by_label(m1, "k3net_node_writes_total", "cause").values()) - sum(
            by_label(m0, "k3net_node_writes_total", "cause").values())

        registered = [h.events.get("registered", {}).get("t") for h in helpers]
        result["join"]["helpers_registered_after"] = [
            None if t is None else round(t - t_start, 3) for t in registered]
        accepts = [t for h in helpers for t in h.stop()]
        in_window = [t for t in accepts if t0 <= t <= t1]
        window_rounds = [r for r in rounds(accepts, interval) if t0 <= r["start"] <= t1]
        durations = [r["duration"] for r in window_rounds]
        result["steady"] = {
            "window_s": round(t1 - t0, 1),
            "cpu_pct_one_core": round((cpu1 - cpu0) / (t1 - t0) * 100, 2),
            "vmhwm_mb": None if hwm is None else round(hwm / 1024, 1),
            "vmrss_mb": None if rss is None else round(rss / 1024, 1),
            "probes": probes,
            "probes_failed": fails,
            "probe_outcomes": {k: v for k, v in outcomes.items() if v},
            # Each peer is probed at a phase of its own: measured on the peers' side, the
            # probes they answered per probe interval (every peer once: P).
            "probes_per_interval_seen_by_peers": round(len(in_window) * interval / (t1 - t0), 1),
            "probes_expected": round(peers * (t1 - t0) / interval),
            "probe_latency_mean_ms": None if not lat_count else round(lat_sum / lat_count * 1e3, 2),
            "probe_latency_p99_le_s": histogram_quantile(m1, "k3net_probe_latency_seconds", 0.99),
            "rounds_seen_by_peers": len(window_rounds),
            "round_duration_s": summary(durations),
            "round_probes": [r["probes"] for r in window_rounds],
            "round_vs_interval": None if not durations
            else round((percentile(durations, 50) or 0) / interval, 3),
            "node_writes": writes,
            # Peers whose /hold the agent holds: probed once per refresh, not per interval.
            "held": m1.get("k3net_held_connections"),
            # Scheduled probes a beat on the peer's hold stood in for, over the window.
            "spared": (m1.get("k3net_probes_spared_total") or 0)
            - (m0.get("k3net_probes_spared_total") or 0),
            "still_ready_after_window": still_ready,
            "watcher_ok": final is not None,
        }
        s = result["steady"]
        log(f"P={peers}: CPU {s['cpu_pct_one_core']}% of a core, VmHWM {s['vmhwm_mb']} MB, "
            f"round {fmt_s(s['round_duration_s']['p50'])} of {interval:g}s")
        result["agent_log_warnings"] = sum(
            1 for line in agent.log().splitlines() if '"level": "warning"' in line)
    return result


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["peers"], "error: " + r["error"]] + ["-"] * 7)
            continue
        j, s = r["join"], r["steady"]
        t = j["all_ready_after"]
        rows.append([
            r["peers"],
            f"{j['ready']}/{r['peers']}",
            fmt_s(t) + (" met" if t is not None and t <= GOALS["join_s"] else " MISSED"),
            f"{fmt_s(j['peer_ready']['p50'])} / {fmt_s(j['peer_ready']['max'])}",
            f"{s['cpu_pct_one_core']:.2f}%"
            + (" met" if s["cpu_pct_one_core"] <= GOALS["cpu_pct"] else " MISSED"),
            f"{s['vmhwm_mb']} MB" + (" met" if (s["vmhwm_mb"] or 1e9) <= GOALS["rss_mb"]
                                     else " MISSED"),
            f"{s['probes_per_interval_seen_by_peers']:g} ({s.get('held') or 0:g} held,"
            f" {s.get('spared') or 0:g} spared)",
            f"{s['probe_outcomes'].get('confirmed', 0):g} confirmed,"
            f" {s['probes_failed']:g} not",
            f"{s['probe_latency_mean_ms']} ms",
        ])
    print(f"\nk3net {k3net_revision()} bench: one agent "
          f"(memory store, peer-ttl {args.peer_ttl:g}s, probe-interval {args.peer_ttl / 6:g}s, "
          "probe-timeout 700ms), "
          f"P simulated peers from {args.helpers} helper hosts; goals: all Ready <= "
          f"{GOALS['join_s']:g}s, CPU <= {GOALS['cpu_pct']:g}%, RSS <= {GOALS['rss_mb']:g} MB",
          flush=True)
    return print_table(["peers", "Ready", "all Ready after start", "peer Ready p50/max",
                        f"CPU ({args.window:g}s window)", "peak RSS",
                        f"probes per {args.peer_ttl / 6:g}s", "identity probes",
                        "probe mean"], rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from k3net.config import parse_duration

    parser = argparse.ArgumentParser(prog="nox -s bench --", description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, nargs="+", default=[50, 200, 500])
    parser.add_argument("--helpers", type=int, default=4, help="helper hosts (default 4)")
    parser.add_argument("--window", type=float, default=40,
                        help="seconds of steady state for CPU and probe rounds (default 40)")
    parser.add_argument("--peer-ttl", type=parse_duration, default=90.0,
                        help="the agent's peer-ttl (default 90s, the k3 default)")
    parser.add_argument("--no-probe", action="store_true",
                        help="the simulated peers announce without probing their names first: "
                             "no flood of answers to the probes (what the agent alone costs)")
    parser.add_argument("--no-hold", action="store_true",
                        help="the simulated peers serve no /hold (as a Go agent): the agent "
                             "follows them by probes only, each once per probe interval")
    parser.add_argument("--no-beat", action="store_true",
                        help="the peers' holds send no beats (as agents before beats): held "
                             "peers are probed once per refresh")
    parser.add_argument("--out", default="results/bench.json")
    args = parser.parse_args(argv)
    if any(not 1 <= p <= 2000 for p in args.peers):
        parser.error("--peers: between 1 and 2000")
    if not 1 <= args.helpers <= 16:
        parser.error("--helpers: between 1 and 16")
    if not 10 <= args.window <= 300:
        parser.error("--window: between 10 and 300 seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = begin_run("k3bench-")
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    code = 0
    try:
        for peers in args.peers:
            try:
                results.append(bench_one(peers, args, workdir))
            except Exception as exc:  # report it, go on with the next size
                log(f"P={peers} failed: {type(exc).__name__}: {exc}")
                results.append({"peers": peers, "error": f"{type(exc).__name__}: {exc}"})
                code = 1
    except Interrupted as exc:
        log(f"interrupted ({exc}): cleaning up")
        code = 130
    finally:
        logs = Path("results/bench-logs")
        shutil.rmtree(logs, ignore_errors=True)
        with contextlib.suppress(OSError):
            shutil.copytree(workdir, logs)
        shutil.rmtree(workdir, ignore_errors=True)
    table = report(results, args)
    out = {"k3net": k3net_revision(), "goals": GOALS, "runtime_seconds": round(time.monotonic() - started, 1),
           "results": results, "table": table}
    path = write_json(args.out, out)
    log(f"results in {path}; runtime {out['runtime_seconds']:g}s")
    return code


if __name__ == "__main__":
    sys.exit(main())

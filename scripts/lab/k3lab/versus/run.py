"""`nox -s versus`: k3net against HashiCorp Serf, fault for fault, on the same netns LAN.

    nox -s versus -- [--hosts 5] [--trials 3] [--window 60] [--steady 60]
                     [--out results/versus.json] [--md docs/versus-sample.md]

One LAN of network namespaces (k3lab.netns.Lan: a bridge in a namespace of its own, a veth per
host, private 10.77.0.0/24 addresses, multicast on); first N Serf agents (k3lab.versus.serf), then
N k3net agents at their defaults (peer-ttl 90 s, probe every 15 s) on one etcd on the bridge,
each through the same faults, driven by the same code (`faults`), never on host 0 (the
observer):

  steady    nothing wrong for --steady seconds: CPU % of a core and RSS of each agent (/proc),
            bytes per second on its host's link (the veth's counters: all its traffic, for k3net
            the store's included)
  join      a member that left starts again: time until another member sees it alive
  leave     SIGINT (Serf's graceful leave) / SIGTERM (k3net's): time until it is seen gone
  crash     SIGKILL, the host lives: time until it is declared failed
  hostloss  the host's link cut (nothing closes): time until failed (then held 10 s: is it
            alive again while cut?); link up: until alive
  loss      one host drops 20 % of its frames each way for --window s: false failures
  starved   one agent held to 5 % of a core (k3lab.cpulimit) for --window s: false failures
  paused    one agent stopped twice for 5 s (SIGSTOP/SIGCONT) in --window s: false failures

Timings are --trials trials each (p50 and max), every fault at a random point of the
contestant's probe interval. A trial that sees nothing within its bound counts as missed. A false
failure is a member declared failed (Serf: a `failed` its observer applied) or a live Node
written not-Ready (k3net) while every host is alive. Every namespace, process and CPU-limit
group is removed at the end, also on failure, SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from k3lab import cpulimit
from k3lab.netns import Lan
from k3lab.sim.common import (
    Reported,
    begin_run,
    cpu_seconds,
    k3net_revision,
    log,
    status_kb,
    write_json,
)
from k3lab.sim.stores import SimStore
from k3lab.versus import measure
from k3lab.versus.contest import Contestant, K3net, Serf
from k3lab.versus.serf import ensure_installed

SUBNET = "10.77.0.0/24"
START_TIMEOUT = 60.0
# A failure or departure not seen within this is missed: k3net's peer-ttl expiry alone takes
# up to peer-ttl + a probe interval (105 s) at its defaults, plus room.
DOWN_TIMEOUT = 120.0
SEEN_TIMEOUT = 60.0  # join, and alive again after a link cut (Serf reconnects every 30 s)
SETTLE = 3.0  # after a member is back, before the next fault
# A host declared failed stays cut this long: alive again before its link returns would be a
# false recovery (a suspicion that lapsed while the host is still gone).
HOLD = 10.0
LOSS, SHARE, PAUSES, PAUSE_SECONDS = 20, 0.05, 2, 5.0
SEED = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nox -s versus --", description=(__doc__ or "").split("\n\n")[0],
        epilog=(__doc__ or "").split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=5, help="hosts on the LAN (4..20, default 5)")
    parser.add_argument("--trials", type=int, default=3,
                        help="trials of each timed fault (1..10, default 3)")
    parser.add_argument("--window", type=float, default=60,
                        help="seconds of each gray fault: loss, starved, paused (20..600, default 60)")
    parser.add_argument("--steady", type=float, default=60,
                        help="seconds of the steady-state cost (20..600, default 60)")
    parser.add_argument("--only", choices=["serf", "k3net", "both"], default="both")
    parser.add_argument("--discover", choices=["mdns", "join"], default="mdns",
                        help="how Serf agents find each other: -discover (mDNS on eth0) or "
                             "-join host 0 (default mdns)")
    parser.add_argument("--out", default="results/versus.json", help="JSON results")
    parser.add_argument("--md", default="", help="also write the table as markdown here "
                        "(e.g. docs/versus-sample.md)")
    parser.add_argument("--keep-logs", default="results/versus-logs",
                        help="copy the agents' logs here ('' for none)")
    args = parser.parse_args(argv)
    for name, low, high in (("hosts", 4, 20), ("trials", 1, 10), ("window", 20, 600),
                            ("steady", 20, 600)):
        if not low <= getattr(args, name) <= high:
            parser.error(f"--{name} must be between {low:g} and {high:g}")
    return args


# --- the faults, the same for both --------------------------------------------------------------


def victim(n: int, k: int) -> int:
    """Hosts to disturb, from the last one down; never host 0 (the observer)."""
    return n - 1 - (k % (n - 1))


def steady(c: Contestant, lan: Lan, seconds: float) -> dict[str, Any]:
    def reading(i: int) -> measure.Reading:
        host = lan[i]
        out = host.ip("-s", "-j", "link", "show", "dev", host.interface).stdout
        pid = c.pid(i)
        return measure.Reading(time.monotonic(), cpu_seconds(pid), status_kb(pid, "VmRSS") or 0,
                               measure.link_bytes(out))

    n = len(lan)
    before = {i: reading(i) for i in range(n)}
    time.sleep(seconds)
    after = {i: reading(i) for i in range(n)}
    return {"seconds": seconds,
            "per_agent": {c.name(i): measure.cost(before[i], after[i]) for i in range(n)}}


def join_leave(c: Contestant, n: int, trials: int, rng: random.Random) -> dict[str, Any]:
    leave: list[float | None] = []
    join: list[float | None] = []
    states = []
    for k in range(trials):
        i = victim(n, k)
        time.sleep(rng.uniform(0, c.probe_interval))
        t0 = time.monotonic()
        c.signal(i, c.leave_signal)
        t = c.wait_down(i, t0, DOWN_TIMEOUT, left=True)
        leave.append(None if t is None else t - t0)
        states.append(c.state(i))
        c.reap(i)
        t1 = c.start(i)
        t = c.wait_seen(i, t1, SEEN_TIMEOUT)
        join.append(None if t is None else t - t1)
        log(f"  {c.kind} leave/join {k + 1}/{trials}: {c.name(i)} left after "
            f"{_s(leave[-1])} ({states[-1]}), seen again {_s(join[-1])} after its start")
        _settle(c)
    return {"leave": measure.times(leave), "join": measure.times(join),
            "leave_states": states}


def crash(c: Contestant, n: int, trials: int, rng: random.Random) -> dict[str, Any]:
    down: list[float | None] = []
    states = []
    for k in range(trials):
        i = victim(n, k)
        time.sleep(rng.uniform(0, c.probe_interval))
        t0 = time.monotonic()
        c.signal(i, signal.SIGKILL)
        t = c.wait_down(i, t0, DOWN_TIMEOUT, left=False)
        down.append(None if t is None else t - t0)
        states.append(c.state(i))
        log(f"  {c.kind} crash {k + 1}/{trials}: {c.name(i)} failed after {_s(down[-1])} "
            f"({states[-1]})")
        c.reap(i)
        t1 = c.start(i)
        c.wait_seen(i, t1, SEEN_TIMEOUT)
        _settle(c)
    return {"crash": measure.times(down), "crash_states": states}


def hostloss(c: Contestant, lan: Lan, trials: int, rng: random.Random) -> dict[str, Any]:
    down: list[float | None] = []
    back: list[float | None] = []
    states, relapses = [], 0
    for k in range(trials):
        i = victim(len(lan), k)
        host = lan[i]
        time.sleep(rng.uniform(0, c.probe_interval))
        t0 = time.monotonic()
        host.link_down()
        try:
            t = c.wait_down(i, t0, DOWN_TIMEOUT, left=False)
            down.append(None if t is None else t - t0)
            states.append(c.state(i))
            if t is not None:
                time.sleep(HOLD)
                relapses += c.wait_back(i, t, 0) is not None
        finally:
            t1 = time.monotonic()
            host.link_up()
        t = c.wait_back(i, t1, SEEN_TIMEOUT)
        back.append(None if t is None else max(0.0, t - t1))
        log(f"  {c.kind} host loss {k + 1}/{trials}: {c.name(i)} failed after {_s(down[-1])} "
            f"({states[-1]}), alive {_s(back[-1])} after link up")
        if t is None:  # not back by itself within the bound: restart it for the next fault
            c.signal(i, signal.SIGKILL)
            c.reap(i)
            c.start(i)
        _settle(c)
    return {"hostloss": measure.times(down), "hostback": measure.times(back),
            "hostloss_states": states, "alive_again_while_cut": relapses,
            "cut_held_after_failed_seconds": HOLD}


def gray(c: Contestant, lan: Lan, window: float) -> dict[str, Any]:
    """Three windows, one sickness each, on three different hosts."""
    n = len(lan)
    out: dict[str, Any] = {}
    tail = c.probe_interval  # a false failure may land just after the window

    i = victim(n, 0)
    t0 = c.window_start()
    how = lan.lose_host(i, LOSS)
    try:
        time.sleep(window)
    finally:
        lan.lose_host(i, 0)
    time.sleep(tail)
    out["loss"] = {"host": c.name(i), "how": how, "seconds": window,
                   **c.false_failures(t0, time.monotonic())}
    log(f"  {c.kind} loss: {out['loss']['false_failures']} false failures")
    _settle(c)

    i = victim(n, 1)
    limit = cpulimit.CpuLimit.create(f"versus-{c.kind}-{i}", SHARE)
    if limit is None:
        out["starved"] = {"not_measured": "no cgroup cpu controller here (or not root)"}
    else:
        try:
            limit.add(c.pid(i))
            cpu0, t0 = cpu_seconds(c.pid(i)), c.window_start()
            time.sleep(window)
            used = (cpu_seconds(c.pid(i)) - cpu0) / (time.monotonic() - t0)
        finally:
            limit.close()
        time.sleep(tail)
        out["starved"] = {"host": c.name(i), "how": limit.kind, "seconds": window,
                          "cpu_share_used": round(used, 4),
                          **c.false_failures(t0, time.monotonic())}
        log(f"  {c.kind} starved: {out['starved']['false_failures']} false failures "
            f"(used {used:.1%} of a core)")
    _settle(c)

    i = victim(n, 2)
    t0 = c.window_start()
    for k in range(PAUSES):
        time.sleep(max(0.0, t0 + window * (k + 1) / (PAUSES + 1) - time.monotonic()))
        c.signal(i, signal.SIGSTOP)
        try:
            time.sleep(PAUSE_SECONDS)
        finally:
            c.signal(i, signal.SIGCONT)
    time.sleep(max(0.0, t0 + window - time.monotonic()) + tail)
    out["paused"] = {"host": c.name(i), "seconds": window,
                     **c.false_failures(t0, time.monotonic())}
    log(f"  {c.kind} paused: {out['paused']['false_failures']} false failures")
    _settle(c)
    return out


def _settle(c: Contestant) -> None:
    if not c.all_alive(SEEN_TIMEOUT):
        raise RuntimeError(f"{c.kind}: not every member alive again within {SEEN_TIMEOUT:g}s")
    time.sleep(SETTLE)


def _s(v: float | None) -> str:
    return "never" if v is None else f"{v:.2f}s"


def faults(c: Contestant, lan: Lan, args: argparse.Namespace) -> dict[str, Any]:
    """Every fault, in order, on a started contestant."""
    rng = random.Random(SEED)
    result: dict[str, Any] = {}
    log(f"{c.kind}: steady state for {args.steady:g}s")
    result["steady"] = steady(c, lan, args.steady)
    log(f"{c.kind}: leave and join")
    result.update(join_leave(c, len(lan), args.trials, rng))
    log(f"{c.kind}: crash")
    result.update(crash(c, len(lan), args.trials, rng))
    log(f"{c.kind}: host loss")
    result.update(hostloss(c, lan, args.trials, rng))
    log(f"{c.kind}: gray faults, {args.window:g}s each")
    result.update(gray(c, lan, args.window))
    return result


# --- the run ------------------------------------------------------------------------------------


def run_serf(lan: Lan, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    version = ensure_installed(log)
    log(f"serf: {version}; {len(lan)} agents, LAN profile, "
        + ("mDNS discovery (-discover) on eth0" if args.discover == "mdns" else "-join host 0"))
    logs = workdir / "logs" / "serf"
    logs.mkdir(parents=True, exist_ok=True)
    serf = Serf(lan, logs, args.discover)
    try:
        t0 = time.monotonic()
        serf.start_all(START_TIMEOUT)
        log(f"serf: all {len(lan)} members alive at host 0 after {time.monotonic() - t0:.2f}s")
        time.sleep(SETTLE)
        result = faults(serf, lan, args)
    finally:
        serf.close()
    result["version"] = version
    result["discovery"] = ("mDNS (-discover, on eth0 inside the namespaces)"
                           if args.discover == "mdns" else "-join host 0")
    result["observer"] = "serf-0's log: the EventMember* lines, stamped as they arrive"
    return result


def run_k3net(lan: Lan, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    store = SimStore("etcd", workdir, lan, SUBNET)
    try:
        k3 = K3net(lan, store, workdir / "logs" / "k3net")
        try:
            log(f"k3net: {len(lan)} agents at the defaults (peer-ttl 90s, probe 15s), {store.where}")
            k3.start_all(START_TIMEOUT)
            time.sleep(SETTLE)
            result = faults(k3, lan, args)
            result["own_node_ready_at_store_after_start"] = measure.times(k3.store_ready)
        finally:
            k3.close()
    finally:
        store.close()
    result["observer"] = ("the etcd store (50 ms poll); join: node-0's /peers confirmed with "
                          "the new pid")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = begin_run("k3versus-")
    started = time.monotonic()
    results: dict[str, Any] = {
        "hosts": args.hosts, "trials": args.trials, "window_seconds": args.window,
        "steady_seconds": args.steady, "k3net_revision": k3net_revision(),
        "k3net_timings": "defaults: peer-ttl 90s, probe-interval 15s, probe-timeout 700ms",
        "serf_timings": "LAN profile (memberlist DefaultLANConfig)",
    }
    contestants: dict[str, dict[str, Any] | None] = {}
    with Reported(results, workdir) as run:
        try:
            for kind, runner in (("serf", run_serf), ("k3net", run_k3net)):
                if args.only not in (kind, "both"):
                    continue
                # A fresh LAN each: nothing one left behind (a qdisc, a route) touches the other.
                with Lan(args.hosts, SUBNET) as lan:
                    log(f"LAN: {args.hosts} hosts on {SUBNET}, namespaces {lan.prefix}-*")
                    # Under the contestant's name: "serf", "k3net".
                    contestants[kind] = runner(lan, workdir, args)
                    results[kind] = contestants[kind]
        finally:
            _keep_logs(workdir / "logs", args.keep_logs)
    results["runtime_seconds"] = round(time.monotonic() - started, 1)
    if contestants:
        headers, rows = measure.table(contestants)
        text = measure.markdown(headers, rows)
        results["table"] = text
        serf = (contestants.get("serf") or {}).get("version", "Serf")
        print(f"\nk3net {results['k3net_revision']} vs {serf} on a {args.hosts}-host netns LAN ({args.trials} trials, {args.window:g}s gray "
              f"windows)\n{text}", flush=True)
        if args.md:
            _write_md(Path(args.md), results, text)
            log(f"markdown in {args.md}")
    path = write_json(args.out, results)
    log(f"results in {path}; runtime {results['runtime_seconds']:g}s")
    return run.code


def _write_md(path: Path, results: dict[str, Any], table: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    serf = results.get("serf") or {}
    path.write_text(
        "# k3net versus Serf: sample output\n\n"
        f"`nox -s versus -- --trials {results['trials']} --window {results['window_seconds']:g} "
        f"--steady {results['steady_seconds']:g}` on a {results['hosts']}-host netns LAN, "
        f"runtime {results['runtime_seconds']:g} s. k3net {results['k3net_revision']} "
        f"({results['k3net_timings']}), {serf.get('version', 'Serf')} with its LAN profile, "
        f"discovery {serf.get('discovery', '-')}. What each row means: docs/versus.md.\n\n"
        + (f"Error: {results['error']}\n\n" if "error" in results else "")
        + table + "\n")


def _keep_logs(src: Path, dest: str) -> None:
    if dest and src.exists():
        target = Path(dest)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(src, target)


if __name__ == "__main__":
    sys.exit(main())


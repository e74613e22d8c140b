"""`nox -s lan`: options, the run (LAN, store, agents, scenarios), results and clean-up."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from k3lab.netns import VIRBR, Lan
from k3lab.sim.common import Reported, begin_run, k3net_revision, log, write_json
from k3lab.sim.fleet import Fleet
from k3lab.sim.report import report
from k3lab.sim.scenarios import SCENARIOS, Sim
from k3lab.sim.stores import SimStore
from k3net.config import parse_duration

# Modules that register scenarios (and their rows), in the order their scenarios run.
SCENARIO_MODULES = ["k3lab.sim.clean_lan", "k3lab.sim.faults", "k3lab.sim.field_lan",
                    "k3lab.sim.silence", "k3lab.sim.subnets", "k3lab.sim.cutoff"]
SUBNET = "10.77.0.0/24"
# --field: host 1's second LAN address, above every host's first (--hosts is at most 60) and
# below the store's address (the subnet's last).
SECOND_ADDRESS = "10.77.0.201/24"


def shape_field(lan: Lan) -> str:
    """Give the LAN what real servers carry (design section 5); says what it did."""
    lan.add_shared_bridge(*VIRBR)
    lan[1].add_address(SECOND_ADDRESS)
    return (f"field: {VIRBR[0]} {VIRBR[1]} on every host, host 1 (node-1) also has "
            f"{SECOND_ADDRESS}")


def load_scenarios() -> None:
    for module in SCENARIO_MODULES:
        importlib.import_module(module)


def parse_args(argv: list[str] | None = None, description: str = "") -> argparse.Namespace:
    load_scenarios()
    parser = argparse.ArgumentParser(
        prog="nox -s lan --", description=description,
        epilog="scenarios:\n" + "\n".join(f"  {s.name:9} {s.doc}" for s in SCENARIOS.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=5, help="hosts on the LAN (default 5)")
    parser.add_argument("--store", choices=["memory", "etcd", "mysql"], default="etcd")
    parser.add_argument("--scenario", default="all",
                        help=f"{', '.join(SCENARIOS)}, several separated by commas, or all")
    parser.add_argument("--out", default="results/lan.json", help="JSON results")
    parser.add_argument("--peer-ttl", type=parse_duration, default=6.0,
                        help="peer-ttl of the failure scenarios (default 6s: probes every 1s)")
    parser.add_argument("--steady", type=float, default=120,
                        help="seconds of steady state to count writes over (default 120)")
    parser.add_argument("--gray", type=float, default=180,
                        help="seconds of the gray scenario's sickness (default 180, 30..900)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="samples of floor, leave, crash (default 3)")
    parser.add_argument("--store-delay", type=float, default=0.0,
                        help="etcd only: agents reach the store through a relay that delays "
                        "every byte this many seconds each way (a store far away or slow to "
                        "sync; default 0, 0..2)")
    parser.add_argument("--mysql-socket", help="use this existing MariaDB instead of a private "
                        "one (the outage scenario is then skipped)")
    parser.add_argument("--screenshot", default="results/page.png",
                        help="PNG of a live agent's cluster page at the end ('' for none)")
    parser.add_argument("--field", action="store_true",
                        help="a field LAN, as real servers are: every host also carries "
                        f"{VIRBR[0]} {VIRBR[1]} (with carrier, as with a running VM) and "
                        f"host 1 has a second LAN address ({SECOND_ADDRESS})")
    parser.add_argument("--keep-logs", default="results/lan-logs",
                        help="copy the agents' logs here (default results/lan-logs)")
    args = parser.parse_args(argv)
    names = list(SCENARIOS) if args.scenario == "all" else args.scenario.split(",")
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
    if not 30 <= args.gray <= 900:
        parser.error("--gray must be between 30 and 900 seconds")
    if not 0 <= args.store_delay <= 2 or (args.store_delay and args.store != "etcd"):
        parser.error("--store-delay takes 0 to 2 seconds, with --store etcd")
    args.repeat = max(1, min(args.repeat, 10))
    return args


def run_scenarios(sim: Sim, names: list[str],
                  last_look: Callable[[Sim], None] = lambda sim: None) -> None:
    """The chosen scenarios in registration order. The fleet (the join scenario) starts before
    the first scenario that needs it; join's numbers are kept only when join was chosen.
    `last_look` runs once, on the first fleet with what the clean-LAN scenarios did to it:
    before the first scenario that runs agents its own way (steady, the field LAN, ...), or at
    the end."""
    from k3lab.sim.clean_lan import start_fleet

    looked = False
    for scenario in SCENARIOS.values():
        if scenario.name not in names:
            continue
        if not scenario.needs_fleet and sim.fleet_up and not looked:
            last_look(sim)
            looked = True
        if scenario.needs_fleet and not sim.fleet_up:
            start_fleet(sim)
            if "join" not in names:
                sim.results.pop("join", None)
        if scenario.run is not None:
            if scenario.needs_fleet:
                log(f"{scenario.name} ...")
            scenario.run(sim)
    if not looked:
        last_look(sim)


def main(argv: list[str] | None = None, description: str = "") -> int:
    args = parse_args(argv, description)
    workdir = begin_run("k3lan-")
    started = time.monotonic()
    results: dict[str, Any] = {
        "hosts": args.hosts, "store": args.store, "scenarios": args.scenarios,
        "k3net": k3net_revision(),
        "short_timings": f"peer-ttl {args.peer_ttl:g}s, probe-interval {args.peer_ttl / 6:g}s",
        "default_timings": "peer-ttl 90s, probe-interval 15s (steady state only)",
    }
    with Reported(results, workdir) as run, contextlib.ExitStack() as stack:
        lan = stack.enter_context(Lan(args.hosts, SUBNET))
        log(f"LAN: {args.hosts} hosts on {SUBNET}, namespaces {lan.prefix}-*")
        results["lan"] = "clean"
        if args.field:
            results["lan"] = shape_field(lan)
            log(f"field LAN: {results['lan']}")
        store = SimStore(args.store, workdir, lan, SUBNET, args.mysql_socket,
                         delay=args.store_delay)
        stack.callback(store.close)
        results["store_where"] = store.where or "each agent's own memory store"
        log(f"store: {results['store_where']}")
        fleet = Fleet(lan, store, workdir / "logs")
        stack.callback(_keep_logs, workdir / "logs", args.keep_logs)
        stack.callback(fleet.stop_all)
        sim = Sim(args, lan, store, fleet, None)
        stack.callback(_stop_watcher, sim)
        sim.results = results
        if args.store != "memory":
            sim.ensure_watcher()
        # The page shows the first fleet's timeline: joins, leaves, a crash, a link cut, a
        # restart, an outage (the scenarios after them restart the agents).
        run_scenarios(sim, args.scenarios,
                      lambda sim: screenshot(sim, args.screenshot, time.monotonic() - started))
    results["runtime_seconds"] = round(time.monotonic() - started, 1)
    results["table"] = report(results, args, results.get("store_where", args.store))
    path = write_json(args.out, results)
    log(f"results in {path}; runtime {results['runtime_seconds']:g}s")
    return run.code


def screenshot(sim: Sim, dest: str, elapsed: float) -> None:
    """The cluster page of the first agent still running, after every scenario (so its
    timeline has them all), as the README shows it. A failure is logged, not fatal."""
    from k3lab import browser

    running = [a for _, a in sorted(sim.fleet.agents.items()) if a.proc.poll() is None]
    if not dest or not running:
        return
    if not browser.available():
        log("screenshot: skipped (needs Debian chromium and chromium-driver)")
        return
    agent = running[0]
    try:
        span = next((m for m in (1, 5, 15) if m * 60 >= elapsed), 60)  # the whole run
        page = browser.screenshot_page(agent.host.name, agent.url + "/", Path(dest),
                                       span_minutes=span)
    except Exception as exc:  # selenium's errors, a page that never settles: report, go on
        log(f"screenshot: failed: {type(exc).__name__}: {exc}")
        sim.results["screenshot_error"] = str(exc)
        return
    log(f"screenshot: {agent.name}'s page ({len(page['rows'])} nodes) in {dest}")
    sim.results["screenshot"] = dest


def _stop_watcher(sim: Sim) -> None:
    if sim.watcher is not None:
        sim.watcher.stop()


def _keep_logs(src: Path, dest: str) -> None:
    if dest and src.exists():
        target = Path(dest)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(src, target)


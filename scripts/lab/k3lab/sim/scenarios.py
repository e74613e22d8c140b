"""The scenario registry of `nox -s lan`, and what every scenario gets: a `Sim`.

A scenario is a function `fn(sim) -> None` that disturbs the LAN, measures from the store's
point of view (`sim.ensure_watcher()`), and puts its numbers in `sim.results[name]`. Register it
with a name; `--scenario NAME` then runs it, in registration order with the others:

    from k3lab.sim.scenarios import Sim, scenario

    @scenario("bridges", needs_fleet=True)
    def bridges(sim: Sim) -> None:
        "every host carries virbr0 192.168.122.1; SIGKILL one agent: time to not-Ready"
        sim.lan.add_shared_bridge()
        ...
        sim.results["bridges"] = {...}

`needs_fleet=True`: the agents run (started at the short timings, all Ready) before it starts,
and the scenario leaves them so (restart what it stopped). A scenario with its own network or
timings (`needs_fleet=False`) builds and removes what it needs itself. Its table rows, if any,
come from a function registered in `sim/report.py` under the same name. The module that defines
scenarios must be imported by `sim/cli.py` (SCENARIO_MODULES).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from k3lab.netns import Lan
from k3lab.sim.fleet import Fleet
from k3lab.sim.store_watch import State, StoreWatcher, Transition
from k3lab.sim.stores import SimStore

DEFAULT_TTL = 90.0
# After an agent (re)starts, give it this long to finish its mDNS registration and first
# browse before the next disturbance, so that samples do not overlap.
SETTLE = 2.5


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[Sim], None] | None  # None: measured while the fleet starts (join)
    needs_fleet: bool
    doc: str


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, *, needs_fleet: bool) -> Callable[[Callable[[Sim], None]],
                                                           Callable[[Sim], None]]:
    """Register `fn` as the scenario `name`; its docstring's first line is its --help text."""

    def register(fn: Callable[[Sim], None]) -> Callable[[Sim], None]:
        add(name, fn, needs_fleet=needs_fleet, doc=(fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return register


def add(name: str, fn: Callable[[Sim], None] | None, *, needs_fleet: bool, doc: str) -> None:
    if name in SCENARIOS or name == "all" or "," in name:
        raise ValueError(f"scenario name taken or invalid: {name!r}")
    SCENARIOS[name] = Scenario(name, fn, needs_fleet, doc)


def all_ready(names: list[str]) -> Callable[[State], bool]:
    return lambda s: all(s.status(n) == "True" for n in names)


def status_is(name: str, status: str) -> Callable[[State], bool]:
    """Node `name`'s Ready status is `status` ("True", "False", "Unknown")."""
    return lambda s: s.status(name) == status


def not_ready(name: str) -> Callable[[State], bool]:
    """Node `name` exists and its Ready status is anything but "True"."""
    return lambda s: s.status(name) not in ("True", None)


def transition(tr: Transition) -> dict[str, Any]:
    """A store transition as JSON."""
    return {"t": round(tr.t, 3), "node": tr.node, "old": tr.old, "new": tr.new}


class Sim:
    """One run: the LAN, its store and agents, the store watcher, and the results so far."""

    def __init__(self, args: argparse.Namespace, lan: Lan, store: SimStore, fleet: Fleet,
                 watcher: StoreWatcher | None) -> None:
        self.args = args
        self.lan = lan
        self.store = store
        self.fleet = fleet
        self.watcher = watcher
        self.ttl: float = args.peer_ttl
        self.probe = args.peer_ttl / 6
        self.results: dict[str, Any] = {}
        self.n = len(lan)
        self.fleet_up = False  # the agents run at the short timings, all Ready

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

    def rewatch(self) -> None:
        """With the memory store the watcher reads agent 0's /nodes through that agent's client:
        a new agent 0 needs a new watcher (its store starts empty, too)."""
        if self.store.kind == "memory" and self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
            self.ensure_watcher()

    def wait_all_ready(self, timeout: float = 30) -> float | None:
        names = self.watched_names()
        return self.ensure_watcher().wait_until(all_ready(names), timeout)

    def watched_names(self) -> list[str]:
        return self.fleet.names

    def restart(self, i: int, ttl: float | None) -> None:
        agent = self.fleet.start(i, ttl)
        agent.wait_ready()

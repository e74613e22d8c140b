"""The two contestants of `nox -s versus`, behind one small interface, so that one fault driver
(k3lab.versus.run) puts both through exactly the same faults.

Each answers, for member i (on host i): when did another member see it alive, failed or gone?

- Serf: host 0's agent is the observer; its log lines are its decisions (k3lab.versus.serf).
- k3net: the shared etcd is the judge, as the Go components read it (sim/store_watch.py, a
  50 ms poll): failed = its Node not Ready, left = Ready False. "Seen alive" after a start is
  node-0's `/peers` listing it confirmed with the new pid (its identity answer reached another
  agent), polled every 50 ms; the Node Ready at the store is also kept (the agent writes its own
  Node Ready itself, so it proves nothing about the others).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from k3lab.netns import Lan
from k3lab.sim.field_lan import etcd_history
from k3lab.sim.fleet import Fleet
from k3lab.sim.store_watch import EtcdReader, StoreWatcher, Transition
from k3lab.sim.stores import SimStore
from k3lab.versus.serf import SerfAgent

POLL = 0.05


class Contestant(Protocol):
    kind: str
    leave_signal: int
    probe_interval: float  # faults start at a random point of it

    def name(self, i: int) -> str: ...
    def start(self, i: int) -> float: ...
    def start_all(self, timeout: float) -> None: ...
    def pid(self, i: int) -> int: ...
    def signal(self, i: int, sig: int) -> None: ...
    def reap(self, i: int) -> None: ...
    def wait_seen(self, i: int, since: float, timeout: float) -> float | None: ...
    def wait_down(self, i: int, since: float, timeout: float, *, left: bool) -> float | None: ...
    def wait_back(self, i: int, since: float, timeout: float) -> float | None: ...
    def state(self, i: int) -> str: ...
    def all_alive(self, timeout: float) -> bool: ...
    def window_start(self) -> float: ...
    def false_failures(self, since: float, until: float) -> dict[str, Any]: ...
    def close(self) -> None: ...


def _poll(check: Callable[[], float | None], timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while True:
        t = check()
        if t is not None:
            return t
        if time.monotonic() >= deadline:
            return None
        time.sleep(POLL)


class Serf:
    kind = "serf"
    leave_signal: int = signal.SIGINT  # Serf leaves gracefully on SIGINT (SIGTERM: no leave)
    probe_interval = 1.0  # memberlist's LAN profile

    def __init__(self, lan: Lan, log_dir: Path, discover: str) -> None:
        self.lan = lan
        self.log_dir = log_dir
        self.discover = discover
        self.agents: dict[int, SerfAgent] = {}
        self.old: list[SerfAgent] = []  # stopped agents: their events still count

    def name(self, i: int) -> str:
        return f"serf-{i}"

    @property
    def observer(self) -> SerfAgent:
        return self.agents[0]

    def start(self, i: int) -> float:
        host = self.lan[i]
        join = None if self.discover == "mdns" or i == 0 else f"{self.lan[0].address}:7946"
        agent = SerfAgent(host, self.name(i), self.log_dir / f"{self.name(i)}.log", join=join)
        self.agents[i] = agent
        return agent.started_at

    def start_all(self, timeout: float) -> None:
        for host in self.lan.hosts:  # Serf's mDNS query fails while IPv6 DAD is under way
            host.wait_addresses_settled()
        self.start(0)
        time.sleep(0.5)  # the observer first, so that it sees every join
        for i in range(1, len(self.lan)):
            self.start(i)
        if not self.all_alive(timeout):
            raise RuntimeError(f"serf: host 0 sees {sorted(self.observer.alive())} alive after "
                               f"{timeout:g}s, not all {len(self.lan)}")

    def pid(self, i: int) -> int:
        return self.agents[i].pid

    def signal(self, i: int, sig: int) -> None:
        self.agents[i].signal(sig)

    def reap(self, i: int) -> None:
        agent = self.agents.pop(i)
        agent.wait(15)  # a graceful leave takes up to its broadcast timeout (5 s)
        agent.close()  # its log file; its events stay in memory
        self.old.append(agent)

    def _first(self, i: int, since: float, kinds: set[str]) -> float | None:
        name = self.name(i)
        return next((e.t for e in self.observer.events_since(since)
                     if e.member == name and e.kind in kinds), None)

    def wait_seen(self, i: int, since: float, timeout: float) -> float | None:
        return _poll(lambda: self._first(i, since, {"join"}), timeout)

    def wait_down(self, i: int, since: float, timeout: float, *, left: bool) -> float | None:
        return _poll(lambda: self._first(i, since, {"leave"} if left else {"failed"}), timeout)

    def wait_back(self, i: int, since: float, timeout: float) -> float | None:
        """After a link cut: the observer applies its return (a join of the failed member)."""
        return self.wait_seen(i, since, timeout)

    def state(self, i: int) -> str:
        last = [e for e in self.observer.events_since(0) if e.member == self.name(i)
                and e.kind != "suspect"]
        return last[-1].kind if last else "unknown"

    def all_alive(self, timeout: float) -> bool:
        names = {self.name(i) for i in range(len(self.lan))}
        return _poll(lambda: time.monotonic() if names <= self.observer.alive() else None,
                     timeout) is not None

    def window_start(self) -> float:
        return time.monotonic()

    def false_failures(self, since: float, until: float) -> dict[str, Any]:
        """Every member is alive in these windows: each `failed` the observer applied is false;
        also those any member applied, and the suspicions raised."""
        def window(agent: SerfAgent, kinds: set[str]) -> list[tuple[float, str]]:
            return [(round(e.t - since, 3), e.member) for e in agent.events_since(since)
                    if e.t <= until and e.kind in kinds]

        everyone = [*self.agents.values(), *self.old]
        return {
            "false_failures": len(window(self.observer, {"failed"})),
            "events": window(self.observer, {"failed", "join"}),
            "failed_any_member": sum(len(window(a, {"failed"})) for a in everyone),
            "suspicions_any_member": sum(len(window(a, {"suspect"})) for a in everyone),
        }

    def close(self) -> None:
        for agent in [*self.agents.values()]:
            agent.close()
        self.agents.clear()


class K3net:
    kind = "k3net"
    leave_signal: int = signal.SIGTERM
    probe_interval = 15.0  # the default: peer-ttl 90 s / 6

    def __init__(self, lan: Lan, store: SimStore, log_dir: Path) -> None:
        self.lan = lan
        self.fleet = Fleet(lan, store, log_dir)
        # As Serf runs (-log-level info): the fleet's debug log would cost CPU Serf does not pay.
        self.fleet.extra_args = lambda i: ("--log-level", "info")
        self.watcher: StoreWatcher = store.watcher()
        self.watcher.start()
        self.store_ready: list[float | None] = []  # start -> own Node Ready at the store
        self._revisions: dict[float, int | None] = {}  # window start -> store revision then

    def name(self, i: int) -> str:
        return f"node-{i}"

    def start(self, i: int) -> float:
        return self.fleet.start(i, None).started_at  # the defaults: peer-ttl 90 s

    def start_all(self, timeout: float) -> None:
        for i in range(len(self.lan)):
            self.start(i)
        for agent in self.fleet.agents.values():
            agent.wait_ready(timeout)
        if not self.all_alive(timeout):
            raise RuntimeError(f"k3net: not every Node Ready within {timeout:g}s: "
                               f"{self.watcher.snapshot().nodes}")

    def pid(self, i: int) -> int:
        return self.fleet.agents[i].proc.pid

    def signal(self, i: int, sig: int) -> None:
        self.fleet.agents[i].signal(sig)

    def reap(self, i: int) -> None:
        self.fleet.reap(i, 15)

    def _confirmed_by_0(self, name: str, pid: str) -> float | None:
        try:
            peers = self.fleet.agents[0].get_json("/peers")["peers"]
        except (OSError, AssertionError, KeyError, ValueError):
            return None
        for p in peers:
            if p.get("name") == name and str(p.get("pid")) == pid and p.get("confirmed"):
                return time.monotonic()
        return None

    def wait_seen(self, i: int, since: float, timeout: float) -> float | None:
        name, pid = self.name(i), str(self.pid(i))
        # Seen by node-0 first: its own Node at the store says nothing about the others, and
        # waiting for that first made the join the later of the two.
        seen = _poll(lambda: self._confirmed_by_0(name, pid), timeout)
        t_store = self.watcher.wait_until(
            lambda s: (v := s.nodes.get(name)) is not None and v.pid == pid and v.status == "True",
            max(0.0, since + timeout - time.monotonic()))
        if t_store is not None:  # when it turned Ready (the watcher's history), not now
            t_store = next((tr.t for tr in self.watcher.transitions(since, nodes={name})
                            if tr.new is not None and tr.new[0] == "True"), t_store)
        self.store_ready.append(None if t_store is None else t_store - since)
        return seen

    def wait_back(self, i: int, since: float, timeout: float) -> float | None:
        """After a link cut: its Node Ready again at the store (since `since`)."""
        name = self.name(i)

        def ready_since() -> float | None:
            return next((tr.t for tr in self.watcher.transitions(since, nodes={name})
                         if tr.new is not None and tr.new[0] == "True"), None)

        return _poll(ready_since, timeout)

    def wait_down(self, i: int, since: float, timeout: float, *, left: bool) -> float | None:
        name = self.name(i)
        want: Callable[[str | None], bool] = ((lambda st: st == "False") if left
                                               else (lambda st: st not in ("True", None)))
        return self.watcher.wait_until(lambda s: want(s.status(name)), timeout)

    def state(self, i: int) -> str:
        r = self.watcher.snapshot().ready(self.name(i))
        return "unknown" if r is None else f"{r[0]}/{r[1]}"

    def all_alive(self, timeout: float) -> bool:
        names = [self.name(i) for i in range(len(self.lan))]
        return self.watcher.wait_until(lambda s: all(s.status(n) == "True" for n in names),
                                       timeout) is not None

    def window_start(self) -> float:
        """Now, and the store's revision now: etcd's history from there shows every write of
        the window, also a blip shorter than a poll."""
        t = time.monotonic()
        self._revisions[t] = self.watcher.snapshot().revision
        return t

    def false_failures(self, since: float, until: float) -> dict[str, Any]:
        """Live Nodes written not-Ready since `since` (a window_start): as polled, and from
        etcd's history (every value written since the window's revision, up to now); the
        larger count is the answer."""
        trs = self.watcher.transitions(since, until)
        false = [tr for tr in trs if _went_down(tr)]
        out: dict[str, Any] = {
            "false_failures": len(false), "false_failures_polled": len(false),
            "events": [(round(tr.t - since, 3), tr.node, tr.old, tr.new) for tr in trs]}
        revision = self._revisions.get(since)
        if isinstance(self.watcher.reader, EtcdReader) and revision is not None:
            history = {self.name(i): etcd_history(self.watcher.reader, self.name(i), revision)
                       for i in range(len(self.lan))}
            written = sum(1 for values in history.values() for v in values
                          if v is not None and v[0] != "True")
            out["not_ready_writes_etcd"] = written
            out["false_failures"] = max(len(false), written)
        return out

    def close(self) -> None:
        self.fleet.stop_all()
        self.watcher.stop()


def _went_down(tr: Transition) -> bool:
    return (tr.old is not None and tr.old[0] == "True"
            and (tr.new is None or tr.new[0] != "True"))

"""The agent's Prometheus metrics. One `Metrics` per agent, on its own registry, so that several
agents in one process (tests) do not mix their numbers.

Besides k3net's own series: `process_*` (CPU, memory, open files, start time) and `python_info`,
as every Prometheus client exports them, and `k3net_build_info{version, commit}` = 1 for
dashboards that show which build runs where. Counters and histograms do not export `*_created`
series (they double the series count and nothing reads them here)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sized
from typing import TYPE_CHECKING

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from k3net import version

prometheus_client.disable_created_metrics()

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_JOIN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


if TYPE_CHECKING:
    from k3net.health import StoreHealth


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Info("k3net_build", "The k3net build this agent runs (commit: unknown if not known).",
             registry=r).info({"version": version.version(), "commit": version.commit() or "unknown"})
        self.peers = Gauge(
            "k3net_peers", "Peers this agent knows, by state of their stored Node.",
            ["state"], registry=r,
        )
        self.probes = Counter(
            "k3net_probes", "Probes of peers, by result (confirmed, wrong-node, unauthenticated, refused,"
            " timeout, unverified).", ["result"], registry=r,
        )
        self.held = Gauge(
            "k3net_held_connections", "Connections held open to peers' /hold now (tasks/hold.py).",
            registry=r,
        )
        self.held_closed = Counter(
            "k3net_held_connections_closed", "Held connections that a peer closed, each answered by"
            " a probe at once.", registry=r,
        )
        self.probe_latency = Histogram(
            "k3net_probe_latency_seconds", "Time a probe took (connect, ask /info, read the answer).",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.store_ops = Counter(
            "k3net_store_operations", "Store calls, by operation and result.",
            ["op", "result"], registry=r,
        )
        self.store_latency = Histogram(
            "k3net_store_latency_seconds", "Time a store call took.", ["op"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.store_conflicts = Counter(
            "k3net_store_conflicts", "Compare-and-swap writes that lost to another writer.",
            registry=r,
        )
        self.writes = Counter(
            "k3net_node_writes", "Node writes committed by this agent, by cause.",
            ["cause"], registry=r,
        )
        self.mdns_events = Counter(
            "k3net_mdns_events", "mDNS browse events, by kind (added, updated, removed; unresolved:"
            " an entry whose records did not come in time, tried again later).",
            ["kind"], registry=r,
        )
        self.name_conflict = Gauge(
            "k3net_name_conflict", "1 while another live agent answers as this agent's node "
            "name (a twin): this agent stands down and does not write that Node.",
            registry=r,
        )
        self.rejected = Counter(
            "k3net_rejected_peers", "mDNS entries dropped and never written, by reason.",
            ["reason"], registry=r,
        )
        self.paused = Counter(
            "k3net_paused_seconds", "Time this agent did not run (a stopped process, a paused VM,"
            " an overloaded host), seen from its late timers; no Node ages meanwhile.",
            registry=r,
        )
        self.subscribers = Gauge(
            "k3net_event_subscribers", "Open /events websocket subscribers.", registry=r,
        )
        self.dropped_subscribers = Counter(
            "k3net_event_subscribers_dropped", "Subscribers closed because they fell behind.",
            registry=r,
        )
        self.join_latency = Histogram(
            "k3net_join_latency_seconds",
            "Time from a peer's first mDNS sighting to its Node Ready in the store (a peer"
            " whose Node was Ready before this agent saw it is not counted).",
            buckets=_JOIN_BUCKETS, registry=r,
        )
        self.store_up = Gauge(
            "k3net_store_up", "1 if the store answers (the last call or watch succeeded).",
            registry=r,
        )
        self.store_foreign = Gauge(
            "k3net_store_foreign_values",
            "Values under the Node prefix that are not Nodes (someone else's data: never"
            " written over), as the store watch last reported them.", registry=r,
        )

        self.discovery_probes = Counter(
            "k3net_discovery_probes",
            "Addresses asked who they are by --join and --scan, by source (join, scan) and result"
            " (found, not-agent, unauthenticated, invalid-name, refused, unreachable, timeout).",
            ["via", "result"], registry=r,
        )
        self.scan_seconds = Gauge(
            "k3net_scan_seconds", "How long the last --scan of every range took.", registry=r,
        )

    def watch_table(self, counts: Mapping[str, int]) -> None:
        """Read the peer gauge from the table's counts at scrape time: no work per event."""
        for state in ("ready", "not_ready", "unknown"):
            self.peers.labels(state=state).set_function(functools.partial(counts.__getitem__, state))

    def watch_health(self, health: StoreHealth) -> None:
        """k3net_store_up is the one store-health signal, read at scrape time."""
        self.store_up.set_function(lambda: float(health.ok))

    def watch_foreign(self, tally: Sized) -> None:
        """Read the foreign-value gauge from the watch's tally at scrape time."""
        self.store_foreign.set_function(lambda: float(len(tally)))

"""The agent's Prometheus metrics. One `Metrics` per agent, on its own registry, so that several
agents in one process (tests) do not mix their numbers.

Besides k3net's own series: `process_*` (CPU, memory, open files, start time) and `python_info`,
as every Prometheus client exports them, and `k3net_build_info{version, commit}` = 1 for
dashboards that show which build runs where. Counters and histograms do not export `*_created`
series (they double the series count and nothing reads them here).

Per Node, as kube-state-metrics exports Nodes (`kube_node_status_condition`), from the stored
Nodes this agent's table follows, read at scrape time (`NodeCollector`):

    k3net_node_status_condition{node, condition="Ready", status="true|false|unknown"}  0 or 1
    k3net_node_status_reason{node, condition="Ready", reason}  1 (the Ready condition's reason)
    k3net_node_last_seen_timestamp_seconds{node}  the k3.network/lastSeen annotation (Unix time)
    k3net_node_managed{node}  1 if k3net manages the Node, 0 if another writer does

`k3net_peers{state}` counts the other machines' Nodes only (this agent's own Node is left out).
With thousands of Nodes the text takes a while to write (about 0.1 s per thousand Nodes on a
busy machine): `Metrics.exposition` writes it in a worker thread, from a list of the Nodes taken
on the trio thread, so that a scrape never holds up the agent's event loop.
Every agent exports the same Nodes from the same store: aggregate with max/min by node, or
scrape one agent per store. `contrib/prometheus/alerts.yaml` alerts on these."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sized
from contextvars import ContextVar
from typing import TYPE_CHECKING

import prometheus_client
import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from k3net import limits, version
from k3net.convert import parse_time
from k3net.core import parse
from k3net.model import ANN_LAST_SEEN, Node

prometheus_client.disable_created_metrics()

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_JOIN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


if TYPE_CHECKING:
    from k3net.health import StoreHealth

# The Ready condition's status as kube-state-metrics labels it.
_STATUSES = {"True": "true", "False": "false", "Unknown": "unknown"}
# k3net_peers' states, by the Ready status of the peer's Node.
_PEER_STATES = {"True": "ready", "False": "not_ready", "Unknown": "unknown"}


# The Nodes of the scrape under way, taken on the trio thread (`Metrics.exposition`); the worker
# thread that writes the text sees them through its copy of the context.
_SCRAPED_NODES: ContextVar[list[Node] | None] = ContextVar("scraped_nodes", default=None)


class NodeCollector(Collector):
    """The per-Node series and `k3net_peers`, computed at scrape time from `nodes()` (the
    stored Nodes the agent's table follows): no work per event, nothing kept between scrapes.
    `me` is this agent's node name: its own Node is a Node, not a peer."""

    def __init__(self, nodes: Callable[[], Iterable[Node]], me: str) -> None:
        self.nodes = nodes
        self.me = me

    def collect(self) -> Iterator[GaugeMetricFamily]:
        scraped = _SCRAPED_NODES.get()
        nodes = scraped if scraped is not None else self.nodes()
        condition = GaugeMetricFamily(
            "k3net_node_status_condition",
            "The condition of a Node: 1 for its status, 0 for the others (as"
            " kube_node_status_condition).", labels=["node", "condition", "status"])
        reason = GaugeMetricFamily(
            "k3net_node_status_reason", "The reason of a Node's condition (1).",
            labels=["node", "condition", "reason"])
        last_seen = GaugeMetricFamily(
            "k3net_node_last_seen_timestamp_seconds",
            "When some agent last reached the Node (its k3.network/lastSeen annotation), Unix"
            " time.", labels=["node"])
        managed = GaugeMetricFamily(
            "k3net_node_managed", "1 if k3net manages the Node (label k3.network/managed=true),"
            " 0 if another writer (the k3 controller) does.", labels=["node"])
        peers = {state: 0 for state in _PEER_STATES.values()}
        for node in nodes:
            cond = node.condition()
            status = node.ready_status
            for value, label in _STATUSES.items():
                condition.add_metric([node.name, "Ready", label], float(status == value))
            if cond is not None and cond.reason:
                reason.add_metric([node.name, "Ready", cond.reason], 1.0)
            seen = node.metadata.annotations.get(ANN_LAST_SEEN)
            if seen:
                try:
                    last_seen.add_metric([node.name], parse_time(seen).timestamp())
                except ValueError:
                    pass  # someone else's annotation: nothing to say
            managed.add_metric([node.name], float(node.managed))
            if node.name != self.me:
                peers[_PEER_STATES.get(status, "unknown")] += 1
        peer_family = GaugeMetricFamily(
            "k3net_peers", "Other machines' Nodes this agent knows (its own left out), by the"
            " Ready status of their stored Node.", labels=["state"])
        for state, count in peers.items():
            peer_family.add_metric([state], float(count))
        yield from (peer_family, condition, reason, last_seen, managed)


class _ForeignValues(Collector):
    """`k3net_foreign_values_total{field}`: values from outside (mDNS, /info, /peers, stored
    Node fields) that `core.parse` did not take, read from its tally at scrape time (one tally
    per process: agents in one process share it)."""

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "k3net_foreign_values", "Values from outside that are not what their field holds"
            " (skipped, never written), by field.", labels=["field"],
        )
        for field, count in sorted(parse.FOREIGN.counts.items()):
            family.add_metric([field], count)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._nodes: Callable[[], Iterable[Node]] = tuple  # set by watch_table
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Info("k3net_build", "The k3net build this agent runs (commit: unknown if not known).",
             registry=r).info({"version": version.version(), "commit": version.commit() or "unknown"})
        r.register(_ForeignValues())
        self.probes = Counter(
            "k3net_probes", "Probes of peers, by result (confirmed, wrong-node, unauthenticated, refused,"
            " timeout, unverified; unreachable: a suspicion confirmed).", ["result"], registry=r,
        )
        self.held = Gauge(
            "k3net_held_connections", "Connections held open to peers' /hold now (tasks/hold.py).",
            registry=r,
        )
        self.held_closed = Counter(
            "k3net_held_connections_closed", "Held connections that a peer closed, each answered by"
            " a probe at once.", registry=r,
        )
        self.held_silent = Counter(
            "k3net_held_connections_silent", "Held connections that went silent (no ACK from the"
            " peer's kernel for the keepalive's user timeout), each answered by a suspicion.",
            registry=r,
        )
        self.beats = Counter(
            "k3net_held_beats", "Beats read on held connections (tasks/hold.py): good (the peer's"
            " process runs; with a key, proved for this connection), bad (out of order, or a"
            " wrong proof: ignored).", ["result"], registry=r,
        )
        for result in ("good", "bad"):
            self.beats.labels(result=result)
        self.probes_spared = Counter(
            "k3net_probes_spared", "Scheduled probes of a held peer not made: a good beat on its"
            " hold since the last one showed its process runs (tasks/probe.py).", registry=r,
        )
        self.suspicions = Counter(
            "k3net_suspicions", "Suspicions of a silent peer, by result: confirmed (written"
            " Unknown/PeerUnreachable), refuted (it, or an agent asked, reached it), withheld"
            " (this agent's local health was not 0: it accused nobody).", ["result"], registry=r,
        )
        for result in ("confirmed", "refuted", "withheld"):
            self.suspicions.labels(result=result)
        self.answer_wait = Gauge(
            "k3net_suspect_answer_wait_seconds", "How long the last accusation waited for its"
            " suspect's answer through the store: its mark's time to show in this agent's watch"
            " (the store's round trip), then the answer time and twice that round trip.",
            registry=r,
        )
        self.local_health = Gauge(
            "k3net_local_health", "This agent's local health score (k3net.health): 0 when it may"
            " judge its peers; above 0 its timeouts are widened x(1+score) and it accuses nobody.",
            registry=r,
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
            " an entry whose records did not come in time, tried again later; dropped: datagrams"
            " the kernel dropped, requery: asked again after that; repeated: a response"
            " received again from its sender within 1 s, skipped).",
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
        self.limit_hits = Counter(
            "k3net_limit_hits", "Times a cap of k3net.limits was reached (see docs/network.md,"
            " \"Limits\"), by limit: something was refused, dropped or made to wait.",
            ["limit"], registry=r,
        )
        for name in limits.NAMES:
            self.limit_hits.labels(limit=name)
        self.scan_seconds = Gauge(
            "k3net_scan_seconds", "How long the last --scan of every range took.", registry=r,
        )

    def limit_hit(self, limit: str) -> None:
        """Count that the cap `limit` (one of `limits.NAMES`) was reached."""
        assert limit in limits.NAMES, limit
        self.limit_hits.labels(limit=limit).inc()

    def watch_table(self, nodes: Callable[[], Iterable[Node]], me: str) -> None:
        """Export `k3net_peers` and the per-Node series from the table's stored Nodes, read at
        scrape time (`NodeCollector`). Call once."""
        self._nodes = nodes
        self.registry.register(NodeCollector(nodes, me))

    async def exposition(self) -> bytes:
        """The text of /metrics. Call on the trio thread: the table's Nodes are listed here,
        the text is written in a worker thread (module docstring)."""
        token = _SCRAPED_NODES.set(list(self._nodes()))
        try:
            return await trio.to_thread.run_sync(generate_latest, self.registry)
        finally:
            _SCRAPED_NODES.reset(token)

    def watch_health(self, health: StoreHealth) -> None:
        """k3net_store_up is the one store-health signal, read at scrape time."""
        self.store_up.set_function(lambda: float(health.ok))

    def watch_foreign(self, tally: Sized) -> None:
        """Read the foreign-value gauge from the watch's tally at scrape time."""
        self.store_foreign.set_function(lambda: float(len(tally)))

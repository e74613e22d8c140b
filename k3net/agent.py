"""The agent: wiring only. Channels, nurseries and the start-up and shutdown order.

    lan.browse --PeerSeen/PeerGone/PeerRejected--+
    join, scan --PeerSeen (found_by join, scan)--+
    /hello  ----PeerSeen (found_by introduced)---+
    prober  --ProbeResult--> introduce.tap ------+   (greets each peer first confirmed)
    prober  ----Suspected (a suspicion begins)---+
    watch   ----Snapshot/Put/Deleted/Lost--------+--> table --Write--> writer --> store
    tick    ----Tick / SelfHeartbeat-------------+      |
    addresses --OwnAddresses---------------------+      |
    use_store --StoreChanged---------------------+      |
                                                        +--ProberOrder-----> prober
    watch   --(every committed change)--> event hub --> /events subscribers

`Agent` takes everything that touches the machine from outside (the store, the LAN's mDNS, the
HTTP server, this machine's addresses), so that a test can run the whole agent in-process, on a
fake clock. `main` builds the real ones.

Each fact that changes while the agent runs has one owner, a `k3net.current.Current`, and every
task reads it there when it needs it; nobody keeps a copy:

    addresses  this machine's addresses (advertised, and its whole own set): set by
               tasks/addresses.py; read by the mDNS record (`Lan.advertise` follows it), our own
               Node (the table's `SelfInfo.addresses`; `OwnAddresses` asks for a rewrite), /info,
               the prober and the scanner
    store      the store: set by `use_store`; read by the writer at every write, /nodes and
               /info; the watch runs on whichever is current (`current.follow`)
    settings   the running settings: set by a reload (k3net.reload); read by /info

Every producer holds its own clone of the table's channel, so the table's loop ends by itself
when the last producer stops. Start-up: the writer and the table first, then HTTP (so that a
peer that sees our advertisement can probe us), then the producers, mDNS advertisement first.
`use_store()` moves a running agent to another store (a SIGHUP that changed the storage config):
the old store's watch stops, the table writes what it knows into the new store (our own Node
and every peer that answers, Ready: `StoreChanged`), then the new store's watch starts; mDNS
and the probes go on meanwhile, so no peer sees a goodbye and no Node goes not-Ready.

`stop()` (SIGINT/SIGTERM in `main`) shuts down in this order:

1. close /events subscribers (1001) and stop the HTTP listener, so that a peer probing us after
   our goodbye finds nobody and writes PeerLeft at once;
2. stop the producers: the advertiser sends the mDNS goodbye on its way out;
3. the table, its inbox ended, hands the writer our own Node's False/AgentShutdown;
4. the writer drains what is pending, bounded by a deadline counted from `stop()`, and `run`
   returns.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import trio

from k3net import limits
from k3net.core.addresses import MachineAddresses
from k3net.core.messages import OwnAddresses, ProbeResult, SelfHeartbeat, StoreChanged, Tick
from k3net.core.table import Message, PeerTable, ProberOrder, SelfInfo, Write
from k3net.current import Current, follow
from k3net.durations import format_duration
from k3net.events import EventHub
from k3net.health import LocalHealth, StoreHealth
from k3net.keepalive import keepalive
from k3net.metrics import Metrics
from k3net.settings import Settings
from k3net.store.base import ForeignTally, Store, WatchEvent
from k3net.tasks import addresses, introduce, watch
from k3net.tasks import table as table_task
from k3net.tasks.probe import ANSWER_TIME, Own, Prober, held_interval
from k3net.tasks.tcp import SERVED_IDLE, SERVED_SILENCE
from k3net.tasks.timers import expire_interval, heartbeat_interval, tick
from k3net.tasks.writer import Writer
from k3net.web.app import AppState, make_app

log = logging.getLogger("k3net.agent")

# The whole shutdown (listener, goodbye, last write), counted from the signal, fits in this:
# inside the 3 s a supervisor may wait before it kills us, even with the store down.
SHUTDOWN_DEADLINE = 2.7
# How long the stopping HTTP listener may take before the goodbye is sent anyway.
LISTENER_STOP_DEADLINE = 0.5
# How long a move to another store waits for the table's Nodes to be written there before the
# new store's watch starts anyway (a new store that is down is an outage like any other).
CARRY_OVER_DEADLINE = 5.0


class Lan(Protocol):
    """This machine's presence on the LAN: its mDNS advertisement and the browse for peers."""

    async def advertise(
        self, here: Current[MachineAddresses], *, task_status: trio.TaskStatus[None] = ...
    ) -> None:
        """Advertise `here`'s advertised addresses until cancelled, following their changes
        (peers see an update, never a goodbye); on cancellation say goodbye (bounded)."""

    async def browse(
        self, out: trio.MemorySendChannel[Message], *, task_status: trio.TaskStatus[None] = ...
    ) -> None:
        """Send PeerSeen / PeerGone / PeerRejected to `out` until cancelled; close it then."""


# serve(app, host, port, task_status=...): serve HTTP until cancelled; started(port) once it
# listens.
ServeHttp = Callable[..., Awaitable[None]]


async def serve_http(
    app: Any, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Bind at once (a port in use fails before anything is advertised), report started, then
    bring the web stack up. hypercorn takes a few hundred milliseconds to import: a worker
    thread does it while the mDNS registration probes the LAN, which takes longer, and a peer
    that connects meanwhile waits in the listen backlog."""
    from k3net.web.listen import listen_socket

    sock = await listen_socket(host, port)
    # Held connections served to peers end when their holder vanished (k3net.tasks.tcp).
    keepalive(sock, SERVED_SILENCE, idle=SERVED_IDLE)
    try:
        task_status.started(sock.getsockname()[1])
        serve = await trio.to_thread.run_sync(importlib.import_module, "k3net.web.serve")
    except BaseException:
        sock.close()
        raise
    await serve.serve_socket(app, sock)


class Agent:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        lan: Lan,
        addresses: MachineAddresses,
        machine: Callable[[], MachineAddresses] | None = None,
        serve: ServeHttp = serve_http,
        metrics: Metrics | None = None,
    ) -> None:
        # The one owner of each fact that changes while we run (module docstring).
        self.settings = Current(settings)  # set by a reload (k3net.reload)
        self.store = Current(store)  # set by use_store
        self.addresses = Current(addresses)  # set by tasks/addresses.py, polling `machine`
        # Reads this machine's addresses now (mdns.machine_addresses); None: they never change.
        self.machine = machine
        self.lan = lan
        self.serve = serve
        self.metrics = metrics or Metrics()
        self.health = StoreHealth()
        # This agent as an observer of its peers (k3net.health): exported, read by the prober.
        self.local_health = LocalHealth(changed=self.metrics.local_health.set)
        self.hub = EventHub(self.metrics)
        self.writer = Writer(self.store, self.metrics, self.health)
        self.table = PeerTable(
            peer_ttl=settings.peer_ttl,
            refresh_interval=settings.refresh_interval,
            me=SelfInfo(settings.node_name, self._advertised, settings.listen_port, os.getpid(),
                        settings.node_labels),
            register_self=settings.register_self,
            keyed=settings.cluster_key is not None,
        )
        self.metrics.watch_table(self.table.nodes, settings.node_name)
        self.metrics.watch_health(self.health)
        self._stop = trio.Event()
        self._stop_by = float("inf")
        # Set once the mDNS advertisement is registered (the /readyz `mdns` check, READY=1).
        self.advertised = trio.Event()
        # Peers' introductions (POST /hello), admitted and bounded, on their way to the table.
        self.introductions = introduce.Introductions(settings.node_name, self.metrics)
        # What the HTTP endpoints read: the owners above, and the table.
        self.web = AppState(
            settings=self.settings, store=self.store, hub=self.hub, metrics=self.metrics,
            health=self.health, started_at=time.time(), addrs=self._advertised,
            facts_changed=self._readdressed,
            self_up=self.table.self_up, mdns_up=self.advertised.is_set, peers=self.table.peers,
            name_conflict=self._name_conflict, introduce=self.introductions.offer,
        )
        # Store moves the table has handed over to the writer (tasks/table.py), and the version
        # of `store` whose watch runs: what `use_store` waits for.
        self._moves = Current(0)
        self._watched = Current(0)
        self._moving = trio.Lock()
        # The last `_own()`, with what it was made from.
        self._own_made: tuple[tuple[frozenset[str], int], Own] | None = None

    def _name_conflict(self) -> str | None:
        conflict = self.table.name_conflict
        if conflict is None:
            return None
        return (f"node name {conflict.name} is held by another live agent at "
                f"{conflict.address}:{conflict.port} (pid {conflict.pid or '?'})")

    def _advertised(self) -> tuple[str, ...]:
        return self.addresses.value.advertised

    def _answer_time(self) -> float | None:
        """How long a suspect's answer through the store may take to reach our table: its watch
        sees our mark, then ours its answer. etcd pushes both; MySQL's watch polls
        (`poll_interval`) twice more; the memory store is ours alone (None: nobody answers)."""
        storage = self.settings.value.storage
        if storage.type == "memory":
            return None
        return ANSWER_TIME + (2 * storage.mysql.poll_interval if storage.type == "mysql" else 0)

    async def _readdressed(self) -> None:
        """Returns once the advertised addresses are no longer those of now."""
        now = self._advertised()
        await self.addresses.wait_for(lambda addresses: addresses.advertised != now)

    def stop(self) -> None:
        """Begin the shutdown (module docstring); `run` returns within SHUTDOWN_DEADLINE."""
        if not self._stop.is_set():
            self._stop_by = trio.current_time() + SHUTDOWN_DEADLINE
            self._stop.set()

    async def wait_stopping(self) -> None:
        """Return once `stop()` was called."""
        await self._stop.wait()

    async def use_store(self, store: Store) -> Store:
        """Move the running agent to `store` (module docstring); returns the store it leaves,
        for the caller to close, once nothing uses it any more."""
        async with self._moving:
            old = self.store.value
            self.store.set(store)
            moved = self.store.version
            await self._watched.wait_for(lambda version: version >= moved)
            await self.writer.settled()  # a write begun on the old store is done
            return old

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        s = self.settings.value
        writer = self.writer
        write_send, write_recv = trio.open_memory_channel[Write](0)
        probe_send, probe_recv = trio.open_memory_channel[ProberOrder](0)
        table_send, table_recv = trio.open_memory_channel[Message](0)
        writer_done = trio.Event()

        async with trio.open_nursery() as core:
            core.start_soon(self._run_writer, writer, write_recv, writer_done)
            await core.start(functools.partial(
                table_task.run, self.table, table_recv, write_send, probe_send, self.metrics,
                self.hub, moves=self._moves))
            http = trio.CancelScope()
            http_done = trio.Event()
            await core.start(self._run_http, http, http_done)
            log.info("serving HTTP on %s:%d", s.listen_host or "*", s.listen_port)

            async with trio.open_nursery() as producers:
                async with table_send:
                    await self._start_producers(producers, table_send, probe_recv)
                task_status.started()
                await self._stop.wait()
                self.hub.close()
                http.cancel()
                with trio.move_on_after(LISTENER_STOP_DEADLINE):
                    await http_done.wait()
                producers.cancel_scope.cancel()

            # Producers are gone; the table hands over our AgentShutdown write and the writer
            # drains. Bounded: a store that is down cannot hold up the exit.
            with trio.move_on_at(self._stop_by) as deadline:
                await writer_done.wait()
            if deadline.cancelled_caught:
                log.warning(
                    "store did not take the last writes within %s of the signal; "
                    "%d left unwritten", format_duration(SHUTDOWN_DEADLINE), writer.backlog,
                )
            core.cancel_scope.cancel()
        log.info("stopped")

    async def _start_producers(
        self,
        producers: trio.Nursery,
        table_send: trio.MemorySendChannel[Message],
        probe_recv: trio.MemoryReceiveChannel[ProberOrder],
    ) -> None:
        s = self.settings.value
        # First, since mDNS registration takes its time (about 1.6 s of probing and announcing,
        # and peers see us from the first packet): the rest starts meanwhile.
        producers.start_soon(self._advertise)
        prober = Prober(interval=s.probe_interval, timeout=s.probe_timeout, metrics=self.metrics,
                        held=held_interval(s.probe_interval, s.refresh_interval),
                        key=s.cluster_key, own=self._own, health=self.local_health,
                        answer_time=self._answer_time,
                        store_round_trip=lambda: self.health.round_trip)
        self.web.held = prober.held
        self.web.reach = prober.reach
        await producers.start(self.local_health.run)
        foreign = ForeignTally()  # values under the Node prefix that are not Nodes, for /metrics
        self.metrics.watch_foreign(foreign)

        def observe(event: WatchEvent) -> None:
            self.hub.observe(event)
            foreign.observe(event)

        await producers.start(self._follow_store, table_send.clone(), observe)
        # Probe results reach the table through the introducer, which greets each peer the
        # first time it is confirmed (k3net.tasks.introduce): peers hear of us at once.
        results_send, results_recv = trio.open_memory_channel[ProbeResult](0)
        await producers.start(functools.partial(
            introduce.tap, results_recv, table_send.clone(), me=s.node_name, port=s.listen_port,
            timeout=s.probe_timeout, needed=self._needs_hello))
        await producers.start(functools.partial(
            prober.run, probe_recv, results_send, suspicions=table_send.clone()))
        await producers.start(self.introductions.run, table_send.clone())
        every = expire_interval(s.peer_ttl)
        await producers.start(tick, table_send.clone(), Tick(every), every)
        if s.register_self:
            await producers.start(
                tick, table_send.clone(), SelfHeartbeat(), heartbeat_interval(s.peer_ttl)
            )
        await producers.start(self.lan.browse, table_send.clone())
        # Beyond this segment (mDNS stops at the router): --join addresses and --scan ranges.
        if s.join:
            from k3net.tasks import join  # (its readers of /info and /peers: only when asked)

            await producers.start(functools.partial(
                join.run, s.join, port=s.listen_port, key=s.cluster_key, timeout=s.probe_timeout,
                me=s.node_name, metrics=self.metrics), table_send.clone())
        if s.scan:
            from k3net.tasks import scan

            scanner = scan.Scanner(s.scan, port=s.listen_port, key=s.cluster_key,
                              timeout=s.probe_timeout, rate=s.scan_rate,
                              own=lambda: self.addresses.value.own, me=s.node_name,
                              metrics=self.metrics)
            await producers.start(functools.partial(scan.run, scanner, interval=s.scan_interval),
                                  table_send.clone())
        if self.machine is not None:
            await producers.start(addresses.run, self.machine, self.addresses)
            producers.start_soon(self._rewrite_own_node, table_send.clone())

    def _needs_hello(self, name: str) -> bool:
        """Whether peer `name` may not have heard of us yet (k3net.tasks.introduce): unless our
        mDNS record is out and the peer was found over mDNS (it has that record then)."""
        return not self.advertised.is_set() or self.table.found_by(name) != "mdns"

    def _own(self) -> Own:
        """What a probe must not take for a peer, now: this machine's addresses, our port.
        Made again only when they changed (every probe asks: 2,000 of them at a LAN's start)."""
        key = (self.addresses.value.own, self.settings.value.listen_port)
        if self._own_made is None or self._own_made[0] != key:
            self._own_made = (key, Own.of(*key))
        return self._own_made[1]

    async def _rewrite_own_node(self, table: trio.MemorySendChannel[Message]) -> None:
        """Our advertised addresses changed: the table rewrites our own Node at once (without
        going not-Ready). The mDNS record (`Lan.advertise`), /info, the prober and the scanner
        read the addresses' owner themselves."""
        async with table:
            seen, sent = self.addresses.version, self._advertised()
            while True:
                now = await self.addresses.wait_changed(seen)
                seen = self.addresses.version
                if now.advertised != sent:  # (a change of the own set alone writes nothing)
                    sent = now.advertised
                    await table.send(OwnAddresses())

    async def _follow_store(
        self,
        table: trio.MemorySendChannel[Message],
        observe: Callable[[WatchEvent], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The store's watch on whichever store is current (`_watch`)."""
        async with table:
            await follow(self.store, functools.partial(self._watch, table, observe),
                         task_status=task_status)

    async def _watch(
        self,
        table: trio.MemorySendChannel[Message],
        observe: Callable[[WatchEvent], None],
        store: Store,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The store's watch (and prune, with --prune-after) on `store`, the current one (run by
        `follow`); after a move (`use_store`), the table carries its knowledge over first."""
        version = self.store.version
        prune_after = self.settings.value.prune_after
        async with trio.open_nursery() as nursery:
            if version > self._watched.value:
                await self._carry_over(table, store)
            await nursery.start(watch.run, store, table.clone(), observe, self.health)
            if prune_after:
                from k3net.tasks import prune  # (with the Node views: not at every start)

                await nursery.start(prune.run, store, prune_after)
            self._watched.set(version)
            task_status.started()

    async def _carry_over(self, table: trio.MemorySendChannel[Message], store: Store) -> None:
        """Have the table write what it knows into `store` (tasks/table.py), and wait until the
        writer has written it, bounded (CARRY_OVER_DEADLINE)."""
        moves = self._moves.value + 1
        await table.send(StoreChanged())
        with trio.move_on_after(CARRY_OVER_DEADLINE) as waited:
            await self._moves.wait_for(lambda handed: handed >= moves)
            await self.writer.wait_idle()
        log.info("store: moved to %s%s", store.kind,
                 "; its writes are still pending" if waited.cancelled_caught else "")

    async def _advertise(self) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.lan.advertise, self.addresses)
            self.advertised.set()

    async def _run_writer(
        self, writer: Writer, inbox: trio.MemoryReceiveChannel[Write], done: trio.Event
    ) -> None:
        try:
            await writer.run(inbox)
        finally:
            done.set()

    async def _run_http(
        self,
        scope: trio.CancelScope,
        done: trio.Event,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        s = self.settings.value
        try:
            with scope:
                await self.serve(
                    make_app(self.web), s.listen_host, s.listen_port, task_status=task_status
                )
        finally:
            done.set()


# --- the real thing ------------------------------------------------------------------------------


@asynccontextmanager
async def _machine(settings: Settings) -> AsyncIterator[Agent]:
    """An Agent on this machine's store, mDNS and addresses. Closes whichever store the agent
    ends on (`use_store` hands back the ones it leaves)."""
    import trio_asyncio

    from k3net import mdns
    from k3net.store import make_store
    from k3net.tasks.presence import open_presence

    interfaces = mdns.interfaces_for(settings)
    read = functools.partial(
        mdns.machine_addresses, settings, loopback=mdns.loopback_only(interfaces)
    )
    now = read()
    metrics = Metrics()
    async with (
        trio_asyncio.open_loop(),
        open_presence(settings, interfaces, metrics) as lan,
    ):
        agent = Agent(settings, store=make_store(settings.storage), lan=lan, addresses=now,
                      machine=read, metrics=metrics)
        try:
            yield agent
        finally:
            await agent.store.value.aclose()


async def serve(settings: Settings, reload: Callable[[], Settings] | None = None) -> None:
    """Run the agent on this machine until SIGINT or SIGTERM; tell a supervisor (systemd's
    notify socket, if any) when it is ready and when it stops; on SIGHUP, `reload` the settings
    (k3net.reload), moving to another store if the config names one."""
    from k3net import notify
    from k3net import reload as reloading
    from k3net.config import StorageConfig
    from k3net.logs import configure
    from k3net.store import make_store

    notifier = notify.Notifier.from_environ()
    _raise_file_limit()
    async with _machine(settings) as agent, trio.open_nursery() as nursery:

        async def use_storage(storage: StorageConfig) -> None:
            old = await agent.use_store(make_store(storage))
            await old.aclose()

        nursery.start_soon(_stop_on_signal, agent)
        if reload is not None:
            await nursery.start(reloading.run, agent.settings, reload, configure, use_storage)
        if notifier is not None:
            nursery.start_soon(functools.partial(
                notify.run, notifier, agent.advertised.wait, agent.wait_stopping,
                status=f"serving on port {settings.listen_port}",
                watchdog=notify.watchdog_interval(os.environ, os.getpid()),
            ))
        await agent.run()
        nursery.cancel_scope.cancel()


# The soft file descriptor limit the agent asks for at start (module docstring of limits): every
# peer followed is held (limits.HELD) and holds us (limits.HOLDS), besides the probes' sockets.
FILE_LIMIT = 16384


def _raise_file_limit(want: int = FILE_LIMIT) -> int:
    """Held connections and probes take a file descriptor each: lift the soft limit (often 1024)
    towards the hard one, up to `want`, as the Go runtime does for its programs. Logs and
    returns the limit the agent runs with."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("file descriptor limit stays at %d: %s", soft, exc)
    if soft != resource.RLIM_INFINITY and soft < 2 * limits.HELD:
        log.warning("file descriptor limit %d: fewer than %d, not every peer can be held on a"
                    " LAN that large (raise LimitNOFILE)", soft, 2 * limits.HELD)
    else:
        log.info("file descriptor limit: %s", "unlimited" if soft == resource.RLIM_INFINITY
                 else soft)
    return int(soft)


async def _stop_on_signal(agent: Agent) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s received: shutting down", signal.Signals(signum).name)
            agent.stop()
            return


def main(settings: Settings, reload: Callable[[], Settings] | None = None) -> int:
    """Run the agent until SIGINT/SIGTERM (exit 0). An error of the environment (a port taken,
    an mDNS name in use, an interface gone) ends it with one line per error and exit code 1;
    anything else is a bug and is logged with its traceback."""
    from k3net import clock
    from k3net.mdns import MdnsError
    from k3net.tasks.advertise import NameTakenError

    errors: list[BaseException] = []
    try:
        try:
            clock.run(serve, settings, reload)
        except* (MdnsError, NameTakenError, OSError) as group:
            errors.extend(_leaves(group))
    except BaseException as exc:  # a bug: the traceback is worth having
        if isinstance(exc, KeyboardInterrupt):
            return 130
        log.error("agent crashed", exc_info=True)
        errors.extend(_leaves(exc))
    for error in errors:
        print(f"k3net run: fatal: {error}", file=sys.stderr)
    return 1 if errors else 0


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]

"""The agent: wiring only. Channels, nurseries, signals and the shutdown order.

    browse ----PeerSeen/PeerGone/PeerRejected--+
    prober ----ProbeResult---------------------+
    watch  ----Snapshot/Put/Deleted------------+--> table --Write--> writer --> store
    expire ----Tick----------------------------+       |
    self   ----SelfHeartbeat-------------------+       +--ProbeNow/Forget--> prober
    watch  --(every committed change)--> event hub --> /events subscribers

Every producer holds its own clone of the table's channel, so the table's loop ends by itself
when the last producer stops. Shutdown (SIGINT/SIGTERM) runs in this order:

1. close /events subscribers (1001) and stop the HTTP listener, so that a peer probing us after
   our goodbye finds nobody and writes PeerLeft at once;
2. stop the producers: the advertiser sends the mDNS goodbye on its way out;
3. the table, its inbox ended, hands the writer our own Node's False/AgentShutdown;
4. the writer drains what is pending, bounded by a deadline, and the agent exits 0.
A crash of any task cancels the rest and ends the agent with a clear message and exit code 1.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import sys
import time
from typing import Any

import trio
import trio_asyncio

from k3net import clock, mdns
from k3net.core.messages import (
    PeerGone,
    PeerRejected,
    PeerSeen,
    ProbeResult,
    SelfHeartbeat,
    Tick,
)
from k3net.core.table import Forget, JoinLatency, PeerTable, ProbeNow, SelfInfo, Write
from k3net.events import EventHub
from k3net.health import StoreHealth
from k3net.metrics import Metrics
from k3net.settings import Settings
from k3net.store import Store, WatchEvent, open_store
from k3net.tasks import advertise, browse, watch
from k3net.tasks.probe import Own, Prober
from k3net.tasks.timers import expire_interval, heartbeat_interval, tick
from k3net.tasks.writer import Writer
from k3net.web import serve
from k3net.web.app import AppState, make_app

log = logging.getLogger("k3net.agent")

# The whole shutdown (listener, goodbye, last write), counted from the signal, fits in this:
# inside the 3 s a supervisor may wait before it kills us, even with the store down.
SHUTDOWN_DEADLINE = 2.7
# How long the stopping HTTP listener may take before the goodbye is sent anyway.
LISTENER_STOP_DEADLINE = 0.5

TableMessage = (
    PeerSeen | PeerGone | PeerRejected | ProbeResult | Tick | SelfHeartbeat | WatchEvent
)


class Agent:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.health = StoreHealth()
        self.hub = EventHub(self.metrics)
        available = mdns.list_interfaces()
        interfaces = mdns.choose_interfaces(settings.interfaces, available)
        self.loopback = mdns.loopback_only(interfaces)
        self.addresses = mdns.advertised_addresses(interfaces, settings.advertise_addresses)
        self.own = mdns.own_addresses(available, settings.advertise_addresses)
        self.me = SelfInfo(
            settings.node_name, tuple(self.addresses), settings.listen_port, os.getpid()
        )
        self.stop_by = math.inf  # set when a stop signal arrives
        self.table = PeerTable(
            peer_ttl=settings.peer_ttl,
            refresh_interval=settings.refresh_interval,
            me=self.me,
            register_self=settings.register_self,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        async with trio_asyncio.open_loop(), open_store(s.storage) as store:
            writer = Writer(store, self.metrics, self.health)
            state = AppState(
                settings=s, store=store, hub=self.hub, metrics=self.metrics, health=self.health,
                started_at=time.time(), addrs=self.addresses, self_up=self.table.self_up,
            )
            write_send, write_recv = trio.open_memory_channel[Write](0)
            probe_send, probe_recv = trio.open_memory_channel[ProbeNow | Forget](0)
            table_send, table_recv = trio.open_memory_channel[TableMessage](0)
            writer_done = trio.Event()
            web_done = trio.Event()

            async with trio.open_nursery() as core:
                core.start_soon(self._run_writer, writer, write_recv, writer_done)
                core.start_soon(self._run_table, table_recv, write_send, probe_send)
                web_scope = trio.CancelScope()
                await core.start(self._run_web, make_app(state), web_scope, web_done)
                log.info("serving HTTP on %s:%d", s.listen_host or "*", s.listen_port)

                async with mdns.open_zeroconf(s.interfaces) as zc, trio.open_nursery() as producers:
                    producers.start_soon(
                        self._stop_on_signal, web_scope, web_done, producers.cancel_scope
                    )
                    async with table_send:
                        await self._start_producers(producers, zc, store, table_send, probe_recv)
                    task_status.started()

                # Producers are gone; the table hands over our AgentShutdown write and the
                # writer drains. Bounded: a store that is down cannot hold up the exit.
                with trio.move_on_at(min(self.stop_by, trio.current_time() + SHUTDOWN_DEADLINE)
                                     ) as deadline:
                    await writer_done.wait()
                if deadline.cancelled_caught:
                    log.warning(
                        "store did not take the last writes within %.1fs of the signal; "
                        "%d left unwritten", SHUTDOWN_DEADLINE, len(writer.pending),
                    )
                core.cancel_scope.cancel()
        log.info("stopped")

    async def _start_producers(
        self,
        producers: trio.Nursery,
        zc: Any,
        store: Store,
        table_send: trio.MemorySendChannel[TableMessage],
        probe_recv: trio.MemoryReceiveChannel[ProbeNow | Forget],
    ) -> None:
        s = self.settings
        # First, since mDNS registration takes its time (about 1.6 s of probing and announcing,
        # and peers see us from the first packet): the rest starts meanwhile.
        producers.start_soon(advertise.run, zc, mdns.service_info(s, addresses=self.addresses))
        prober = Prober(interval=s.probe_interval, timeout=s.probe_timeout, metrics=self.metrics,
                        key=s.cluster_key, own=Own.of(self.own, s.listen_port))
        await producers.start(watch.run, store, table_send.clone(), self.hub.observe, self.health)
        await producers.start(prober.run, probe_recv, table_send.clone())
        await producers.start(tick, table_send.clone(), Tick(), expire_interval(s.peer_ttl))
        if s.register_self:
            await producers.start(
                tick, table_send.clone(), SelfHeartbeat(), heartbeat_interval(s.peer_ttl)
            )
        await producers.start(
            functools.partial(browse.run, loopback=self.loopback),
            zc, mdns.service_type(s.service, s.domain), s.node_name, table_send.clone(),
            self.metrics,
        )

    async def _run_table(
        self,
        inbox: trio.MemoryReceiveChannel[TableMessage],
        writes: trio.MemorySendChannel[Write],
        probes: trio.MemorySendChannel[ProbeNow | Forget],
    ) -> None:
        table = self.table
        async with writes, probes:
            async with inbox:
                async for msg in inbox:
                    now = trio.current_time()
                    if isinstance(msg, PeerSeen):
                        actions = table.on_seen(msg, now)
                    elif isinstance(msg, PeerGone):
                        log.info("peer %s said goodbye", msg.name)
                        actions = table.on_gone(msg, now)
                    elif isinstance(msg, PeerRejected):
                        self.hub.rejected(msg.instance, msg.reason, msg.detail)
                        continue
                    elif isinstance(msg, ProbeResult):
                        actions = table.on_probe(msg, now)
                    elif isinstance(msg, Tick):
                        actions = table.on_tick(now)
                    elif isinstance(msg, SelfHeartbeat):
                        actions = table.on_heartbeat(now)
                    else:
                        actions = table.on_store(msg, now)
                        for state, count in table.counts().items():
                            self.metrics.peers.labels(state=state).set(count)
                    for action in actions:
                        if isinstance(action, Write):
                            await writes.send(action)
                        elif isinstance(action, JoinLatency):
                            self.metrics.join_latency.observe(action.seconds)
                            log.info("peer %s Ready %.3fs after its first sighting",
                                     action.name, action.seconds)
                        else:
                            try:
                                await probes.send(action)
                            except trio.BrokenResourceError:
                                pass  # the prober has stopped: we are shutting down
            for action in table.shutdown():
                if isinstance(action, Write):
                    await writes.send(action)

    async def _run_writer(
        self,
        writer: Writer,
        inbox: trio.MemoryReceiveChannel[Write],
        done: trio.Event,
    ) -> None:
        try:
            await writer.run(inbox)
        finally:
            done.set()

    async def _run_web(
        self,
        app: Any,
        scope: trio.CancelScope,
        done: trio.Event,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        s = self.settings
        try:
            with scope:
                await serve.run(app, s.listen_host, s.listen_port, task_status=task_status)
        finally:
            done.set()

    async def _stop_on_signal(
        self, web_scope: trio.CancelScope, web_done: trio.Event, producers: trio.CancelScope
    ) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("%s received: shutting down", signal.Signals(signum).name)
                self.stop_by = trio.current_time() + SHUTDOWN_DEADLINE
                break
        self.hub.close()
        web_scope.cancel()
        with trio.move_on_after(LISTENER_STOP_DEADLINE):
            await web_done.wait()
        producers.cancel()


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def main(settings: Settings) -> int:
    """Run the agent until SIGINT/SIGTERM (exit 0) or a crash (exit 1, one line per error)."""
    try:
        agent = Agent(settings)
        clock.run(agent.run)
    except mdns.MdnsError as exc:
        print(f"k3net run: error: {exc}", file=sys.stderr)
        return 2
    except (Exception, BaseExceptionGroup) as exc:
        leaves = _leaves(exc)
        if not all(isinstance(leaf, OSError) for leaf in leaves):
            # A bug, not the environment: the traceback is worth having.
            log.error("agent crashed", exc_info=True)
        for leaf in leaves:
            print(f"k3net run: fatal: {leaf}", file=sys.stderr)
        return 1
    return 0

"""browse: watch the LAN for other agents' mDNS services; send PeerSeen / PeerGone /
PeerRejected to the peer table.

    await nursery.start(browse.run, zc, mdns.service_type(s.service, s.domain), s.node_name,
                        send.clone(), metrics)

zeroconf calls the browser's handler on the trio thread (trio-asyncio runs asyncio callbacks
there), so the handler only puts (instance, change) into a bounded channel with `send_nowait`;
when the channel is full the event is dropped, counted and logged. One resolver loop takes the
events in order: Added/Updated are resolved (mostly from zeroconf's cache, which the browse
answers already filled) and validated by `mdns.peer_from_info`; Removed (a goodbye, or records
that expired) becomes PeerGone. Handling events one at a time keeps them in order: a PeerGone is
never overtaken by an older PeerSeen of the same peer.
"""

from __future__ import annotations

import logging

import trio
from trio_asyncio import aio_as_trio
from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from k3net.core.messages import PeerGone, PeerRejected, PeerSeen
from k3net.core.names import is_valid_name
from k3net.mdns import peer_from_info
from k3net.metrics import Metrics

log = logging.getLogger(__name__)

# A browser that starts on a busy LAN gets one Added per agent at once; 256 absorbs a burst
# from a LAN of that many agents while the resolver (mostly cache hits) catches up.
_EVENT_BUFFER = 256
# An entry whose records do not arrive within this time is skipped (logged); a later Updated
# or the next announcement tries again. LAN answers take milliseconds.
_RESOLVE_TIMEOUT_MS = 3000
# Bounds the browser's cancellation at shutdown.
_CANCEL_TIMEOUT = 1.0

_KINDS = {
    ServiceStateChange.Added: "added",
    ServiceStateChange.Updated: "updated",
    ServiceStateChange.Removed: "removed",
}

Message = PeerSeen | PeerGone | PeerRejected


def _label(instance: str, service_type: str) -> str:
    """`node-a._k3._tcp.local.` -> `node-a`."""
    suffix = "." + service_type
    return instance[: -len(suffix)] if instance.endswith(suffix) else instance


async def run(
    zc: AsyncZeroconf,
    service_type: str,
    own_name: str,
    out: trio.MemorySendChannel[Message],
    metrics: Metrics,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Browse `service_type` (e.g. `_k3._tcp.local.`) until cancelled; `own_name` is ignored.
    Closes `out` when it returns."""
    events_send, events_recv = trio.open_memory_channel[tuple[str, ServiceStateChange]](
        _EVENT_BUFFER
    )

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        kind = _KINDS.get(state_change)
        if kind is None:
            return
        metrics.mdns_events.labels(kind=kind).inc()
        try:
            events_send.send_nowait((name, state_change))
        except trio.WouldBlock:
            metrics.rejected.labels(reason="overflow").inc()
            log.warning("mDNS event queue full: dropped %s %s", kind, name)

    async with out, events_recv:
        browser = AsyncServiceBrowser(zc.zeroconf, service_type, handlers=[on_change])
        try:
            task_status.started()
            resolver = _Resolver(zc, service_type, own_name, out, metrics)
            async for instance, change in events_recv:
                await resolver.handle(instance, change)
        finally:
            with trio.move_on_after(_CANCEL_TIMEOUT, shield=True):
                await aio_as_trio(browser.async_cancel)()
            events_send.close()


class _Resolver:
    """Turns browse events into messages; remembers instance -> peer name for Removed."""

    def __init__(
        self,
        zc: AsyncZeroconf,
        service_type: str,
        own_name: str,
        out: trio.MemorySendChannel[Message],
        metrics: Metrics,
    ) -> None:
        self.zc = zc
        self.service_type = service_type
        self.own_name = own_name
        self.out = out
        self.metrics = metrics
        # instance (lower case) -> its peer name, or None for an entry we ignore (rejected, or
        # ourselves), so that its Removed is ignored too.
        self.peer_names: dict[str, str | None] = {}

    async def handle(self, instance: str, change: ServiceStateChange) -> None:
        label = _label(instance, self.service_type)
        if change is ServiceStateChange.Removed:
            await self._removed(instance, label)
            return
        if label == self.own_name:
            return  # our own advertisement; skip resolving it
        info = AsyncServiceInfo(self.service_type, instance)
        if not await aio_as_trio(info.async_request)(self.zc.zeroconf, _RESOLVE_TIMEOUT_MS):
            log.info("mDNS entry %s did not resolve within %d ms; skipped",
                     instance, _RESOLVE_TIMEOUT_MS)
            return
        message = peer_from_info(info)
        if isinstance(message, PeerRejected):
            self.peer_names[instance.lower()] = None
            self.metrics.rejected.labels(reason=message.reason).inc()
            log.warning("rejected mDNS entry %r: %s (%s)",
                        message.instance, message.reason, message.detail)
            await self.out.send(message)
            return
        if message.name == self.own_name:
            self.peer_names[instance.lower()] = None
            return
        self.peer_names[instance.lower()] = message.name
        await self.out.send(message)

    async def _removed(self, instance: str, label: str) -> None:
        key = instance.lower()
        if key in self.peer_names:
            name = self.peer_names.pop(key)
        elif is_valid_name(label):
            name = label  # never resolved: the instance label is all we have
        else:
            name = None
        if name is None or name == self.own_name:
            return
        await self.out.send(PeerGone(name))

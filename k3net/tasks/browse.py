"""browse: watch the LAN for other agents' mDNS services; send PeerSeen / PeerGone /
PeerRejected to the peer table.

    await nursery.start(browse.run, zc, mdns.service_type(s.service, s.domain), s.node_name,
                        send.clone(), metrics)

zeroconf calls the browser's handler on the trio thread (trio-asyncio runs asyncio callbacks
there), so the handler only notes the latest change of each instance in `PendingChanges`, which never
blocks: a burst of hundreds of agents announcing at once costs one entry per agent, and an
instance that changes again before it is handled keeps its place with its newest change (Added
then Removed is just Removed). Only more distinct instances than `_MAX_PENDING` are dropped,
counted and logged. One resolver loop takes them in order: Added/Updated are resolved (mostly
from zeroconf's cache, which the browse answers already filled) and validated by
`mdns.peer_from_info`; Removed (a goodbye, or records that expired) becomes PeerGone.
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

# A browser that starts on a busy LAN gets one Added per agent at once; pending changes are kept
# per instance, so this bounds the number of distinct agents waiting, far above a real LAN's.
_MAX_PENDING = 4096
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
    loopback: bool = False,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Browse `service_type` (e.g. `_k3._tcp.local.`) until cancelled; `own_name` is ignored.
    `loopback` keeps peers' loopback addresses (`mdns.loopback_only`). Closes `out` when it
    returns."""
    pending = PendingChanges(_MAX_PENDING)

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        kind = _KINDS.get(state_change)
        if kind is None:
            return
        metrics.mdns_events.labels(kind=kind).inc()
        if not pending.put(name, state_change):
            metrics.rejected.labels(reason="overflow").inc()
            log.warning("more than %d mDNS entries waiting: dropped %s %s",
                        _MAX_PENDING, kind, name)

    async with out:
        browser = AsyncServiceBrowser(zc.zeroconf, service_type, handlers=[on_change])
        try:
            task_status.started()
            resolver = _Resolver(zc, service_type, own_name, out, metrics, loopback)
            while True:
                instance, change = await pending.get()
                await resolver.handle(instance, change)
        finally:
            with trio.move_on_after(_CANCEL_TIMEOUT, shield=True):
                await aio_as_trio(browser.async_cancel)()


class PendingChanges:
    """Browse events waiting for the resolver: the latest change of each instance, in the order
    the instances first changed. `put` never blocks (it runs in zeroconf's callback)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._changes: dict[str, ServiceStateChange] = {}
        self._wakeup = trio.Event()

    def __len__(self) -> int:
        return len(self._changes)

    def put(self, instance: str, change: ServiceStateChange) -> bool:
        """Note a change; False if it had to be dropped (too many distinct instances)."""
        if instance not in self._changes and len(self._changes) >= self.limit:
            return False
        self._changes[instance] = change  # an instance already waiting keeps its place
        self._wakeup.set()
        return True

    async def get(self) -> tuple[str, ServiceStateChange]:
        while not self._changes:
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        instance = next(iter(self._changes))
        return instance, self._changes.pop(instance)


class _Resolver:
    """Turns browse events into messages; remembers instance -> peer name for Removed."""

    def __init__(
        self,
        zc: AsyncZeroconf,
        service_type: str,
        own_name: str,
        out: trio.MemorySendChannel[Message],
        metrics: Metrics,
        loopback: bool = False,
    ) -> None:
        self.zc = zc
        self.loopback = loopback
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
        message = peer_from_info(info, loopback=self.loopback)
        if isinstance(message, PeerRejected):
            self.peer_names[instance.lower()] = None
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

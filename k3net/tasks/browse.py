"""browse: watch the LAN for other agents' mDNS services; send PeerSeen / PeerGone /
PeerRejected to the peer table.

    await nursery.start(browse.run, zc, mdns.service_type(s.service, s.domain), s.node_name,
                        send.clone(), metrics)

zeroconf calls the browser's handler on the trio thread (trio-asyncio runs asyncio callbacks
there), so the handler only notes the latest change of each instance in `PendingChanges`, which never
blocks: a burst of hundreds of agents announcing at once costs one entry per agent, and an
instance that changes again before it is handled keeps its place with its newest change (Added
then Removed is just Removed). Only more distinct instances than `_MAX_PENDING` are dropped,
counted and logged. A pool of `limits.RESOLVER_SLOTS` resolvers takes them in order, never two
changes of one instance at once: Added/Updated are resolved (mostly from zeroconf's cache, which
the browse answers already filled: then at once, without a hop through the asyncio loop, which
under load costs milliseconds and capped a join at some 340 agents a second) and validated by `mdns.peer_from_info`, and only the
addresses on this machine's links are kept, a few at most (`mdns.bound_addresses`). An entry
that does not resolve in time (a PTR record with nothing behind it) holds one resolver while it
waits, not all of them, and is tried again later (`Retries`), up to `limits.RESOLVE_TRIES` times
in all; then it is dropped until it is announced again. Removed becomes PeerGone, saying
whether it was a goodbye (a PTR record with TTL 0, noted by `Goodbyes`) or a record that
expired with nobody answering for it, which zeroconf reports the same way but which proves
nothing about the agent.

A peer's old address can outlive the announcement of its new one by up to a second: RFC 6762
10.2 keeps a cache-flushed record one more second, and a goodbye for the old address may come
just after the new announcement. zeroconf reports neither as a change, so a resolution made at
the announcement would keep the old address until the record's TTL (minutes). Every Added or
Updated that was sent on is therefore resolved once more from the cache `SECOND_LOOK` seconds
later (`SecondLooks`), and sent again only if what it resolves to changed.

A LAN of agents starting together floods mDNS: each agent probes its name three times, and
zeroconf's probe asks for the whole service type, which every agent already announced answers.
Thousands of datagrams a second arrive, and what the kernel cannot queue it drops
(`mdns.Drops`): the announcements lost that way leave their agents unseen until the browser's
next query, which zeroconf spaces out exponentially (seconds, then minutes). So once the kernel
has dropped datagrams and the flood has been quiet for `REQUERY_QUIET`, the browser asks for the
service type again at once (`Requery`), with what it knows as known answers: only the agents it
missed answer. At most one such query per `REQUERY_GAP`.
"""

from __future__ import annotations

import functools
import heapq
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import trio
from trio_asyncio import aio_as_trio
from zeroconf import RecordUpdateListener, ServiceStateChange, Zeroconf, current_time_millis
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf
from zeroconf.const import _TYPE_PTR

from k3net import limits, mdns
from k3net.core.messages import PeerGone, PeerRejected, PeerSeen
from k3net.core.names import is_valid_name
from k3net.durations import format_duration
from k3net.mdns import bound_addresses, on_link, peer_from_info
from k3net.metrics import Metrics

log = logging.getLogger(__name__)

# A browser that starts on a busy LAN gets one Added per agent at once; pending changes are kept
# per instance, so this bounds the number of distinct agents waiting, far above a real LAN's.
_MAX_PENDING = 4096
# An entry whose records do not arrive within this time is tried again later (`Retries`). LAN
# answers take milliseconds.
_RESOLVE_TIMEOUT_MS = 3000
# The waits before resolving an unresolved entry again: doubling from the first to the last.
RETRY_FIRST = 2.0
RETRY_LAST = 30.0
# Bounds the browser's cancellation at shutdown.
_CANCEL_TIMEOUT = 1.0
# After an Added/Updated, when to resolve the entry again (module docstring): past the one second
# an RFC 6762 responder keeps a flushed or withdrawn record.
SECOND_LOOK = 1.2

# After the kernel dropped mDNS datagrams: the quiet that ends a flood, and the least time
# between two queries of ours (zeroconf's question history suppresses a repeat within 1 s).
REQUERY_QUIET = 0.5
REQUERY_GAP = 1.0

_KINDS = {
    ServiceStateChange.Added: "added",
    ServiceStateChange.Updated: "updated",
    ServiceStateChange.Removed: "removed",
}

Message = PeerSeen | PeerGone | PeerRejected
# A pending change: zeroconf's, a second look (`SecondLooks`) or a retry (`Retries`).
Change = ServiceStateChange | Literal["second look", "retry"]
# Changes of our own making, which never replace one of zeroconf's still waiting.
_OURS = ("second look", "retry")


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
    networks: Sequence[str] = (),
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Browse `service_type` (e.g. `_k3._tcp.local.`) until cancelled; `own_name` is ignored.
    `loopback` keeps peers' loopback addresses (`mdns.loopback_only`); `networks`, those of the
    interfaces mDNS runs on (`mdns.networks_of`), bound the addresses kept (empty: every one).
    Closes `out` when it returns."""
    pending = PendingChanges(_MAX_PENDING)
    second_looks = SecondLooks(pending, SECOND_LOOK)
    retries = Retries(pending, RETRY_FIRST, RETRY_LAST, tries=limits.RESOLVE_TRIES)

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
        elif pending.busy >= limits.RESOLVER_SLOTS:
            metrics.limit_hit("resolver-slots")  # it waits for a resolver

    # Responses received again lately are skipped before zeroconf parses them: counted here.
    mdns.repeated_responses(zc).count = metrics.mdns_events.labels(kind="repeated").inc
    async with out:
        goodbyes = Goodbyes(service_type)
        zc.zeroconf.async_add_listener(goodbyes, None)  # before the browser: same packets
        browser = AsyncServiceBrowser(zc.zeroconf, service_type, handlers=[on_change])
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(second_looks.run)
                nursery.start_soon(retries.run)
                requery = Requery(mdns.receive_drops(zc),
                                  functools.partial(_ask_for_type, browser, service_type),
                                  metrics)
                nursery.start_soon(requery.run)
                resolver = _Resolver(zc, service_type, own_name, out, metrics, loopback,
                                     second_looks, goodbyes, retries, networks)
                for _ in range(limits.RESOLVER_SLOTS):
                    nursery.start_soon(_resolve_changes, pending, resolver)
                task_status.started()
        finally:
            zc.zeroconf.async_remove_listener(goodbyes)
            with trio.move_on_after(_CANCEL_TIMEOUT, shield=True):
                await aio_as_trio(browser.async_cancel)()


def _ask_for_type(browser: AsyncServiceBrowser, service_type: str) -> None:
    """The browser's own query for `service_type`, now: known answers from the cache, split over
    as many packets as they need."""
    browser.query_scheduler.async_send_ready_queries(False, current_time_millis(),
                                                     {service_type})


class Requery:
    """Asks again (`ask`) after the kernel dropped datagrams (module docstring): once no drop
    has come for `quiet` seconds, then at most once per `gap` while drops go on."""

    def __init__(self, drops: mdns.Drops, ask: Callable[[], None], metrics: Metrics, *,
                 quiet: float = REQUERY_QUIET, gap: float = REQUERY_GAP) -> None:
        self.drops = drops
        self.ask = ask
        self.metrics = metrics
        self.quiet = quiet
        self.gap = gap

    async def run(self) -> None:
        seen = self.drops.total
        while True:
            await self.drops.wait_beyond(seen)
            await self._quiet()
            lost, seen = self.drops.total - seen, self.drops.total
            self.metrics.mdns_events.labels(kind="dropped").inc(lost)
            self.metrics.mdns_events.labels(kind="requery").inc()
            log.info("the kernel dropped %d mDNS datagrams (a flood of announcements): asking "
                     "for every agent again", lost)
            self.ask()
            await trio.sleep(self.gap)

    async def _quiet(self) -> None:
        """Until no datagram has been dropped for `quiet` seconds."""
        while True:
            total = self.drops.total
            with trio.move_on_after(self.quiet) as scope:
                await self.drops.wait_beyond(total)
            if scope.cancelled_caught:
                return


class Handler(Protocol):
    async def handle(self, instance: str, change: Change) -> None: ...


async def _resolve_changes(pending: PendingChanges, resolver: Handler) -> None:
    """One of the resolvers: handle the changes `pending` hands out, one at a time."""
    while True:
        instance, change = await pending.get()
        try:
            await resolver.handle(instance, change)
        finally:
            pending.done(instance)


class PendingChanges:
    """Browse events waiting for the resolvers: the latest change of each instance, in the order
    the instances first changed. `put` never blocks (it runs in zeroconf's callback). `get`
    hands out an instance only while no resolver has it (until `done`): its changes are
    handled in order."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._changes: dict[str, Change] = {}
        self._busy: set[str] = set()  # instances a resolver has now
        self._wakeup = trio.Event()

    def __len__(self) -> int:
        return len(self._changes)

    @property
    def busy(self) -> int:
        """Instances that resolvers have now."""
        return len(self._busy)

    def put(self, instance: str, change: Change) -> bool:
        """Note a change; False if it had to be dropped (too many distinct instances). A second
        look or a retry never replaces a change still waiting: handling that one looks anyway."""
        if instance in self._changes:
            if change not in _OURS:
                self._changes[instance] = change  # keeps its place
            return True
        if len(self._changes) >= self.limit:
            return False
        self._changes[instance] = change
        self._wakeup.set()
        return True

    async def get(self) -> tuple[str, Change]:
        """The first instance waiting that no resolver has, and its change; it is busy until
        `done`. (At most one busy instance per resolver is skipped: the search is short.)"""
        while True:
            instance = next((i for i in self._changes if i not in self._busy), None)
            if instance is not None:
                self._busy.add(instance)
                return instance, self._changes.pop(instance)
            if self._wakeup.is_set():
                self._wakeup = trio.Event()
            await self._wakeup.wait()

    def done(self, instance: str) -> None:
        """The resolver that had `instance` is done with it."""
        self._busy.discard(instance)
        if instance in self._changes:
            self._wakeup.set()  # a change of it came meanwhile


class Goodbyes(RecordUpdateListener):
    """The instances of one service type whose PTR record came with TTL 0: a goodbye (RFC 6762
    10.1). Its Removed is then a departure; any other Removed is a record that expired. zeroconf
    calls this on the trio thread (trio-asyncio), with each packet's records."""

    def __init__(self, service_type: str) -> None:
        self.service_type = service_type.lower()
        self._instances: set[str] = set()

    def async_update_records(self, zc: Zeroconf, now: float, records: list[Any]) -> None:
        for update in records:
            record = update.new
            if (record.type == _TYPE_PTR and record.ttl == 0
                    and record.name.lower() == self.service_type):
                self._instances.add(record.alias.lower())

    def async_update_records_complete(self) -> None:
        pass

    def take(self, instance: str) -> bool:
        """True if `instance` said goodbye since the last call for it."""
        key = instance.lower()
        if key in self._instances:
            self._instances.discard(key)
            return True
        return False


class SecondLooks:
    """Entries to resolve once more `delay` seconds after they changed (module docstring): each
    is put back into `pending` as a "second look" when its time comes. One timer per entry at
    most; a new change of an entry moves its look later."""

    def __init__(self, pending: PendingChanges, delay: float) -> None:
        self.pending = pending
        self.delay = delay
        # instance -> when; one delay for all, so insertion order is the order of the times.
        self._due: dict[str, float] = {}
        self._wakeup = trio.Event()

    def __len__(self) -> int:
        return len(self._due)

    def schedule(self, instance: str) -> None:
        self._due.pop(instance, None)
        self._due[instance] = trio.current_time() + self.delay
        self._wakeup.set()

    def cancel(self, instance: str) -> None:
        self._due.pop(instance, None)

    async def run(self) -> None:
        while True:
            if not self._due:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            instance, when = next(iter(self._due.items()))
            await trio.sleep_until(when)
            if self._due.get(instance) == when:  # not moved or cancelled meanwhile
                del self._due[instance]
                self.pending.put(instance, "second look")


class Retries:
    """Entries that did not resolve, to resolve again later: each is put back into `pending` as a
    "retry" when its time comes, the wait doubling from `first` to at most `last`, until it
    failed `tries` times in all. A lost answer (a burst of hundreds of agents announcing at
    once, a lossy LAN) must not leave a peer unseen until its record changes, and an entry that
    never resolves costs a few queries, never a loop nor a resolver for good. `cancel` when it
    resolves or goes."""

    def __init__(self, pending: PendingChanges, first: float, last: float,
                 tries: int = limits.RESOLVE_TRIES) -> None:
        self.pending = pending
        self.first = first
        self.last = last
        self.tries = tries
        # instance -> (when, the wait before it, the failures so far)
        self._due: dict[str, tuple[float, float, int]] = {}
        self._heap: list[tuple[float, str]] = []  # (when, instance); stale items are skipped
        self._wakeup = trio.Event()

    def __len__(self) -> int:
        return len(self._due)

    def schedule(self, instance: str) -> float | None:
        """After a failure: the next try of `instance`; returns the wait, or None when it has
        failed `tries` times: it is dropped (tried again only when announced again)."""
        previous = self._due.get(instance)
        failures = 1 if previous is None else previous[2] + 1
        if failures >= self.tries:
            self._due.pop(instance, None)
            return None
        wait = self.first if previous is None else min(self.last, previous[1] * 2)
        when = trio.current_time() + wait
        self._due[instance] = (when, wait, failures)
        heapq.heappush(self._heap, (when, instance))
        self._wakeup.set()
        return wait

    def cancel(self, instance: str) -> None:
        self._due.pop(instance, None)

    async def run(self) -> None:
        while True:
            self._wakeup = trio.Event()
            if self._heap:
                with trio.move_on_at(self._heap[0][0]):
                    await self._wakeup.wait()
            else:
                await self._wakeup.wait()
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                when, instance = heapq.heappop(self._heap)
                due = self._due.get(instance)
                if due is not None and due[0] == when:  # not moved or cancelled meanwhile
                    self.pending.put(instance, "retry")


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
        second_looks: SecondLooks | None = None,
        goodbyes: Goodbyes | None = None,
        retries: Retries | None = None,
        networks: Sequence[str] = (),
    ) -> None:
        self.zc = zc
        self.networks = networks
        self.retries = retries
        self.second_looks = second_looks
        self.goodbyes = goodbyes
        self.loopback = loopback
        self.service_type = service_type
        self.own_name = own_name
        self.out = out
        self.metrics = metrics
        # instance (lower case) -> its peer name, or None for an entry we ignore (rejected, or
        # ourselves), so that its Removed is ignored too.
        self.peer_names: dict[str, str | None] = {}
        # instance (lower case) -> the last PeerSeen sent for it, for second looks.
        self.last_seen: dict[str, PeerSeen] = {}

    async def handle(self, instance: str, change: Change) -> None:
        label = _label(instance, self.service_type)
        if change is ServiceStateChange.Removed:
            await self._removed(instance, label)
            return
        if label == self.own_name:
            return  # our own advertisement; skip resolving it
        if change == "second look":
            await self._look_again(instance)
            return
        info = AsyncServiceInfo(self.service_type, instance)
        # From the cache first, on this thread: the browse answers mostly brought every record
        # already, and zeroconf's own request would cost a hop through the asyncio loop even
        # then, a few rounds of trio's scheduler, while this resolver holds its slot.
        if not info.load_from_cache(self.zc.zeroconf) and \
                not await aio_as_trio(info.async_request)(self.zc.zeroconf, _RESOLVE_TIMEOUT_MS):
            self.metrics.mdns_events.labels(kind="unresolved").inc()
            if self.retries is not None:
                wait = self.retries.schedule(instance)
                if wait is None:
                    self.metrics.limit_hit("resolve-tries")
                    log.warning("mDNS entry %s did not resolve in %d tries: dropped until it is "
                                "announced again", instance, self.retries.tries)
                    return
                log.log(logging.INFO if change != "retry" else logging.DEBUG,
                        "mDNS entry %s did not resolve within %s; trying again in %s",
                        instance, format_duration(_RESOLVE_TIMEOUT_MS / 1000),
                        format_duration(wait))
            return
        if self.retries is not None:
            self.retries.cancel(instance)
        message = self._bounded(instance, peer_from_info(info, loopback=self.loopback))
        if isinstance(message, PeerRejected):
            self.peer_names[instance.lower()] = None
            log.warning("rejected mDNS entry %r: %s (%s)",
                        message.instance, message.reason, message.detail)
            await self.out.send(message)
            return
        if message.name == self.own_name:
            self.peer_names[instance.lower()] = None
            return
        key = instance.lower()
        self.peer_names[key] = message.name
        self.last_seen[key] = message
        if self.second_looks is not None:
            self.second_looks.schedule(instance)
        await self.out.send(message)

    async def _look_again(self, instance: str) -> None:
        """Resolve from the cache only (no query) and send what changed since the last send."""
        key = instance.lower()
        last = self.last_seen.get(key)
        if last is None:
            return  # removed or rejected meanwhile
        info = AsyncServiceInfo(self.service_type, instance)
        if not info.load_from_cache(self.zc.zeroconf):
            return  # the records are going: a Removed follows, or the next announcement
        message = self._bounded(instance, peer_from_info(info, loopback=self.loopback))
        if isinstance(message, PeerSeen) and message != last and message.name == last.name:
            log.info("mDNS entry %s now resolves to %s (was %s)", instance,
                     ", ".join(message.addresses), ", ".join(last.addresses))
            self.last_seen[key] = message
            await self.out.send(message)

    def _bounded(self, instance: str, message: PeerSeen | PeerRejected
                 ) -> PeerSeen | PeerRejected:
        """Only the addresses on this machine's links, a few at most (module docstring)."""
        if not isinstance(message, PeerSeen):
            return message
        if len(on_link(message.addresses, self.networks)) > limits.ADDRESSES_PER_PEER:
            self.metrics.limit_hit("addresses-per-peer")
        return bound_addresses(instance, message, self.networks)

    async def _removed(self, instance: str, label: str) -> None:
        key = instance.lower()
        last = self.last_seen.pop(key, None)
        if self.second_looks is not None:
            self.second_looks.cancel(instance)
        if self.retries is not None:
            self.retries.cancel(instance)
        if key in self.peer_names:
            name = self.peer_names.pop(key)
        elif is_valid_name(label):
            name = label  # never resolved: the instance label is all we have
        else:
            name = None
        goodbye = self.goodbyes is None or self.goodbyes.take(instance)
        if name is None or name == self.own_name:
            return
        await self.out.send(PeerGone(name, goodbye=goodbye,
                                     addresses=last.addresses if last is not None else ()))

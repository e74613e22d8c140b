"""presence: this agent on the LAN's mDNS (the agent's `Lan`), following its addresses.

    async with trio_asyncio.open_loop(), open_presence(settings, interfaces, metrics) as lan:
        nursery.start_soon(lan.advertise, here)     # here: Current[MachineAddresses]
        await nursery.start(lan.browse, send_channel)

One zeroconf instance advertises our record (tasks/advertise.py) and browses for peers
(tasks/browse.py); both run on whichever zeroconf is current (`k3net.current.follow`). When this
machine's advertised addresses change (tasks/addresses.py sets `here`), the advertisement:

- updates the record in place if what zeroconf is bound to is unchanged (its IPv4 addresses
  and IPv6 interfaces: a new IPv6 privacy address, a pinned address): same name, new A/AAAA
  records; peers see Updated, never a goodbye;
- otherwise moves to a new zeroconf. zeroconf binds its IPv4 sockets to interface addresses, so
  after a DHCP renewal with a new address its announcements can no longer leave the machine
  ("Network is unreachable"). A new zeroconf is opened on the new addresses; our record is
  taken out of the old one's registry without a packet, so that closing it sends no goodbye
  (a goodbye would make peers write us PeerLeft) and it no longer answers for our name; then
  advertise registers again on the new one (about 1.6 s of probing and announcing) and browse
  starts again there (peers are found again from their answers; the table takes a PeerSeen of
  a known peer as an update).

TXT `addrs` (mdns.service_info) is the version of `here`: it grows with every change of this
machine's addresses, so every new list of advertised ones announces a new TXT.

At start (`open_presence`), one mDNS query for the service type goes out at once, with the
unicast-response bit (QU): peers answer a QU question at once, where zeroconf's browser waits
20-120 ms before its first query (RFC 6762 section 5.2, against bursts when many hosts power up
together) and answers to a multicast question may wait 20-120 ms more (section 6). The answers
land in zeroconf's cache, which the browser reads when it starts, so a newcomer knows its peers
some 100 ms sooner and introduces itself to them (tasks/introduce.py) before its own
registration is done. One packet per start: no burst.

Either way, addresses we lost are withdrawn first (goodbyes of those A/AAAA records only), before
the new ones are announced (in place: WITHDRAW_DELAY later), because zeroconf reports a new
address record to browsers as Updated but never one that went away: a peer resolving our
announcement must no longer hold the old address, or its Node of us would keep it. Peers'
browsers also look at every change again a second later (tasks/browse.py), for senders that do
not keep this order.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Sequence

import attrs
import trio
from trio_asyncio import aio_as_trio
from zeroconf import DNSOutgoing, DNSQuestion, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf
from zeroconf.const import _CLASS_IN, _FLAGS_QR_QUERY, _TYPE_PTR

from k3net import mdns
from k3net.core.addresses import MachineAddresses
from k3net.core.table import Message
from k3net.current import Current, follow, wait_any
from k3net.metrics import Metrics
from k3net.settings import Settings
from k3net.tasks import advertise, browse
from k3net.tasks.probe import probe_peer

log = logging.getLogger(__name__)


@attrs.frozen(eq=False)
class _Registered:
    """Our record as registered (and announced) on the current zeroconf, and the addresses it
    announces."""

    info: ServiceInfo
    addresses: tuple[str, ...]


@attrs.define
class _Session:
    """One zeroconf instance and what it is bound to."""

    zc: AsyncZeroconf
    specs: tuple[str | int, ...]
    stack: contextlib.AsyncExitStack
    networks: tuple[str, ...] = ()  # on the links of its interfaces: browse keeps only these


def _chosen(settings: Settings) -> list[mdns.Interface]:
    return mdns.interfaces_for(settings)


class Presence:
    """The agent's `Lan` on zeroconf, able to follow this machine's addresses. Build it with
    `open_presence`."""

    def __init__(self, settings: Settings, metrics: Metrics, loopback: bool) -> None:
        self.settings = settings
        self.metrics = metrics
        # Only loopback interfaces (a test namespace): peers' loopback addresses are kept.
        self.loopback = loopback
        self._session: Current[_Session] | None = None  # the zeroconf in use
        # Our record as last handed to the session's zeroconf (registering, or registered),
        # and the addresses it announces.
        self._info: ServiceInfo | None = None
        self._announces: tuple[str, ...] = ()
        # Set once that record is registered on the current session; None while registering.
        self._registered: Current[_Registered | None] = Current(None)

    @property
    def session(self) -> Current[_Session]:
        assert self._session is not None, "use open_presence"
        return self._session

    async def _open(self, interfaces: Sequence[mdns.Interface]) -> _Session:
        stack = contextlib.AsyncExitStack()
        zc = await stack.enter_async_context(mdns.open_zeroconf([i.name for i in interfaces]))
        return _Session(zc, tuple(mdns.zeroconf_interfaces(interfaces)), stack,
                        mdns.networks_of(interfaces))

    # --- the Lan protocol ---------------------------------------------------------------

    async def advertise(
        self,
        here: Current[MachineAddresses],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Advertise `here`'s advertised addresses until cancelled (then say goodbye), following
        their changes (module docstring). Reports started once our record is registered (the
        first time)."""
        first = self.session.value

        async def on(session: _Session, *, task_status: trio.TaskStatus[None]) -> None:
            self._registered.set(None)

            def record() -> ServiceInfo:
                # While registering (again), the addresses of now; once registered, the
                # record as last updated in place (for the goodbye).
                registered = self._registered.value
                if registered is not None:
                    return registered.info
                self._announces = here.value.advertised
                self._info = mdns.service_info(self.settings, addresses=self._announces,
                                               generation=here.version)
                return self._info

            def registered(info: ServiceInfo) -> None:
                if self.session.value is session:
                    self._registered.set(_Registered(info, self._announces))

            def goodbye() -> bool:
                return self.session.value is session  # not when we moved to another zeroconf

            # After a move the name is ours already (advertise.run's `ours`). Started once
            # registered (probing and announcing, about 1.6 s): /readyz waits for it.
            await advertise.run(session.zc, record, goodbye=goodbye, ours=session is not first,
                                verify=self._is_twin, on_forged=self._forged,
                                on_registered=registered, task_status=task_status)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_addresses, here)
            await nursery.start(follow, self.session, on)
            task_status.started()

    async def _is_twin(self, addresses: Sequence[str], port: int) -> bool:
        """Whether another agent answers as this node at `addresses:port`: an identity probe of
        our own name there, with the cluster key (an answer from this very process is none)."""
        s = self.settings
        result = await probe_peer(s.node_name, addresses, port, s.probe_timeout,
                                  key=s.cluster_key)
        return result.outcome == "confirmed" and not (
            result.facts is not None and result.facts.pid == os.getpid())

    def _forged(self) -> None:
        self.metrics.rejected.labels(reason="forged-name").inc()

    async def browse(
        self,
        out: trio.MemorySendChannel[Message],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Send PeerSeen / PeerGone / PeerRejected to `out` until cancelled, on whichever
        zeroconf is current; close `out` then."""
        s = self.settings
        service_type = mdns.service_type(s.service, s.domain)

        async def on(session: _Session, *, task_status: trio.TaskStatus[None]) -> None:
            await browse.run(session.zc, service_type, s.node_name, out.clone(), self.metrics,
                             loopback=self.loopback, networks=session.networks,
                             task_status=task_status)

        async with out:
            await follow(self.session, on, task_status=task_status)

    async def _follow_addresses(self, here: Current[MachineAddresses]) -> None:
        """Every change of the advertised addresses, followed by our record in turn. A record
        being registered is not touched: zeroconf's registration announces what it was given
        (three announcements over a second or more), and an update meanwhile would be
        overtaken by them. The record is compared with the addresses of now once it is
        registered, and follows then; only a move to another zeroconf does not wait (the one in
        use may be unable to reach the LAN any more)."""
        while True:
            seen, registered = here.version, self._registered.version
            now = here.value.advertised
            record = self._registered.value
            announced = record.addresses if record is not None else self._announces
            if now and now != announced:
                gone = [a for a in announced if a not in now]
                await self._readdress(now, gone, seen, record)
            if here.version == seen and self._registered.version == registered:
                await wait_any((here, seen), (self._registered, registered))

    async def _readdress(
        self, addresses: tuple[str, ...], gone: list[str], generation: int,
        record: _Registered | None,
    ) -> None:
        """Our record announces `addresses` from now on, not `gone` (module docstring); not
        registered yet (`record` None), only a move is made now."""
        old = self.session.value
        try:
            chosen = _chosen(self.settings)
        except mdns.MdnsError as exc:
            log.warning("mDNS interfaces unusable now (%s); keeping them", exc)
            chosen = []
        if not chosen or tuple(mdns.zeroconf_interfaces(chosen)) == old.specs:
            if record is not None:  # (else the registration under way: compared when done)
                await self._update_in_place(old, record, addresses, gone, generation)
            return
        log.info("mDNS moves to this machine's new addresses (%s): registering again",
                 ", ".join(addresses))
        new = await self._open(chosen)
        try:
            if record is not None:
                # Out of the old registry first: the old zeroconf must no longer answer for
                # our name with the old addresses, nor send a goodbye when it closes.
                # zeroconf's loop runs on this thread.
                old.zc.zeroconf.registry.async_remove(record.info)
            if gone and self._info is not None:
                # The goodbyes of the lost addresses go out before advertise announces on
                # the new zeroconf (it starts on the change of session): a peer that heard
                # them the other way round would resolve both addresses and never hear of the
                # old one again.
                await aio_as_trio(new.zc.zeroconf.async_wait_for_start)()
                mdns.withdraw_addresses(new.zc, self._info, gone)
        except BaseException:
            with trio.CancelScope(shield=True):  # stopped meanwhile: nobody uses the new one
                await new.stack.aclose()
            raise
        self.session.set(new)  # advertise and browse leave the old zeroconf, without a goodbye
        await old.stack.aclose()

    async def _update_in_place(
        self, session: _Session, record: _Registered, addresses: tuple[str, ...],
        gone: list[str], generation: int,
    ) -> None:
        if gone:
            mdns.withdraw_addresses(session.zc, record.info, gone)
            await trio.sleep(mdns.WITHDRAW_DELAY)
        info = mdns.service_info(self.settings, addresses=addresses, generation=generation)
        try:
            await mdns.update_service(session.zc, info)
        except (KeyError, ValueError, RuntimeError) as exc:  # (gone from zeroconf meanwhile)
            log.warning("mDNS record not updated: %r", exc)
            return
        self._info, self._announces = info, addresses
        if self.session.value is session:
            self._registered.set(_Registered(info, addresses))
        log.info("mDNS record now announces %s", ", ".join(addresses))


async def _ask_peers_now(zc: AsyncZeroconf, service_type: str) -> None:
    """One QU query for `service_type`, sent now (module docstring)."""
    await aio_as_trio(zc.zeroconf.async_wait_for_start)()
    question = DNSQuestion(service_type, _TYPE_PTR, _CLASS_IN)
    question.unicast = True
    out = DNSOutgoing(_FLAGS_QR_QUERY)
    out.add_question(question)
    zc.zeroconf.async_send(out)


@contextlib.asynccontextmanager
async def open_presence(
    settings: Settings, interfaces: Sequence[mdns.Interface], metrics: Metrics
) -> AsyncIterator[Presence]:
    """zeroconf on the chosen interfaces, closed (with any goodbyes left) when the block ends.
    Enter it inside `trio_asyncio.open_loop()`."""
    presence = Presence(settings, metrics, mdns.loopback_only(interfaces))
    presence._session = Current(await presence._open(interfaces))
    await _ask_peers_now(presence.session.value.zc,
                         mdns.service_type(settings.service, settings.domain))
    try:
        yield presence
    finally:
        with trio.CancelScope(shield=True):
            await presence.session.value.stack.aclose()

"""advertise: register this agent's mDNS service, and say goodbye when cancelled.

    info = mdns.service_info(settings)
    await nursery.start(advertise.run, zc, info)    # returns once registered (~1.2-1.7 s)

Registration probes the LAN for the instance name first. If another responder already owns it
(another agent with the same --node-name), the name is NOT changed to `name (2)` as zeroconf
could: the node name is the Node's identity and a renamed advertisement would make peers write a
Node that does not exist. Nor is the other record believed on its word (design.md section 6):
anyone on the LAN can answer for any name. `run` asks `verify` whether an agent answers as this
node where the record says (an identity probe of our own name, with the cluster key): only then
is it a twin, and `run` raises NameTakenError, the agent stops with that message. A record that
nothing proves (a stranger's forged one, a stale one of a host gone) is logged as a warning,
counted, and registration is tried again later (TAKEN_BACKOFF), until the name is free: the
agent runs on meanwhile, found by its peers through the store, joins and introductions.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Sequence

import trio
from trio_asyncio import aio_as_trio
from zeroconf import NonUniqueNameException, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from k3net.backoff import Backoff

log = logging.getLogger(__name__)

# The async goodbye is 3 packets 125 ms apart; 2 s leaves room on a busy loop and still
# bounds shutdown.
_GOODBYE_TIMEOUT = 2.0


# Asked when cancelled: False skips the goodbye (the record moves to another zeroconf).
Goodbye = Callable[[], bool]
# Asked when our name is taken: does an agent answer as this node at these addresses and port?
Verify = Callable[[Sequence[str], int], Awaitable[bool]]
# Registering again while a record that nothing proves holds our name: 2 s doubling to a minute.
TAKEN_BACKOFF = Backoff(base=2.0, cap=60.0)


class NameTakenError(Exception):
    """Another responder on the LAN already advertises this instance name."""


async def run(
    zc: AsyncZeroconf,
    record: ServiceInfo | Callable[[], ServiceInfo],
    *,
    goodbye: Goodbye = lambda: True,
    ours: bool = False,
    verify: Verify | None = None,
    on_forged: Callable[[], None] | None = None,
    on_registered: Callable[[ServiceInfo], None] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Register `record`, report started once it is announced, then wait to be cancelled; on
    cancellation send the goodbye (bounded, shielded). A registration cancelled half-way sends
    the goodbye too: peers may have seen our probes and announcements already. `record` may be
    a function that gives the record as it is now: it is asked at every attempt to register (the
    addresses may have changed while a forged record held the name) and for the goodbye (the
    record may have been updated since). `on_registered(info)` is called once `info` is
    registered and announced: from then on the caller may update it in place. `goodbye()`
    False skips the goodbye: the advertisement moves to a new zeroconf (tasks/presence.py).
    `ours`: the name was registered by this agent a moment ago (a move to new addresses), so a
    record of it still cached or heard on the LAN is our own and no conflict; no probing for
    the name. `verify`: when the name is taken, whether its holder proves to be this node
    (module docstring); None believes the record (a twin at once). `on_forged()` is called for
    each record that did not prove it."""

    def latest() -> ServiceInfo:
        return record() if callable(record) else record

    announced = False  # something of ours may be on the LAN
    attempt = 0
    try:
        while True:
            info = latest()
            try:
                # zeroconf returns a task that completes when probing and announcing are done.
                announced = True
                registered = await aio_as_trio(zc.async_register_service)(
                    info, allow_name_change=False, cooperating_responders=ours
                )
                await aio_as_trio(registered)
                break
            except NonUniqueNameException:
                announced = False  # the name is someone else's: never say goodbye for it
            holder = _holder(zc, info)
            if verify is None or (holder is not None and await verify(*holder)):
                raise NameTakenError(
                    f"mDNS name {info.name!r} is already advertised on the LAN"
                    f"{_said(holder)}: another agent uses this node name; choose another "
                    f"--node-name"
                )
            delay = TAKEN_BACKOFF.delay(attempt, _RNG)
            attempt += 1
            if on_forged is not None:
                on_forged()
            if attempt == 1:
                # The agent goes on (READY=1, /readyz): it serves, and its peers reach it
                # through the store, joins and introductions while the record is not ours.
                task_status.started()
            log.warning(
                "mDNS name %r is advertised%s, but no agent answers as this node there: a "
                "forged or stale record, not a twin; registering again in %.0f s (peers find "
                "this agent through the store meanwhile)", info.name, _said(holder), delay)
            await trio.sleep(delay)
        log.info("advertising %s on port %s (%s)", info.name, info.port,
                 ", ".join(info.parsed_addresses()))
        if on_registered is not None:
            on_registered(info)
        if not attempt:
            task_status.started()
        await trio.sleep_forever()
    finally:
        if announced and goodbye():
            with trio.move_on_after(_GOODBYE_TIMEOUT, shield=True):
                await _goodbye(zc, latest())


def _holder(zc: AsyncZeroconf, info: ServiceInfo) -> tuple[list[str], int] | None:
    """Where the cached records of the name we could not take say its holder is (addresses and
    port), or None when they say nothing."""
    other = ServiceInfo(info.type, info.name)
    if not other.load_from_cache(zc.zeroconf) or not other.parsed_addresses() or not other.port:
        return None
    return other.parsed_addresses(), other.port


def _said(holder: tuple[list[str], int] | None) -> str:
    return "" if holder is None else f" by {', '.join(holder[0])} port {holder[1]}"


_RNG = random.Random()


async def _goodbye(zc: AsyncZeroconf, info: ServiceInfo) -> None:
    try:
        goodbye = await aio_as_trio(zc.async_unregister_service)(info)
        await aio_as_trio(goodbye)
    except (KeyError, ValueError, RuntimeError) as exc:
        # Registration had not got far enough to be undone: nothing of ours is registered.
        log.debug("no mDNS goodbye for %s: %r", info.name, exc)
        return
    log.info("sent mDNS goodbye for %s", info.name)

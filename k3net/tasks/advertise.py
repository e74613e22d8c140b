"""advertise: register this agent's mDNS service, and say goodbye when cancelled.

    info = mdns.service_info(settings)
    await nursery.start(advertise.run, zc, info)    # returns once registered (~1.2-1.7 s)

Registration probes the LAN for the instance name first. If another responder already owns it
(another agent with the same --node-name), the name is NOT changed to `name (2)` as zeroconf
could: the node name is the Node's identity and a renamed advertisement would make peers write a
Node that does not exist. `run` raises NameTakenError instead, and the agent stops with that
message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio
from trio_asyncio import aio_as_trio
from zeroconf import NonUniqueNameException, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

log = logging.getLogger(__name__)

# The async goodbye is 3 packets 125 ms apart; 2 s leaves room on a busy loop and still
# bounds shutdown.
_GOODBYE_TIMEOUT = 2.0


# Asked when cancelled: False skips the goodbye (the record moves to another zeroconf).
Goodbye = Callable[[], bool]


class NameTakenError(Exception):
    """Another responder on the LAN already advertises this instance name."""


async def run(
    zc: AsyncZeroconf,
    info: ServiceInfo,
    *,
    goodbye: Goodbye = lambda: True,
    ours: bool = False,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Register `info`, report started once it is announced, then wait to be cancelled; on
    cancellation send the goodbye (bounded, shielded). A registration cancelled half-way sends
    the goodbye too: peers may have seen our probes and announcements already. `goodbye()`
    False skips it: the advertisement moves to a new zeroconf (tasks/presence.py). `ours`: the
    name was registered by this agent a moment ago (a move to new addresses), so a record of it
    still cached or heard on the LAN is our own and no conflict; no probing for the name."""
    announced = False  # something of ours may be on the LAN
    try:
        try:
            # zeroconf returns a task that completes when probing and announcing are done.
            announced = True
            registered = await aio_as_trio(zc.async_register_service)(
                info, allow_name_change=False, cooperating_responders=ours
            )
            await aio_as_trio(registered)
        except NonUniqueNameException:
            announced = False  # the name is someone else's: never say goodbye for it
            raise NameTakenError(
                f"mDNS name {info.name!r} is already advertised on the LAN{_holder(zc, info)}: "
                f"another agent uses this node name; choose another --node-name"
            ) from None
        log.info("advertising %s on port %s (%s)", info.name, info.port,
                 ", ".join(info.parsed_addresses()))
        task_status.started()
        await trio.sleep_forever()
    finally:
        if announced and goodbye():
            with trio.move_on_after(_GOODBYE_TIMEOUT, shield=True):
                await _goodbye(zc, info)


def _holder(zc: AsyncZeroconf, info: ServiceInfo) -> str:
    """` by ADDR:PORT`, where the cached records of the name we could not take say its holder
    is, or "" when they say nothing."""
    other = ServiceInfo(info.type, info.name)
    if not other.load_from_cache(zc.zeroconf) or not other.parsed_addresses():
        return ""
    return f" by {', '.join(other.parsed_addresses())} port {other.port}"


async def _goodbye(zc: AsyncZeroconf, info: ServiceInfo) -> None:
    try:
        goodbye = await aio_as_trio(zc.async_unregister_service)(info)
        await aio_as_trio(goodbye)
    except (KeyError, ValueError, RuntimeError) as exc:
        # Registration had not got far enough to be undone: nothing of ours is registered.
        log.debug("no mDNS goodbye for %s: %r", info.name, exc)
        return
    log.info("sent mDNS goodbye for %s", info.name)

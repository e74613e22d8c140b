"""addresses: follow this machine's addresses into their one owner.

    here = Current(read())                   # the agent's: the one place they are held
    await nursery.start(addresses.run, read, here)

`read()` returns the machine's addresses now (`mdns.machine_addresses` in the agent: one
getifaddrs call and a few /sys reads, well under a millisecond); the task calls it every
`POLL_INTERVAL` seconds and sets `here` whenever it differs from the last reading. Whoever
needs the addresses reads `here` and waits on it (see `k3net.agent`): the mDNS record and our own
Node follow the advertised ones, the prober and the scanner the whole set. A DHCP renewal, an
IPv6 privacy address or an administrator's readdress is therefore seen within POLL_INTERVAL.
Polling rather than netlink: it needs no privileges, works in every container, and costs about
0.01 % of a core.

A reading that fails (the interface given with --interface has lost its address, or is gone
for a moment) is skipped: the last addresses stay in force until a reading succeeds. The first
failure of a series is logged as a warning, and the first success after it; not every poll. A
reading with no usable address to advertise changes this machine's own set but not what is
advertised: a record with no address would only make peers lose us.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import trio

from k3net.core.addresses import MachineAddresses
from k3net.current import Current

log = logging.getLogger(__name__)

# Addresses change rarely and a change needs only to be seen "within a few seconds".
POLL_INTERVAL = 2.0


async def run(
    read: Callable[[], MachineAddresses],
    here: Current[MachineAddresses],
    *,
    interval: float = POLL_INTERVAL,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Set every change of `read()` into `here` until cancelled (module docstring)."""
    last = here.value  # the last reading, to log each change once
    failing = False
    task_status.started()
    while True:
        await trio.sleep(interval)
        try:
            now = read()
        except Exception as exc:  # noqa: BLE001 (an environment error; retried next poll)
            if not failing:
                log.warning("cannot read this machine's addresses: %s; keeping %s until "
                            "they can be read again", exc, ", ".join(last.advertised) or "none")
            failing = True
            continue
        if failing:
            log.info("this machine's addresses can be read again")
            failing = False
        if now == last:
            continue
        log.info("this machine's addresses changed: advertised %s (was %s)",
                 ", ".join(now.advertised) or "none", ", ".join(last.advertised) or "none")
        last = now
        if not now.advertised:
            advertised = here.value.advertised
            log.warning("no usable address on this machine's LAN interfaces now; "
                        "still advertising %s", ", ".join(advertised) or "none")
            now = attrs.evolve(now, advertised=advertised)
        here.set(now)

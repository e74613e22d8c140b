"""addresses: follow this machine's addresses, and report when they change.

    await nursery.start(addresses.run, read, send.clone(), first)

`read()` returns the machine's addresses now (`mdns.machine_addresses` in the agent: one
getifaddrs call and a few /sys reads, well under a millisecond); the task calls it every
`POLL_INTERVAL` seconds and sends a `MachineAddresses` whenever it differs from the last one
(`first`: what the agent started with). A DHCP renewal, an IPv6 privacy address or an
administrator's readdress is therefore seen within POLL_INTERVAL, and the agent then
re-announces its mDNS record, rewrites its own Node and tells the prober (see
`k3net.agent`). Polling rather than netlink: it needs no privileges, works in every container,
and costs about 0.01 % of a core.

A reading that fails (the interface given with --interface has lost its address, or is gone
for a moment) is skipped: the last addresses stay in force until a reading succeeds. The first
failure of a series is logged as a warning, and the first success after it; not every poll.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from k3net.core.addresses import MachineAddresses

log = logging.getLogger(__name__)

# Addresses change rarely and a change needs only to be seen "within a few seconds".
POLL_INTERVAL = 2.0


async def run(
    read: Callable[[], MachineAddresses],
    out: trio.MemorySendChannel[MachineAddresses],
    first: MachineAddresses,
    *,
    interval: float = POLL_INTERVAL,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Send every change of `read()` to `out` until cancelled. Closes `out` when it returns."""
    last = first
    failing = False
    async with out:
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
            await out.send(now)

"""addresses: follow this machine's addresses into their one owner.

    here = Current(read())                   # the agent's: the one place they are held
    async with addresses.kernel_news() as news:
        await nursery.start(functools.partial(addresses.run, read, here, news=news))

`read()` returns the machine's addresses now (`mdns.machine_addresses` in the agent: one
getifaddrs call and a few /sys reads, about a millisecond); the task calls it whenever the
kernel says that an address or a link changed, and sets `here` whenever the reading differs
from the last one. Whoever needs the addresses reads `here` and waits on it (see
`k3net.agent`): the mDNS record and our own Node follow the advertised ones, the prober and the
scanner the whole set. A DHCP renewal, an IPv6 privacy address, a cable plugged in or an
administrator's readdress is therefore seen within about SETTLE.

The kernel's word (`KernelNews`): an rtnetlink socket subscribed to the address and link
groups. Any message means "read again"; none is parsed (the reading is the one source of what
the addresses are). A burst (an address replaced is a deletion and an addition; an interface
brought up brings several) is read once, SETTLE after its first message, and readings are at
least MIN_GAP apart, so a machine whose links flap, or a container host making veths all day,
costs at most a reading every MIN_GAP. It needs no privileges and works in every network
namespace. A message the kernel could not queue (ENOBUFS) is news as well. Readings are also
taken every SAFETY_POLL regardless, in case news was lost some other way. Where the kernel
offers no such socket (not Linux, a sandbox that refuses it) the task polls every
POLL_INTERVAL instead, and says so once at debug level.

A reading that fails (the interface given with --interface has lost its address, or is gone
for a moment) is skipped and retried every POLL_INTERVAL: the last addresses stay in force until
a reading succeeds. The first failure of a series is logged as a warning, and the first success
after it; not every retry. A reading with no usable address to advertise changes this machine's
own set but not what is advertised: a record with no address would only make peers lose us.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections.abc import AsyncIterator, Callable

import attrs
import trio

from k3net.core.addresses import MachineAddresses
from k3net.current import Current

log = logging.getLogger(__name__)

# Without the kernel's news: how often the addresses are read ("within a few seconds"). Also
# the retry of a reading that failed.
POLL_INTERVAL = 2.0
# With it: a reading this long after the first message of a burst (one change is several
# messages), readings at least MIN_GAP apart, and one every SAFETY_POLL in any case.
SETTLE = 0.05
MIN_GAP = 0.25
SAFETY_POLL = 60.0

# rtnetlink multicast groups (linux/rtnetlink.h): links, IPv4 and IPv6 addresses.
_RTMGRP_LINK = 0x1
_RTMGRP_IPV4_IFADDR = 0x10
_RTMGRP_IPV6_IFADDR = 0x100
_GROUPS = _RTMGRP_LINK | _RTMGRP_IPV4_IFADDR | _RTMGRP_IPV6_IFADDR
_READ_SIZE = 65536


class KernelNews:
    """The kernel's announcements of address and link changes, on a non-blocking rtnetlink
    socket (module docstring). `wait()` returns once some came, `drain()` drops what is queued."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def wait(self) -> None:
        """Until the kernel announced a change (or lost announcements: news too)."""
        while not self.drain():
            await trio.lowlevel.wait_readable(self.sock)

    def drain(self) -> bool:
        """Read everything queued; whether anything was (a lost announcement counts)."""
        news = False
        while True:
            try:
                if not self.sock.recv(_READ_SIZE):
                    return news
            except BlockingIOError:
                return news
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
            news = True


@contextlib.asynccontextmanager
async def kernel_news() -> AsyncIterator[KernelNews | None]:
    """The kernel's news of address and link changes, or None where it offers none (the
    caller then polls). The socket is closed when the block ends."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                             | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    except (AttributeError, OSError) as exc:  # (no AF_NETLINK: not Linux)
        log.debug("no address news from the kernel (%s): polling every %gs", exc, POLL_INTERVAL)
        yield None
        return
    with sock:
        try:
            sock.bind((0, _GROUPS))
        except OSError as exc:
            log.debug("no address news from the kernel (%s): polling every %gs", exc,
                      POLL_INTERVAL)
            yield None
            return
        yield KernelNews(sock)


async def _next_reading(news: KernelNews | None, last: float, *, interval: float) -> None:
    """Until the next reading is due: news from the kernel (settled, and MIN_GAP after the
    `last` reading) or SAFETY_POLL; without news, `interval`."""
    if news is None:
        await trio.sleep(interval)
        return
    with trio.move_on_after(SAFETY_POLL):
        await news.wait()
        await trio.sleep_until(max(trio.current_time() + SETTLE, last + MIN_GAP))
        news.drain()  # the rest of the burst: this reading sees it


async def run(
    read: Callable[[], MachineAddresses],
    here: Current[MachineAddresses],
    *,
    interval: float = POLL_INTERVAL,
    news: KernelNews | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Set every change of `read()` into `here` until cancelled (module docstring). `news`: the
    kernel's (`kernel_news`); None: poll every `interval`."""
    last = here.value  # the last reading, to log each change once
    failing = False
    read_at = trio.current_time()
    task_status.started()
    while True:
        try:
            # (a failed reading is retried every `interval`, whatever the kernel says)
            await _next_reading(None if failing else news, read_at, interval=interval)
        except OSError as exc:  # the news socket broke: poll from now on
            log.warning("address news from the kernel failed (%s): polling every %gs",
                        exc, interval)
            news = None
        read_at = trio.current_time()
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

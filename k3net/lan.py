"""This machine on the LAN, over zeroconf: the agent's `Lan` (see `k3net.agent`).

    async with trio_asyncio.open_loop(), open_lan(settings, interfaces, metrics) as lan:
        await nursery.start(lan.advertise, addresses)
        await nursery.start(lan.browse, send_channel)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import attrs
import trio
from zeroconf.asyncio import AsyncZeroconf

from k3net import mdns
from k3net.core.table import Message
from k3net.metrics import Metrics
from k3net.settings import Settings
from k3net.tasks import advertise, browse


@attrs.frozen
class ZeroconfLan:
    zc: AsyncZeroconf
    settings: Settings
    metrics: Metrics
    # Only loopback interfaces (a test namespace): peers' loopback addresses are kept.
    loopback: bool = False

    async def advertise(
        self,
        addresses: Sequence[str],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        info = mdns.service_info(self.settings, addresses=addresses)
        await advertise.run(self.zc, info, task_status=task_status)

    async def browse(
        self,
        out: trio.MemorySendChannel[Message],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        s = self.settings
        await browse.run(
            self.zc, mdns.service_type(s.service, s.domain), s.node_name, out, self.metrics,
            loopback=self.loopback, task_status=task_status,
        )


@asynccontextmanager
async def open_lan(
    settings: Settings, interfaces: Sequence[mdns.Interface], metrics: Metrics
) -> AsyncIterator[ZeroconfLan]:
    """zeroconf on the chosen interfaces, closed (with any goodbyes left) when the block ends.
    Enter it inside `trio_asyncio.open_loop()`."""
    async with mdns.open_zeroconf([i.name for i in interfaces]) as zc:
        yield ZeroconfLan(zc, settings, metrics, mdns.loopback_only(interfaces))

"""What the LAN's mDNS says about one agent, as it changes: the `readdress` scenario's eyes on the
record. Run inside a network namespace only.

    field_browse.py --address 10.77.0.1 --name node-4 --timeout 60

Browses `_k3._tcp.local.` pinned to the one given address (nothing goes to another interface) and
prints one JSON line {"event": "addresses", "t", "addresses"} each time the instance `name`
resolves to another set of A/AAAA records (t = time.monotonic(), the clock every process of the
machine shares), after a first {"event": "ready"}. The record is asked for again every
--every seconds as well as on every browse event, since a record's addresses can change without a
new PTR. Exits after --timeout seconds or on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time

from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

SERVICE = "_k3._tcp.local."
RESOLVE_TIMEOUT_MS = 1000


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def watch(address: str, instance: str, within: float, every: float) -> int:
    zc = AsyncZeroconf(interfaces=[address])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    wanted = f"{instance}.{SERVICE}"
    last: list[str] | None = None
    poke = asyncio.Event()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        if name == wanted:
            poke.set()

    async def resolver() -> None:
        nonlocal last
        while True:
            info = AsyncServiceInfo(SERVICE, wanted)
            # Ask the LAN, not the cache: a readdressed host announces its new records, and the
            # old ones are withdrawn (goodbyes) or age out.
            if await info.async_request(zc.zeroconf, RESOLVE_TIMEOUT_MS):
                now = sorted(info.parsed_addresses())
                if now != last:
                    last = now
                    say(event="addresses", t=time.monotonic(), addresses=now)
            poke.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(poke.wait(), every)

    browser = AsyncServiceBrowser(zc.zeroconf, SERVICE, handlers=[on_change])
    task = asyncio.ensure_future(resolver())
    say(event="ready", t=time.monotonic())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), within)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await browser.async_cancel()
    await asyncio.wait_for(zc.async_close(), 5)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True, help="the namespace host's address")
    parser.add_argument("--name", required=True, help="the instance (node name) to follow")
    parser.add_argument("--timeout", type=float, default=60, help="exit after this (s, <= 600)")
    parser.add_argument("--every", type=float, default=0.5, help="re-ask the record this often")
    args = parser.parse_args()
    return asyncio.run(watch(args.address, args.name, min(args.timeout, 600), args.every))


if __name__ == "__main__":
    sys.exit(main())

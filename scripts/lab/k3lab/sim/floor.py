"""The floor: what bare mDNS allows, without k3net. Run inside a network namespace only.

    floor.py browse --address 10.77.0.1 --count 4 --timeout 20
        browse the service type; print one JSON line {"event": "resolved", "name", "t"} per
        service resolved (t = time.monotonic(), the clock every process of the machine shares),
        after a first {"event": "ready"} once the browser runs; exit after `count` services or
        `timeout` seconds.
    floor.py advertise --address 10.77.0.2 --name node-1 --port 7946
        register one service, as a k3net agent does (AsyncZeroconf, probing, TXT node/port/pid),
        print {"event": "registered", "t"}, and keep it until SIGTERM/SIGINT (then goodbye).

Both pin zeroconf to the one given address: nothing goes to another interface.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time

from zeroconf import ServiceInfo, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

SERVICE = "_k3floor._tcp.local."
RESOLVE_TIMEOUT_MS = 3000


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def browse(address: str, service: str, count: int, within: float) -> int:
    zc = AsyncZeroconf(interfaces=[address])
    resolved: set[str] = set()
    done = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def resolve(name: str) -> None:
        info = AsyncServiceInfo(service, name)
        if await info.async_request(zc.zeroconf, RESOLVE_TIMEOUT_MS) and name not in resolved:
            resolved.add(name)
            say(event="resolved", name=name.removesuffix("." + service), t=time.monotonic())
            if len(resolved) >= count:
                done.set()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        if state_change is not ServiceStateChange.Removed:
            task = asyncio.ensure_future(resolve(name))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    browser = AsyncServiceBrowser(zc.zeroconf, service, handlers=[on_change])
    say(event="ready", t=time.monotonic())
    try:
        await asyncio.wait_for(done.wait(), within)
    except TimeoutError:
        pass
    await browser.async_cancel()
    await zc.async_close()
    return 0 if len(resolved) >= count else 1


async def advertise(address: str, service: str, name: str, port: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    zc = AsyncZeroconf(interfaces=[address])
    info = ServiceInfo(service, f"{name}.{service}", port=port,
                       properties={"node": name, "port": str(port), "pid": str(os.getpid())},
                       server=f"{name}.local.", parsed_addresses=[address])
    await (await zc.async_register_service(info))
    say(event="registered", t=time.monotonic())
    try:
        await asyncio.wait_for(stop.wait(), 600)  # bounded: nobody needs a floor for longer
    except TimeoutError:
        pass
    await asyncio.wait_for(zc.async_close(), 5)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["browse", "advertise"])
    parser.add_argument("--address", required=True, help="the namespace host's address")
    parser.add_argument("--service", default=SERVICE)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=20)
    parser.add_argument("--name", default="floor")
    parser.add_argument("--port", type=int, default=7946)
    args = parser.parse_args()
    if args.mode == "browse":
        return asyncio.run(browse(args.address, args.service, args.count, args.timeout))
    return asyncio.run(advertise(args.address, args.service, args.name, args.port))


if __name__ == "__main__":
    sys.exit(main())

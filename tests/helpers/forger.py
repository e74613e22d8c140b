"""A host without the cluster key that announces, over mDNS, an instance speaking for another
node: run it inside a test network namespace only.

    python tests/helpers/forger.py --node node-b --address 10.77.0.2 --address 10.77.0.66
        [--port 7946] [--pid 31337] [--iface eth0]

It registers `<node>.<service>` with TXT node/port/pid of its choosing and its own host name
(so its records sit beside the real agent's, as cooperating responders), prints
{"event": "registered"}, and on SIGTERM sends the goodbye and prints {"event": "goodbye-sent"}.
"""

from __future__ import annotations

import argparse
import json
import signal
import time

import trio
import trio_asyncio
from zeroconf import ServiceInfo

from k3net import clock, mdns
from k3net.settings import Settings


def _emit(event: str) -> None:
    print(json.dumps({"event": event, "t": time.monotonic()}), flush=True)


async def _main(args: argparse.Namespace) -> None:
    settings = Settings(node_name=args.node, listen_port=args.port, interfaces=tuple(args.iface))
    type_ = mdns.service_type(settings.service, settings.domain)
    info = ServiceInfo(
        type_, f"{args.node}.{type_}", port=args.port,
        properties={"node": args.node, "port": str(args.port), "pid": str(args.pid)},
        server="forger.local.", parsed_addresses=list(args.address),
    )
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio_asyncio.open_loop(), mdns.open_zeroconf(settings.interfaces) as zc:
            registered = await trio_asyncio.aio_as_trio(zc.async_register_service)(
                info, cooperating_responders=True)
            await trio_asyncio.aio_as_trio(registered)
            _emit("registered")
            async for _ in signals:
                break
            goodbye = await trio_asyncio.aio_as_trio(zc.async_unregister_service)(info)
            await trio_asyncio.aio_as_trio(goodbye)
            _emit("goodbye-sent")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--node", required=True)
    parser.add_argument("--address", action="append", required=True)
    parser.add_argument("--port", type=int, default=7946)
    parser.add_argument("--pid", type=int, default=31337)
    parser.add_argument("--iface", action="append", default=[])
    clock.run(_main, parser.parse_args())


if __name__ == "__main__":
    main()

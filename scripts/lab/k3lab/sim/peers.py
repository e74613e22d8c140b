"""Simulated k3net peers for the benchmark: one process announcing many peers from one
namespace host. Run inside a network namespace only.

    peers.py --address 10.77.0.2 --count 125 --first-port 20000 --prefix peer-1 \\
             --accept-log /tmp/accepts-1.json

Each simulated peer is a TCP listener on `address:port` (what k3net probes) that answers
`GET /info` as an agent does (`{"node": "<prefix>-<i>", "pid": ...}`, so the agent's identity
probes confirm it) and serves `GET /hold` as an agent does (200, `held`, then a beat every
`?beat=` seconds until the agent lets go; `--no-beat`: no beats, as agents before beats;
`--no-hold`: the /info answer instead, no hold), and an mDNS service `<prefix>-<i>._k3._tcp.local.` with TXT node/port/pid,
as a real agent announces itself. Every
peer of the process shares the address, with its own port. The process prints JSON lines:
{"event": "listening", "t"}, then {"event": "registered", "t", "count"} once every service is
registered; it runs until SIGTERM/SIGINT (at most --lifetime seconds), then writes the times of
every accepted connection (the agent's probes, time.monotonic()) to --accept-log and sends the
goodbyes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

from zeroconf import ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from k3net.core.identity import beat_from_query, beat_line

SERVICE = "_k3._tcp.local."
# Registrations under way at once (--concurrency; 0: all): each one probes its name three times,
# 250 ms apart, then announces it. Real agents start on machines of their own, each on its own
# clock: all at once is what a LAN of agents powered on together does (a few thousand small
# packets within ~2 s), and the agent's join time is then measured from a start that really is
# common. A bound here would stagger the peers' start (128 at once made 500 peers take 7 s).
REGISTER_CONCURRENCY = 0
CLOSE_TIMEOUT = 10.0
# A probe that sends no request within this is dropped (the agent's probe timeout is 700ms).
ANSWER_TIMEOUT = 2.0


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def run(args: argparse.Namespace) -> list[float]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    accepts: list[float] = []
    holding: set[asyncio.StreamWriter] = set()  # the agent's held connections (/hold)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected = time.monotonic()
        port = writer.get_extra_info("sockname")[1]
        name = f"{args.prefix}-{port - args.first_port}"
        body = json.dumps({"node": name, "pid": os.getpid()}).encode()
        try:
            # The request ends with an empty line; an agent's is ~150 bytes.
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER_TIMEOUT)
            if request.startswith((b"GET /hold ", b"GET /hold?")) and not args.no_hold:
                # As an agent's /hold: 200, a first piece of body, then only its beats.
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"5\r\nheld\n\r\n")
                await writer.drain()
                query = request.split(b" ", 2)[1].partition(b"?")[2]
                every = None if args.no_beat else beat_from_query(query)
                holding.add(writer)
                try:
                    # until the agent lets go (or this process stops)
                    await beat(reader, writer, name, every)
                finally:
                    holding.discard(writer)
                return
            accepts.append(connected)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()

    async def beat(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str,
                   every: int | None) -> None:
        """Until the holder goes: a beat every `every` seconds (none: None), as an agent's."""
        gone = asyncio.ensure_future(reader.read())
        seq = 0
        try:
            while not gone.done():
                await asyncio.wait([gone], timeout=every)
                if not gone.done():
                    seq += 1
                    line = beat_line(seq, name, None, None)
                    writer.write(b"%x\r\n%s\r\n" % (len(line), line))
        finally:
            gone.cancel()

    servers = []
    for i in range(args.count):
        servers.append(await asyncio.start_server(on_connect, args.address, args.first_port + i))
    say(event="listening", t=time.monotonic())

    zc = AsyncZeroconf(interfaces=[args.address])
    limit = asyncio.Semaphore(args.concurrency or args.count)

    async def register(i: int) -> None:
        name, port = f"{args.prefix}-{i}", args.first_port + i
        info = ServiceInfo(SERVICE, f"{name}.{SERVICE}", port=port,
                           properties={"node": name, "port": str(port), "pid": str(os.getpid())},
                           server=f"{args.prefix}.local.", parsed_addresses=[args.address])
        async with limit:
            await (await zc.async_register_service(info, cooperating_responders=args.no_probe))

    await asyncio.gather(*(register(i) for i in range(args.count)))
    say(event="registered", t=time.monotonic(), count=args.count)
    try:
        await asyncio.wait_for(stop.wait(), args.lifetime)
    except TimeoutError:
        pass
    for server in servers:
        server.close()
    for writer in list(holding):
        writer.close()  # each hold's reader sees the end, and its handler returns
    await asyncio.sleep(0.1)
    try:
        await asyncio.wait_for(zc.async_close(), CLOSE_TIMEOUT)
    except TimeoutError:
        pass
    return accepts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--first-port", type=int, default=20000)
    parser.add_argument("--prefix", required=True, help="peer names are <prefix>-<i>")
    parser.add_argument("--accept-log", help="write accepted-connection times here at exit")
    parser.add_argument("--concurrency", type=int, default=REGISTER_CONCURRENCY,
                        help="registrations under way at once (default %(default)s)")
    parser.add_argument("--no-probe", action="store_true",
                        help="announce without probing the names first (zeroconf's probe asks "
                             "for the whole service type, which every peer announced already "
                             "answers: with hundreds starting at once, a flood)")
    parser.add_argument("--no-hold", action="store_true",
                        help="serve no agent's hold (/hold gets the /info answer), so that the "
                             "agent follows the peers by probes only")
    parser.add_argument("--no-beat", action="store_true",
                        help="no beats on a held connection (as agents before beats): the "
                             "agent probes its held peers once per refresh")
    parser.add_argument("--lifetime", type=float, default=900, help="exit after this (s)")
    args = parser.parse_args()
    # A listener and a held connection per peer: past the usual soft limit of 1,024 files.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    accepts = asyncio.run(run(args))
    if args.accept_log:
        Path(args.accept_log).write_text(json.dumps(accepts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

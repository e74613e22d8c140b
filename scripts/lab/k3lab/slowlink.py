"""A TCP relay that delays every byte by a fixed time each way: a store far away, or one slow to
answer (an etcd whose disk syncs slowly), as its clients see it. Run in the store's namespace:

    python -m k3lab.slowlink --listen 10.77.0.5:23796 --to 10.77.0.5:23795 --delay 0.15

Each connection accepted on `--listen` is joined to a new one to `--to`; what either side sends
reaches the other `--delay` seconds later, in order, at full speed (a long path, not a thin
one). Prints {"event": "listening"} once it accepts; runs until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import sys
import time

CHUNK = 65536


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                delay: float) -> None:
    """Copy `reader` to `writer`, each chunk `delay` after it was read; then half-close."""
    queue: collections.deque[tuple[float, bytes]] = collections.deque()
    arrived = asyncio.Event()
    ended = False

    async def read() -> None:
        nonlocal ended
        try:
            while data := await reader.read(CHUNK):
                queue.append((time.monotonic() + delay, data))
                arrived.set()
        except OSError:
            pass
        finally:
            ended = True
            arrived.set()

    reading = asyncio.ensure_future(read())
    try:
        while True:
            while not queue and not ended:
                arrived.clear()
                await arrived.wait()
            if not queue:
                break
            due, data = queue.popleft()
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        pass
    finally:
        reading.cancel()


async def _relay(delay: float, to: tuple[str, int], client_r: asyncio.StreamReader,
                 client_w: asyncio.StreamWriter) -> None:
    try:
        server_r, server_w = await asyncio.open_connection(*to)
    except OSError:
        client_w.close()
        return
    try:
        await asyncio.gather(_pump(client_r, server_w, delay), _pump(server_r, client_w, delay))
    except asyncio.CancelledError:
        pass  # the relay stops
    finally:
        server_w.close()
        client_w.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    to = _address(args.to)
    server = await asyncio.start_server(lambda r, w: _relay(args.delay, to, r, w),
                                        *_address(args.listen))
    print(json.dumps({"event": "listening"}), flush=True)
    async with server:
        await stop.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to accept on")
    parser.add_argument("--to", required=True, help="HOST:PORT to relay to")
    parser.add_argument("--delay", type=float, required=True, help="seconds each way")
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

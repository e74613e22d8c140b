"""A stand-in for the k3 Go agent, as far as a k3net probe sees it: it answers `GET /info` with
`{"node": ..., "pid": ...}` (and 404 to anything else), nothing more. Used in-process by the
prober tests, and as a process inside a test network namespace:

    python tests/helpers/fakeagent.py --name node-g --listen 10.77.0.3:7946 [--advertise --iface eth0]
        [--key-file PATH] [--silent]

`--advertise` also announces it over mDNS as the Go agent does (TXT node/port/pid);
`--goodbye-first S` makes it stop as the Go agent does: the mDNS goodbye first, the listener closed
S seconds later (`--listener-first S`: the other way round). `--key-file`
makes it answer as a k3net agent with that cluster key would (`proof`); `--silent` accepts
connections and never answers. It prints {"event": "listening"} and, with --advertise,
{"event": "registered"}, then runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from collections.abc import AsyncIterator

import trio

from k3net.core import identity


class FakeAgent:
    """Answers /info as `name`; counts the connections it accepted."""

    def __init__(self, name: str, *, key: bytes | None = None, silent: bool = False,
                 status: int = 200, body: bytes | None = None) -> None:
        self.name = name
        self.key = key
        self.silent = silent
        self.status = status
        self.body = body  # a fixed answer body instead of the /info JSON
        self.accepted = 0
        self.paths: list[str] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        async with stream:
            if self.silent:
                await trio.sleep_forever()
            data = b""
            with trio.move_on_after(5):
                while b"\r\n\r\n" not in data and len(data) < 8192:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    data += chunk
            target = data.split(b" ", 2)[1].decode("latin-1") if data.count(b" ") >= 2 else ""
            self.paths.append(target)
            path, _, query = target.partition("?")
            if path != "/info":
                await _answer(stream, 404, b"404 page not found\n")
                return
            if self.body is not None:
                await _answer(stream, self.status, self.body)
                return
            info: dict[str, object] = {"node": self.name, "pid": os.getpid()}
            nonce = identity.nonce_from_query(query.encode())
            if self.key is not None and nonce is not None:
                info["proof"] = identity.proof(self.key, nonce, self.name)
            await _answer(stream, self.status, json.dumps(info).encode() + b"\n")


async def _answer(stream: trio.SocketStream, status: int, body: bytes) -> None:
    head = (f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    try:
        await stream.send_all(head + body)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def _emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


async def _main(args: argparse.Namespace) -> None:
    key = identity.read_key_file(args.key_file) if args.key_file else None
    agent = FakeAgent(args.name, key=key, silent=args.silent)
    host, _, port_text = args.listen.rpartition(":")
    port = int(port_text)
    # SIGTERM is ours from the start: one that comes right after "registered" is printed must
    # still stop the agent in the order asked, not kill it.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        await _serve(args, agent, host, port, signals)


async def _serve(args: argparse.Namespace, agent: FakeAgent, host: str, port: int,
                 signals: AsyncIterator[int]) -> None:
    import trio_asyncio

    from k3net import mdns
    from k3net.settings import Settings
    from k3net.tasks import advertise

    listening = trio.CancelScope()  # cancelled: the listener is closed (connects refused)

    async def serve() -> None:
        with listening:
            await trio.serve_listeners(agent.handle, listeners)

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(port, host=host or None)
        nursery.start_soon(serve)
        _emit("listening")
        if args.advertise:
            settings = Settings(node_name=args.name, listen_port=port, interfaces=tuple(args.iface))
            async with (trio_asyncio.open_loop(), mdns.open_zeroconf(settings.interfaces) as zc,
                        trio.open_nursery() as announcing):
                await announcing.start(advertise.run, zc, mdns.service_info(settings))
                _emit("registered")
                await _until_signal(signals)
                if args.listener_first is not None:
                    listening.cancel()
                    _emit("listener-closed")
                    await trio.sleep(args.listener_first)
                announcing.cancel_scope.cancel()  # advertise.run sends the goodbye on its way out
            _emit("goodbye-sent")
            if args.goodbye_first is not None:
                await trio.sleep(args.goodbye_first)
        else:
            await _until_signal(signals)
        if not listening.cancel_called:
            listening.cancel()
            _emit("listener-closed")
        nursery.cancel_scope.cancel()


async def _until_signal(signals: AsyncIterator[int]) -> None:
    async for _ in signals:
        return


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--advertise", action="store_true")
    parser.add_argument("--iface", action="append", default=[])
    parser.add_argument("--key-file")
    parser.add_argument("--silent", action="store_true")
    order = parser.add_mutually_exclusive_group()
    order.add_argument("--goodbye-first", type=float, metavar="S",
                       help="on SIGTERM: mDNS goodbye, then the listener closed S seconds later")
    order.add_argument("--listener-first", type=float, metavar="S",
                       help="on SIGTERM: listener closed, then the mDNS goodbye S seconds later")
    args = parser.parse_args()
    from k3net import clock

    clock.run(_main, args)


if __name__ == "__main__":
    main()

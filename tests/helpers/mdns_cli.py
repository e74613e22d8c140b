"""A process for the mDNS end-to-end tests; run it inside a test network namespace only.

    python tests/helpers/mdns_cli.py advertise --name node-a --port 7001 [--iface lo] [--move-to ADDR]
                                               [--also ADDR]...
    python tests/helpers/mdns_cli.py present --name node-a --port 7001 --readdress ADDR [--after S]
    python tests/helpers/mdns_cli.py browse --own-name self [--iface lo]
    python tests/helpers/mdns_cli.py peers [--iface lo]        (k3net.commands.peers.main, JSON output)
    python tests/helpers/mdns_cli.py ptr-flood --count 8 [--iface lo]

Prints one JSON object per line on stdout, each with `t` = time.monotonic() (the same clock in
every process of the machine, so the test can subtract them):

    {"event": "starting"}            advertise: about to register
    {"event": "registered"}          advertise: announced (advertise.run started)
    {"event": "moved"}               advertise --move-to: the new address announced
    {"event": "readdressed"}         present: this machine's addresses set to --readdress
    {"event": "browsing"}            browse: the browser runs
    {"event": "PeerSeen", "name": ..., "addresses": [...], "port": ..., "pid": ...}
    {"event": "PeerGone", "name": ...} / {"event": "PeerRejected", "instance": ..., "reason": ...}
    {"event": "stopped"}             after SIGTERM/SIGINT, once the goodbye was sent
    {"event": "NameTaken", ...}      advertise: another responder owns the name (exit 3)
    {"event": "flooded", "count": N} ptr-flood: one packet of N PTR records sent, for instances
                                     that nobody answers for (no SRV, TXT or address records)

`advertise` does not validate `--name`, so invalid names reach the LAN as a misbehaving agent
would send them.
"""

from __future__ import annotations

import argparse
import functools
import json
import signal
import sys
import time

import attrs
import trio
import trio_asyncio

from k3net import clock, mdns
from k3net.commands import peers
from k3net.metrics import Metrics
from k3net.settings import Settings
from k3net.tasks import advertise, browse


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


async def stop_on_signal(cancel_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            cancel_scope.cancel()
            return


async def _close_at_once(stream: trio.SocketStream) -> None:
    await stream.aclose()


async def advertise_main(args: argparse.Namespace) -> None:
    settings = Settings(node_name=args.name, listen_port=args.port, interfaces=tuple(args.iface))
    info = mdns.service_info(settings)
    if args.also:  # addresses announced besides our own, as a careless or hostile sender would
        info = mdns.service_info(settings, addresses=[*info.parsed_addresses(), *args.also])
    async with trio_asyncio.open_loop(), mdns.open_zeroconf(settings.interfaces) as zc:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_signal, nursery.cancel_scope)
            if args.listen:  # something for probes to connect to
                listeners = await trio.open_tcp_listeners(args.port, host="127.0.0.1")
                nursery.start_soon(trio.serve_listeners, _close_at_once, listeners)
            emit("starting")
            await nursery.start(advertise.run, zc, info)
            emit("registered", addresses=info.parsed_addresses())
            if args.move_to:
                # A careless sender: the new address announced first, the old one's goodbye
                # after it (k3net itself sends the goodbye first: tasks/presence.py).
                moved = mdns.service_info(settings, addresses=[args.move_to], generation=1)
                await mdns.update_service(zc, moved)
                mdns.withdraw_addresses(zc, info, info.parsed_addresses())
                emit("moved", addresses=moved.parsed_addresses())
    emit("stopped")


async def present_main(args: argparse.Namespace) -> None:
    """The agent's own presence (tasks/presence.py) on `lo`, whose addresses change to
    `--readdress` `--after` seconds after the start (during the registration by default)."""
    from k3net.core.addresses import MachineAddresses
    from k3net.current import Current
    from k3net.tasks.presence import open_presence

    settings = Settings(node_name=args.name, listen_port=args.port, interfaces=("lo",))
    chosen = mdns.interfaces_for(settings)
    first = tuple(mdns.advertised_addresses(chosen))
    here = Current(MachineAddresses(first, frozenset(first)))
    async with trio_asyncio.open_loop(), open_presence(settings, chosen, Metrics()) as lan:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_signal, nursery.cancel_scope)
            emit("starting", addresses=list(first))

            async def readdress() -> None:
                await trio.sleep(args.after)
                here.set(MachineAddresses((args.readdress,), frozenset({args.readdress})))
                emit("readdressed", addresses=[args.readdress])

            nursery.start_soon(readdress)
            await nursery.start(lan.advertise, here)
            emit("registered")
    emit("stopped")


async def browse_main(args: argparse.Namespace) -> None:
    send, recv = trio.open_memory_channel[browse.Message](0)
    stype = mdns.service_type("_k3._tcp", "local.")
    async with trio_asyncio.open_loop(), mdns.open_zeroconf(tuple(args.iface)) as zc:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_signal, nursery.cancel_scope)
            chosen = mdns.choose_interfaces(tuple(args.iface), mdns.list_interfaces())
            await nursery.start(functools.partial(browse.run, loopback=mdns.loopback_only(chosen),
                                                  networks=mdns.networks_of(chosen)),
                                zc, stype, args.own_name, send, Metrics())
            emit("browsing")
            async with recv:
                async for message in recv:
                    emit(type(message).__name__, **attrs.asdict(message))
    emit("stopped")


async def ptr_flood_main(args: argparse.Namespace) -> None:
    from zeroconf import DNSOutgoing, DNSPointer
    from zeroconf.const import _CLASS_IN, _FLAGS_AA, _FLAGS_QR_RESPONSE, _TYPE_PTR

    stype = mdns.service_type("_k3._tcp", "local.")
    async with trio_asyncio.open_loop(), mdns.open_zeroconf(tuple(args.iface)) as zc:
        out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
        for i in range(args.count):
            out.add_answer_at_time(
                DNSPointer(stype, _TYPE_PTR, _CLASS_IN, 4500, f"ghost-{i}.{stype}"), 0)
        await trio_asyncio.aio_as_trio(zc.zeroconf.async_wait_for_start)()
        zc.zeroconf.async_send(out)
        emit("flooded", count=args.count)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
    emit("stopped")


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    adv = sub.add_parser("advertise")
    adv.add_argument("--name", required=True)
    adv.add_argument("--port", type=int, required=True)
    adv.add_argument("--iface", action="append", default=[])
    adv.add_argument("--listen", action="store_true", help="accept TCP on 127.0.0.1:port")
    adv.add_argument("--also", metavar="ADDR", action="append", default=[],
                     help="announce ADDR too (not one of ours)")
    adv.add_argument("--move-to", metavar="ADDR",
                     help="once registered, announce ADDR, then withdraw the first addresses")
    pre = sub.add_parser("present")
    pre.add_argument("--name", required=True)
    pre.add_argument("--port", type=int, required=True)
    pre.add_argument("--readdress", metavar="ADDR", required=True)
    pre.add_argument("--after", type=float, default=0.2, metavar="S")
    brw = sub.add_parser("browse")
    brw.add_argument("--own-name", default="")
    brw.add_argument("--iface", action="append", default=[])
    pee = sub.add_parser("peers")
    pee.add_argument("--iface", action="append", default=[])
    pee.add_argument("--timeout", type=float, default=2.0)
    flo = sub.add_parser("ptr-flood")
    flo.add_argument("--count", type=int, default=8)
    flo.add_argument("--iface", action="append", default=[])
    args = parser.parse_args()
    if args.mode == "peers":
        sys.exit(peers.main("_k3._tcp", "local.", tuple(args.iface), args.timeout, 0.7, "json"))
    try:
        mains = {"advertise": advertise_main, "present": present_main, "browse": browse_main,
                 "ptr-flood": ptr_flood_main}
        clock.run(mains[args.mode], args)
    except* advertise.NameTakenError as group:
        exc: BaseException = group
        while isinstance(exc, BaseExceptionGroup):  # nurseries nest the error
            exc = exc.exceptions[0]
        emit("NameTaken", message=str(exc))
        sys.exit(3)


if __name__ == "__main__":
    main()

"""`k3net peers`: browse the LAN once, probe every agent found, print a table (or JSON).

    k3net peers [--timeout 3s] [--json]

    NAME     ADDRESSES              PORT  PID    PROBE
    node-a   10.77.0.1              7946  1234   ok 0.4ms
    node-b   10.77.0.2,fd00::2      7946  1240   failed: timed out after 0.7s

Entry point for the CLI: `main(service, domain, interfaces, timeout, probe_timeout, as_json)`.
The lookup itself, `discover`, must run under trio-asyncio (`trio_asyncio.open_loop()`).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Sequence

import attrs
import trio
import trio_asyncio

from k3net import clock, mdns
from k3net.core.messages import PeerGone, PeerSeen, ProbeResult
from k3net.metrics import Metrics
from k3net.tasks import browse
from k3net.tasks.probe import probe_with_timeout


@attrs.frozen
class PeerInfo:
    """One agent found on the LAN and how its probe went."""

    name: str
    addresses: tuple[str, ...]
    port: int
    pid: int | None
    probe: ProbeResult


async def discover(
    service: str,
    domain: str,
    interfaces: tuple[str, ...],
    browse_for: float,
    probe_timeout: float,
) -> list[PeerInfo]:
    """Browse for `browse_for` seconds, then probe every peer still there, concurrently. Sorted by
    name. Entries that fail validation are logged by browse and left out."""
    seen: dict[str, PeerSeen] = {}
    send, recv = trio.open_memory_channel[browse.Message](0)
    stype = mdns.service_type(service, domain)
    # recv is closed only after the browse task ended, so it never sends into a closed channel.
    async with recv, mdns.open_zeroconf(interfaces) as zc, trio.open_nursery() as nursery:
        # own_name "": this one-shot browser advertises nothing, so nothing is "us".
        loopback = mdns.loopback_only(mdns.choose_interfaces(interfaces, mdns.list_interfaces()))
        await nursery.start(functools.partial(browse.run, loopback=loopback),
                            zc, stype, "", send, Metrics())
        with trio.move_on_after(browse_for):
            async for message in recv:
                if isinstance(message, PeerSeen):
                    seen[message.name] = message
                elif isinstance(message, PeerGone):
                    seen.pop(message.name, None)
        nursery.cancel_scope.cancel()

    results: dict[str, ProbeResult] = {}

    async def probe(peer: PeerSeen) -> None:
        results[peer.name] = await probe_with_timeout(
            peer.name, peer.addresses, peer.port, probe_timeout
        )

    async with trio.open_nursery() as nursery:
        for peer in seen.values():
            nursery.start_soon(probe, peer)
    return [
        PeerInfo(p.name, p.addresses, p.port, p.pid, results[p.name])
        for p in sorted(seen.values(), key=lambda p: p.name)
    ]


def _probe_text(result: ProbeResult) -> str:
    if result.outcome in ("confirmed", "unverified"):
        return f"{result.outcome} {result.latency * 1000:.1f}ms"
    return f"failed: {result.error}" if result.error else "failed"


def _as_dict(peer: PeerInfo) -> dict[str, object]:
    return {
        "name": peer.name,
        "addresses": list(peer.addresses),
        "port": peer.port,
        "pid": peer.pid,
        "probe": {
            "ok": peer.probe.outcome in ("confirmed", "unverified"),
            "outcome": peer.probe.outcome,
            "latencySeconds": round(peer.probe.latency, 6),
            "address": peer.probe.address,
            "error": peer.probe.error,
        },
    }


def format_peers(peers: Sequence[PeerInfo], as_json: bool) -> str:
    """A kubectl-like table (NAME ADDRESSES PORT PID PROBE) or a JSON list; ends with '\\n'."""
    if as_json:
        return json.dumps([_as_dict(p) for p in peers], indent=2) + "\n"
    rows = [("NAME", "ADDRESSES", "PORT", "PID", "PROBE")]
    rows += [
        (p.name, ",".join(p.addresses), str(p.port),
         "<none>" if p.pid is None else str(p.pid), _probe_text(p.probe))
        for p in peers
    ]
    widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
    lines = ["   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    return "\n".join(lines) + "\n"


def main(
    service: str,
    domain: str,
    interfaces: tuple[str, ...],
    timeout: float,
    probe_timeout: float,
    as_json: bool,
) -> int:
    """Run `k3net peers` and print the result on stdout. Exit status: 0, or 1 if mDNS could
    not start (message on stderr). Finding no peer is not an error (empty table / `[]`)."""
    peers: list[PeerInfo] | None = None
    try:
        peers = clock.run(_discover, service, domain, interfaces, timeout, probe_timeout)
    except* (mdns.MdnsError, OSError) as group:  # the loop's nursery wraps errors in a group
        for exc in _leaves(group):
            print(f"k3net peers: {exc}", file=sys.stderr)
    if peers is None:
        return 1
    sys.stdout.write(format_peers(peers, as_json))
    return 0


async def _discover(
    service: str, domain: str, interfaces: tuple[str, ...], browse_for: float, probe_timeout: float
) -> list[PeerInfo]:
    async with trio_asyncio.open_loop():
        return await discover(service, domain, interfaces, browse_for, probe_timeout)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]

"""`k3net peers`: browse the LAN once, probe every agent found, print what was found.

    k3net peers [--timeout 3s] [-o table|wide|json|yaml]

    NAME     ADDRESSES           PORT   PID    PROBE
    node-a   10.77.0.1           7946   1234   confirmed 0.4ms
    node-b   10.77.0.2,fd00::2   7946   1240   failed: timed out after 0.7s

`-o wide` adds the address the probe reached. Entry point for the CLI:
`main(service, domain, interfaces, timeout, probe_timeout, output)`; mDNS that cannot start
is a CommandError, which the top level reports in one line. The lookup itself, `discover`, must
run under trio-asyncio (`trio_asyncio.open_loop()`).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence

import attrs
import trio
import trio_asyncio

from k3net import clock, mdns
from k3net.commands import CommandError, dump, table
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


def format_peers(peers: Sequence[PeerInfo], output: str = "table") -> str:
    """A kubectl-like table (`wide`: with the address probed), or a list as JSON/YAML;
    ends with '\\n'."""
    if output in ("json", "yaml"):
        return dump([_as_dict(p) for p in peers], output)
    wide = output == "wide"
    header = ["NAME", "ADDRESSES", "PORT", "PID", "PROBE"] + (["PROBED"] if wide else [])
    rows = []
    for p in peers:
        row = [p.name, ",".join(p.addresses), str(p.port),
               "<none>" if p.pid is None else str(p.pid), _probe_text(p.probe)]
        if wide:
            row.append(p.probe.address or "<none>")
        rows.append(row)
    return table(header, rows)


def main(
    service: str,
    domain: str,
    interfaces: tuple[str, ...],
    timeout: float,
    probe_timeout: float,
    output: str,
) -> int:
    """Run `k3net peers` and print the result on stdout. Finding no peer is not an error
    (an empty table, `[]`). mDNS that cannot start is a CommandError naming why."""
    try:
        peers = clock.run(_discover, service, domain, interfaces, timeout, probe_timeout)
    except* (mdns.MdnsError, OSError) as group:  # the loop's nursery wraps errors in a group
        raise CommandError(f"mDNS cannot start: {group.exceptions[0]}") from None
    sys.stdout.write(format_peers(peers, output))
    return 0


async def _discover(
    service: str, domain: str, interfaces: tuple[str, ...], browse_for: float, probe_timeout: float
) -> list[PeerInfo]:
    async with trio_asyncio.open_loop():
        return await discover(service, domain, interfaces, browse_for, probe_timeout)

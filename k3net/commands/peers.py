"""`k3net peers`: browse the LAN once, probe every agent found, print what was found.

    k3net peers [--timeout 3s] [-o table|wide|name|json|yaml] [--no-headers] [--sort-by COL]

    NAME     ADDRESSES           PORT   PID    PROBE
    node-a   10.77.0.1           7946   1234   confirmed 0.4ms
    node-b   10.77.0.2,fd00::2   7946   1240   failed: timed out after 0.7s

`-o wide` adds the address the probe reached.

    k3net peers --server [URL] [-o table|wide|name|json|yaml]

asks a running agent instead (default this machine's, found as `k3net nodes` finds it) for the
peers it follows, through its /peers, with how each was found: `mdns` (this segment), `join` (a
--join address), `scan` (a --scan range), `store` (its Node in the shared store, e.g. on another
subnet). That is the agent's view, beyond what one mDNS browse from here can see:

    NAME     ADDRESSES   PORT   STATE   FOUND-BY   CONFIRMED
    node-c   10.79.2.2   7946   alive   store      yes

`-o wide` adds the peer's pid, the connection held to its /hold (the address, or `no`) and the
outcome of the agent's last probe of it:

    NAME     ADDRESSES   PORT   STATE   FOUND-BY   CONFIRMED   PID    HELD        LAST-PROBE
    node-c   10.79.2.2   7946   alive   store      yes         4242   10.79.2.2   confirmed 0.4ms

`--sort-by` takes a column name or a field path of a peer's JSON (`-o json`), as `k3net nodes`.
Finding no peer prints nothing on stdout and "No peers found." on stderr.

Entry point for the CLI:
`main(service, domain, interfaces, timeout, probe_timeout, output)`; mDNS that cannot start
is a CommandError, which the top level reports in one line. The lookup itself, `discover`, must
run under trio-asyncio (`trio_asyncio.open_loop()`).
"""

from __future__ import annotations

import functools
import json
import sys
import urllib.error
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from k3net.commands import CommandError, dump, sort_by, table
from k3net.core import parse
from k3net.core.messages import PeerGone, PeerSeen, ProbeResult
from k3net.durations import format_duration


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
    # mDNS and the prober are imported here: `k3net peers --server` answers without them.
    from k3net import mdns
    from k3net.metrics import Metrics
    from k3net.tasks import browse
    from k3net.tasks.probe import probe_peer

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
        results[peer.name] = await probe_peer(
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


def format_peers(
    peers: Sequence[PeerInfo], output: str = "table", *, headers: bool = True
) -> str:
    """A kubectl-like table (`wide`: with the address probed), `peer/NAME` lines, or a list as
    JSON/YAML; ends with '\\n'. No peers in a table is no text (the caller says so)."""
    if output in ("json", "yaml"):
        return dump([_as_dict(p) for p in peers], output)
    if output == "name" or not peers:
        return "".join(f"peer/{p.name}\n" for p in peers)
    wide = output == "wide"
    header = ["NAME", "ADDRESSES", "PORT", "PID", "PROBE"] + (["PROBED"] if wide else [])
    rows = []
    for p in peers:
        row = [p.name, ",".join(p.addresses), str(p.port),
               "<none>" if p.pid is None else str(p.pid), _probe_text(p.probe)]
        if wide:
            row.append(p.probe.address or "<none>")
        rows.append(row)
    return table(header, rows, headers=headers)


# --sort-by's column names for both views (a column a view lacks sorts nothing out of place).
SORT_COLUMNS = {
    "name": lambda p: p.name,
    "addresses": lambda p: p.addresses[0] if p.addresses else None,
    "port": lambda p: p.port,
    "pid": lambda p: p.pid,
    "state": lambda p: getattr(p, "state", None),
    "found-by": lambda p: getattr(p, "found_by", None),
}


def sort_peers(peers: Sequence[PeerInfo] | Sequence[FollowedPeer], spec: str) -> list[Any]:
    """`peers` in the order of `--sort-by spec`: a column name, or a field path of the JSON."""
    return sort_by(
        peers, spec, SORT_COLUMNS,
        lambda p: _as_dict(p) if isinstance(p, PeerInfo) else _followed_dict(p),
    )


def check_sort(spec: str) -> str:
    """`spec` if --sort-by can sort peers by it; ValueError (naming the choices) if not."""
    sort_peers([], spec)
    return spec


# --- asking an agent: its /peers --------------------------------------------------------------


@attrs.frozen
class FollowedPeer:
    """One peer as an agent's table follows it (an item of its /peers)."""

    name: str
    addresses: tuple[str, ...]
    port: int
    state: str  # new, alive, suspect, refused, leaving, unauthenticated
    found_by: str  # mdns, join, scan, store
    confirmed: bool  # an agent proved to be this peer at least once
    # Given by agents since /peers carries them (None from an older agent):
    pid: int | None = None
    held: str | None = None  # the address of the connection the agent holds to its /hold
    last_probe: dict[str, Any] | None = None  # outcome, latencySeconds, address, error


def peers_from_answer(base: str, status: int, body: bytes) -> list[FollowedPeer]:
    """An agent's /peers answer as FollowedPeers; CommandError (one line) if it is not one."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    if status == 404:
        raise CommandError(f"the agent at {base} has no /peers (an older k3net?); "
                           "browse the LAN instead: k3net peers without --server")
    if status != 200:
        raise CommandError(f"the agent at {base} answered {status}: "
                           f"{body[:200].decode(errors='replace').strip()}")
    items = data.get("peers") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise CommandError(f"{base}/peers: not a list of peers (is this a k3net agent?)")
    out = []
    for item in items:
        try:
            port = parse.port(item["port"])
            if isinstance(port, parse.Foreign):
                raise ValueError(str(port))
            if not isinstance(item["addresses"], list):
                raise TypeError("addresses: not a list")
            shown = tuple("<foreign>" if isinstance(ip, parse.Foreign) else str(ip)
                          for ip in map(parse.address, item["addresses"]))
            pid, held, probe = item.get("pid"), item.get("held"), item.get("lastProbe")
            pid = parse.pid(pid) if pid is not None else None
            out.append(FollowedPeer(
                str(item["name"]), shown, port,
                str(item["state"]), str(item["foundBy"]), bool(item["confirmed"]),
                pid if isinstance(pid, int) else None, str(held) if held else None,
                {k: probe.get(k) for k in ("outcome", "latencySeconds", "address", "error")}
                if isinstance(probe, dict) and isinstance(probe.get("outcome"), str) else None,
            ))
        except (KeyError, TypeError, ValueError, AttributeError):
            print(f"k3net peers: skipped an item of {base}/peers: {str(item)[:200]}",
                  file=sys.stderr)
    return sorted(out, key=lambda p: p.name)


def _followed_dict(p: FollowedPeer) -> dict[str, Any]:
    return {"name": p.name, "addresses": list(p.addresses), "port": p.port, "pid": p.pid,
            "state": p.state, "foundBy": p.found_by, "confirmed": p.confirmed, "held": p.held,
            "lastProbe": p.last_probe}


def _last_probe_text(probe: dict[str, Any] | None) -> str:
    if probe is None:
        return "<none>"
    outcome, latency, error = probe.get("outcome"), probe.get("latencySeconds"), probe.get("error")
    if outcome in ("confirmed", "unverified") and isinstance(latency, (int, float)):
        return f"{outcome} {latency * 1000:.1f}ms"
    return f"{outcome}: {error}" if error else str(outcome)


def format_followed(
    peers: Sequence[FollowedPeer], output: str = "table", *, headers: bool = True
) -> str:
    """An agent's peers as a table (FOUND-BY: how each was found; `wide` adds PID, HELD and
    LAST-PROBE), `peer/NAME` lines, or a list as JSON/YAML. No peers in a table is no text."""
    if output in ("json", "yaml"):
        return dump([_followed_dict(p) for p in peers], output)
    if output == "name" or not peers:
        return "".join(f"peer/{p.name}\n" for p in peers)
    wide = output == "wide"
    header = ["NAME", "ADDRESSES", "PORT", "STATE", "FOUND-BY", "CONFIRMED"]
    if wide:
        header += ["PID", "HELD", "LAST-PROBE"]
    rows = []
    for p in peers:
        row = [p.name, ",".join(p.addresses) or "<none>", str(p.port), p.state, p.found_by,
               "yes" if p.confirmed else "no"]
        if wide:
            row += ["<none>" if p.pid is None else str(p.pid), p.held or "no",
                    _last_probe_text(p.last_probe)]
        rows.append(row)
    return table(header, rows, headers=headers)


async def ask_agent(server: str) -> list[FollowedPeer]:
    """GET /peers of the agent at `server`, within the deadline `k3net nodes` uses."""
    from k3net.commands.nodes import DEADLINE, AgentSource, http_get, no_answer

    base = AgentSource(server).base
    try:
        with trio.fail_after(DEADLINE):
            status, body = await trio.to_thread.run_sync(
                http_get, base + "/peers", abandon_on_cancel=True)
    except trio.TooSlowError:
        raise CommandError(f"the agent at {base} did not answer within {format_duration(DEADLINE)}") from None
    except (OSError, urllib.error.URLError) as exc:
        raise CommandError(f"no k3net agent answers at {base} ({no_answer(exc)}): start one with "
                           "`k3net run`, point --server at one, or browse the LAN without "
                           "--server") from None
    return peers_from_answer(base, status, body)


def _print(text: str, empty: bool, output: str) -> None:
    sys.stdout.write(text)
    if empty and output not in ("json", "yaml"):
        print("No peers found.", file=sys.stderr)


def main_agent(server: str, output: str, *, headers: bool = True, sort: str | None = None) -> int:
    """`k3net peers --server`: print the peers the agent follows."""
    peers = trio.run(ask_agent, server)
    if sort:
        peers = sort_peers(peers, sort)
    _print(format_followed(peers, output, headers=headers), not peers, output)
    return 0


def main(
    service: str,
    domain: str,
    interfaces: tuple[str, ...],
    timeout: float,
    probe_timeout: float,
    output: str,
    *,
    headers: bool = True,
    sort: str | None = None,
) -> int:
    """Run `k3net peers` and print the result on stdout. Finding no peer is not an error
    (nothing on stdout and a line on stderr; `[]` as JSON). mDNS that cannot start is a
    CommandError naming why."""
    from k3net import clock, mdns

    try:
        peers = clock.run(_discover, service, domain, interfaces, timeout, probe_timeout)
    except* (mdns.MdnsError, OSError) as group:  # the loop's nursery wraps errors in a group
        raise CommandError(f"mDNS cannot start: {group.exceptions[0]}") from None
    if sort:
        peers = sort_peers(peers, sort)
    _print(format_peers(peers, output, headers=headers), not peers, output)
    return 0


async def _discover(
    service: str, domain: str, interfaces: tuple[str, ...], browse_for: float, probe_timeout: float
) -> list[PeerInfo]:
    import trio_asyncio

    async with trio_asyncio.open_loop():
        return await discover(service, domain, interfaces, browse_for, probe_timeout)

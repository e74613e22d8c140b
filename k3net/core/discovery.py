"""Peers beyond this segment: join addresses (`--join HOST[:PORT]`), scan ranges (`--scan CIDR`),
and what an agent's `/info` answer tells about it. Pure: no sockets, no clock.

mDNS stops at the router. Two ways reach agents it does not:

- a join address names an agent (or a host name that resolves to one) to ask who it is; as Serf's
  and Consul's `-join`. Its port defaults to our own listen port, since agents of one cluster
  share it;
- a scan range is a block of addresses to try, every one of them, on our listen port. It sends
  traffic to every address in the range, so it is opt-in and bounded: at most `MAX_SCAN_SIZE`
  addresses (a /22 of IPv4) per entry.

Whatever answers is judged by its `/info` answer (`found_in_answer`): an agent names itself
(`node`), its port and its addresses, and, with a cluster key, proves the key for the name it
claims (`k3net.core.identity`). Only then is it a peer.

Joining is transitive, as in Serf: an agent found at a join address is also asked for the peers
it reaches (`/peers`, read by `listed_peers`), and those are handed to the table as well, so one
join address brings in that agent's whole segment. They are candidates only: each is probed
with the identity check before anything is written about it.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Collection, Iterator, Sequence

import attrs

from k3net.core import addresses as addrs
from k3net.core import parse
from k3net.core.identity import judge
from k3net.core.names import name_problem
from k3net.core.table import Alive

# The largest scan range per --scan entry: a /22 of IPv4, 1022 hosts. A scan costs one TCP
# connection attempt per address and interval; larger blocks belong to a store or join addresses.
MAX_SCAN_SIZE = 1024
_HOST_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*\.?")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen
class JoinAddress:
    """One --join entry: a host (an IP address or a DNS name) and a port (None: our own)."""

    host: str
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def parse_join(text: str) -> JoinAddress:
    """`10.0.0.5`, `10.0.0.5:7946`, `node-a.example:7946`, `fd00::5`, `[fd00::5]:7946`."""
    given = text.strip()
    usage = f"invalid join address {text!r} (use HOST or HOST:PORT, [IPv6]:PORT)"
    port_text: str | None = None
    if given.startswith("["):
        host, sep, rest = given[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(usage)
        port_text = rest[1:] if rest else None
        if not isinstance(addrs.parse(host), ipaddress.IPv6Address):
            raise ValueError(f"invalid IPv6 address in join address {text!r}")
    elif given.count(":") > 1:
        host = given  # a bare IPv6 address: no port
        if addrs.parse(host) is None:
            raise ValueError(usage)
    else:
        host, sep, port_text = given.partition(":")
        if not sep:
            port_text = None
    port: int | None = None
    if port_text is not None:
        parsed = parse.port(port_text)
        if isinstance(parsed, parse.Foreign):
            raise ValueError(f"invalid port in join address {text!r} (1 to 65535)")
        port = parsed
    ip = addrs.parse(host)
    if ip is not None:
        problem = addrs.problem(ip, loopback=True)
        if problem is not None or "%" in host:
            raise ValueError(f"join address {text!r} is {problem or 'scoped'}: no agent there")
        host = str(ip)
    elif not host or len(host) > 253 or _HOST_NAME.fullmatch(host) is None:
        raise ValueError(usage)
    return JoinAddress(host, port)


def parse_joins(text: str) -> tuple[JoinAddress, ...]:
    """Join addresses separated by commas or spaces (the environment and the config file)."""
    return tuple(dict.fromkeys(parse_join(part) for part in text.replace(",", " ").split()))


def parse_scan(text: str) -> Network:
    """A scan range, `10.79.2.0/24` (host bits are ignored: `10.79.2.7/24` is the same range; a
    bare address is a range of one). At most MAX_SCAN_SIZE addresses; never loopback, multicast,
    link-local or unspecified."""
    given = text.strip()
    try:
        network = ipaddress.ip_network(given, strict=False)
    except ValueError:
        raise ValueError(f"invalid scan range {text!r} (use a CIDR block like 10.0.2.0/24)") \
            from None
    if network.num_addresses > MAX_SCAN_SIZE:
        smallest = 32 - (MAX_SCAN_SIZE.bit_length() - 1)
        if network.version == 6:
            smallest += 96
        raise ValueError(
            f"scan range {given} has {network.num_addresses} addresses: at most "
            f"{MAX_SCAN_SIZE} (a /{smallest}) per --scan; give several smaller ranges"
        )
    problem = addrs.problem(network.network_address)
    if network.num_addresses > 1 and problem is None:
        problem = addrs.problem(network.broadcast_address)
    if problem is not None and problem != "broadcast":
        raise ValueError(f"scan range {given} is {problem}: no peer can be there")
    return network


def parse_scans(text: str) -> tuple[Network, ...]:
    """Scan ranges separated by commas or spaces (the environment and the config file)."""
    return tuple(dict.fromkeys(parse_scan(part) for part in text.replace(",", " ").split()))


def scan_addresses(networks: Sequence[Network], own: Collection[str]) -> Iterator[str]:
    """Every address a scan of `networks` tries, once, in order: the ranges' hosts (not the
    network and broadcast addresses of an IPv4 block larger than /31), never one of this
    machine's own addresses (`own`: a connection there would only reach us) and never one no
    peer can have."""
    seen: set[str] = set()
    for network in networks:
        for ip in network.hosts() if network.num_addresses > 2 else network:
            text = str(ip)
            if text in seen or text in own or addrs.problem(ip) is not None:
                continue
            seen.add(text)
            yield text


def scan_size(networks: Sequence[Network], own: Collection[str]) -> int:
    """How many addresses one scan tries."""
    return sum(1 for _ in scan_addresses(networks, own))


# --- who answered ----------------------------------------------------------------------------------


@attrs.frozen
class Found:
    """An agent that proved who it is at `address`: a peer to hand to the table."""

    name: str
    addresses: tuple[str, ...]  # where it says it is (canonical); the address asked if none
    port: int
    pid: int | None
    address: str  # the address that answered


@attrs.frozen
class NotFound:
    """Something answered at `address`, but no agent we may count (`reason` is a slug:
    not-agent, unauthenticated, invalid-name; `detail` is for the log)."""

    reason: str
    detail: str


def found_in_answer(
    status: int | None, body: bytes, *, address: str, port: int, nonce: bytes, key: bytes | None
) -> Found | NotFound:
    """Judge an /info answer from `address:port` to a probe that carried `nonce`: who it is,
    whether it proves our cluster key (if we have one), and where it says it can be reached.
    Its own `addrs` are taken (what it writes into its own Node), so that this agent and the
    peer never take turns rewriting that Node's addresses; only an agent that lists none gets
    the address that answered."""
    try:
        data = json.loads(body) if status == 200 else None
    except (ValueError, UnicodeDecodeError):
        data = None
    claimed = data.get("node") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(claimed, str) or not claimed:
        shown = f"HTTP status {status}" if status != 200 else "an answer that names no agent"
        return NotFound("not-agent", f"{address}:{port} gave {shown}")
    problem = name_problem(claimed)
    if problem is not None:
        return NotFound("invalid-name", f"{address}:{port} names itself {claimed[:64]!r}: {problem}")
    answer = judge(status, body, probed=claimed, nonce=nonce, key=key)
    if answer.outcome != "confirmed":
        return NotFound(answer.outcome, f"{address}:{port} ({claimed}): {answer.detail}")
    source = f"/info of {address}"
    their_port = parse.port(data.get("port"), field="info port", where=source) \
        if "port" in data else port
    listed = data.get("addrs")
    asked = addrs.parse(address)
    loopback = asked is not None and asked.is_loopback  # agents on one host, `--interface lo`
    where = addrs.canonical(_addresses(listed, "info addrs", source), loopback=loopback) \
        or (address,)
    pid = parse.pid(data.get("pid"), field="info pid", where=source) if "pid" in data else None
    return Found(
        claimed, where, their_port if isinstance(their_port, int) else port,
        pid if isinstance(pid, int) else None, address,
    )


def _addresses(listed: object, field: str, where: str) -> list[str]:
    """The addresses (`core.parse`) among a JSON list, its first 64 entries; the rest skipped."""
    if not isinstance(listed, list):
        if listed is not None:
            parse.note(where, parse.Foreign(field, repr(listed)[:parse.SHOWN], "not a list"))
        return []
    return [str(ip) for ip in (parse.address(a, field=field, where=where) for a in listed[:64])
            if not isinstance(ip, parse.Foreign)]


# At most this many peers are taken from one agent's /peers (a LAN's agents, with room).
MAX_LISTED = 4096


@attrs.frozen
class Listed:
    """A peer another agent reaches now, from its `/peers`: a candidate for our probes."""

    name: str
    addresses: tuple[str, ...]
    port: int


def listed_peers(status: int | None, body: bytes, *, loopback: bool = False) -> list[Listed]:
    """The peers a `/peers` answer lists as reached now (state `alive`, confirmed), each with a
    valid name, port and at least one usable address; anything else in it is skipped.
    `loopback`: the answer came from a loopback address (agents of one host), so loopback
    addresses are kept."""
    try:
        data = json.loads(body) if status == 200 else None
    except (ValueError, UnicodeDecodeError):
        return []
    entries = data.get("peers") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return []
    found: list[Listed] = []
    for entry in entries[:MAX_LISTED]:
        if not isinstance(entry, dict) or entry.get("state") != Alive.label \
                or entry.get("confirmed") is not True:
            continue
        name, listed = entry.get("name"), entry.get("addresses")
        if not isinstance(name, str) or name_problem(name) is not None:
            continue
        port = parse.port(entry.get("port"), field="peers port", where=f"/peers entry {name}")
        if isinstance(port, parse.Foreign):
            continue
        where = addrs.canonical(_addresses(listed, "peers addresses", f"/peers entry {name}"),
                                loopback=loopback)
        if where:
            found.append(Listed(name, tuple(where), port))
    return found

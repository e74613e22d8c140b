"""Which IP addresses k3net uses, and in what order. Pure: no sockets, no clock.

One rule and one order for every place an address list is stored (a Node's InternalIPs),
advertised (our mDNS A/AAAA records), compared (stored Node against a probe's view) or probed:

- usable: a unicast address another machine could reach. Never loopback (127/8, ::1),
  unspecified (0.0.0.0, ::), multicast (224/4, ff00::/8), link-local (169.254/16, fe80::/10),
  the IPv4 broadcast address, or anything that does not parse. This is Go's
  `net.IP.IsGlobalUnicast`, so private IPv4 (10/8, 192.168/16) and IPv6 ULA (fd00::/8) are kept,
  as the k3 Go agent keeps them. A zone (`%eth0`) is dropped: without it a link-local address
  is useless, and every other address does not need one.
- canonical order: IPv4 first, then IPv6, each sorted numerically (10.0.0.9 before 10.0.0.10),
  no duplicates, in the compressed text form (`2a00:1450::1`). Two agents that see the same
  set of addresses in any order therefore write the very same list, and never take turns
  rewriting a Node.

The one exception is loopback for an agent that itself runs on loopback alone (several agents
on one machine, `--interface lo`: a test or a demo): `loopback=True` keeps 127/8 and ::1, since
there they are the only way to reach another agent.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import attrs

from k3net.core import parse as parse_

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def parse(text: str) -> IPAddress | None:
    """An address as text (a zone suffix is ignored) -> the address, or None if it is none
    (read by `core.parse.address`)."""
    if not isinstance(text, str):
        return None
    ip = parse_.address(text.split("%", 1)[0])
    return None if isinstance(ip, parse_.Foreign) else ip


def problem(ip: IPAddress, *, loopback: bool = False) -> str | None:
    """Why `ip` is never used (a short phrase), or None if it is usable."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return None if loopback else "loopback"
    if ip.is_multicast:
        return "multicast"
    if ip.is_link_local:
        return "link-local"
    if ip == _BROADCAST:
        return "broadcast"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return "IPv4-mapped"
    return None


def usable(text: str, *, loopback: bool = False) -> bool:
    ip = parse(text)
    return ip is not None and problem(ip, loopback=loopback) is None


def _key(ip: IPAddress) -> tuple[int, int]:
    return ip.version, int(ip)


def canonical(addresses: Iterable[str], *, loopback: bool = False) -> tuple[str, ...]:
    """The usable addresses among `addresses`, deduplicated, in the canonical order (module
    docstring). Anything unusable or unparsable is left out, never an error."""
    ips: set[IPAddress] = set()
    for text in addresses:
        ip = parse(text)
        if ip is not None and problem(ip, loopback=loopback) is None:
            ips.add(ip)
    return tuple(str(ip) for ip in sorted(ips, key=_key))


def same(a: Iterable[str], b: Iterable[str]) -> bool:
    """True if two address lists name the same usable addresses, whatever their order."""
    return canonical(a, loopback=True) == canonical(b, loopback=True)


@attrs.frozen
class MachineAddresses:
    """This machine's addresses at one moment, as the address watcher reports them.

    - advertised: what our mDNS record announces and our own Node lists (canonical order);
    - own: every address of every interface, chosen or not (bridges too): what a probe must
      never take for a peer.
    """

    advertised: tuple[str, ...]
    own: frozenset[str]

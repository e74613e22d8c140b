"""mDNS helpers shared by the advertise and browse tasks and by `k3net peers`.

zeroconf's asyncio API runs inside trio through trio-asyncio: `open_zeroconf` must be entered
under `trio_asyncio.open_loop()`. Its sockets are pinned to chosen interfaces, never
`InterfaceChoice.All`:

- given interface names (`--interface`): exactly those (an unknown, down or address-less one is
  a MdnsError);
- by default: the machine's LAN interfaces, i.e. every interface that is up, multicast-capable,
  has an address, and is not one of these (`lan_problem`, read from /sys/class/net):
  - a bridge none of whose ports is a physical device: the container and VM bridges (docker0,
    virbr0, cni0, podman0, lxcbr0), whose addresses every host repeats and no other machine
    can reach. A bridge that holds a NIC (br0 over eth0, as on VM hosts) is a LAN interface;
  - a port of a bridge or bond (its master carries the traffic);
  - a tunnel: tun/tap (VPNs), wireguard, ipip/gre/sit, vxlan/geneve overlays (flannel.1).
  Physical NICs, Wi-Fi, bonds, VLANs, and a container's or namespace's own veth/macvlan `eth0`
  are LAN interfaces. If that leaves none, every up multicast-capable interface is used (and
  the log says so). `lo` has no MULTICAST flag unless someone turned it on (test namespaces
  do), so it is used only then, or when it is the only interface that is up.

Only what is served is advertised: the listener (--listen) decides (`listen_ip`).

- A wildcard listener (`:7946`, `0.0.0.0:7946`, `[::]:7946`) accepts connections on every
  address of its family (`:7946` on both): the addresses advertised are those of the chosen
  interfaces, of that family, in the canonical order of `k3net.core.addresses` (never loopback,
  link-local, ...).
- A listener on one address accepts connections there only: that address alone is advertised,
  and mDNS runs only on the interface that holds it. A loopback listener (`127.0.0.1:7946`,
  `[::1]:7946`) runs mDNS on `lo` alone, MULTICAST flag or not (the kernel loops multicast back
  on it), and advertises its loopback address: agents of one machine find each other, and no
  packet leaves the machine (a demo, a test). `--interface` must then name the interface that
  holds the address, if it is given at all; an address that no interface holds is an error.
- `--advertise-address` overrides both: exactly those addresses (a listener behind NAT).
This machine's *own* addresses, which probes never take for a peer, are those of every
interface, chosen or not (a bridge address a peer announces must never reach us instead).

What arrives from the LAN is untrusted: `peer_from_info` hands a resolved entry to the pure
`core.records.peer_from_record`, which turns it into a PeerSeen, or a PeerRejected with a reason
slug; it never raises. A peer seen over mDNS is on our link, so only its addresses inside the
networks of the interfaces mDNS runs on are kept (`on_link`), at most
`limits.ADDRESSES_PER_PEER` of them: an announcement cannot make this agent dial any routable
address it likes. (zeroconf does not say on which of them a record came: any counts.)
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import socket
import sys
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import ifaddr
import trio
from trio_asyncio import aio_as_trio
from zeroconf import ServiceInfo, Zeroconf
from zeroconf.asyncio import AsyncZeroconf

from k3net import limits
from k3net.core import addresses as addrs
from k3net.core.addresses import MachineAddresses
from k3net.core.messages import PeerRejected, PeerSeen
from k3net.core.records import peer_from_record
from k3net.settings import Settings

# Linux interface flags (include/uapi/linux/if.h), as in /sys/class/net/<name>/flags.
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_IFF_MULTICAST = 0x1000

# The kernel's receive buffer asked for on zeroconf's sockets. mDNS comes in bursts: hundreds of
# agents starting together send thousands of probes and announcements within a second or two,
# and the default buffer (net.core.rmem_default, 208 KiB: some 200 datagrams) overflowed at once
# on a LAN of 2,000 agents: 25,000 of 27,000 datagrams were dropped, the services they announced
# were seen only by the browser's later queries, 16 s after they started. 4 MiB holds a few
# thousand datagrams while the agent catches up; it is a bound, not an allocation (the kernel
# charges only what is queued). Set with SO_RCVBUFFORCE where the agent may (root,
# CAP_NET_ADMIN), else with SO_RCVBUF, which the kernel caps at net.core.rmem_max.
RECEIVE_BUFFER = 4 * 1024 * 1024
# Linux's SO_RCVBUFFORCE (asm-generic/socket.h); Python's socket module names it from 3.12 on.
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
# Linux's SO_RXQ_OVFL: each datagram read carries the socket's count of datagrams dropped so far.
_SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
_ANCILLARY_SPACE = socket.CMSG_SPACE(4)

# Datagrams read from one of zeroconf's sockets per wakeup (`drain_readers`). A wakeup comes once
# per round of trio's scheduler at best, and a round of an agent probing 2,000 peers can take
# tens of milliseconds: the batch must hold what arrives meanwhile (thousands a second when a
# LAN of agents starts). Bounded so that one wakeup never reads for long: zeroconf handles a
# datagram in tens of microseconds, 512 of them in some 20 ms.
DRAIN_BATCH = 512
# A response identical, byte for byte, to one from the same sender handled less than this long
# ago is not handled again (`Repeats`), and at most this many distinct ones are remembered.
REPEAT_WINDOW = 1.0
REPEATS_KEPT = 8192
# The largest datagram read: mDNS messages are at most 9000 bytes (RFC 6762 17); zeroconf drops
# anything larger itself, and a UDP datagram cannot exceed this.
_DATAGRAM_MAX = 65535

# zeroconf sends its goodbyes and closes its sockets in well under a second; this only bounds
# a close that hangs, so that a stopping agent never waits on mDNS for long.
_CLOSE_TIMEOUT = 3.0


class MdnsError(Exception):
    """mDNS cannot start as asked (unknown interface, no usable interface). One line."""


def service_type(service: str, domain: str) -> str:
    """The DNS-SD type as zeroconf wants it: `_k3._tcp` and `local.` -> `_k3._tcp.local.`"""
    return f"{service.strip('.')}.{domain.strip('.')}."


# --- interfaces ------------------------------------------------------------------------------


@attrs.frozen
class Interface:
    """A network interface that is up, with its addresses as text (IPv6 without scope)."""

    name: str
    index: int
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]
    loopback: bool
    multicast: bool
    # Why this is not a LAN interface by default (see lan_problem), or None if it is one.
    not_lan: str | None = None
    # The networks on its link, as text (`10.77.0.0/24`, `fd00:77::/64`): see `on_link`.
    networks: tuple[str, ...] = ()

    @property
    def addresses(self) -> tuple[str, ...]:
        return self.ipv4 + self.ipv6


@attrs.frozen
class LinkFacts:
    """What /sys/class/net says about an interface, as far as the LAN rule needs it."""

    physical: bool = True  # backed by a device (not under /sys/devices/virtual/net)
    link_type: int = 1  # ARPHRD_*: 1 Ethernet, 772 loopback, 65534 none (wireguard, tun), ...
    devtype: str = ""  # DEVTYPE of its uevent: bridge, bond, vlan, vxlan, wireguard, ...
    has_master: bool = False  # a port of a bridge or bond
    tun: bool = False  # a tun/tap device
    physical_below: bool = False  # some device under it (port, slave, parent) is physical


# Link types of IP tunnels (include/uapi/linux/if_arp.h): ipip, ip6tnl, sit, gre, ip6gre, none.
_TUNNEL_TYPES = {768, 769, 776, 778, 823, 65534}
_OVERLAY_DEVTYPES = {"vxlan", "geneve", "wireguard", "gretap", "ip6gretap", "ipip", "sit"}


def lan_problem(facts: LinkFacts) -> str | None:
    """Pure: why an interface is not one of the machine's LAN interfaces (a short phrase), or
    None if it is. The rule is the module docstring's."""
    if facts.link_type == 772:
        return None  # loopback: decided by its MULTICAST flag, see choose_interfaces
    if facts.has_master:
        return "a port of a bridge or bond"
    if facts.tun:
        return "a tunnel (tun/tap)"
    if facts.link_type in _TUNNEL_TYPES or facts.devtype in _OVERLAY_DEVTYPES:
        return f"a tunnel ({facts.devtype or f'link type {facts.link_type}'})"
    if facts.devtype == "bridge" and not facts.physical_below:
        return "a bridge without a physical port (container/VM bridge)"
    return None


_SYS_NET = Path("/sys/class/net")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return ""


def _physical(name: str, root: Path) -> bool:
    return (root / name / "device").exists()


def _physical_below(name: str, root: Path, depth: int = 0) -> bool:
    """True if a device under `name` (bridge ports, bond slaves, a VLAN's or macvlan's parent)
    is physical, looking down a few levels (a bridge over a bond over NICs)."""
    if depth > 4:
        return False
    try:
        lowers = [p.name[len("lower_"):] for p in (root / name).iterdir()
                  if p.name.startswith("lower_")]
    except OSError:
        return False
    return any(_physical(lower, root) or _physical_below(lower, root, depth + 1)
               for lower in lowers)


def link_facts(name: str, root: Path = _SYS_NET) -> LinkFacts | None:
    """The LinkFacts of an interface from sysfs; None where there is no /sys (not Linux)."""
    base = root / name
    if not base.exists():
        return None
    link_type = _read(base / "type").strip()
    devtype = ""
    for line in _read(base / "uevent").splitlines():
        if line.startswith("DEVTYPE="):
            devtype = line.partition("=")[2].strip()
    return LinkFacts(
        physical=_physical(name, root),
        link_type=int(link_type) if link_type.isascii() and link_type.isdigit() else 1,
        devtype=devtype,
        has_master=(base / "master").exists(),
        tun=(base / "tun_flags").exists(),
        physical_below=_physical_below(name, root),
    )


def _flags(name: str) -> int | None:
    try:
        return int((_SYS_NET / name / "flags").read_text(), 16)
    except (OSError, ValueError):
        return None  # not Linux, or the interface just went away


def list_interfaces() -> list[Interface]:
    """Every interface that is up, in the system's order."""
    result = []
    for adapter in ifaddr.get_adapters():
        flags = _flags(adapter.name)
        if flags is not None and not flags & _IFF_UP:
            continue
        if flags is None:  # no /sys: guess from the name
            loopback, multicast = adapter.name.startswith("lo"), not adapter.name.startswith("lo")
        else:
            loopback, multicast = bool(flags & _IFF_LOOPBACK), bool(flags & _IFF_MULTICAST)
        facts = link_facts(adapter.name)
        result.append(Interface(
            name=adapter.name,
            index=adapter.index or 0,
            ipv4=tuple(ip.ip for ip in adapter.ips if isinstance(ip.ip, str)),
            ipv6=tuple(ip.ip[0] for ip in adapter.ips if isinstance(ip.ip, tuple)),
            loopback=loopback,
            multicast=multicast,
            not_lan=None if facts is None else lan_problem(facts),
            networks=tuple(_network(ip.ip, ip.network_prefix) for ip in adapter.ips),
        ))
    return result


def _network(ip: str | tuple[str, int, int], prefix: int) -> str:
    address = ip if isinstance(ip, str) else ip[0]
    return str(ipaddress.ip_network(f"{address.split('%')[0]}/{prefix}", strict=False))


def networks_of(interfaces: Sequence[Interface]) -> tuple[str, ...]:
    """The networks on the links of `interfaces` (what `on_link` keeps), without duplicates."""
    return tuple(dict.fromkeys(n for iface in interfaces for n in iface.networks))


def on_link(addresses: Iterable[str], networks: Sequence[str]) -> tuple[str, ...]:
    """Pure: the `addresses` inside one of `networks` (module docstring), in their order. No
    networks known (an interface whose prefix could not be read): every address is kept."""
    if not networks:
        return tuple(addresses)
    nets = [ipaddress.ip_network(n) for n in networks]
    kept = []
    for text in addresses:
        ip = addrs.parse(text)
        if ip is not None and any(ip.version == net.version and ip in net for net in nets):
            kept.append(text)
    return tuple(kept)


def _why_missing(name: str) -> str:
    """Why an interface named on the command line is not among those listed (a phrase)."""
    flags = _flags(name)
    if flags is None:
        return "does not exist" if _SYS_NET.exists() else "does not exist or is down"
    if not flags & _IFF_UP:
        return "is down"
    return "has no IP address (a DHCP lease not yet given, or lost?)"


def listen_ip(host: str) -> str | None:
    """The one address a listener on `host` (--listen's host) accepts connections on, or None
    for a wildcard listener (`""`, `0.0.0.0`, `::`). A name is resolved as the listener
    resolves it (its first address), once: the listener's address does not change while it
    runs. MdnsError (one line) if a name does not resolve."""
    host = host.strip("[]")
    if host == "":
        return None
    ip = addrs.parse(host) or addrs.parse(_resolve(host))
    if ip is None:
        raise MdnsError(f"--listen {host}: resolves to no IP address")
    return None if ip.is_unspecified else str(ip)


@functools.cache
def _resolve(host: str) -> str:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise MdnsError(f"--listen {host}: {exc.strerror or exc}") from None
    return str(infos[0][4][0])


def _families(host: str) -> tuple[int, ...]:
    """The address families a wildcard listener accepts: k3net's listener on `::` is IPv6 only
    (k3net.web.listen), as `0.0.0.0` is IPv4 only; `""` (`:7946`) takes both."""
    ip = addrs.parse(host.strip("[]"))
    return (4, 6) if ip is None else (ip.version,)


def _holds(iface: Interface, ip: str) -> bool:
    """True if a listener on `ip` is reached through `iface`: its address, or any loopback
    address (127.0.0.0/8 is all local) for the loopback interface."""
    parsed = addrs.parse(ip)
    if parsed is None:
        return False
    return parsed in {addrs.parse(a) for a in iface.addresses} or (
        iface.loopback and parsed.is_loopback
    )


def choose_interfaces(
    names: Sequence[str], available: Sequence[Interface], listen_host: str = ""
) -> list[Interface]:
    """The interfaces to use: for a listener on one address, the interface that holds it;
    else `names` if given, else the default rule (module docstring)."""
    ip = listen_ip(listen_host)
    if ip is not None:
        return _holding(ip, names, available)
    by_name = {iface.name: iface for iface in available}
    if names:
        missing = [name for name in names if name not in by_name]
        if missing:
            raise MdnsError(f"interface {missing[0]!r} {_why_missing(missing[0])}")
        chosen = [by_name[name] for name in dict.fromkeys(names)]
    else:
        with_address = [iface for iface in available if iface.ipv4 or iface.ipv6]
        chosen = [iface for iface in with_address
                  if iface.multicast and (iface.loopback or iface.not_lan is None)]
        if not [iface for iface in chosen if not iface.loopback]:
            # No LAN interface by the rule: every multicast one rather than none (a host on a
            # VPN only); the loopback rule below still applies.
            chosen = [iface for iface in with_address if iface.multicast] or chosen
        if not chosen:
            chosen = [iface for iface in available if iface.loopback]
    chosen = [iface for iface in chosen if iface.ipv4 or iface.ipv6]
    if not chosen:
        which = ", ".join(names) if names else "multicast-capable interface"
        raise MdnsError(f"no usable {which} with an IP address for mDNS")
    return chosen


def _holding(ip: str, names: Sequence[str], available: Sequence[Interface]) -> list[Interface]:
    if names:
        missing = [name for name in names if name not in {iface.name for iface in available}]
        if missing:
            raise MdnsError(f"interface {missing[0]!r} {_why_missing(missing[0])}")
    holders = [iface for iface in available if _holds(iface, ip)]
    if not holders:
        raise MdnsError(f"--listen {ip}: no interface of this machine that is up has this address")
    if names:
        named = [iface for iface in holders if iface.name in names]
        if not named:
            where = ", ".join(iface.name for iface in holders)
            raise MdnsError(f"--listen {ip} is an address of {where}, not of --interface "
                            f"{', '.join(names)}: peers there could not connect to it")
        holders = named
    return holders


def interfaces_for(settings: Settings) -> list[Interface]:
    """The interfaces this agent runs mDNS on now (`choose_interfaces` for its settings)."""
    return choose_interfaces(settings.interfaces, list_interfaces(), settings.listen_host)


def loopback_only(interfaces: Sequence[Interface]) -> bool:
    """True if mDNS runs on loopback alone: agents of one machine (a test, a demo), which can
    reach each other only at 127.0.0.1, so loopback peer addresses are kept."""
    return bool(interfaces) and all(iface.loopback for iface in interfaces)


def advertised_addresses(
    interfaces: Sequence[Interface], pinned: Sequence[str] = (), listen_host: str = "",
    *, loopback: bool | None = None,
) -> list[str]:
    """The A/AAAA addresses to advertise, in the canonical order: exactly `pinned`
    (--advertise-address) if given; else those the listener on `listen_host` accepts
    connections on among the interfaces' (module docstring). `loopback` (default: the
    interfaces are loopback only) keeps loopback addresses."""
    if loopback is None:
        loopback = loopback_only(interfaces)
    if pinned:
        return list(addrs.canonical(pinned, loopback=loopback))
    ip = listen_ip(listen_host)
    if ip is not None:
        served = [ip] if any(_holds(iface, ip) for iface in interfaces) else []
        return list(addrs.canonical(served, loopback=loopback))
    families = _families(listen_host)
    return list(addrs.canonical(
        (a for iface in interfaces for a in iface.addresses
         if (ip_ := addrs.parse(a)) is not None and ip_.version in families),
        loopback=loopback,
    ))


def own_addresses(available: Sequence[Interface], pinned: Sequence[str] = ()) -> list[str]:
    """Every address of this machine, on any interface (chosen or not), and the pinned ones:
    what a probe must never take for a peer."""
    found = {a for iface in available for a in iface.addresses} | set(pinned)
    return sorted(found)


def machine_addresses(settings: Settings, *, loopback: bool = False) -> MachineAddresses:
    """This machine's addresses now: what to advertise (`advertised_addresses`: what the
    listener serves, or exactly --advertise-address) and every own address. `loopback`: the
    agent runs on loopback alone (`loopback_only` of its interfaces at start), so 127.0.0.1 may
    be advertised; otherwise a reading taken while the LAN interface is down advertises nothing
    (never 127.0.0.1), as does one taken while the listener's own address is gone.
    MdnsError if --interface names none that is up."""
    available = list_interfaces()
    pinned = settings.advertise_addresses
    if listen_ip(settings.listen_host) is None:
        chosen = choose_interfaces(settings.interfaces, available)
    else:
        chosen = list(available)  # advertised_addresses keeps the listener's own address only
    advertised = advertised_addresses(chosen, pinned, settings.listen_host, loopback=loopback)
    return MachineAddresses(
        advertised=tuple(advertised), own=frozenset(own_addresses(available, pinned))
    )


def zeroconf_interfaces(interfaces: Sequence[Interface]) -> list[str | int]:
    # zeroconf takes IPv4 addresses and, for IPv6, interface indexes. IPv6 on loopback does not
    # work in zeroconf (see its docs), so loopback is IPv4 only.
    result: list[str | int] = [a for iface in interfaces for a in iface.ipv4]
    result += [iface.index for iface in interfaces
               if iface.ipv6 and iface.index and not iface.loopback]
    return result


@asynccontextmanager
async def open_zeroconf(interfaces: Sequence[str] = ()) -> AsyncIterator[AsyncZeroconf]:
    """An AsyncZeroconf on the chosen interfaces (names; empty = default rule), closed when the
    block ends, also on cancellation: closing sends the goodbyes of services still registered.
    Enter it inside `trio_asyncio.open_loop()`."""
    chosen = choose_interfaces(interfaces, list_interfaces())
    # use_asyncio=True: attach to the trio-asyncio loop, fail at once without one.
    zc = AsyncZeroconf(zc=Zeroconf(interfaces=zeroconf_interfaces(chosen), use_asyncio=True))
    sockets = zeroconf_sockets(zc.zeroconf)  # read before the start: zeroconf then lets go
    for sock in sockets:
        grow_receive_buffer(sock, RECEIVE_BUFFER)
    try:
        await aio_as_trio(zc.zeroconf.async_wait_for_start)()
        drain_readers(zc.zeroconf, sockets, receive_drops(zc), repeated_responses(zc))
        yield zc
    finally:
        with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            await aio_as_trio(zc.async_close)()


_DROPS: weakref.WeakKeyDictionary[AsyncZeroconf, Drops] = weakref.WeakKeyDictionary()


def receive_drops(zc: AsyncZeroconf) -> Drops:
    """What the kernel dropped on the sockets of `zc` (counted for one that `open_zeroconf`
    opened; zero for any other)."""
    drops = _DROPS.get(zc)
    if drops is None:
        drops = _DROPS[zc] = Drops()
    return drops


_REPEATS: weakref.WeakKeyDictionary[AsyncZeroconf, Repeats] = weakref.WeakKeyDictionary()


def repeated_responses(zc: AsyncZeroconf) -> Repeats:
    """What skips the responses `zc` received again lately (used for one that `open_zeroconf`
    opened; for any other nothing is skipped)."""
    repeats = _REPEATS.get(zc)
    if repeats is None:
        repeats = _REPEATS[zc] = Repeats()
    return repeats


def zeroconf_sockets(zc: Zeroconf) -> list[socket.socket]:
    """The sockets zeroconf will read: the one joined to the multicast group and those it
    answers from (unicast replies come back to them). zeroconf has no public accessor for them,
    and forgets them once started (its transports wrap them): call it before."""
    engine = zc.engine
    found = [engine._listen_socket, *engine._respond_sockets]
    unique: dict[int, socket.socket] = {}
    for sock in found:
        if sock is not None:
            unique.setdefault(id(sock), sock)
    return list(unique.values())


def grow_receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for a receive buffer of `size` bytes (`RECEIVE_BUFFER` says why); never shrinks it.
    Returns the size the kernel granted (it doubles the request for its own bookkeeping)."""
    current = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if current >= size:
        return current
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
    except OSError:  # not permitted: the unprivileged way, capped by net.core.rmem_max
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def drain_readers(zc: Zeroconf, sockets: Sequence[socket.socket], drops: Drops | None = None,
                  repeats: Repeats | None = None) -> int:
    """Make each of zeroconf's sockets read up to `DRAIN_BATCH` datagrams per wakeup instead of
    one, and count what the kernel dropped into `drops`; returns the sockets changed. Call once
    zeroconf has started.

    asyncio's datagram transport reads one datagram each time its socket is readable. Under
    trio-asyncio every such read is a round of trio's scheduler and then of the asyncio loop
    (a task per reader that waits, runs the callback, then waits for the loop to catch up), so
    an agent busy with thousands of probes read some 800 datagrams a second, while a LAN of
    2,000 agents starting together sends far more: the kernel dropped the rest (see
    `RECEIVE_BUFFER`). Here the reader callback of each socket is replaced by one that reads
    until the socket is empty or the batch is full and hands each datagram to the same zeroconf
    protocol. The transport stays as it was (it sends, and closing it removes this reader).
    `sockets`: zeroconf's own, from `zeroconf_sockets` before it started; `repeats`: what
    skips repeated responses (`Repeats`)."""
    engine = zc.engine
    loop = engine.loop
    raw = {sock.fileno(): sock for sock in sockets}
    changed = 0
    for wrapped in engine.readers:
        sock = raw.get(wrapped.fileno)
        if sock is None:
            continue  # not one of the sockets zeroconf made at start: left as it reads
        with contextlib.suppress(OSError):  # the kernel then tells each read what it dropped
            sock.setsockopt(socket.SOL_SOCKET, _SO_RXQ_OVFL, 1)
        protocol = wrapped.transport.get_protocol()
        # asyncio's own (private) way to set the one reader of a file descriptor that a
        # transport owns; trio-asyncio's loop implements it too. It replaces the transport's.
        loop._add_reader(wrapped.fileno, drain_socket,  # type: ignore[union-attr]
                         sock, protocol, DRAIN_BATCH, drops, repeats)
        changed += 1
    return changed


@attrs.define
class Drops:
    """The datagrams the kernel dropped on zeroconf's sockets for want of buffer space, as the
    reads learn it (SO_RXQ_OVFL), and when the count last grew. Each announcement lost that way
    leaves a peer unseen until some later answer names it again; `browse` asks again once a
    flood is over (`browse.Requery`)."""

    total: int = 0
    last_at: float | None = None  # trio.current_time() of the last growth
    _per_socket: dict[int, int] = attrs.field(factory=dict)
    _grew: trio.Event = attrs.field(factory=trio.Event)

    def note(self, fd: int, dropped: int) -> None:
        """The kernel's count for socket `fd` (it only grows, from the socket's creation)."""
        before = self._per_socket.get(fd, 0)
        if dropped > before:
            self._per_socket[fd] = dropped
            self.total += dropped - before
            self.last_at = trio.current_time()
            self._grew.set()
            self._grew = trio.Event()

    async def wait_beyond(self, total: int) -> None:
        """Until more than `total` datagrams were dropped in all."""
        while self.total <= total:
            await self._grew.wait()


@attrs.define
class Repeats:
    """Responses handled in the last `window` seconds, by sender and payload, so that a repeat
    is skipped before zeroconf parses it (`repeat`); counted in `total` and by `count()`.

    When many agents start together, each one's name probe asks for the whole service type, and
    every agent already announced answers it: at 2,000 peers 85 % of the response datagrams an
    agent received were byte-for-byte repeats of one from the same sender, half of them within
    32 ms and 99.7 % within a second (measured in `nox -s bench`). Parsing them was most of the
    agent's work while the LAN joined. A repeat carries nothing new: the same records, whose
    TTLs (120 s and more) it would refresh by under a second. zeroconf itself skips a datagram
    equal to the one just before it, which interleaved senders defeat. Queries are always
    handled: they may need our answer."""

    window: float = REPEAT_WINDOW
    kept: int = REPEATS_KEPT
    count: Callable[[], None] | None = None  # called once per repeat skipped (the metric)
    total: int = 0
    _handled: dict[tuple[Any, int], float] = attrs.field(factory=dict)  # -> when

    def repeat(self, sender: Any, data: bytes, now: float) -> bool:
        """True if `data` from `sender` repeats a response handled less than `window` ago (it
        is then counted and must be skipped); otherwise it is remembered as handled `now`."""
        if len(data) < 3 or not data[2] & 0x80:  # a query (QR clear), or no DNS header at all
            return False
        key = (sender, hash(data))
        handled = self._handled.get(key)
        if handled is not None and now - handled < self.window:
            self.total += 1
            if self.count is not None:
                self.count()
            return True
        if handled is None and len(self._handled) >= self.kept:
            self._handled = {k: t for k, t in self._handled.items() if now - t < self.window}
            if len(self._handled) >= self.kept:
                self._handled.clear()  # all recent: repeats are then handled, as without this
        self._handled[key] = now
        return False


def drain_socket(sock: socket.socket, protocol: Any, batch: int, drops: Drops | None = None,
                 repeats: Repeats | None = None) -> int:
    """Read up to `batch` datagrams from the non-blocking `sock` into the asyncio datagram
    `protocol` (as the transport would, one by one); an error goes to `protocol.error_received`
    as the transport would send it. The kernel's drop count, where a read carries it, goes to
    `drops`; a response `repeats` has handled lately is skipped. Returns the datagrams read."""
    dropped = -1
    now = time.monotonic()
    try:
        for n in range(batch):
            try:
                data, ancillary, _flags, addr = sock.recvmsg(_DATAGRAM_MAX, _ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                return n
            except OSError as exc:
                protocol.error_received(exc)
                return n
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == _SO_RXQ_OVFL and len(value) >= 4:
                    dropped = int.from_bytes(value[:4], sys.byteorder)
            if repeats is None or not repeats.repeat(addr, data, now):
                protocol.datagram_received(data, addr)
        return batch
    finally:
        if drops is not None and dropped >= 0:
            drops.note(sock.fileno(), dropped)


# --- this agent's service ----------------------------------------------------------------


def service_info(
    settings: Settings,
    *,
    addresses: Sequence[str] | None = None,
    pid: int | None = None,
    generation: int = 0,
) -> ServiceInfo:
    """What this agent advertises: instance `<node>.<service>.<domain>`, the listen port, TXT
    node/port/pid, and the chosen interfaces' addresses (computed if `addresses` is None).

    TXT `addrs` counts the changes of our address list since the agent started (`generation`).
    Browsers (zeroconf's at least) report a new address record as Updated but never one that
    went away; a TXT that changes with every new list, removals too, makes each one an Updated
    that peers re-resolve. A counter, not a digest of the list: going back to an earlier list
    must change the TXT too, while peers may still hold the earlier TXT. The Go agent ignores
    TXT keys it does not know."""
    if addresses is None:
        addresses = advertised_addresses(
            interfaces_for(settings), settings.advertise_addresses, settings.listen_host
        )
    type_ = service_type(settings.service, settings.domain)
    name, port = settings.node_name, settings.listen_port
    return ServiceInfo(
        type_,
        f"{name}.{type_}",
        port=port,
        properties={"node": name, "port": str(port), "pid": str(pid or os.getpid()),
                    "addrs": str(generation)},
        server=f"{name}.{settings.domain.strip('.')}.",
        parsed_addresses=list(addresses),
    )


async def update_service(zc: AsyncZeroconf, info: ServiceInfo) -> None:
    """Announce new records (new addresses) for our registered service, under the same name:
    peers' browsers see an Updated entry, never a goodbye. Returns once the announcements
    are sent."""
    announced = await aio_as_trio(zc.async_update_service)(info)
    await aio_as_trio(announced)


# How long peers keep a record we withdrew: RFC 6762 10.1 has a receiver drop a record one
# second after its goodbye (TTL 0), or after a cache-flush announcement of its successor.
WITHDRAW_DELAY = 1.1


def withdraw_addresses(zc: AsyncZeroconf, info: ServiceInfo, addresses: Sequence[str]) -> None:
    """Send goodbyes (TTL 0) for A/AAAA records of `info`'s host name that we no longer have,
    and nothing else: the service itself stays. Peers drop them within a second; announce the
    new addresses after WITHDRAW_DELAY, so that a peer resolving the announcement no longer
    sees the old ones (zeroconf reports a new address record as Updated, never a removed one).
    Call on the trio thread inside trio-asyncio (zeroconf's loop runs there)."""
    from zeroconf import DNSAddress, DNSOutgoing
    from zeroconf.const import (
        _CLASS_IN,
        _CLASS_UNIQUE,
        _FLAGS_AA,
        _FLAGS_QR_RESPONSE,
        _TYPE_A,
        _TYPE_AAAA,
    )

    ips = [ip for ip in (addrs.parse(a) for a in addresses) if ip is not None]
    if not ips or info.server is None:
        return
    out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
    for ip in ips:
        record = DNSAddress(info.server, _TYPE_A if ip.version == 4 else _TYPE_AAAA,
                            _CLASS_IN | _CLASS_UNIQUE, 0, ip.packed)
        out.add_answer_at_time(record, 0)
    zc.zeroconf.async_send(out)


# --- entries from the LAN (untrusted) ------------------------------------------------------


def peer_from_info(info: ServiceInfo, *, loopback: bool = False) -> PeerSeen | PeerRejected:
    """A resolved mDNS entry as a message for the peer table; `loopback` keeps 127.0.0.1 and
    ::1 (only for an agent on loopback alone, see `loopback_only`)."""
    return peer_from_record(
        instance=info.get_name(),
        properties=info.properties,
        srv_port=info.port,
        addresses=info.parsed_scoped_addresses(),
        loopback=loopback,
    )


def bound_addresses(
    instance: str, seen: PeerSeen, networks: Sequence[str]
) -> PeerSeen | PeerRejected:
    """Pure: `seen` with only its addresses on our links (`on_link`), the first
    `limits.ADDRESSES_PER_PEER` of them; PeerRejected `no-address` if none is on our links."""
    near = on_link(seen.addresses, networks)
    if not near:
        return PeerRejected(instance, "no-address", "no address on this machine's links: "
                            + ", ".join(seen.addresses[:4]))
    return attrs.evolve(seen, addresses=near[: limits.ADDRESSES_PER_PEER])

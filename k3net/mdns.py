"""mDNS helpers shared by the advertise and browse tasks and by `k3net peers`.

zeroconf's asyncio API runs inside trio through trio-asyncio: `open_zeroconf` must be entered
under `trio_asyncio.open_loop()`. Its sockets are pinned to chosen interfaces, never
`InterfaceChoice.All`:

- given interface names: exactly those (an unknown, down or address-less one is a MdnsError);
- by default: every interface that is up and multicast-capable. `lo` has no MULTICAST flag
  unless someone turned it on (test namespaces do), so it is used only then, or when it is the
  only interface that is up.

What arrives from the LAN is untrusted: `peer_from_info` hands a resolved entry to the pure
`core.records.peer_from_record`, which turns it into a PeerSeen, or a PeerRejected with a reason
slug; it never raises.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import ifaddr
import trio
from trio_asyncio import aio_as_trio
from zeroconf import ServiceInfo, Zeroconf
from zeroconf.asyncio import AsyncZeroconf

from k3net.core.messages import PeerRejected, PeerSeen
from k3net.core.records import link_local_v6, peer_from_record
from k3net.settings import Settings

# Linux interface flags (include/uapi/linux/if.h), as in /sys/class/net/<name>/flags.
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_IFF_MULTICAST = 0x1000

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


def _flags(name: str) -> int | None:
    try:
        return int(Path(f"/sys/class/net/{name}/flags").read_text(), 16)
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
        result.append(Interface(
            name=adapter.name,
            index=adapter.index or 0,
            ipv4=tuple(ip.ip for ip in adapter.ips if isinstance(ip.ip, str)),
            ipv6=tuple(ip.ip[0] for ip in adapter.ips if isinstance(ip.ip, tuple)),
            loopback=loopback,
            multicast=multicast,
        ))
    return result


def choose_interfaces(names: Sequence[str], available: Sequence[Interface]) -> list[Interface]:
    """The interfaces to use: `names` if given, else the default rule (module docstring)."""
    by_name = {iface.name: iface for iface in available}
    if names:
        missing = [name for name in names if name not in by_name]
        if missing:
            raise MdnsError(f"interface {missing[0]!r} does not exist or is down")
        chosen = [by_name[name] for name in dict.fromkeys(names)]
    else:
        chosen = [iface for iface in available if iface.multicast]
        if not chosen:
            chosen = [iface for iface in available if iface.loopback]
    chosen = [iface for iface in chosen if iface.ipv4 or iface.ipv6]
    if not chosen:
        which = ", ".join(names) if names else "multicast-capable interface"
        raise MdnsError(f"no usable {which} with an IP address for mDNS")
    return chosen


def advertised_addresses(interfaces: Sequence[Interface]) -> list[str]:
    """The A/AAAA addresses to advertise: IPv4 first, then IPv6. Link-local IPv6 is left out:
    without its scope (which means nothing to another machine) nobody can connect to it."""
    ipv4 = [a for iface in interfaces for a in iface.ipv4]
    ipv6 = [a for iface in interfaces for a in iface.ipv6 if not link_local_v6(a)]
    return list(dict.fromkeys(ipv4 + ipv6))


def _zeroconf_interfaces(interfaces: Sequence[Interface]) -> list[str | int]:
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
    zc = AsyncZeroconf(zc=Zeroconf(interfaces=_zeroconf_interfaces(chosen), use_asyncio=True))
    try:
        yield zc
    finally:
        with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            await aio_as_trio(zc.async_close)()


# --- this agent's service ----------------------------------------------------------------


def service_info(
    settings: Settings,
    *,
    addresses: Sequence[str] | None = None,
    pid: int | None = None,
) -> ServiceInfo:
    """What this agent advertises: instance `<node>.<service>.<domain>`, the listen port, TXT
    node/port/pid, and the chosen interfaces' addresses (computed if `addresses` is None)."""
    if addresses is None:
        addresses = advertised_addresses(
            choose_interfaces(settings.interfaces, list_interfaces())
        )
    type_ = service_type(settings.service, settings.domain)
    name, port = settings.node_name, settings.listen_port
    return ServiceInfo(
        type_,
        f"{name}.{type_}",
        port=port,
        properties={"node": name, "port": str(port), "pid": str(pid or os.getpid())},
        server=f"{name}.{settings.domain.strip('.')}.",
        parsed_addresses=list(addresses),
    )


# --- entries from the LAN (untrusted) ------------------------------------------------------


def peer_from_info(info: ServiceInfo) -> PeerSeen | PeerRejected:
    """A resolved mDNS entry as a message for the peer table."""
    return peer_from_record(
        instance=info.get_name(),
        properties=info.properties,
        srv_port=info.port,
        addresses=info.parsed_scoped_addresses(),
    )

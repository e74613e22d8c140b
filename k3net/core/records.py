"""mDNS records from the LAN, which are untrusted, as messages for the peer table. Pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

from k3net.core.messages import PeerRejected, PeerSeen
from k3net.core.names import MAX_TXT_VALUE, name_problem


def link_local_v6(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return ip.version == 6 and ip.is_link_local


def _txt(properties: Mapping[bytes, bytes | None], key: bytes) -> bytes | None:
    # TXT keys are case-insensitive (RFC 6763 6.4); the first one wins.
    for k, v in properties.items():
        if k.lower() == key:
            return v
    return None


def _port(text: str | None) -> int | None:
    if text is None or not text.isascii() or not text.isdigit():
        return None
    port = int(text)
    return port if 0 < port < 65536 else None


def peer_from_record(
    instance: str,
    properties: Mapping[bytes, bytes | None],
    srv_port: int | None,
    addresses: Sequence[str],
) -> PeerSeen | PeerRejected:
    """Pure: the fields of a resolved entry -> PeerSeen, or PeerRejected with a reason:

    - bad-txt: a TXT value longer than MAX_TXT_VALUE, or `node`/`port`/`pid` not UTF-8;
    - invalid-name: the peer name (TXT `node`, else the instance label) is no DNS-1123 name;
    - bad-port: neither TXT `port` nor the SRV port is a port number (1..65535);
    - no-address: no A/AAAA record usable from another machine (link-local IPv6 is not).
    """
    for raw_key, raw_value in properties.items():
        if raw_value is not None and len(raw_value) > MAX_TXT_VALUE:
            return PeerRejected(instance, "bad-txt", f"TXT {raw_key[:32]!r} longer than "
                                f"{MAX_TXT_VALUE} bytes")
    texts: dict[str, str | None] = {}
    for key in ("node", "port", "pid"):
        raw = _txt(properties, key.encode())
        try:
            texts[key] = None if raw is None else raw.decode("utf-8")
        except UnicodeDecodeError:
            return PeerRejected(instance, "bad-txt", f"TXT {key} is not UTF-8")

    name = texts["node"] or instance
    problem = name_problem(name)
    if problem is not None:
        return PeerRejected(instance, "invalid-name", f"{name[:64]!r}: {problem}")

    port = _port(texts["port"]) or (srv_port if srv_port and 0 < srv_port < 65536 else None)
    if port is None:
        return PeerRejected(instance, "bad-port",
                            f"TXT port {texts['port']!r}, SRV port {srv_port!r}")

    pid_text = texts["pid"]
    pid = int(pid_text) if pid_text and pid_text.isascii() and pid_text.isdigit() else None

    usable = []
    for address in addresses:
        try:
            if not link_local_v6(address):
                usable.append(address)
        except ValueError:
            continue  # not an IP address at all
    ipv4 = [a for a in usable if ":" not in a]
    ipv6 = [a for a in usable if ":" in a]
    ordered = tuple(dict.fromkeys(ipv4 + ipv6))
    if not ordered:
        return PeerRejected(instance, "no-address", "no A/AAAA record usable from here")
    return PeerSeen(name=name, addresses=ordered, port=port, pid=pid or None)

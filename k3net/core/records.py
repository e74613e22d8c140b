"""mDNS records from the LAN, which are untrusted, as messages for the peer table. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from k3net.core import addresses as addresses_
from k3net.core import parse
from k3net.core.messages import PeerRejected, PeerSeen
from k3net.core.names import MAX_TXT_VALUE, name_problem


def _txt(properties: Mapping[bytes, bytes | None], key: bytes) -> bytes | None:
    # TXT keys are case-insensitive (RFC 6763 6.4); the first one wins.
    for k, v in properties.items():
        if k.lower() == key:
            return v
    return None


def peer_from_record(
    instance: str,  # the instance's label (`node-a`, not `node-a._k3._tcp.local.`)
    properties: Mapping[bytes, bytes | None],
    srv_port: int | None,
    addresses: Sequence[str],
    *,
    loopback: bool = False,
) -> PeerSeen | PeerRejected:
    """Pure: the fields of a resolved entry -> PeerSeen, or PeerRejected with a reason:

    - bad-txt: a TXT value longer than MAX_TXT_VALUE, or `node`/`port`/`pid` not UTF-8;
    - invalid-name: the peer name (TXT `node`, else the instance label) is no DNS-1123 name;
    - node-mismatch: TXT `node` names another node than the instance's own label;
    - bad-port: neither TXT `port` nor the SRV port is a port number (1..65535, ASCII digits:
      `core.parse`); a foreign TXT `port` or `pid` is noted there, and a foreign pid left out;
    - no-address: no A/AAAA record usable from another machine (`core.addresses`: never
      loopback, unless `loopback` (an agent on loopback alone), unspecified, multicast or
      link-local).

    The addresses are in the canonical order of `core.addresses`.
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
    if name.lower() != instance.lower():
        # Every agent (k3net and the Go agent) names its instance after its node: an instance
        # that speaks for another node is someone announcing what is not theirs.
        return PeerRejected(instance, "node-mismatch",
                            f"TXT node {name[:64]!r} is not the instance's name")

    where = f"mDNS {instance[:64]}"
    port: int | parse.Foreign | None = None
    if texts["port"] is not None:
        port = parse.port(texts["port"], field="txt port", where=where)
    if not isinstance(port, int) and srv_port is not None:
        port = parse.port(srv_port, field="srv port", where=where)
    if not isinstance(port, int):
        return PeerRejected(instance, "bad-port",
                            f"TXT port {texts['port']!r}, SRV port {srv_port!r}")

    pid = None if texts["pid"] is None else parse.pid(texts["pid"], field="txt pid", where=where)

    ordered = addresses_.canonical(addresses, loopback=loopback)
    if not ordered:
        return PeerRejected(instance, "no-address", "no A/AAAA record usable from here")
    return PeerSeen(name=name, addresses=ordered, port=port,
                    pid=pid if isinstance(pid, int) else None)

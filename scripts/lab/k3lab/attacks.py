"""What a hostile or careless host does to a k3net cluster, for `nox -s hostile`
(k3lab.hostile): forged mDNS announcements, a PTR-only packet, /hold and /events hogs, partial
websocket messages, and what an agent costs while it lasts (open files, RSS, /healthz latency).

Everything here runs inside a network namespace the run created: the blocking clients in a
`NetnsClient` thread of the attacker's namespace, the announcer as a process there:

    python -m k3lab.attacks announce --bind 10.77.0.3 --spec spec.json [--lifetime 120]

`spec.json` is a list of {"instance", "node", "port", "pid", "addresses"}: one mDNS service
`<instance>._k3._tcp.local.` per entry, TXT node/port/pid as an agent announces itself, at the
given addresses (any, whatever the sender's own). The process prints {"event": "registered"} once
every service is announced and runs until SIGTERM (then it sends the goodbyes) or --lifetime.

Each helper is bounded in count and time; the pure parts (packets, frames, the goals) are tested
in tests/test_hostile_tools.py.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ipaddress
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVICE = "_k3._tcp.local."
MDNS_GROUP, MDNS_PORT = "224.0.0.251", 5353
# A connect or a first answer from an agent under attack may take this long before the client
# gives up on it (counted as not got).
CONNECT_TIMEOUT = 3.0
# Sockets opened at once by a hog (connects in flight): a burst, not a SYN flood.
BURST = 64
REGISTER_CONCURRENCY = 16
CLOSE_TIMEOUT = 10.0


# --- pure: packets, frames, addresses ---------------------------------------------------------


def _dns_name(name: str) -> bytes:
    """A domain name in DNS wire form (no compression)."""
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode()
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad DNS label {label!r} in {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def ptr_only_packet(instances: Sequence[str], service: str = SERVICE, ttl: int = 4500) -> bytes:
    """One mDNS response (id 0, QR and AA set) whose answers are only PTR records
    `service -> <instance>.service`: no SRV, TXT or address, so a browser learns names it can
    only resolve by asking, and nobody answers."""
    if not 0 < len(instances) <= 64:
        raise ValueError("1 to 64 instances")
    header = struct.pack("!HHHHHH", 0, 0x8400, 0, len(instances), 0, 0)
    owner = _dns_name(service)
    answers = b""
    for instance in instances:
        target = _dns_name(f"{instance}.{service}")
        answers += owner + struct.pack("!HHIH", 12, 1, ttl, len(target)) + target
    return header + answers


def ws_handshake(host: str, path: str = "/events", key: bytes | None = None) -> bytes:
    """The HTTP/1.1 upgrade request of a websocket client (RFC 6455 4.1)."""
    nonce = base64.b64encode(key if key is not None else os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {nonce}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


def ws_frame_header(length: int, *, opcode: int, fin: bool) -> bytes:
    """A client frame's header (RFC 6455 5.2), masked with the all-zero key so that the payload
    goes as it is (a client must mask; the key may be any, zero included)."""
    if not 0 <= opcode <= 0xF or length < 0:
        raise ValueError("bad opcode or length")
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    return head + b"\0\0\0\0"


def partial_message_frames(total: int, fragment: int = 1 << 20) -> list[tuple[bytes, int]]:
    """The frames of a text message of `total` bytes sent in `fragment`-sized pieces WITHOUT
    its last frame: (header, payload length) each; every frame has FIN clear, the first is a
    text frame, the rest continuations. The server must buffer them all, or refuse."""
    frames = []
    sent = 0
    while sent < total:
        size = min(fragment, total - sent)
        frames.append((ws_frame_header(size, opcode=1 if sent == 0 else 0, fin=False), size))
        sent += size
    return frames


def flood_addresses(prefix: str, peers: int, per_peer: int) -> list[list[str]]:
    """`per_peer` distinct addresses for each of `peers` fake peers, taken in order from
    `prefix`, which must be private (RFC 1918 or the 198.18/15 benchmark range) and large
    enough: addresses nobody answers, that stay inside the test namespaces."""
    network = ipaddress.ip_network(prefix)
    if not (network.is_private and network.version == 4):
        raise ValueError(f"{prefix}: not a private IPv4 prefix")
    if peers * per_peer > network.num_addresses - 2:
        raise ValueError(f"{prefix} has no room for {peers} x {per_peer} addresses")
    hosts = network.hosts()
    return [[str(next(hosts)) for _ in range(per_peer)] for _ in range(peers)]


# --- pure: what the store shows -----------------------------------------------------------------


def node_addresses(node: dict[str, Any]) -> list[str]:
    return [str(a.get("address")) for a in (node.get("status") or {}).get("addresses") or []
            if isinstance(a, dict)]


def annotation(node: dict[str, Any], key: str) -> str | None:
    value = ((node.get("metadata") or {}).get("annotations") or {}).get(key)
    return None if value is None else str(value)


def foreign_facts(node: dict[str, Any], own: Iterable[str], forged_pid: str) -> list[str]:
    """What a Node says about its machine that the machine did not say: addresses outside
    `own`, and the forged pid. Hostnames (a NodeAddress of type Hostname) are not addresses."""
    own_set = set(own)
    facts = [f"address {a.get('address')}"
             for a in (node.get("status") or {}).get("addresses") or []
             if isinstance(a, dict) and a.get("type") != "Hostname"
             and a.get("address") not in own_set]
    if annotation(node, "k3.network/pid") == forged_pid:
        facts.append(f"pid {forged_pid}")
    return facts


# What changes on every refresh of a live Node, and so is no "change of the Node" by itself.
_REFRESHED = ("k3.network/lastSeen",)
_CONDITION_TIMES = ("lastHeartbeatTime",)


def material(node: dict[str, Any]) -> str:
    """The Node without what a heartbeat refreshes (lastSeen, the conditions' heartbeat time)
    and without the store's bookkeeping: two Nodes with the same `material` say the same."""
    meta = dict(node.get("metadata") or {})
    meta.pop("resourceVersion", None)
    meta["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items()
                           if k not in _REFRESHED}
    status = dict(node.get("status") or {})
    status["conditions"] = [{k: v for k, v in c.items() if k not in _CONDITION_TIMES}
                            for c in status.get("conditions") or [] if isinstance(c, dict)]
    return json.dumps({**node, "metadata": meta, "status": status}, sort_keys=True)


# --- the report's rows --------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """`value <op> limit`, op one of <=, >=, ==; `text` says it for the table."""

    op: str
    limit: float
    text: str

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        if self.op == "<=":
            return value <= self.limit
        if self.op == ">=":
            return value >= self.limit
        if self.op == "==":
            return value == self.limit
        raise ValueError(f"unknown goal operator {self.op!r}")


def at_most(limit: float, text: str = "") -> Goal:
    return Goal("<=", limit, text or f"<= {limit:g}")


def at_least(limit: float, text: str = "") -> Goal:
    return Goal(">=", limit, text or f">= {limit:g}")


@dataclass(frozen=True)
class Row:
    """One line of the table: measure, value (shown as `shown`), goal, met."""

    cluster: str
    attack: str
    measure: str
    value: float | None
    shown: str
    goal: Goal | None
    note: str = ""

    @property
    def met(self) -> bool | None:
        return None if self.goal is None else self.goal.met(self.value)

    def cells(self) -> list[str]:
        met = {None: "-", True: "met", False: "NOT met"}[self.met]
        return [self.cluster, self.attack, self.measure, self.shown,
                "-" if self.goal is None else self.goal.text, met]

    def as_json(self) -> dict[str, Any]:
        finite = self.value is not None and self.value != float("inf")
        return {"cluster": self.cluster, "attack": self.attack, "measure": self.measure,
                "value": self.value if finite else None, "shown": self.shown,
                "goal": None if self.goal is None else self.goal.text, "met": self.met,
                "note": self.note}


HEADERS = ["cluster", "attack", "measure", "value", "goal", "met"]


def markdown_table(rows: Sequence[Row]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(cell(c) for c in row.cells()) + " |" for row in rows]
    return "\n".join(lines)


# --- /proc: what an agent costs -----------------------------------------------------------------


def open_files(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Sampler:
    """A thread that samples `fn()` every `interval` seconds (at most `limit` samples) until
    stopped; `values` are the non-None samples."""

    def __init__(self, fn: Callable[[], float | None], interval: float,
                 limit: int = 10_000) -> None:
        self.fn, self.interval, self.limit = fn, interval, limit
        self.values: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.values) < self.limit:
            value = self.fn()
            if value is not None:
                self.values.append(value)
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(CONNECT_TIMEOUT * 3)


def healthz_latency(url: str, timeout: float = 5.0) -> float:
    """Seconds one GET /healthz took; `timeout` if it failed or took longer (a failure is as
    bad as the longest wait)."""
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            resp.read()
    except OSError:
        return timeout
    return time.monotonic() - t0


class LatencyPoller:
    """GET `url` every `interval` seconds from inside network namespace `namespace`, with up to
    `workers` requests in flight (a slow answer does not slow the polling down); `values` are
    the latencies (healthz_latency: a failure counts as `timeout`)."""

    def __init__(self, namespace: str, url: str, interval: float = 0.1, workers: int = 8,
                 timeout: float = 5.0, limit: int = 5000) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from k3lab.nsclient import _enter

        self.url, self.interval, self.timeout, self.limit = url, interval, timeout, limit
        self.workers = workers
        self.values: list[float] = []
        self._lock = threading.Lock()
        self._in_flight = 0
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(workers, initializer=_enter, initargs=(namespace,))
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _one(self) -> None:
        value = healthz_latency(self.url, self.timeout)
        with self._lock:
            self.values.append(value)
            self._in_flight -= 1

    def _run(self) -> None:
        sent = 0
        while not self._stop.is_set() and sent < self.limit:
            with self._lock:
                free = self._in_flight < self.workers
                if free:
                    self._in_flight += 1
            if free:
                self._pool.submit(self._one)
                sent += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> LatencyPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pool.shutdown(wait=True)  # each request ends within its timeout


# --- clients run in the attacker's namespace (a NetnsClient thread) ----------------------------


def send_multicast(packet: bytes, source: str, count: int = 1) -> None:
    """Send `packet` to the mDNS group from `source` (an address of this namespace)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(source))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        sock.bind((source, 0))
        for _ in range(max(1, min(count, 10))):
            sock.sendto(packet, (MDNS_GROUP, MDNS_PORT))


def _first_line(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while b"\r\n" not in data and len(data) < 4096:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0]


class Hog:
    """Up to `count` connections to `address:port`, each sending `request` and kept open when
    the first answer line starts with `expect`; `got` counts those. Opened in bursts of BURST
    connects; closed by `close()`. Run `open` in the namespace the client lives in."""

    def __init__(self, address: str, port: int, count: int, request: bytes, expect: bytes,
                 timeout: float = CONNECT_TIMEOUT) -> None:
        if not 0 < count <= 5000:
            raise ValueError("1 to 5000 connections")
        self.address, self.port, self.count = address, port, count
        self.request, self.expect, self.timeout = request, expect, timeout
        self.socks: list[socket.socket] = []
        self.answers: dict[str, int] = {}

    def open(self) -> int:
        for start in range(0, self.count, BURST):
            batch = []
            for _ in range(min(BURST, self.count - start)):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                try:
                    sock.connect((self.address, self.port))
                    sock.sendall(self.request)
                except OSError as exc:
                    self._count(type(exc).__name__)
                    sock.close()
                    continue
                batch.append(sock)
            deadline = time.monotonic() + self.timeout
            for sock in batch:
                try:
                    line = _first_line(sock, deadline)
                except OSError as exc:
                    line = type(exc).__name__.encode()
                self._count(line.decode(errors="replace")[:40] or "no answer")
                if line.startswith(self.expect):
                    self.socks.append(sock)
                else:
                    sock.close()
        return self.got

    def _count(self, what: str) -> None:
        self.answers[what] = self.answers.get(what, 0) + 1

    @property
    def got(self) -> int:
        return len(self.socks)

    def send_partial(self, total: int, deadline: float) -> int:
        """On every held (websocket) connection, the frames of a `total`-byte message without
        its last frame; returns the bytes sent in all (stops at `deadline`)."""
        chunk = b"x" * (1 << 20)
        sent = 0
        for sock in self.socks:
            for header, size in partial_message_frames(total, len(chunk)):
                left = deadline - time.monotonic()
                if left <= 0:
                    return sent
                sock.settimeout(left)
                try:
                    sock.sendall(header + chunk[:size])
                except OSError:
                    break
                sent += size
        return sent

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.socks.clear()


def hold_request(host: str) -> bytes:
    return f"GET /hold HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


# --- the announcer process ------------------------------------------------------------------------


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def announce(bind: str, spec: list[dict[str, Any]], lifetime: float) -> None:
    from zeroconf import ServiceInfo
    from zeroconf.asyncio import AsyncZeroconf

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    zc = AsyncZeroconf(interfaces=[bind])
    infos = [ServiceInfo(SERVICE, f"{s['instance']}.{SERVICE}", port=int(s["port"]),
                         properties={"node": s["node"], "port": str(s["port"]),
                                     "pid": str(s["pid"])},
                         server=f"{s['instance']}.local.", parsed_addresses=list(s["addresses"]))
             for s in spec]
    limit = asyncio.Semaphore(REGISTER_CONCURRENCY)

    async def register(info: ServiceInfo) -> None:
        async with limit:
            # cooperating_responders: no probing for the name first (a host that lies
            # does not ask), the announcements go out at once.
            await (await zc.async_register_service(info, cooperating_responders=True))

    await asyncio.gather(*(register(info) for info in infos))
    say(event="registered", t=time.monotonic(), count=len(infos))
    try:
        await asyncio.wait_for(stop.wait(), lifetime)
    except TimeoutError:
        pass
    try:
        await asyncio.wait_for(zc.async_unregister_all_services(), CLOSE_TIMEOUT)
        say(event="goodbye", t=time.monotonic())
        await asyncio.wait_for(zc.async_close(), CLOSE_TIMEOUT)
    except TimeoutError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    sub = parser.add_subparsers(dest="command", required=True)
    ann = sub.add_parser("announce", help="announce the services of a JSON spec over mDNS")
    ann.add_argument("--bind", required=True, help="the address zeroconf sends from")
    ann.add_argument("--spec", required=True, type=Path)
    ann.add_argument("--lifetime", type=float, default=300, help="exit after this (s)")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    if not isinstance(spec, list) or not 0 < len(spec) <= 100:
        parser.error("--spec: a list of 1 to 100 services")
    asyncio.run(announce(args.bind, spec, min(args.lifetime, 900)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What reaches what on a test network: TCP connects and multicast between namespace hosts.

These check the shape of a test LAN (a router that forwards unicast but not multicast, a
one-way reject, an address that only its own host answers on), not k3net. Every call is bounded
by the timeout it is given; nothing is sent outside the namespaces of the hosts passed in.

    tcp_outcome(a, "10.77.0.2", 7946)            # "connected", "refused", "timeout", ...
    with listening(b, "10.77.0.2", 7946): ...    # something for connects to reach
    multicast_reaches(a, [b, c])                 # {b.name: True, c.name: False}
"""

from __future__ import annotations

import contextlib
import errno
import secrets
import socket
import struct
import time
from collections.abc import Callable, Iterator, Sequence

from k3lab.netns import Host
from k3lab.nsclient import NetnsClient

# The mDNS group with mDNS's TTL, on a port of its own: the same path through the network as
# mDNS, without an agent running on the host ever seeing these datagrams.
MDNS_GROUP = "224.0.0.251"
TEST_PORT = 5354
MDNS_TTL = 255


def tcp_outcome(host: Host, address: str, port: int, timeout: float = 2.0) -> str:
    """Connect from `host` to `address:port`: "connected", "refused" (a reset: nothing listens
    or a firewall rejects), "timeout", "unreachable" (no route, or an ICMP error)."""

    def connect() -> str:
        try:
            with socket.create_connection((address, port), timeout=timeout):
                return "connected"
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
        except OSError as exc:
            if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return "unreachable"
            raise

    return _in(host, connect)


@contextlib.contextmanager
def listening(host: Host, address: str, port: int) -> Iterator[socket.socket]:
    """A TCP listener in `host`'s namespace on `address:port` while the block runs. The kernel
    completes connections into its backlog, so connects succeed without anyone accepting."""
    client = NetnsClient(host.name)
    try:
        sock = client.call(socket.create_server, (address, port))
        try:
            yield sock
        finally:
            sock.close()
    finally:
        client.close()


def multicast_reaches(sender: Host, receivers: Sequence[Host],
                      within: float = 1.0) -> dict[str, bool]:
    """Send datagrams from `sender` to the mDNS group (TTL 255, `sender`'s multicast route) and
    tell, per receiver namespace, whether one arrived within `within` seconds."""
    token = secrets.token_hex(8).encode()
    clients = {host.name: NetnsClient(host.name) for host in receivers}
    try:
        socks = {name: c.call(_joined_socket) for name, c in clients.items()}
        try:
            waits = {name: clients[name].submit(_wait_for_token, sock, token, within)
                     for name, sock in socks.items()}
            deadline = time.monotonic() + within
            send_client = NetnsClient(sender.name)
            try:
                # A few datagrams spread over the window: one lost packet proves nothing.
                while time.monotonic() < deadline and not all(w.done() for w in waits.values()):
                    send_client.call(_send, token)
                    time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            finally:
                send_client.close()
            return {name: wait.result(timeout=within + 5) for name, wait in waits.items()}
        finally:
            for sock in socks.values():
                sock.close()
    finally:
        for c in clients.values():
            c.close()


def _joined_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("", TEST_PORT))
    membership = struct.pack("4s4s", socket.inet_aton(MDNS_GROUP), socket.inet_aton("0.0.0.0"))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    return sock


def _wait_for_token(sock: socket.socket, token: bytes, within: float) -> bool:
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(1024)
        except TimeoutError:
            return False
        if data == token:
            return True
    return False


def _send(token: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, MDNS_TTL)
        sock.sendto(token, (MDNS_GROUP, TEST_PORT))


def _in(host: Host, fn: Callable[[], str]) -> str:
    client = NetnsClient(host.name)
    try:
        return client.call(fn)
    finally:
        client.close()

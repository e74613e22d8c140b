"""mDNS under a burst: zeroconf's sockets get a large receive buffer and are read many datagrams
per wakeup (`mdns.grow_receive_buffer`, `mdns.drain_socket`, `mdns.drain_readers`), what the
kernel still drops is counted (`mdns.Drops`) and makes the browser ask again once the flood is
over (`browse.Requery`); and, end to end inside a network namespace, a browser sees every one of
hundreds of agents announced at once.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from k3lab.netns import LoopbackHost
from k3net import mdns
from k3net.metrics import Metrics
from k3net.tasks.browse import Requery

HELPER = [sys.executable, str(Path(__file__).parent / "helpers" / "mdns_cli.py")]


class Protocol:
    """An asyncio datagram protocol that notes what it is handed."""

    def __init__(self) -> None:
        self.datagrams: list[tuple[bytes, Any]] = []
        self.errors: list[OSError] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams.append((data, addr))

    def error_received(self, exc: OSError) -> None:
        self.errors.append(exc)


@pytest.fixture
def udp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A non-blocking UDP socket on loopback and a sender aimed at it (no other traffic)."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    mdns.grow_receive_buffer(receiver, 1 << 20)  # room for the whole burst below
    sender.connect(receiver.getsockname())
    try:
        yield receiver, sender
    finally:
        receiver.close()
        sender.close()


def _wait_queued(sock: socket.socket, count: int) -> None:
    """Loopback delivers at once; this only bounds a slow machine."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            sock.recvfrom(1, socket.MSG_PEEK)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        return


def test_a_burst_is_read_in_batches_in_order(udp_pair: tuple[socket.socket, socket.socket]
                                             ) -> None:
    receiver, sender = udp_pair
    for i in range(700):
        sender.send(b"datagram %d" % i)
    _wait_queued(receiver, 700)
    protocol = Protocol()
    assert mdns.drain_socket(receiver, protocol, 512) == 512  # one wakeup: a batch at most
    assert mdns.drain_socket(receiver, protocol, 512) == 188  # the rest; then the socket is empty
    assert mdns.drain_socket(receiver, protocol, 512) == 0
    assert [data for data, _ in protocol.datagrams] == [b"datagram %d" % i for i in range(700)]
    assert {addr for _, addr in protocol.datagrams} == {sender.getsockname()}
    assert protocol.errors == []


# DNS headers (RFC 1035 4.1.1): id 0, flags, no records; what matters here is the QR bit.
RESPONSE = b"\x00\x00\x84\x00" + b"\x00" * 8
QUERY = b"\x00\x00\x00\x00" + b"\x00" * 8


def test_a_response_received_again_within_a_second_is_handled_once(
    udp_pair: tuple[socket.socket, socket.socket],
) -> None:
    """A LAN of agents starting together answers every name probe with the same responses:
    a response that repeats one from its sender handled less than a second ago is skipped
    before zeroconf parses it, and counted. A query is always handled: it may need our answer."""
    receiver, sender = udp_pair
    other = RESPONSE + b"other record"
    for data in (RESPONSE, RESPONSE, other, QUERY, RESPONSE, QUERY):
        sender.send(data)
    _wait_queued(receiver, 6)
    protocol = Protocol()
    counted: list[None] = []
    repeats = mdns.Repeats(count=lambda: counted.append(None))
    assert mdns.drain_socket(receiver, protocol, 512, None, repeats) == 6
    assert [data for data, _ in protocol.datagrams] == [RESPONSE, other, QUERY, QUERY]
    assert repeats.total == 2 and len(counted) == 2


def test_repeats_are_skipped_only_within_the_window_and_per_sender() -> None:
    repeats = mdns.Repeats(window=1.0)
    a, b = ("10.0.0.1", 5353), ("10.0.0.2", 5353)
    assert not repeats.repeat(a, RESPONSE, 10.0)
    assert repeats.repeat(a, RESPONSE, 10.9)  # within a second of the one handled
    assert not repeats.repeat(a, RESPONSE, 11.0)  # a second after it: handled again
    assert not repeats.repeat(b, RESPONSE, 11.1)  # the same bytes from another sender
    assert not repeats.repeat(a, RESPONSE[:2], 11.2)  # no DNS header: left to zeroconf
    assert repeats.total == 1


def test_what_repeats_remember_stays_bounded() -> None:
    """A flood of distinct responses is handled in full (nothing of it is a repeat), and what is
    remembered never exceeds `kept`."""
    repeats = mdns.Repeats(window=1.0, kept=100)
    for i in range(1000):
        assert not repeats.repeat(("10.0.0.1", 5353), RESPONSE + b"%d" % i, 5.0 + i / 1e6)
        assert len(repeats._handled) <= 100
    assert repeats.total == 0


def test_a_socket_error_goes_to_the_protocol_as_the_transport_would() -> None:
    class Failing:
        def recvmsg(self, size: int, ancillary: int) -> tuple[bytes, list[Any], int, Any]:
            raise ConnectionRefusedError(111, "Connection refused")

        def fileno(self) -> int:
            return 99

    protocol = Protocol()
    assert mdns.drain_socket(Failing(), protocol, 512) == 0  # type: ignore[arg-type]
    assert [type(e) for e in protocol.errors] == [ConnectionRefusedError]
    assert protocol.datagrams == []


def test_the_receive_buffer_grows_and_never_shrinks() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        before = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        granted = mdns.grow_receive_buffer(sock, mdns.RECEIVE_BUFFER)
        assert granted == sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        # root (as the tests run) may exceed net.core.rmem_max; the kernel doubles the request
        assert granted >= before
        if granted > before:
            assert granted >= min(mdns.RECEIVE_BUFFER, granted)
        assert mdns.grow_receive_buffer(sock, 4096) == granted  # asking for less changes nothing


# --- end to end: hundreds of agents announced at once -------------------------------------

BURST = 500


@pytest.fixture
def lo_host(netns_ok: None) -> Iterator[LoopbackHost]:
    with LoopbackHost() as host:
        yield host


@pytest.mark.netns
def test_every_agent_of_a_burst_is_seen(lo_host: LoopbackHost,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """500 services registered at once by one process (the benchmark's simulated peers) are
    each resolved by a browser that uses k3net's zeroconf set-up, in a few seconds: none is
    left for a later query to find."""
    import json
    import threading

    browser = lo_host.popen([*HELPER, "browse", "--own-name", "me"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen: dict[str, float] = {}
    browsing = threading.Event()

    def read() -> None:
        assert browser.stdout is not None
        for line in browser.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record["event"] == "browsing":
                browsing.set()
            elif record["event"] == "PeerSeen":
                seen.setdefault(record["name"], record["t"])

    threading.Thread(target=read, daemon=True).start()
    peers = None
    try:
        assert browsing.wait(10)
        started = time.monotonic()
        peers = lo_host.popen([sys.executable, "-m", "k3lab.sim.peers", "--address", "127.0.0.1",
                               "--count", str(BURST), "--first-port", "21000",
                               "--prefix", "burst", "--lifetime", "60"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = started + 20
        while len(seen) < BURST and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(seen) == sorted(f"burst-{i}" for i in range(BURST))
        with capsys.disabled():
            print(f"\n    [mdns] {BURST} agents announced at once: all seen "
                  f"{max(seen.values()) - started:.2f}s after their start")
    finally:
        for proc in (peers, browser):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


# --- what the kernel dropped, and asking again once a flood is over ------------------------


def test_reads_learn_what_the_kernel_dropped() -> None:
    """A socket whose buffer overflowed: the next reads carry the kernel's drop count."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a few datagrams
        receiver.setsockopt(socket.SOL_SOCKET, 40, 1)  # SO_RXQ_OVFL, as drain_readers sets it
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        sender.connect(receiver.getsockname())
        for _ in range(200):
            sender.send(b"x" * 500)
        _wait_queued(receiver, 1)
        drops = mdns.Drops()
        protocol = Protocol()

        async def read() -> int:
            return mdns.drain_socket(receiver, protocol, 512, drops)

        got = trio.run(read)
        assert 0 < got < 200
        # A datagram carries the count as it was when it was queued: those queued before the
        # overflow say nothing; the next one to arrive tells.
        sender.send(b"after the flood")
        _wait_queued(receiver, 1)
        assert trio.run(read) == 1
        assert drops.total == 200 - got  # every datagram is either read or counted
        assert drops.last_at is not None
    finally:
        receiver.close()
        sender.close()


class Asked:
    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self) -> None:
        self.times.append(trio.current_time())


async def test_one_query_once_a_flood_is_quiet(autojump_clock: trio.testing.MockClock) -> None:
    drops, asked, metrics = mdns.Drops(), Asked(), Metrics()
    requery = Requery(drops, asked, metrics, quiet=0.5, gap=1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(requery.run)
        await trio.sleep(5)
        assert asked.times == []  # nothing dropped: nothing asked
        start = trio.current_time()
        for n in range(1, 11):  # a flood: drops every 0.1 s for a second
            drops.note(7, n * 100)
            await trio.sleep(0.1)
        await trio.sleep(3)
        # one query, 0.5 s after the last drop (at start + 0.9)
        assert [round(t - start, 2) for t in asked.times] == [1.4]
        assert metrics.mdns_events.labels(kind="dropped")._value.get() == 1000
        drops.note(7, 1000)  # the same count again: nothing new
        drops.note(8, 5)  # another socket's first drops
        await trio.sleep(3)
        assert len(asked.times) == 2
        nursery.cancel_scope.cancel()


async def test_drops_that_go_on_ask_at_most_once_per_gap(
        autojump_clock: trio.testing.MockClock) -> None:
    drops, asked = mdns.Drops(), Asked()
    requery = Requery(drops, asked, Metrics(), quiet=0.5, gap=2.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(requery.run)
        for n in range(1, 31):  # one drop every 0.6 s: never quiet for longer than 0.5 s
            drops.note(3, n)
            await trio.sleep(0.6)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(asked.times, asked.times[1:], strict=False)]
    assert asked.times and all(g >= 2.0 for g in gaps)

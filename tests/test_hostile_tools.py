"""The pure parts of the hostile-host lab (k3lab.attacks): the packets and frames it sends, the
addresses it announces, how it reads the store, and how it judges a measure against its goal.
The attacks themselves run against real agents in `nox -s hostile`."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator

import pytest
import wsproto
import wsproto.events
from zeroconf import DNSIncoming, DNSPointer

from k3lab.attacks import (
    Hog,
    Row,
    at_most,
    flood_addresses,
    foreign_facts,
    hold_request,
    markdown_table,
    material,
    partial_message_frames,
    ptr_only_packet,
    ws_frame_header,
    ws_handshake,
)


def test_ptr_only_packet_is_a_response_of_pointers_and_nothing_else() -> None:
    names = [f"ghost-{i}" for i in range(8)]
    incoming = DNSIncoming(ptr_only_packet(names))
    assert incoming.valid and incoming.is_response()
    answers = [a for a in incoming.answers() if isinstance(a, DNSPointer)]
    assert len(answers) == len(incoming.answers()) == 8
    assert {a.name for a in answers} == {"_k3._tcp.local."}
    assert [a.alias for a in answers] == [f"{n}._k3._tcp.local." for n in names]
    assert all(a.ttl == 4500 for a in answers)


@pytest.mark.parametrize("names", [[], [f"g{i}" for i in range(65)], ["a.."], ["x" * 64]])
def test_ptr_only_packet_refuses_what_it_cannot_send(names: list[str]) -> None:
    with pytest.raises(ValueError):
        ptr_only_packet(names)


@pytest.mark.parametrize(("length", "size_bytes"), [(5, 0), (125, 0), (126, 2), (65535, 2),
                                                     (65536, 8), (15 << 20, 8)])
def test_frame_header_encodes_the_length_and_a_zero_mask(length: int, size_bytes: int) -> None:
    head = ws_frame_header(length, opcode=1, fin=False)
    assert head[0] == 0x01  # FIN clear, text
    assert head[1] & 0x80  # masked, as a client must
    assert len(head) == 2 + size_bytes + 4
    assert head[-4:] == b"\0\0\0\0"
    encoded = head[1] & 0x7F if size_bytes == 0 else int.from_bytes(head[2:2 + size_bytes])
    assert encoded == length
    assert ws_frame_header(3, opcode=0, fin=True)[0] == 0x80


def test_partial_message_never_finishes_for_a_real_websocket_server() -> None:
    """What the frames mean is judged by wsproto (hypercorn's websocket code): a handshake it
    accepts, then fragments of one text message, none of them its end."""
    server = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    server.receive_data(ws_handshake("10.77.0.1"))
    request = next(server.events())
    assert isinstance(request, wsproto.events.Request) and request.target == "/events"
    server.send(wsproto.events.AcceptConnection())
    frames = partial_message_frames(10_000, fragment=4096)
    assert [size for _, size in frames] == [4096, 4096, 1808]
    server.receive_data(b"".join(head + b"x" * size for head, size in frames))
    got = list(server.events())
    texts = [e for e in got if isinstance(e, wsproto.events.TextMessage)]
    assert len(texts) == len(got)
    assert sum(len(e.data) for e in texts) == 10_000
    assert not any(e.message_finished for e in texts)


def test_flood_addresses_are_distinct_and_inside_the_prefix() -> None:
    addresses = flood_addresses("10.77.64.0/18", 40, 200)
    flat = [a for peer in addresses for a in peer]
    assert len(addresses) == 40 and all(len(peer) == 200 for peer in addresses)
    assert len(set(flat)) == 8000
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("10.77.64.0/18") for a in flat)


@pytest.mark.parametrize(("prefix", "peers", "per_peer"),
                         [("8.8.8.0/24", 1, 1), ("10.0.0.0/28", 2, 8), ("fd00::/64", 1, 1)])
def test_flood_addresses_refuses_public_or_small_prefixes(prefix: str, peers: int,
                                                          per_peer: int) -> None:
    with pytest.raises(ValueError):
        flood_addresses(prefix, peers, per_peer)


def _node(addresses: list[str], pid: str = "100", seen: str = "2026-01-01T00:00:00Z",
          beat: str = "2026-01-01T00:00:00Z") -> dict[str, object]:
    return {"metadata": {"name": "node-1", "resourceVersion": "7",
                         "annotations": {"k3.network/pid": pid, "k3.network/lastSeen": seen}},
            "status": {"addresses": [{"type": "InternalIP", "address": a} for a in addresses]
                       + [{"type": "Hostname", "address": "node-1"}],
                       "conditions": [{"type": "Ready", "status": "True",
                                       "lastHeartbeatTime": beat}]}}


def test_foreign_facts_are_addresses_and_pids_the_machine_did_not_say() -> None:
    assert foreign_facts(_node(["10.77.0.2"]), ["10.77.0.2"], "31337") == []
    assert foreign_facts(_node(["10.77.0.2", "10.77.0.201"], pid="31337"), ["10.77.0.2"],
                         "31337") == ["address 10.77.0.201", "pid 31337"]
    assert foreign_facts({"status": None}, ["10.77.0.2"], "31337") == []


def test_material_ignores_heartbeats_but_not_facts() -> None:
    first = _node(["10.77.0.2"])
    refreshed = _node(["10.77.0.2"], seen="2026-01-01T00:01:00Z", beat="2026-01-01T00:01:00Z")
    assert material(first) == material(refreshed)
    assert material(first) != material(_node(["10.77.0.2"], pid="101"))
    assert material(first) != material(_node(["10.77.0.3"]))


def test_rows_judge_values_against_their_goals() -> None:
    goal = at_most(0, "0")
    assert Row("keyed", "prune", "deleted", 0, "0", goal).met is True
    missed = Row("keyed", "prune", "deleted", 2, "2 (a|b)", goal)
    assert missed.met is False and missed.cells()[-1] == "NOT met"
    unknown = Row("open", "floods", "discovered", None, "never", at_most(3.0))
    assert unknown.met is None and unknown.cells()[-1] == "-"
    never = Row("open", "floods", "discovered", float("inf"), "never", at_most(3.0))
    assert never.met is False and never.as_json()["value"] is None
    table = markdown_table([missed])
    assert "2 (a\\|b)" in table and table.count("\n") == 2


@pytest.fixture
def holder() -> Iterator[tuple[int, list[socket.socket]]]:
    """A loopback server that answers the first 3 connections with 200 and holds them, and
    the rest with 503."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.recv(1024)
            if len(held) < 3:
                conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
                held.append(conn)
            else:
                conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], held
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def test_hog_keeps_what_it_got_and_counts_the_refusals(
        holder: tuple[int, list[socket.socket]]) -> None:
    port, held = holder
    hog = Hog("127.0.0.1", port, 5, hold_request("127.0.0.1"), b"HTTP/1.1 200", timeout=2)
    try:
        assert hog.open() == 3
        assert hog.answers == {"HTTP/1.1 200 OK": 3, "HTTP/1.1 503 Service Unavailable": 2}
    finally:
        hog.close()
    assert hog.got == 0


@pytest.mark.parametrize("node", [
    {"status": {"conditions": {"type": "Ready"}}},
    {"status": {"conditions": ["Ready", None]}},
    {"status": "Ready", "metadata": {"annotations": None}},
    {"status": None, "metadata": "node-1"},
])
def test_the_store_watcher_reads_nodes_of_the_wrong_json_types(node: dict[str, object]) -> None:
    """The bad records the hostile run puts in etcd must not stop the lab's own watcher."""
    from k3lab.sim.store_watch import ready_of, view_of

    assert ready_of(node) == (None, None)
    view = view_of(node, "7")
    assert (view.status, view.pid, view.last_seen) == (None, None, None)


def test_the_store_watcher_still_reads_a_good_node() -> None:
    from k3lab.sim.store_watch import view_of

    view = view_of(_node(["10.77.0.2"]), "7")
    assert (view.status, view.pid) == ("True", "100")

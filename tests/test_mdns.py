"""mDNS: the pure entry -> PeerSeen/PeerRejected rules, and real processes advertising and
browsing inside network namespaces (scripts/lab/k3lab/netns.py; never on the machine's interfaces)."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from zeroconf import ServiceInfo

from k3lab.netns import Host, Lan, LoopbackHost
from k3net import limits, mdns
from k3net.commands.peers import PeerInfo, format_peers
from k3net.core import records
from k3net.core.messages import PeerRejected, PeerSeen, ProbeResult
from k3net.core.names import MAX_TXT_VALUE
from k3net.settings import Settings

TYPE = "_k3._tcp.local."

# --- pure: which interfaces are the machine's LAN ------------------------------------------

ETHER, NONE_TYPE, SIT = 1, 65534, 776


@pytest.mark.parametrize(
    ("facts", "problem"),
    [
        pytest.param(mdns.LinkFacts(physical=True), None, id="physical-nic"),
        pytest.param(mdns.LinkFacts(physical=False), None, id="namespace-or-container-veth"),
        pytest.param(mdns.LinkFacts(physical=False, devtype="bridge"), "bridge without",
                     id="virbr0-docker0-empty-bridge"),
        pytest.param(mdns.LinkFacts(physical=False, devtype="bridge", physical_below=False),
                     "bridge without", id="bridge-of-veths"),
        pytest.param(mdns.LinkFacts(physical=False, devtype="bridge", physical_below=True), None,
                     id="br0-holding-a-nic"),
        pytest.param(mdns.LinkFacts(physical=False, devtype="bond", physical_below=True), None,
                     id="bond"),
        pytest.param(mdns.LinkFacts(physical=False, devtype="vlan", physical_below=True), None,
                     id="vlan"),
        pytest.param(mdns.LinkFacts(physical=True, has_master=True), "port of a bridge",
                     id="nic-enslaved-to-br0"),
        pytest.param(mdns.LinkFacts(physical=False, has_master=True), "port of a bridge",
                     id="veth-in-docker0"),
        pytest.param(mdns.LinkFacts(physical=False, tun=True), "tun/tap", id="tun-vpn"),
        pytest.param(mdns.LinkFacts(physical=False, link_type=NONE_TYPE, devtype="wireguard"),
                     "wireguard", id="wireguard"),
        pytest.param(mdns.LinkFacts(physical=False, devtype="vxlan"), "vxlan", id="flannel-vxlan"),
        pytest.param(mdns.LinkFacts(physical=False, link_type=SIT), "link type 776", id="sit"),
        pytest.param(mdns.LinkFacts(physical=False, link_type=772), None, id="loopback"),
    ],
)
def test_lan_problem(facts: mdns.LinkFacts, problem: str | None) -> None:
    found = mdns.lan_problem(facts)
    assert (found is None) == (problem is None), found
    if problem is not None:
        assert found is not None and problem in found


def iface(name: str, *addrs: str, not_lan: str | None = None, loopback: bool = False,
          multicast: bool = True) -> mdns.Interface:
    return mdns.Interface(name, 1, tuple(a for a in addrs if ":" not in a),
                          tuple(a for a in addrs if ":" in a), loopback, multicast, not_lan)


def test_choose_interfaces_skips_bridges_and_tunnels() -> None:
    available = [iface("lo", "127.0.0.1", loopback=True, multicast=False),
                 iface("eth0", "10.0.0.5", "fe80::1", "fd00::5"),
                 iface("virbr0", "192.168.122.1", not_lan="a bridge without a physical port"),
                 iface("wg0", "10.9.0.1", not_lan="a tunnel (wireguard)")]
    chosen = mdns.choose_interfaces((), available)
    assert [i.name for i in chosen] == ["eth0"]
    assert mdns.advertised_addresses(chosen) == ["10.0.0.5", "fd00::5"]
    # --interface still overrides the rule; --advertise-address pins the addresses exactly.
    assert [i.name for i in mdns.choose_interfaces(("virbr0",), available)] == ["virbr0"]
    assert mdns.advertised_addresses(chosen, ("10.0.0.99",)) == ["10.0.0.99"]
    # This machine's own addresses include the bridge's: a probe never takes them for a peer.
    assert "192.168.122.1" in mdns.own_addresses(available)
    # Nothing but virtual interfaces (a host on a VPN only): use them rather than nothing.
    assert [i.name for i in mdns.choose_interfaces((), available[2:])] == ["virbr0", "wg0"]
    assert not mdns.loopback_only(chosen)
    lo = [iface("lo", "127.0.0.1", loopback=True)]
    assert mdns.loopback_only(mdns.choose_interfaces((), lo))
    assert mdns.advertised_addresses(lo) == ["127.0.0.1"]


def test_an_interface_given_but_unusable_says_why() -> None:
    """--interface names one that getifaddrs does not list: absent, down, or without an
    address (read from /sys: `lo` is up in every namespace, and here given no address)."""
    with pytest.raises(mdns.MdnsError, match="'nosuch0' does not exist"):
        mdns.choose_interfaces(("nosuch0",), [])
    with pytest.raises(mdns.MdnsError, match="'lo' has no IP address"):
        mdns.choose_interfaces(("lo",), [])


# --- pure: peer_from_record ----------------------------------------------------------------

OK_TXT = {b"node": b"node-a", b"port": b"7946", b"pid": b"42"}


@pytest.mark.parametrize(
    ("instance", "txt", "srv_port", "addresses", "expected"),
    [
        pytest.param("node-a", OK_TXT, 7946, ["10.0.0.1"],
                     PeerSeen("node-a", ("10.0.0.1",), 7946, 42), id="all-fields"),
        pytest.param("whatever", {b"node": b"node-b"}, 8000, ["10.0.0.2"],
                     PeerRejected("whatever", "node-mismatch"), id="txt-node-names-another"),
        pytest.param("node-b", {b"node": b"node-a"}, 8000, ["10.0.0.2"],
                     PeerRejected("node-b", "node-mismatch"), id="txt-node-speaks-for-a-peer"),
        pytest.param("node-c", {}, 8000, ["10.0.0.3"],
                     PeerSeen("node-c", ("10.0.0.3",), 8000, None), id="instance-name-if-no-txt"),
        pytest.param("node-c", {b"node": b""}, 8000, ["10.0.0.3"],
                     PeerSeen("node-c", ("10.0.0.3",), 8000, None), id="empty-txt-node"),
        pytest.param("node-d", {b"NODE": b"node-d", b"Port": b"9000"}, 1, ["10.0.0.4"],
                     PeerSeen("node-d", ("10.0.0.4",), 9000, None), id="txt-keys-any-case"),
        pytest.param("node-e", {b"port": b"99999"}, 8000, ["10.0.0.5"],
                     PeerSeen("node-e", ("10.0.0.5",), 8000, None), id="txt-port-out-of-range"),
        pytest.param("node-e", {b"port": b"x1"}, 8000, ["10.0.0.5"],
                     PeerSeen("node-e", ("10.0.0.5",), 8000, None), id="txt-port-not-a-number"),
        pytest.param("node-f", {b"pid": b"-3"}, 8000, ["10.0.0.6"],
                     PeerSeen("node-f", ("10.0.0.6",), 8000, None), id="pid-not-a-number"),
        pytest.param("node-g", {}, 8000,
                     ["fd00::7", "10.0.0.7", "fe80::1%2", "fe80::2", "10.0.0.7", "10.0.0.8"],
                     PeerSeen("node-g", ("10.0.0.7", "10.0.0.8", "fd00::7"), 8000, None),
                     id="ipv4-first-no-link-local-no-duplicates"),
        pytest.param("Node-A", {}, 8000, ["10.0.0.1"],
                     PeerRejected("Node-A", "invalid-name"), id="upper-case"),
        pytest.param("node-a", {b"node": b"bad_name"}, 8000, ["10.0.0.1"],
                     PeerRejected("node-a", "invalid-name"), id="underscore-in-txt-node"),
        pytest.param("a" * 254, {}, 8000, ["10.0.0.1"],
                     PeerRejected("a" * 254, "invalid-name"), id="name-too-long"),
        pytest.param("node-h", {b"node": b"\xff\xfe"}, 8000, ["10.0.0.1"],
                     PeerRejected("node-h", "bad-txt"), id="txt-not-utf8"),
        pytest.param("node-h", {b"junk": b"x" * (MAX_TXT_VALUE + 1)}, 8000, ["10.0.0.1"],
                     PeerRejected("node-h", "bad-txt"), id="txt-value-too-long"),
        pytest.param("node-i", {}, 0, ["10.0.0.1"],
                     PeerRejected("node-i", "bad-port"), id="no-port-at-all"),
        pytest.param("node-i", {b"port": b"0"}, None, ["10.0.0.1"],
                     PeerRejected("node-i", "bad-port"), id="txt-port-zero-no-srv"),
        pytest.param("node-j", {}, 8000, [],
                     PeerRejected("node-j", "no-address"), id="no-address"),
        pytest.param("node-j", {}, 8000, ["fe80::1%3", "not-an-ip"],
                     PeerRejected("node-j", "no-address"), id="only-link-local"),
    ],
)
def test_peer_from_record(
    instance: str, txt: dict[bytes, bytes], srv_port: int | None, addresses: list[str],
    expected: PeerSeen | PeerRejected,
) -> None:
    got = records.peer_from_record(instance, txt, srv_port, addresses)
    if isinstance(expected, PeerRejected):
        assert isinstance(got, PeerRejected), got
        assert (got.instance, got.reason) == (expected.instance, expected.reason)
        assert got.detail
    else:
        assert got == expected


def test_service_info_round_trips_through_peer_from_info() -> None:
    settings = Settings(node_name="node-a", listen_port=7946)
    info = mdns.service_info(settings, addresses=["10.1.0.5", "fd00::5"], pid=321)
    assert info.type == TYPE
    assert info.name == "node-a." + TYPE
    assert info.server == "node-a.local."
    # node/port/pid as the Go agent; `addrs` counts our address changes (Go ignores it)
    assert info.decoded_properties == {"node": "node-a", "port": "7946", "pid": "321",
                                       "addrs": "0"}
    assert mdns.peer_from_info(info) == PeerSeen("node-a", ("10.1.0.5", "fd00::5"), 7946, 321)
    later = mdns.service_info(settings, addresses=["10.1.0.5"], pid=321, generation=2)
    assert later.decoded_properties["addrs"] == "2"


def test_peer_from_info_reads_the_instance_label() -> None:
    info = ServiceInfo(TYPE, "Big_Box." + TYPE, port=1, parsed_addresses=["10.0.0.1"])
    got = mdns.peer_from_info(info)
    assert isinstance(got, PeerRejected)
    assert (got.instance, got.reason) == ("Big_Box", "invalid-name")


@pytest.mark.parametrize(
    ("addresses", "networks", "kept"),
    [
        (("10.77.0.3", "192.0.2.7", "fd00:77::3", "2001:db8::1"),
         ("10.77.0.0/24", "fd00:77::/64"), ("10.77.0.3", "fd00:77::3")),
        (("10.77.0.3",), ("fd00::/8",), ()),  # no IPv4 network: no IPv4 address
        (("127.0.0.5",), ("127.0.0.0/8",), ("127.0.0.5",)),  # agents on loopback alone
        (("10.77.0.3", "8.8.8.8"), (), ("10.77.0.3", "8.8.8.8")),  # networks unknown: all
    ],
)
def test_on_link(addresses: tuple[str, ...], networks: tuple[str, ...],
                 kept: tuple[str, ...]) -> None:
    assert mdns.on_link(addresses, networks) == kept


def test_an_mdns_peer_keeps_a_few_addresses_on_our_links_or_is_rejected() -> None:
    many = tuple(f"10.77.0.{n}" for n in range(1, 201)) + ("203.0.113.9",)
    seen = PeerSeen("node-f", many, 7946)
    bounded = mdns.bound_addresses("node-f._k3._tcp.local.", seen, ("10.77.0.0/24",))
    assert isinstance(bounded, PeerSeen)
    assert bounded.addresses == many[: limits.ADDRESSES_PER_PEER]
    far = mdns.bound_addresses("node-f._k3._tcp.local.", PeerSeen("node-f", ("203.0.113.9",), 1),
                               ("10.77.0.0/24",))
    assert isinstance(far, PeerRejected) and far.reason == "no-address"
    assert far.instance == "node-f._k3._tcp.local."


def test_interfaces_know_their_networks() -> None:
    lo = next(i for i in mdns.list_interfaces() if i.loopback)
    assert "127.0.0.0/8" in lo.networks
    assert mdns.networks_of([lo, lo]) == tuple(dict.fromkeys(lo.networks))


def test_service_type() -> None:
    assert mdns.service_type("_k3._tcp", "local.") == TYPE
    assert mdns.service_type("_k3._tcp.", "local") == TYPE


# --- pure: interface choice ------------------------------------------------------------------


def _iface(name: str, *, v4: tuple[str, ...] = (), v6: tuple[str, ...] = (),
           multicast: bool = True) -> mdns.Interface:
    return mdns.Interface(name, 1, v4, v6, loopback=name == "lo", multicast=multicast)


LO = _iface("lo", v4=("127.0.0.1",), v6=("::1",), multicast=False)
LO_MC = _iface("lo", v4=("127.0.0.1",), multicast=True)
ETH0 = _iface("eth0", v4=("10.0.0.1",), v6=("fe80::1", "fd00::1"))
WLAN = _iface("wlan0", v4=("192.168.1.2",))
NOADDR = _iface("eth1")
NOMC = _iface("tun0", v4=("10.8.0.1",), multicast=False)


@pytest.mark.parametrize(
    ("names", "available", "expected"),
    [
        pytest.param((), [LO, ETH0, WLAN, NOMC], ["eth0", "wlan0"], id="default-multicast-only"),
        pytest.param((), [LO, NOADDR, ETH0], ["eth0"], id="default-needs-an-address"),
        pytest.param((), [LO], ["lo"], id="lo-if-alone"),
        pytest.param((), [LO, NOMC], ["lo"], id="lo-if-no-multicast-interface"),
        pytest.param((), [LO_MC, ETH0], ["lo", "eth0"], id="lo-with-multicast-on"),
        pytest.param(("wlan0",), [LO, ETH0, WLAN], ["wlan0"], id="named"),
        pytest.param(("tun0", "tun0"), [LO, NOMC], ["tun0"], id="named-without-multicast-flag"),
    ],
)
def test_choose_interfaces(
    names: tuple[str, ...], available: list[mdns.Interface], expected: list[str]
) -> None:
    assert [i.name for i in mdns.choose_interfaces(names, available)] == expected


@pytest.mark.parametrize(
    ("names", "available"),
    [(("eth9",), [LO, ETH0]), (("eth1",), [NOADDR]), ((), [])],
)
def test_choose_interfaces_errors(names: tuple[str, ...], available: list[mdns.Interface]) -> None:
    with pytest.raises(mdns.MdnsError):
        mdns.choose_interfaces(names, available)


def test_advertised_addresses_leave_out_link_local() -> None:
    assert mdns.advertised_addresses([ETH0, WLAN]) == ["10.0.0.1", "192.168.1.2", "fd00::1"]


# --- pure: only what the listener serves is advertised ---------------------------------------

ETH0_TWO = _iface("eth0", v4=("10.0.0.1", "10.0.0.9"), v6=("fd00::1",))


@pytest.mark.parametrize(
    ("listen", "names", "interfaces", "advertised"),
    [
        pytest.param("", (), ["eth0", "wlan0"], ["10.0.0.1", "10.0.0.9", "192.168.1.2", "fd00::1"],
                     id="wildcard-every-lan-address"),
        pytest.param("0.0.0.0", (), ["eth0", "wlan0"], ["10.0.0.1", "10.0.0.9", "192.168.1.2"],
                     id="ipv4-wildcard-ipv4-only"),
        pytest.param("::", (), ["eth0", "wlan0"], ["fd00::1"], id="ipv6-wildcard-ipv6-only"),
        pytest.param("10.0.0.9", (), ["eth0"], ["10.0.0.9"], id="one-address-alone"),
        pytest.param("fd00::1", (), ["eth0"], ["fd00::1"], id="one-ipv6-address-alone"),
        pytest.param("fd00:0::1", ("eth0",), ["eth0"], ["fd00::1"], id="ipv6-spelled-otherwise"),
        pytest.param("127.0.0.1", (), ["lo"], ["127.0.0.1"], id="loopback-on-lo-only"),
        pytest.param("127.0.0.5", (), ["lo"], ["127.0.0.5"], id="any-127-address-is-lo"),
        pytest.param("::1", (), ["lo"], ["::1"], id="ipv6-loopback-on-lo-only"),
        pytest.param("localhost", (), ["lo"], ["127.0.0.1"], id="a-name-as-the-listener-reads-it"),
        pytest.param("10.0.0.1", ("eth0", "wlan0"), ["eth0"], ["10.0.0.1"],
                     id="named-interfaces-narrowed-to-the-listener's"),
    ],
)
def test_only_what_the_listener_serves_is_advertised(
    listen: str, names: tuple[str, ...], interfaces: list[str], advertised: list[str]
) -> None:
    available = [LO, ETH0_TWO, WLAN, NOMC]
    chosen = mdns.choose_interfaces(names, available, listen)
    assert [i.name for i in chosen] == interfaces
    assert mdns.advertised_addresses(chosen, (), listen) == advertised


def test_the_listener_address_followed_while_it_comes_and_goes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(node_name="node-a", listen_host="10.0.0.9")
    monkeypatch.setattr(mdns, "list_interfaces", lambda: [LO, ETH0_TWO, WLAN])
    now = mdns.machine_addresses(settings)
    assert now.advertised == ("10.0.0.9",)
    assert {"10.0.0.1", "10.0.0.9", "192.168.1.2"} <= now.own  # every address stays our own
    # The DHCP lease of 10.0.0.9 is lost: nothing is served elsewhere, nothing is advertised.
    monkeypatch.setattr(mdns, "list_interfaces", lambda: [LO, ETH0, WLAN])
    assert mdns.machine_addresses(settings).advertised == ()


def test_pinned_addresses_win_over_the_listener() -> None:
    chosen = mdns.choose_interfaces((), [LO, ETH0_TWO], "10.0.0.1")
    assert mdns.advertised_addresses(chosen, ("192.0.2.7",), "10.0.0.1") == ["192.0.2.7"]


@pytest.mark.parametrize(
    ("listen", "names", "error"),
    [
        pytest.param("10.9.9.9", (), "--listen 10.9.9.9: no interface of this machine",
                     id="not-ours"),
        pytest.param("10.0.0.1", ("wlan0",),
                     "--listen 10.0.0.1 is an address of eth0, not of --interface wlan0",
                     id="not-on-the-named-interface"),
        pytest.param("127.0.0.1", ("eth0",), "--listen 127.0.0.1 is an address of lo",
                     id="loopback-with-a-lan-interface"),
        pytest.param("10.0.0.1", ("eth9",), "interface 'eth9' does not exist", id="unknown"),
    ],
)
def test_a_listener_that_cannot_be_advertised_is_one_line(
    listen: str, names: tuple[str, ...], error: str
) -> None:
    with pytest.raises(mdns.MdnsError) as info:
        mdns.choose_interfaces(names, [LO, ETH0_TWO, WLAN], listen)
    assert str(info.value).startswith(error) and "\n" not in str(info.value)


# --- pure: the peers view ------------------------------------------------------------------


def test_format_peers_table_and_json() -> None:
    peers = [
        PeerInfo("node-a", ("10.0.0.1",), 7946, 12,
                 ProbeResult("node-a", "unverified", 0.0004, address="10.0.0.1")),
        PeerInfo("node-bb", ("10.0.0.2", "fd00::2"), 80, None,
                 ProbeResult("node-bb", "timeout", 0.7, error="timed out after 0.7s")),
    ]
    assert format_peers(peers, "table") == (
        "NAME      ADDRESSES          PORT   PID      PROBE\n"
        "node-a    10.0.0.1           7946   12       unverified 0.4ms\n"
        "node-bb   10.0.0.2,fd00::2   80     <none>   failed: timed out after 0.7s\n"
    )
    data = json.loads(format_peers(peers, "json"))
    assert [p["name"] for p in data] == ["node-a", "node-bb"]
    assert data[0]["probe"]["ok"] is True and data[1]["pid"] is None
    assert format_peers([], "json") == "[]\n"


# --- real processes in network namespaces ------------------------------------------------------

HELPER = [sys.executable, str(Path(__file__).parent / "helpers" / "mdns_cli.py")]
WAIT = 10.0  # seconds: discovery takes ~1.2-1.7 s; this bounds a broken run


class Lines:
    """The JSON lines a helper process prints, read by a thread as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.records: list[dict[str, Any]] = []
        self.other: list[str] = []  # anything that is not JSON (logs, tracebacks)
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                self.other.append(line.rstrip())
                continue
            self._queue.put(record)

    def wait_for(self, match: Callable[[dict[str, Any]], bool], timeout: float = WAIT) -> dict:
        """The first record (seen before or arriving within `timeout`) that matches."""
        for record in self.records:
            if match(record):
                return record
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                record = self._queue.get(timeout=left)
            except queue.Empty:
                break
            self.records.append(record)
            if match(record):
                return record
        raise AssertionError(f"no matching line within {timeout}s; got {self.records}, "
                             f"output {self.other[-20:]}")

    def drain(self, seconds: float) -> list[dict[str, Any]]:
        """Every record that arrives within `seconds` more, plus the earlier ones."""
        try:
            self.wait_for(lambda r: False, seconds)
        except AssertionError:
            pass
        return self.records


def start(host: Host, *args: str) -> Lines:
    proc = host.popen([*HELPER, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                      text=True)
    return Lines(proc)


def event(kind: str, **fields: object) -> Callable[[dict[str, Any]], bool]:
    return lambda r: r["event"] == kind and all(r.get(k) == v for k, v in fields.items())


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n    [mdns] {text}")


netns = pytest.mark.netns


# `netns_ok` (conftest) skips without root, and fails instead under scripts/test.
@pytest.fixture
def lo_host(netns_ok: None) -> Iterator[LoopbackHost]:
    with LoopbackHost() as host:
        yield host


@pytest.fixture
def lan2(netns_ok: None) -> Iterator[Lan]:
    with Lan(2) as lan:
        yield lan


@netns
def test_peer_seen_then_goodbye(lo_host: LoopbackHost, capsys: pytest.CaptureFixture[str]) -> None:
    browser = start(lo_host, "browse", "--own-name", "me")
    browser.wait_for(event("browsing"))
    adv = start(lo_host, "advertise", "--name", "node-a", "--port", "7101")

    seen = browser.wait_for(event("PeerSeen", name="node-a"))
    assert seen["port"] == 7101
    assert seen["pid"] == adv.proc.pid  # `ip netns exec` execs the helper: same pid
    assert seen["addresses"][0] == "127.0.0.1"
    started = adv.wait_for(event("starting"))
    adv.wait_for(event("registered"))
    report(capsys, f"discovery (advertise start -> PeerSeen): {seen['t'] - started['t']:.3f}s")

    stop_at = time.monotonic()
    adv.proc.send_signal(signal.SIGTERM)
    gone = browser.wait_for(event("PeerGone", name="node-a"), timeout=3)
    assert gone["goodbye"] is True  # a goodbye, not a record that expired
    report(capsys, f"goodbye (SIGTERM -> PeerGone): {gone['t'] - stop_at:.3f}s")
    assert adv.proc.wait(5) == 0
    adv.wait_for(event("stopped"))


@netns
def test_an_old_address_withdrawn_after_the_new_one_is_announced_is_dropped(
    lo_host: LoopbackHost,
) -> None:
    # The sender announces its new address and only then says goodbye to the old one: the
    # browser resolves both at the announcement and zeroconf reports no change for the goodbye.
    browser = start(lo_host, "browse", "--own-name", "me")
    browser.wait_for(event("browsing"))
    adv = start(lo_host, "advertise", "--name", "node-m", "--port", "7301",
                "--move-to", "127.0.0.9")
    adv.wait_for(event("moved"))
    browser.wait_for(lambda r: r["event"] == "PeerSeen" and r["name"] == "node-m"
                     and "127.0.0.9" in r["addresses"])
    last = browser.wait_for(lambda r: r["event"] == "PeerSeen" and r["name"] == "node-m"
                            and r["addresses"] == ["127.0.0.9"], timeout=5)
    # And it stays that way: nothing brings the old address back.
    later = [r for r in browser.drain(2.0) if r["event"] == "PeerSeen" and r["t"] > last["t"]]
    assert all(r["addresses"] == ["127.0.0.9"] for r in later), later


@netns
def test_addresses_that_change_during_the_registration_are_announced(
    lo_host: LoopbackHost,
) -> None:
    """A readdress while the record is still being registered (a boot with DHCP settling):
    the record announces the new addresses once it is registered, and the agent never takes its
    own record for a rival's."""
    browser = start(lo_host, "browse", "--own-name", "me")
    browser.wait_for(event("browsing"))
    agent = start(lo_host, "present", "--name", "node-r", "--port", "7501",
                  "--readdress", "127.0.0.7", "--after", "0.2")
    agent.wait_for(event("readdressed"))
    agent.wait_for(event("registered"))
    browser.wait_for(lambda r: r["event"] == "PeerSeen" and r["name"] == "node-r"
                     and r["addresses"] == ["127.0.0.7"], timeout=8)
    agent.drain(1.0)
    assert not [line for line in agent.other if "forged" in line or "not updated" in line], \
        agent.other


@netns
def test_entries_nobody_answers_for_do_not_delay_a_new_agent(
    lo_host: LoopbackHost, capsys: pytest.CaptureFixture[str]
) -> None:
    """One packet of PTR records whose instances never resolve (no SRV, TXT or address
    behind them): each holds one resolver for its timeout, not the whole browser, so an agent
    that starts meanwhile is found as fast as on a clean LAN (~1.5 s; 22 s with one resolver)."""
    browser = start(lo_host, "browse", "--own-name", "me")
    browser.wait_for(event("browsing"))
    flood = start(lo_host, "ptr-flood", "--count", "8")
    flood.wait_for(event("flooded"))
    time.sleep(0.3)  # the browser has the 8 entries and resolves them
    adv = start(lo_host, "advertise", "--name", "node-new", "--port", "7401")
    seen = browser.wait_for(event("PeerSeen", name="node-new"))
    started = adv.wait_for(event("starting"))
    report(capsys, f"discovery behind 8 unresolvable entries: {seen['t'] - started['t']:.3f}s")
    assert seen["t"] - started["t"] < 5.0
    assert not [r for r in browser.records if r["event"] == "PeerSeen" and r["name"] != "node-new"]
    flood.proc.send_signal(signal.SIGTERM)
    adv.proc.send_signal(signal.SIGTERM)


@netns
def test_invalid_name_rejected_and_own_name_ignored(lo_host: LoopbackHost) -> None:
    browser = start(lo_host, "browse", "--own-name", "me")
    browser.wait_for(event("browsing"))
    start(lo_host, "advertise", "--name", "Bad_Name", "--port", "7201")
    start(lo_host, "advertise", "--name", "me", "--port", "7202")
    start(lo_host, "advertise", "--name", "node-c", "--port", "7203")

    rejected = browser.wait_for(event("PeerRejected", instance="Bad_Name"))
    assert rejected["reason"] == "invalid-name"
    browser.wait_for(event("PeerSeen", name="node-c"))
    records = browser.drain(1.0)  # all three announced by now; give stragglers a second
    names = {r["name"] for r in records if r["event"] == "PeerSeen"}
    assert names == {"node-c"}
    assert any("rejected mDNS entry 'Bad_Name': invalid-name" in line for line in browser.other)


@netns
def test_discovery_across_a_lan(lan2: Lan, capsys: pytest.CaptureFixture[str]) -> None:
    # Default interface choice: eth0 (multicast), not lo (no multicast flag in these hosts).
    a, b = lan2.hosts
    browser = start(b, "browse", "--own-name", "node-b")
    browser.wait_for(event("browsing"))
    adv = start(a, "advertise", "--name", "node-a", "--port", "7946")
    seen = browser.wait_for(event("PeerSeen", name="node-a"))
    assert seen["addresses"] == [a.address]  # link-local IPv6 left out, no 127.0.0.1
    started = adv.wait_for(event("starting"))
    report(capsys, f"discovery across veth LAN: {seen['t'] - started['t']:.3f}s")

    stop_at = time.monotonic()
    adv.proc.send_signal(signal.SIGTERM)
    gone = browser.wait_for(event("PeerGone", name="node-a"), timeout=3)
    assert gone["goodbye"] is True  # a goodbye, not a record that expired
    report(capsys, f"goodbye across veth LAN: {gone['t'] - stop_at:.3f}s")


@netns
def test_only_addresses_on_our_link_are_kept(lan2: Lan) -> None:
    """A peer that announces addresses beyond our link (any routable address it likes) is
    asked only at those on the link mDNS saw it on."""
    a, b = lan2.hosts
    browser = start(b, "browse", "--own-name", "node-b")
    browser.wait_for(event("browsing"))
    start(a, "advertise", "--name", "node-a", "--port", "7946",
          "--also", "203.0.113.7", "--also", "10.99.0.1")
    seen = browser.wait_for(event("PeerSeen", name="node-a"))
    assert seen["addresses"] == [a.address]


@netns
def test_peers_command(lo_host: LoopbackHost) -> None:
    a = start(lo_host, "advertise", "--name", "node-a", "--port", "7301", "--listen")
    b = start(lo_host, "advertise", "--name", "node-b", "--port", "7302")  # nothing listens
    a.wait_for(event("registered"))
    b.wait_for(event("registered"))
    # (4 s of browsing: on a loaded machine both entries resolve well inside it)
    done = lo_host.run([*HELPER, "peers", "--timeout", "4"], timeout=30)
    peers = {p["name"]: p for p in json.loads(done.stdout)}
    assert set(peers) == {"node-a", "node-b"}
    assert peers["node-a"]["port"] == 7301 and peers["node-a"]["pid"] == a.proc.pid
    assert peers["node-a"]["probe"]["ok"] is True
    assert peers["node-b"]["probe"]["ok"] is False


@netns
def test_taken_name_is_not_renamed(lan2: Lan) -> None:
    # Two hosts: on one host, unicast answers to probes reach only one of the processes that
    # share port 5353, so conflict detection between processes of one host is not reliable.
    a, b = lan2.hosts
    first = start(a, "advertise", "--name", "node-a", "--port", "7401")
    first.wait_for(event("registered"))
    second = start(b, "advertise", "--name", "node-a", "--port", "7402")
    taken = second.wait_for(event("NameTaken"))
    assert "node-a._k3._tcp.local." in taken["message"]
    assert f"by {a.address} port 7401" in taken["message"]  # the holder, said out loud
    assert second.proc.wait(5) == 3


@netns
def test_a_forged_record_of_our_name_does_not_stop_the_agent(lan2: Lan, tmp_path: Path) -> None:
    # Host b advertises node-a's instance where nothing listens (a stranger's forged record, or
    # a stale one): no agent proves to be node-a there. The agent node-a runs on, says why,
    # and takes its name once the record is gone.
    a, b = lan2.hosts
    forged = start(b, "advertise", "--name", "node-a", "--port", "7946")
    forged.wait_for(event("registered"))
    path = tmp_path / "node-a.log"
    with path.open("w") as out:
        agent = a.popen([sys.executable, "-m", "k3net", "run", "--node-name", "node-a",
                         "--listen", f"{a.address}:7946"], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_text(path, "forged or stale record", 30)
        assert agent.poll() is None
        forged.proc.send_signal(signal.SIGTERM)  # its goodbye frees the name
        forged.proc.wait(10)
        _wait_for_text(path, "advertising node-a._k3._tcp.local.", 60)
        assert agent.poll() is None
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(10)
    assert f"by {b.address} port 7946, but no agent answers as this node" in path.read_text()


def _wait_for_text(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert time.monotonic() < deadline, f"{text!r} not in {path}:\n{path.read_text()}"
        time.sleep(0.1)


@netns
def test_an_agent_advertises_only_what_its_listener_serves(lan2: Lan, tmp_path: Path) -> None:
    # Host a holds a second LAN address. Agent node-one listens on its first address only,
    # agent node-demo on 127.0.0.1 (the quick start's demo): neither says --interface.
    a, b = lan2.hosts
    subprocess.run(["ip", "-n", a.name, "addr", "add", "10.77.0.201/24", "dev", "eth0"],
                   check=True)
    on_lan = start(b, "browse", "--own-name", "node-b")
    on_lo = start(a, "browse", "--own-name", "node-a", "--iface", "lo")
    on_lan.wait_for(event("browsing"))
    on_lo.wait_for(event("browsing"))
    agents = []
    for name, listen in (("node-one", f"{a.address}:7946"), ("node-demo", "127.0.0.1:7947")):
        log = (tmp_path / f"{name}.log").open("w")
        agents.append(a.popen([sys.executable, "-m", "k3net", "run", "--node-name", name,
                               "--listen", listen], stdout=log, stderr=subprocess.STDOUT))
    try:
        one = on_lan.wait_for(event("PeerSeen", name="node-one"))
        assert one["addresses"] == [a.address]  # not 10.77.0.201, where nothing listens
        demo = on_lo.wait_for(event("PeerSeen", name="node-demo"))
        assert demo["addresses"] == ["127.0.0.1"] and demo["port"] == 7947
        # The demo's record stays on the machine: the LAN never hears of it, though it has
        # long been announced on lo.
        heard = {r.get("name") for r in on_lan.drain(3.0) if r["event"] == "PeerSeen"}
        assert heard == {"node-one"}
        for proc in agents:
            assert proc.poll() is None
    finally:
        for proc in agents:
            proc.send_signal(signal.SIGTERM)
        for proc in agents:
            proc.wait(10)
    logs = {p.stem: p.read_text() for p in tmp_path.glob("*.log")}
    assert f"on port 7946 ({a.address})" in logs["node-one"], logs["node-one"]
    assert "on port 7947 (127.0.0.1)" in logs["node-demo"], logs["node-demo"]


@netns
def test_a_listener_on_an_address_not_here_exits_2_in_one_line(lo_host: LoopbackHost) -> None:
    done = lo_host.run([sys.executable, "-m", "k3net", "run", "--node-name", "node-x",
                        "--listen", "10.9.9.9:7946"], check=False, timeout=30)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.endswith(
        "--listen 10.9.9.9: no interface of this machine that is up has this address\n")

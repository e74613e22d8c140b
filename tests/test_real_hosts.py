"""Real hosts, end to end: agents as processes on namespace LANs that look like the
machines people run, with a VM bridge whose address every host repeats, two LAN addresses, a
readdress, a move to another network interface, a Go-style peer, and a second cluster with
another key on the same LAN. Each agent
runs on its own memory store, checked through its /nodes and /metrics."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from k3lab.agents import ready
from k3lab.netns import Host, Lan
from k3lab.nsclient import NetnsClient, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("netns_ok")]

ROOT = Path(__file__).resolve().parents[1]
BRIDGE = "192.168.122.1"  # libvirt's virbr0, on every host
FAST = ("--peer-ttl", "3s", "--probe-interval", "1s")


class Agent:
    """`k3net run` on a host, listening on every address of its port (as by default), with
    the default interface choice unless `interface` is given."""

    def __init__(self, host: Host, name: str, log_dir: Path, *args: str,
                 interface: str | None = None, port: int = 7946) -> None:
        self.host, self.name, self.port = host, name, port
        self.log_path = log_dir / f"{name}.log"
        argv = [sys.executable, "-m", "k3net", "run", "--node-name", name, "--listen", f":{port}",
                "--log-level", "debug", *args]
        if interface:
            argv += ["--interface", interface]
        self._log = self.log_path.open("w")
        self.proc = host.popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.client = NetnsClient(host.name)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get_json(self, path: str) -> Any:
        return self.client.get_json(self.url + path)

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["metadata"]["name"]: n for n in self.get_json("/nodes")["items"]}

    def ready(self, name: str) -> tuple[str, str] | None:
        return ready(self.nodes().get(name))

    def internal_ips(self, name: str) -> list[str]:
        node = self.nodes().get(name) or {}
        return [a["address"] for a in node.get("status", {}).get("addresses", [])
                if a["type"] == "InternalIP"]

    def probes(self, result: str) -> float:
        text = self.client.get(self.url + "/metrics")[1]
        line = f'k3net_probes_total{{result="{result}"}} '
        return sum(float(row[len(line):]) for row in text.splitlines() if row.startswith(line))

    def confirmations(self) -> float:
        """The peers' confirmations this agent's table got: probes that confirmed a peer, and
        the scheduled probes of held peers that a beat stood in for."""
        text = self.client.get(self.url + "/metrics")[1]
        probes = 'k3net_probes_total{result="confirmed"} '
        spared = "k3net_probes_spared_total "
        return sum(float(row.split()[-1]) for row in text.splitlines()
                   if row.startswith((probes, spared)))

    def wait_up(self) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log()}")
            return self.client.get(self.url + "/healthz")[0] == 200
        wait_for(up, 15, what=f"{self.name} /healthz")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()[-6000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.client.close()
        self._log.close()


class Agents:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.all: list[Agent] = []

    def start(self, host: Host, name: str, *args: str, **kwargs: Any) -> Agent:
        agent = Agent(host, name, self.log_dir, *args, **kwargs)
        self.all.append(agent)
        return agent


@pytest.fixture
def field(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Agents]:
    agents = Agents(tmp_path)
    try:
        yield agents
    finally:
        for agent in agents.all:
            agent.close()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            for agent in agents.all:
                print(f"----- log of {agent.name} -----\n{agent.log()}")


def _up(*agents: Agent) -> None:
    for agent in agents:
        agent.wait_up()


def _key(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text + "\n")
    path.chmod(0o600)
    return str(path)


def test_shared_bridge_neither_advertised_nor_keeps_a_dead_peer_alive(field: Agents) -> None:
    with Lan(3) as lan:
        lan.add_shared_bridge()
        a_host, b_host, c_host = lan.hosts
        a = field.start(a_host, "node-a", *FAST)
        # node-b announces the bridge address too, as a Go agent (every interface) would.
        b = field.start(b_host, "node-b", *FAST, "--advertise-address", b_host.address,
                        "--advertise-address", BRIDGE)
        c = field.start(c_host, "node-c", *FAST)  # default interfaces: virbr0 is skipped
        _up(a, b, c)
        wait_for(lambda: a.ready("node-b") == ("True", "PeerAlive")
                 and a.ready("node-c") == ("True", "PeerAlive"), 15, what="b and c Ready at a")
        assert c.get_json("/info")["addrs"] == [c_host.address]
        assert a.internal_ips("node-c") == [c_host.address]
        assert a.internal_ips("node-b") == [b_host.address, BRIDGE]  # canonical order

        b.proc.kill()  # SIGKILL: no goodbye; its host lives, its bridge address answers locally
        b.proc.wait(5)
        killed = time.monotonic()
        # Every probe of node-b reaches nobody on its LAN address; on 192.168.122.1 it would
        # reach the prober's own agent, which never counts. ttl 3s + interval 1s + margin.
        wait_for(lambda: (a.ready("node-b") or ("",))[0] != "True", 10,
                 what="dead node-b not Ready at node-a")
        print(f"\n    node-b not Ready at node-a {time.monotonic() - killed:.2f}s after SIGKILL")
        assert a.ready("node-c") == ("True", "PeerAlive")
        assert a.probes("confirmed") > 0


def test_go_style_peer_answering_only_info_is_confirmed(field: Agents) -> None:
    with Lan(2) as lan:
        a_host, g_host = lan.hosts
        a = field.start(a_host, "node-a", *FAST)
        go = g_host.popen([sys.executable, str(ROOT / "tests" / "helpers" / "fakeagent.py"), "--name", "go-peer",
                           "--listen", f"{g_host.address}:7946", "--advertise",
                           "--iface", g_host.interface], stdout=subprocess.DEVNULL)
        try:
            _up(a)
            wait_for(lambda: a.ready("go-peer") == ("True", "PeerAlive"), 15,
                     what="the Go-style peer Ready at node-a")
            assert a.probes("confirmed") > 0
            assert a.probes("unverified") == 0
        finally:
            go.terminate()
            go.wait(10)


def test_two_clusters_with_different_keys_keep_separate_node_lists(
    field: Agents, tmp_path: Path
) -> None:
    red = _key(tmp_path, "red.key", "red-cluster-secret-0123456789abcdef")
    blue = _key(tmp_path, "blue.key", "blue-cluster-secret-0123456789abcdef")
    with Lan(4) as lan:
        h = lan.hosts
        r1 = field.start(h[0], "red-1", *FAST, "--cluster-key-file", red)
        r2 = field.start(h[1], "red-2", *FAST, "--cluster-key-file", red)
        b1 = field.start(h[2], "blue-1", *FAST, "--cluster-key-file", blue)
        open_ = field.start(h[3], "open-1", *FAST)  # no key: the Go-compatible behaviour
        _up(r1, r2, b1, open_)
        wait_for(lambda: r1.ready("red-2") == ("True", "PeerAlive")
                 and r2.ready("red-1") == ("True", "PeerAlive"), 15, what="red sees red")
        # Everyone has seen everyone over mDNS and probed them by now: the keys decide.
        wait_for(lambda: r1.probes("unauthenticated") >= 2 and b1.probes("unauthenticated") >= 3,
                 10, what="foreign agents probed and refused")
        assert set(r1.nodes()) == {"red-1", "red-2"}
        assert set(r2.nodes()) == {"red-1", "red-2"}
        assert set(b1.nodes()) == {"blue-1"}
        # An agent without a key writes every agent that names itself (key or not).
        wait_for(lambda: set(open_.nodes()) == {"red-1", "red-2", "blue-1", "open-1"}, 15,
                 what="the open agent sees everyone")
        for agent in (r1, r2, b1):
            assert "secret" not in agent.log()


def test_readdress_is_followed_without_going_not_ready(field: Agents) -> None:
    # Until node-a learns the new address it cannot reach node-b: a ttl of 10 s leaves that
    # room on a loaded machine (the move itself takes about 2 s: one poll, one registration).
    timings = ("--peer-ttl", "10s", "--probe-interval", "1s")
    with Lan(2) as lan:
        a_host, b_host = lan.hosts
        a = field.start(a_host, "node-a", *timings)
        b = field.start(b_host, "node-b", *timings)
        _up(a, b)
        wait_for(lambda: a.ready("node-b") == ("True", "PeerAlive")
                 and b.ready("node-a") == ("True", "PeerAlive"), 15, what="both Ready")
        old = b_host.address
        b_host.readdress("10.77.0.60/24")  # a DHCP renewal: new address, the old one gone
        moved = time.monotonic()
        seen: set[tuple[str, str] | None] = set()

        def followed() -> tuple[Any, ...] | None:
            seen.add(a.ready("node-b"))
            now = (b.get_json("/info")["addrs"], b.internal_ips("node-b"),
                   a.internal_ips("node-b"))
            if now != (["10.77.0.60"],) * 3:
                raise AssertionError(f"/info, own Node, node-a's Node: {now}")
            return now

        wait_for(followed, 15, interval=0.2, what="the new address in /info, own Node, peer's Node")
        print(f"\n    readdress {old} -> 10.77.0.60 followed at node-a in "
              f"{time.monotonic() - moved:.2f}s")
        assert seen == {("True", "PeerAlive")}, seen  # never not-Ready meanwhile
        # Both still reach each other: node-b probes node-a from its new address.
        confirmed = b.confirmations()
        wait_for(lambda: b.confirmations() > confirmed, 5, what="node-b still confirming node-a")
        assert b.ready("node-a") == ("True", "PeerAlive")


def test_a_blocked_first_address_does_not_hide_a_second(field: Agents) -> None:
    with Lan(2) as lan:
        a_host, b_host = lan.hosts
        b_host.add_address("10.77.0.50/24")  # node-b has two LAN addresses
        a = field.start(a_host, "node-a", *FAST)
        b = field.start(b_host, "node-b", *FAST)
        _up(a, b)
        wait_for(lambda: a.internal_ips("node-b") == [b_host.address, "10.77.0.50"], 15,
                 what="both of node-b's addresses, in canonical order")
        a_host.reject_tcp(b_host.address, 7946)  # node-a can no longer reach the first one
        refused = a.probes("refused")
        confirmed = a.confirmations()
        wait_for(lambda: a.confirmations() > confirmed + 3, 10, what="confirmations go on")
        assert a.probes("refused") == refused  # the second address answers every probe
        assert a.ready("node-b") == ("True", "PeerAlive")


def test_new_ipv6_address_is_announced_in_place(field: Agents) -> None:
    with Lan(2) as lan:
        a_host, b_host = lan.hosts
        a = field.start(a_host, "node-a", "--peer-ttl", "10s", "--probe-interval", "1s")
        b = field.start(b_host, "node-b", "--peer-ttl", "10s", "--probe-interval", "1s")
        _up(a, b)
        wait_for(lambda: a.ready("node-b") == ("True", "PeerAlive"), 15, what="node-b Ready")
        # (node-a may hear of node-b before node-b's record is registered: its hello)
        wait_for(lambda: b.client.get(b.url + "/readyz/mdns")[0] == 200, 15,
                 what="node-b's mDNS record registered")
        # A new IPv6 address on the same interface (a privacy address, a new prefix): zeroconf
        # stays bound as it was, so the record is updated in place, without a new registration.
        b_host.ip("-6", "addr", "add", "fd00:77::2/64", "dev", "eth0", "nodad")
        wait_for(lambda: a.internal_ips("node-b") == [b_host.address, "fd00:77::2"], 15,
                 what="the IPv6 address in node-a's Node of node-b")
        b_host.ip("-6", "addr", "del", "fd00:77::2/64", "dev", "eth0")
        wait_for(lambda: a.internal_ips("node-b") == [b_host.address], 15,
                 what="the withdrawn IPv6 address gone from node-a's Node of node-b")
        assert a.ready("node-b") == ("True", "PeerAlive")
        assert "registering again" not in b.log()  # updated in place


def test_a_move_to_another_network_interface_is_followed(field: Agents) -> None:
    """A laptop or a server moving from one NIC to another: the Ethernet cable is plugged in
    beside the Wi-Fi, then the Wi-Fi goes away. With the default interface choice the agent
    announces itself on the new interface and its Node follows, never not-Ready."""
    timings = ("--peer-ttl", "10s", "--probe-interval", "1s")
    with Lan(2) as lan:
        a_host, b_host = lan.hosts
        lan.add_segment("10.88.0.0/24", unplugged=[1])
        a = field.start(a_host, "node-a", *timings)
        b = field.start(b_host, "node-b", *timings)
        _up(a, b)
        wait_for(lambda: a.ready("node-b") == ("True", "PeerAlive"), 15, what="node-b Ready")
        assert a.internal_ips("node-b") == [b_host.address]
        seen: set[tuple[str, str] | None] = set()

        def has(addresses: list[str]) -> bool:
            seen.add(a.ready("node-b"))
            return a.internal_ips("node-b") == addresses

        b_host.plug("eth1")
        wait_for(partial(has, [b_host.address, "10.88.0.2"]), 15, interval=0.2,
                 what="node-b's second interface in node-a's Node of it")
        b_host.unplug("eth0")
        wait_for(partial(has, ["10.88.0.2"]), 15, interval=0.2,
                 what="only node-b's new interface in node-a's Node of it")
        assert seen == {("True", "PeerAlive")}, seen  # never not-Ready meanwhile
        confirmed = a.confirmations()
        wait_for(lambda: a.confirmations() > confirmed + 2, 10,
                 what="node-a confirming node-b on its new interface")
        held = {p["name"]: p["held"] for p in a.get_json("/peers")["peers"]}
        assert held.get("node-b") in (None, "10.88.0.2"), held  # never the interface gone
        assert b.ready("node-a") == ("True", "PeerAlive")


def test_an_ipv6_only_lan(field: Agents) -> None:
    """Hosts with no IPv4 address at all (an IPv6-only LAN, ULA addresses): the agents find
    each other over mDNS on IPv6, confirm each other there, write only those addresses, and a
    crash is seen as on IPv4."""
    with Lan(2) as lan:
        for i, host in enumerate(lan.hosts):
            for address in host.addresses():
                host.ip("addr", "del", address, "dev", host.interface)
            host.ip("-6", "addr", "add", f"fd00:77::{i + 1}/64", "dev", host.interface, "nodad")
        a = field.start(lan[0], "node-a", *FAST)
        b = field.start(lan[1], "node-b", *FAST)
        _up(a, b)
        wait_for(lambda: a.ready("node-b") == ("True", "PeerAlive")
                 and b.ready("node-a") == ("True", "PeerAlive"), 15, what="both Ready")
        assert a.internal_ips("node-b") == ["fd00:77::2"]
        assert b.internal_ips("node-a") == ["fd00:77::1"]
        assert a.internal_ips("node-a") == ["fd00:77::1"]  # its own Node
        wait_for(lambda: {p["name"]: p["held"] for p in a.get_json("/peers")["peers"]}
                 == {"node-b": "fd00:77::2"}, 10, what="node-a holding node-b over IPv6")
        b.proc.kill()
        wait_for(lambda: a.ready("node-b") == ("False", "PeerRefused"), 10,
                 what="node-b's crash seen by node-a")

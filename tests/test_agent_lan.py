"""End to end: real agents as processes on a simulated LAN (network namespaces on a bridge),
real mDNS between them, each on its own memory store, checked through each agent's /nodes."""

from __future__ import annotations

import signal
import time
from functools import partial

import pytest

from k3lab.agents import AgentFactory, AgentProc, ready
from k3lab.netns import Lan
from k3lab.nsclient import wait_for

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("netns_ok")]

TTL = "3s"


def _all_ready(agent: AgentProc, names: list[str]) -> bool:
    nodes = agent.nodes()
    return all(ready(nodes.get(name)) in (("True", "PeerAlive"), ("True", "AgentReady"))
               for name in names)


def _ready_is(agent: AgentProc, name: str, want: tuple[str, str]) -> bool:
    return ready(agent.nodes()[name]) == want


def _three_ready(agents: AgentFactory, lan: Lan, *flags: str) -> list[AgentProc]:
    """node-a, node-b and node-c on the first three hosts with `flags`, each Ready at all."""
    names = ["node-a", "node-b", "node-c"]
    procs = [agents.start(host, name, *flags) for host, name in zip(lan.hosts, names, strict=True)]
    for proc in procs:
        proc.wait_ready()
    for proc in procs:
        wait_for(partial(_all_ready, proc, names), 15, what=f"all Ready at {proc.name}")
    return procs


def test_three_agents_join_leave_and_crash(agents: AgentFactory) -> None:
    with Lan(3) as lan:
        names = ["node-a", "node-b", "node-c"]
        procs = [agents.start(host, name, "--peer-ttl", TTL) for host, name in zip(lan.hosts, names, strict=True)]
        start = time.monotonic()
        for proc in procs:
            proc.wait_ready()

        # Join: every agent holds every node, Ready.
        for proc in procs:
            wait_for(partial(_all_ready, proc, names), 10, what=f"all Ready at {proc.name}")
        join = time.monotonic() - start
        a, b, c = procs
        assert ready(a.nodes()["node-a"]) == ("True", "AgentReady")
        assert ready(a.nodes()["node-b"]) == ("True", "PeerAlive")
        node_b = a.nodes()["node-b"]
        assert {"type": "InternalIP", "address": lan[1].address} in node_b["status"]["addresses"]
        assert node_b["metadata"]["annotations"]["k3.network/port"] == "7946"

        # Graceful leave: SIGTERM c; it exits 0 within 3 s and is PeerLeft at the others.
        t0 = time.monotonic()
        c.signal(signal.SIGTERM)
        for proc in (a, b):
            wait_for(partial(_ready_is, proc, "node-c", ("False", "PeerLeft")), 2,
                     what=f"node-c PeerLeft at {proc.name}")
        leave = time.monotonic() - t0
        assert c.proc.wait(3) == 0

        # Crash: kill -9 b, its host lives: nothing listens on its port any more, so a's
        # probe is refused, confirmed by a re-probe, and b is False/PeerRefused without
        # waiting for the TTL (no mDNS goodbye is sent).
        t0 = time.monotonic()
        b.signal(signal.SIGKILL)
        wait_for(lambda: ready(a.nodes()["node-b"]) == ("False", "PeerRefused"), 3 + 2,
                 what="node-b PeerRefused at node-a")
        crash = time.monotonic() - t0
        assert ready(a.nodes()["node-a"]) == ("True", "AgentReady")
        print(f"\nmeasured: join {join:.2f}s (3 agents, start to all Ready everywhere), "
              f"graceful leave {leave:.3f}s, crash detection {crash:.2f}s (peer-ttl {TTL}, refused)")


def test_peer_that_comes_back_is_ready_again(agents: AgentFactory) -> None:
    with Lan(2) as lan:
        a = agents.start(lan[0], "node-a", "--peer-ttl", TTL)
        b = agents.start(lan[1], "node-b", "--peer-ttl", TTL)
        a.wait_ready()
        b.wait_ready()
        wait_for(lambda: _all_ready(a, ["node-a", "node-b"]), 10, what="node-b Ready at a")
        lan[1].link_down()
        # Unknown: PeerUnreachable (its held connection went silent) or PeerExpired (peer-ttl
        # is 3 s here: whichever comes first).
        wait_for(lambda: ready(a.nodes()["node-b"]) in (("Unknown", "PeerUnreachable"),
                                                        ("Unknown", "PeerExpired")), 6,
                 what="node-b Unknown while its link is down")
        lan[1].link_up()
        wait_for(lambda: ready(a.nodes()["node-b"]) == ("True", "PeerAlive"), 6,
                 what="node-b Ready again once its link is back")


def test_a_crash_is_seen_through_the_held_connection_long_before_the_next_probe(
    agents: AgentFactory,
) -> None:
    # Probes every 10 minutes: only the connection node-a holds open to node-b's /hold, which
    # node-b's kernel closes when its process dies, can make node-a probe it within the wait.
    slow = ("--probe-interval", "10m")
    with Lan(2) as lan:
        a = agents.start(lan[0], "node-a", *slow)
        b = agents.start(lan[1], "node-b", *slow)
        a.wait_ready()
        b.wait_ready()
        wait_for(lambda: ready(a.nodes().get("node-b")) == ("True", "PeerAlive"), 15,
                 what="node-b Ready at node-a")
        wait_for(lambda: a.metric("k3net_held_connections") == 1, 10,
                 what="node-a holding a connection to node-b")
        b.signal(signal.SIGKILL)
        b.proc.wait(5)
        wait_for(lambda: ready(a.nodes().get("node-b")) == ("False", "PeerRefused"), 20,
                 what="node-b False/PeerRefused at node-a")
        assert a.metric("k3net_held_connections_closed_total") == 1
        assert a.metric("k3net_held_connections") == 0


def test_an_ipv6_only_lan(agents: AgentFactory) -> None:
    """A LAN with no IPv4 at all (unique local addresses, as an IPv6-only site or a lab hands
    out): agents find each other over IPv6 mDNS, list their IPv6 address, hold and probe over
    IPv6, and see a crash there in seconds."""
    with Lan(3, subnet="fd77::/64") as lan:
        a, b, c = _three_ready(agents, lan, "--probe-interval", "10m")
        internal = [x["address"] for x in a.nodes()["node-b"]["status"]["addresses"]
                    if x["type"] == "InternalIP"]
        assert internal == [lan[1].address]
        wait_for(lambda: a.metric("k3net_held_connections") == 2, 10,
                 what="node-a holding node-b and node-c")
        c.signal(signal.SIGKILL)
        c.proc.wait(5)
        for proc in (a, b):
            wait_for(partial(_ready_is, proc, "node-c", ("False", "PeerRefused")), 5,
                     what=f"node-c PeerRefused at {proc.name}")


def test_a_lan_that_loses_packets_keeps_every_node_ready(agents: AgentFactory) -> None:
    """A LAN that drops a fifth of its frames (a busy Wi-Fi, a bad cable): a lost SYN costs a
    probe a second, longer than its timeout, so without a second connection attempt a third of
    the probes fail, and healthy nodes expire now and then. Every Node must stay Ready."""
    with Lan(3) as lan:
        procs = _three_ready(agents, lan, "--peer-ttl", "6s", "--probe-interval", "1s")
        lan.lose(20)
        not_ready: set[tuple[str, str, str]] = set()
        until = time.monotonic() + 25
        while time.monotonic() < until:
            for proc in procs:
                for name, node in proc.nodes().items():
                    status, reason = ready(node) or ("?", "?")
                    if status != "True":
                        not_ready.add((proc.name, name, reason))
            time.sleep(0.3)
        lan.lose(0)
        probes = {r: sum(p.metric("k3net_probes_total", result=r) for p in procs)
                  for r in ("confirmed", "timeout", "unverified")}
        assert not_ready == set(), (not_ready, probes)
        print(f"\nmeasured: 20% loss, probes {probes}")


def test_a_paused_agent_does_not_expire_its_peers_when_it_wakes_up(agents: AgentFactory) -> None:
    """An agent that did not run for a while (SIGSTOP here; a paused or migrated VM, a host
    swapping hard) saw nothing meanwhile. Its peers rightly mark it expired; but on waking up
    it must not expire them in turn: they never stopped."""
    with Lan(3) as lan:
        procs = _three_ready(agents, lan, "--peer-ttl", "6s", "--probe-interval", "1s")
        a, b, c = procs
        b.signal(signal.SIGSTOP)
        wait_for(partial(_ready_is, a, "node-b", ("Unknown", "PeerExpired")), 10,
                 what="node-b expired at node-a while it is stopped")
        time.sleep(3)  # stopped for more than peer-ttl in all
        b.signal(signal.SIGCONT)
        for proc in procs:
            wait_for(partial(_all_ready, proc, [p.name for p in procs]), 10,
                     what=f"all Ready at {proc.name}")
        assert b.metric("k3net_node_writes_total", cause="expired") == 0
        assert b.metric("k3net_paused_seconds_total") >= 6

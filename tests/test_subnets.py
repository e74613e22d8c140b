"""Beyond one broadcast domain, end to end: real agents on two subnets joined by a
router namespace that forwards unicast but not multicast (`RoutedLan`), so mDNS stays on each
segment. With a shared etcd in the router namespace (both subnets reach it) every agent lists
every other one Ready, and a crash on one side is found by the probes of the other side; with
the memory store, `--join` (transitive: the agent found is asked for its peers) is how the
sides see each other; a `--scan` of the other /24 finds its agents and nothing else; a join
address that never answers is harmless.

Times are printed (run with -s to see them), never asserted."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from k3lab.agents import AgentFactory, AgentProc, ready
from k3lab.netns import RoutedLan
from k3lab.nsclient import wait_for
from k3lab.services import EtcdServer

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("netns_ok")]

# Probes every second; peer-ttl long enough that nothing in these tests is decided by expiry.
FAST = ("--peer-ttl", "30s", "--probe-interval", "1s")


def peers(agent: AgentProc) -> dict[str, str]:
    """The peers `agent` follows, name -> how it was found."""
    return {p["name"]: p["foundBy"] for p in agent.get_json("/peers")["peers"]}


def ready_names(agent: AgentProc) -> set[str]:
    return {name for name, node in agent.nodes().items() if (ready(node) or ("", ""))[0] == "True"}


def sees(agent: AgentProc, expected: dict[str, str | frozenset[str]]) -> Callable[[], bool]:
    """`agent` follows exactly these peers, found this way (or one of these ways), and has them
    all Ready."""
    def check() -> bool:
        assert agent.proc.poll() is None, f"{agent.name} exited:\n{agent.log()[-3000:]}"
        found = peers(agent)
        return (found.keys() == expected.keys()
                and all(way == found[name] if isinstance(way, str) else found[name] in way
                        for name, way in expected.items())
                and set(expected) <= ready_names(agent))
    return check


# A peer across the router, on a shared store: found through its Node, or through its hello
# when that came first (proven at the hello's address, it stays found that way).
THROUGH_STORE = frozenset({"store", "introduced"})


def log_lines(agent: AgentProc, text: str) -> list[str]:
    return [line for line in agent.log().splitlines() if text in line]


def test_memory_store_sides_see_each_other_through_join(agents: AgentFactory) -> None:
    with RoutedLan((2, 1)) as net:
        (a_host, b_host), (c_host,) = net.segments
        dead = "10.79.2.99"  # no host there: the router's ARP finds nobody
        refusing = f"{c_host.address}:7999"  # a host, but nothing listens on that port
        a = agents.start(a_host, "node-a", *FAST, "--join", c_host.address, "--join", dead,
                         "--join", refusing)
        b = agents.start(b_host, "node-b", *FAST)
        c = agents.start(c_host, "node-c", *FAST, "--join", a_host.address)
        for agent in (a, b, c):
            agent.wait_ready()

        wait_for(sees(a, {"node-b": "mdns", "node-c": "join"}), 20, what="a sees b and c")
        # Joining is transitive: c asked a only, and follows b too, which a reaches.
        wait_for(sees(c, {"node-a": "join", "node-b": "join"}), 20,
                 what="c sees a, and b through a")
        assert log_lines(c, "node-a reaches node-b"), c.log()
        # mDNS does not cross the router: b (no --join) hears of c only from c itself, which
        # greets every peer it confirms (k3net.tasks.introduce), and c, alone on its segment,
        # has heard no mDNS but its own record.
        wait_for(sees(b, {"node-a": "mdns", "node-c": "introduced"}), 20,
                 what="b sees a over mDNS, and c through its hello")
        assert c.metric("k3net_mdns_events_total", kind="added") <= 1

        # `k3net peers --server` tells how each was found.
        done = a_host.run([sys.executable, "-m", "k3net", "peers", "--server", a.url], timeout=30)
        rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:]}
        assert rows["node-c"][4] == "join" and rows["node-b"][4] == "mdns", done.stdout

        # The join addresses that never answer: retried, logged once each, never fatal.
        def retried() -> bool:
            return (a.metric("k3net_discovery_probes_total", via="join", result="unreachable") >= 3
                    and a.metric("k3net_discovery_probes_total", via="join", result="refused") >= 3)
        wait_for(retried, 30, what="join retries")
        assert a.proc.poll() is None and a.client.get(a.url + "/healthz")[0] == 200
        assert len([ln for ln in log_lines(a, f"join {dead}:") if "WARNING" in ln]) == 1, a.log()
        assert len([ln for ln in log_lines(a, f"join {refusing}:")
                    if "WARNING" in ln]) == 1, a.log()
        assert sees(a, {"node-b": "mdns", "node-c": "join"})()


def _not_ready_after(watcher: AgentProc, victim: AgentProc) -> tuple[float, tuple[str, str]]:
    """SIGKILL `victim`; seconds until `watcher`'s store shows its Node not Ready, and why."""
    start = time.monotonic()
    victim.signal(signal.SIGKILL)
    victim.proc.wait(10)

    def gone() -> tuple[str, str] | None:
        state = ready(watcher.nodes().get(victim.name))
        return state if state is not None and state[0] != "True" else None
    state = wait_for(gone, 25, interval=0.02, what=f"{victim.name} not Ready")
    assert state is not None
    return time.monotonic() - start, state


@pytest.mark.usefixtures("etcd_ok")
def test_shared_etcd_across_the_router(agents: AgentFactory, tmp_path: Path) -> None:
    with RoutedLan((2, 1)) as net:
        (a_host, b_host), (c_host,) = net.segments
        etcd = EtcdServer(tmp_path / "etcd", client_host=net.gateways[0], client_port=2379,
                          peer_port=2380, netns=net.router.name)
        etcd.start()
        try:
            config = tmp_path / "k3.yaml"
            config.write_text("storage:\n  type: etcd\n  etcd:\n"
                              f"    endpoints: [\"{etcd.endpoint}\"]\n    dial_timeout: 2s\n")
            a = agents.start(a_host, "node-a", *FAST, config=config)
            b = agents.start(b_host, "node-b", *FAST, config=config)
            c = agents.start(c_host, "node-c", *FAST, config=config)
            for agent in (a, b, c):
                agent.wait_ready()
            # Each side follows the other through the store, its own segment through mDNS.
            wait_for(sees(a, {"node-b": "mdns", "node-c": THROUGH_STORE}), 30, what="a")
            wait_for(sees(b, {"node-a": "mdns", "node-c": THROUGH_STORE}), 30, what="b")
            wait_for(sees(c, {"node-a": THROUGH_STORE, "node-b": THROUGH_STORE}), 30, what="c")
            assert ready_names(a) == {"node-a", "node-b", "node-c"}

            # c is alone on its segment: only the other side's probes can find its crash.
            across, why_across = _not_ready_after(a, c)
            # b's crash is found by a (same segment) and by c... which is dead: by a alone.
            within, why_within = _not_ready_after(a, b)
            print(f"\nSIGKILL -> not Ready in the store: across the router {across:.2f}s "
                  f"({why_across[1]}), within a segment {within:.2f}s ({why_within[1]})")
            # Found by probes (refused, confirmed by a re-probe), not by expiry at peer-ttl.
            assert why_across == ("False", "PeerRefused")
            assert why_within == ("False", "PeerRefused")
        finally:
            etcd.stop()


def test_scan_finds_the_agents_on_the_other_side_and_nothing_else(
    agents: AgentFactory,
) -> None:
    with RoutedLan((1, 3)) as net:
        (a_host,), (c_host, d_host, e_host) = net.segments
        # e answers HTTP on the agents' port, but it is no agent.
        other = e_host.popen([sys.executable, "-m", "http.server", "7946", "--bind",
                              e_host.address], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            c = agents.start(c_host, "node-c", *FAST)
            d = agents.start(d_host, "node-d", *FAST)
            for agent in (c, d):
                agent.wait_ready()
            # A scan every 5 s: one that a busy machine lets time out whole is not the last.
            a = agents.start(a_host, "node-a", *FAST, "--scan", "10.79.2.0/24",
                             "--scan-interval", "5s")
            a.wait_ready()
            wait_for(sees(a, {"node-c": "scan", "node-d": "scan"}), 30, what="a finds c, d")
            assert set(a.nodes()) == {"node-a", "node-c", "node-d"}

            def scanned() -> dict[str, float]:
                counts = {r: a.metric("k3net_discovery_probes_total", via="scan", result=r)
                          for r in ("found", "not-agent", "refused", "unreachable", "timeout")}
                return counts if sum(counts.values()) >= 254 else {}
            counts: dict[str, Any] = wait_for(scanned, 30, what="a whole scan")
            seconds = a.metric("k3net_scan_seconds")
            print(f"\nscan of a /24 across the router: {seconds:.2f}s, {counts}")
            # One pass: 254 addresses, two agents, one HTTP server that is no agent (its
            # answer counted, never written), the router refuses, nobody else is there.
            assert counts["found"] >= 2 and counts["not-agent"] >= 1
            assert set(a.nodes()) == {"node-a", "node-c", "node-d"}
        finally:
            other.terminate()
            other.wait(10)

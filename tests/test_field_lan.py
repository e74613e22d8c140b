"""The field LAN, end to end: what the peer table decides, seen from outside on namespace
LANs shaped like real machines. Agents are processes listening on every address of their port
(as by default), so that on a host carrying libvirt's virbr0 192.168.122.1 a connection to that
address reaches the host's OWN agent, whichever peer announced it.

- a SIGKILLed agent on such a LAN goes False/PeerRefused long before peer-ttl, and the bridge
  never keeps it Ready;
- a host with two LAN addresses causes no write churn in a shared etcd (writes counted against
  the lastSeen budget);
- a one-way TCP reject between two hosts makes the Node blip at most once (Ready transitions
  counted in etcd's own history, so that no short blip can hide between two polls);
- a Go-style peer that stops with its mDNS goodbye first and its listener closed a moment later
  (or the other way round) is PeerLeft.

What the probe helper's tests already cover is not repeated here: the prober's outcomes
(test_prober.py), cluster keys (test_cluster_key.py), address rules (test_addresses.py), and on
namespace LANs the bridge never advertised, a Go-style peer confirmed, two clusters, a readdress
and a blocked first address (test_real_hosts.py).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from k3lab.agents import AgentFactory, AgentProc, ready
from k3lab.netns import Host, Lan
from k3lab.nsclient import wait_for
from k3lab.raw import ETCD_PEER_PORT, ETCD_PORT, PREFIX, RawEtcd, write_config
from k3lab.services import EtcdServer

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("netns_ok")]

ROOT = Path(__file__).resolve().parents[1]
BRIDGE = "192.168.122.1"  # libvirt's virbr0 address, repeated on every host
PORT = 7946
# Every agent listens on all of its host's addresses, the bridge's included (the default).
EVERYWHERE = ("--listen", f":{PORT}")


def _status(agent: AgentProc, name: str) -> tuple[str, str] | None:
    return ready(agent.nodes().get(name))


def _status_is(agent: AgentProc, name: str, want: tuple[str, str]) -> bool:
    return _status(agent, name) == want


def _probed(agent: AgentProc, result: str, at_least: float) -> bool:
    return agent.metric("k3net_probes_total", result=result) >= at_least


# --- a shared etcd and its history ---------------------------------------------------------


@dataclass
class SharedEtcd:
    host: Host
    raw: RawEtcd
    config: Path

    def _get(self, *args: str) -> dict[str, Any]:
        done = self.host.run(["etcdctl", f"--endpoints={self.raw.address}",
                              "--command-timeout=3s", "get", *args, "-w", "json"], timeout=10)
        data: dict[str, Any] = json.loads(done.stdout)
        return data

    def revision(self) -> int:
        return int(self._get(PREFIX, "--prefix", "--keys-only")["header"]["revision"])

    def versions(self) -> dict[str, int]:
        """Node name -> how many times its key was written (etcd counts every put)."""
        kvs = self._get(PREFIX, "--prefix")["kvs"]
        return {_name(kv): int(kv["version"]) for kv in kvs}

    def history(self, name: str, since: int, limit: int = 400) -> list[tuple[int, Any]]:
        """Every value Node `name` had from store revision `since` on, oldest first, as
        (mod_revision, Ready (status, reason)): read back from etcd's own history, one
        revision before the other, so that nothing written in between is missed."""
        values: list[tuple[int, Any]] = []
        rev: int | None = None
        while len(values) < limit:
            kvs = self._get(PREFIX + name, *([f"--rev={rev}"] if rev else [])).get("kvs", [])
            if not kvs:
                break
            kv = kvs[0]
            mod = int(kv["mod_revision"])
            node = json.loads(_b64(kv["value"]))
            values.append((mod, ready(node)))
            if mod <= since or mod <= int(kv["create_revision"]):
                break
            rev = mod - 1
        return values[::-1]


def _b64(text: str) -> str:
    import base64

    return base64.b64decode(text).decode()


def _name(kv: dict[str, Any]) -> str:
    return _b64(kv["key"]).removeprefix(PREFIX)


def _transitions(history: list[tuple[int, Any]]) -> list[tuple[Any, Any]]:
    """The Ready status changes in a history: [(old, new), ...]."""
    out = []
    for (_, old), (_, new) in zip(history, history[1:], strict=False):
        if (old or (None,))[0] != (new or (None,))[0]:
            out.append((old, new))
    return out


@pytest.fixture
def shared_etcd(etcd_ok: None, tmp_path: Path) -> Iterator[Any]:
    """A function `on(host) -> SharedEtcd`: a private etcd on that LAN host (stopped at the end)."""
    servers: list[EtcdServer] = []

    def on(host: Host) -> SharedEtcd:
        etcd = EtcdServer(tmp_path / f"etcd-{len(servers)}", client_host=host.address,
                          client_port=ETCD_PORT, peer_port=ETCD_PEER_PORT, netns=host.name)
        etcd.__enter__()
        servers.append(etcd)
        config = write_config(tmp_path / "k3.yaml", {
            "type": "etcd", "etcd": {"endpoints": [etcd.endpoint], "dial_timeout": "2s"}})
        return SharedEtcd(host, RawEtcd(host, etcd.address), config)

    yield on
    for etcd in servers:
        etcd.__exit__(None, None, None)


# --- tests -----------------------------------------------------------------------------------



def _start_everywhere(agents: AgentFactory, lan: Lan, names: list[str], ttl: float,
                      config: Path) -> list[AgentProc]:
    """One agent per host, listening on all addresses (as the Go agent does), on the shared
    store, at peer-ttl `ttl` and probes every second; each ready."""
    procs = [agents.start(host, name, *EVERYWHERE, "--peer-ttl", f"{ttl:g}s",
                          "--probe-interval", "1s", config=config)
             for host, name in zip(lan.hosts, names, strict=True)]
    for proc in procs:
        proc.wait_ready()
    return procs

def test_sigkilled_agent_on_a_bridged_lan_is_refused_not_kept_ready(agents: AgentFactory) -> None:
    # peer-ttl 30s: expiry cannot explain anything this test sees; only the refusal can.
    timings = ("--peer-ttl", "30s", "--probe-interval", "1s")
    with Lan(3) as lan:
        lan.add_shared_bridge()
        # Every agent announces the bridge address as well, as the Go agent (every interface)
        # does: a probe of any peer on 192.168.122.1 would reach the prober's own agent.
        procs = [agents.start(host, name, *EVERYWHERE, *timings,
                              "--advertise-address", host.address, "--advertise-address", BRIDGE)
                 for host, name in zip(lan.hosts, ["node-a", "node-b", "node-c"], strict=True)]
        for proc in procs:
            proc.wait_ready()
        a, b, c = procs
        for watcher in (a, c):
            wait_for(partial(_status_is, watcher, "node-b", ("True", "PeerAlive")), 15,
                     what=f"node-b Ready at {watcher.name}")
        assert a.nodes()["node-b"]["status"]["addresses"][1:] == [
            {"type": "InternalIP", "address": lan[1].address},
            {"type": "InternalIP", "address": BRIDGE}]

        b.proc.kill()  # SIGKILL: no goodbye; its host and its bridge address live on
        b.proc.wait(5)
        killed = time.monotonic()
        for watcher in (a, c):
            wait_for(partial(_status_is, watcher, "node-b", ("False", "PeerRefused")), 10,
                     what=f"node-b False/PeerRefused at {watcher.name}")
        print(f"\n    node-b False/PeerRefused at node-a and node-c "
              f"{time.monotonic() - killed:.2f}s after SIGKILL (peer-ttl 30s)")
        # It stays so: several more rounds of probes of node-b, none of them counted alive.
        refused = a.metric("k3net_probes_total", result="refused")
        wait_for(lambda: a.metric("k3net_probes_total", result="refused") >= refused + 3, 10,
                 what="three more probe rounds of node-b at node-a")
        assert _status(a, "node-b") == ("False", "PeerRefused")
        assert _status(c, "node-b") == ("False", "PeerRefused")
        assert _status(a, "node-c") == ("True", "PeerAlive")


def test_two_lan_addresses_and_a_bridge_cause_no_write_churn(
    agents: AgentFactory, shared_etcd: Any
) -> None:
    ttl = 6.0
    # At peer-ttl 6s a Node's lastSeen is refreshed once per ttl/3 = 2 s: 30 writes per node
    # per minute, whatever the number of agents. The bug this guards against wrote 200+.
    budget = 60 / (ttl / 3)
    with Lan(3) as lan:
        lan.add_shared_bridge()
        etcd = shared_etcd(lan[0])
        # A second LAN address that sorts before the first as text and after it as a number.
        lan[2].add_address("10.77.0.100/24")
        names = ["node-a", "node-b", "node-c"]
        procs = _start_everywhere(agents, lan, names, ttl, etcd.config)

        def all_ready() -> bool:
            return all(etcd.raw.ready(n) == ("True", "AgentReady") for n in names)

        wait_for(all_ready, 15, what="every Node Ready in etcd")
        # Let every agent discover and probe every peer once before counting.
        for proc in procs:
            wait_for(partial(_probed, proc, "confirmed", 4), 15, what=f"{proc.name} probing its peers")
        rev0, versions0 = etcd.revision(), etcd.versions()
        writes0 = {p.name: p.metric("k3net_node_writes_total") for p in procs}
        t0 = time.monotonic()
        # The window: until every Node's lastSeen was refreshed 5 more times (about 10 s).
        wait_for(lambda: all(v >= versions0[n] + 5 for n, v in etcd.versions().items()), 30,
                 interval=0.2, what="five lastSeen refreshes of every Node")
        minutes = (time.monotonic() - t0) / 60
        versions1 = etcd.versions()
        writes = sum(versions1[n] - versions0[n] for n in names)
        per_node = writes / len(names) / minutes
        by_agent = {p.name: p.metric("k3net_node_writes_total") - writes0[p.name] for p in procs}
        print(f"\n    {writes} writes in {minutes * 60:.1f}s: {per_node:.1f} per node per minute "
              f"(lastSeen budget {budget:g}); by agent {by_agent}; "
              f"revisions {etcd.revision() - rev0}")
        assert per_node <= 2 * budget, f"write churn: {per_node:.0f}/node/min"
        # Every Node lists its LAN addresses in the one canonical order, and no bridge.
        stored = {n: [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
                  for n, (node, _) in etcd.raw.nodes().items()}
        assert stored == {"node-a": [lan[0].address], "node-b": [lan[1].address],
                          "node-c": [lan[2].address, "10.77.0.100"]}
        assert all(etcd.raw.ready(n) == ("True", "AgentReady") for n in names)


def test_one_way_reject_makes_a_node_blip_at_most_once(
    agents: AgentFactory, shared_etcd: Any
) -> None:
    ttl = 4.0
    with Lan(3) as lan:
        a_host, b_host, c_host = lan.hosts
        etcd = shared_etcd(c_host)
        names = ["node-a", "node-b", "node-c"]
        procs = _start_everywhere(agents, lan, names, ttl, etcd.config)
        a, b, c = procs
        wait_for(lambda: all(etcd.raw.ready(n) == ("True", "AgentReady") for n in names), 15,
                 what="every Node Ready in etcd")
        wait_for(lambda: a.metric("k3net_probes_total", result="confirmed") >= 2, 15,
                 what="node-a probing its peers")
        since = etcd.revision()
        # node-a's connects to node-b are reset: node-a sees node-b refused on every probe,
        # while node-b (its own heartbeat) and node-c still see it alive.
        a_host.reject_tcp(b_host.address, PORT)
        refused = a.metric("k3net_probes_total", result="refused")
        # Long enough for several refusals to be written if nothing stopped them: node-a's
        # probes of node-b refused for three peer-ttls.
        wait_for(lambda: a.metric("k3net_probes_total", result="refused") >= refused + 3 * ttl,
                 40, interval=0.2, what="node-a refused by node-b for three peer-ttls")
        history = etcd.history("node-b", since)
        flips = _transitions(history)
        print(f"\n    node-b in etcd while node-a was rejected: {len(history)} values, "
              f"Ready transitions {flips}")
        # At most one blip (True -> False/PeerRefused -> True), and Ready again at the end.
        assert len(flips) <= 2, flips
        wait_for(lambda: etcd.raw.ready("node-b") == ("True", "AgentReady")
                 or etcd.raw.ready("node-b") == ("True", "PeerAlive"), 10,
                 what="node-b Ready in etcd")
        assert all(etcd.raw.ready(n) is not None and etcd.raw.ready(n)[0] == "True"  # type: ignore[index]
                   for n in ("node-a", "node-c"))
        assert len(_transitions(etcd.history("node-b", since))) <= 2


def _wait_event(proc: subprocess.Popen[str], event: str, timeout: float) -> tuple[list[str], str]:
    """Read the fake agent's JSON lines until `event` (AssertionError after `timeout`): the
    events read, and the start of a line not complete yet. Read from the pipe itself, never
    through the text wrapper's buffer, which select cannot see: two lines that came in one
    read would leave the second unseen until the next."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    fd, events, pending = proc.stdout.fileno(), [], b""
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        events += [json.loads(line)["event"] for line in lines if line.strip()]
        if event in events:
            return events, pending.decode()
    raise AssertionError(f"the fake agent did not report {event!r} within {timeout}s: {events}")


@pytest.mark.parametrize(("order", "gap"), [
    # The Go agent's order: the goodbye, then its listener a while later (it still answers).
    ("--goodbye-first", "1.5"),
    # The other order, with the goodbye before the refusal's re-probe (1 s) could confirm a
    # crash,
    ("--listener-first", "0.3"),
    # and after it: the Node is False/PeerRefused for a while, and the goodbye makes it PeerLeft.
    ("--listener-first", "2.5"),
])
def test_go_style_goodbye_order_gives_peer_left(agents: AgentFactory, order: str, gap: str) -> None:
    with Lan(2) as lan:
        a_host, g_host = lan.hosts
        # peer-ttl 30s: neither expiry nor the refusal's re-probe path can explain PeerLeft.
        a = agents.start(a_host, "node-a", "--peer-ttl", "30s", "--probe-interval", "1s")
        go = g_host.popen([sys.executable, str(ROOT / "tests" / "helpers" / "fakeagent.py"), "--name", "go-peer",
                           "--listen", f"{g_host.address}:{PORT}", "--advertise",
                           "--iface", g_host.interface, order, gap],
                          stdout=subprocess.PIPE, text=True)
        try:
            a.wait_ready()
            wait_for(lambda: _status(a, "go-peer") == ("True", "PeerAlive"), 20,
                     what="the Go-style peer Ready at node-a")
            # Peers see it while it still announces; its SIGTERM handler is set once it is done.
            seen, pending = _wait_event(go, "registered", 15)
            go.terminate()  # SIGTERM: goodbye and listener, `gap` s apart in the order asked
            stopped = time.monotonic()
            wait_for(lambda: _status(a, "go-peer") == ("False", "PeerLeft"), 10,
                     what="the Go-style peer False/PeerLeft at node-a")
            print(f"\n    {order[2:]}: PeerLeft at node-a {time.monotonic() - stopped:.2f}s "
                  "after SIGTERM")
            out, _ = go.communicate(timeout=10)
            events = seen + [json.loads(line)["event"] for line in (pending + out).splitlines()]
            first = "goodbye-sent" if order == "--goodbye-first" else "listener-closed"
            assert events.index(first) < events.index(
                "listener-closed" if first == "goodbye-sent" else "goodbye-sent"), events
        finally:
            if go.poll() is None:
                go.kill()
            go.wait(10)

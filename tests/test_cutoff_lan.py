"""End to end: one agent loses the shared store while its LAN works (its packets to etcd dropped
without a word). Its peers still reach it, so nothing about it is wrong: its Node stays Ready
(they refresh it), no other Node moves, its /readyz says the store is gone, and once the store is
back it writes nothing false from what it decided while cut off. Real agents as processes on a
netns LAN, real mDNS, one shared etcd read raw (etcdctl), short timings (peer-ttl 3 s: the cut
lasts three of them, so its Node would have expired had nobody kept it). The lab's `cutoff`
scenario measures the same with a reset cut too (docs/lan-sample.md)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from k3lab.agents import AgentFactory, AgentProc
from k3lab.netns import Lan
from k3lab.nsclient import wait_for
from k3lab.raw import RawEtcd, lan_etcd

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("netns_ok", "etcd_ok")]

NAMES = ["node-a", "node-b", "node-c"]
READY = {("True", "AgentReady"), ("True", "PeerAlive")}
TTL = 3.0
FAST = ("--peer-ttl", "3s", "--probe-interval", "1s")


def _store_check(proc: AgentProc) -> int:
    return proc.client.get(proc.url + "/readyz/store")[0]


def _all_ready_for(raw: RawEtcd, seconds: float) -> None:
    """Every Node stays Ready in etcd for `seconds` (read every 0.25 s)."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        states = {n: raw.ready(n) for n in NAMES}
        assert all(s in READY for s in states.values()), states
        time.sleep(0.25)


def test_an_agent_cut_off_from_the_store_changes_nothing_and_says_so(
    agents: AgentFactory, tmp_path: Path
) -> None:
    with Lan(3) as lan:
        with lan_etcd(lan[0], tmp_path) as (etcd, raw, config):
            procs = [agents.start(host, name, *FAST, config=config)
                     for host, name in zip(lan.hosts, NAMES, strict=True)]
            for proc in procs:
                proc.wait_ready()
            wait_for(lambda: all(raw.ready(n) in READY for n in NAMES), 15,
                     what="every Node Ready in etcd")
            cut = procs[2]
            assert _store_check(cut) == 200

            host, port = etcd.address.rsplit(":", 1)
            lan[2].drop_tcp(host, int(port))
            try:
                wait_for(lambda: _store_check(cut) == 503, 15,
                         what="node-c's /readyz/store saying the store is gone")
                _all_ready_for(raw, 3 * TTL)
            finally:
                lan[2].clear_rejects()
            wait_for(lambda: _store_check(cut) == 200, 30,
                     what="node-c's /readyz/store ok again")
            _all_ready_for(raw, 2 * TTL)  # nothing false written from the time it was cut
            assert cut.nodes().keys() >= set(NAMES)  # and its own view is whole again

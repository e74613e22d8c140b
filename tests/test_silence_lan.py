"""End to end: a host that vanishes (its link cut: nothing closes, nothing refuses) is written
Unknown/PeerUnreachable within seconds by the agents that held a connection to it, and Ready again
soon after its link returns; an agent that is only stopped (SIGSTOP) is not written not-Ready.
Real agents as processes on a netns LAN, real mDNS, one shared etcd, default timings (peer-ttl
90 s: whatever is seen here is not expiry). The store is read raw (etcdctl)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from k3lab.agents import AgentFactory, held_everywhere
from k3lab.netns import Lan
from k3lab.nsclient import wait_for
from k3lab.raw import lan_etcd

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("netns_ok", "etcd_ok")]

NAMES = ["node-a", "node-b", "node-c"]
READY = {("True", "AgentReady"), ("True", "PeerAlive")}


def test_a_vanished_host_is_unreachable_in_seconds_and_a_stopped_agent_is_not(
    agents: AgentFactory, tmp_path: Path
) -> None:
    with Lan(3) as lan:
        with lan_etcd(lan[0], tmp_path) as (_, raw, config):
            procs = agents.start_held(lan.hosts, NAMES, config, lambda n: raw.ready(n) in READY)
            a, b, c = procs

            # node-c's link is cut: its Node goes Unknown/PeerUnreachable long before peer-ttl.
            cut = time.monotonic()
            lan[2].link_down()
            wait_for(lambda: raw.ready("node-c") == ("Unknown", "PeerUnreachable"), 10,
                     what="node-c Unknown/PeerUnreachable in etcd", interval=0.1)
            lost = time.monotonic() - cut
            assert raw.ready("node-a") in READY and raw.ready("node-b") in READY
            confirmed = sum(p.metric("k3net_suspicions_total", result="confirmed")
                            for p in (a, b))
            assert confirmed >= 1

            # Back: Ready again, written by the first agent that reaches it.
            back = time.monotonic()
            lan[2].link_up()
            wait_for(lambda: raw.ready("node-c") in READY, 10, what="node-c Ready again",
                     interval=0.1)
            returned = time.monotonic() - back
            assert raw.ready("node-a") in READY and raw.ready("node-b") in READY

            # A stopped agent's kernel still answers: its holds stay quiet, nothing is written.
            wait_for(lambda: held_everywhere(procs), 30, what="every peer held again")
            before = sum(p.metric("k3net_suspicions_total", result="confirmed") for p in procs)
            b.signal(signal.SIGSTOP)
            stopped_until = time.monotonic() + 5
            while time.monotonic() < stopped_until:
                assert raw.ready("node-b") in READY
                time.sleep(0.25)
            b.signal(signal.SIGCONT)
            settle = time.monotonic() + 3
            while time.monotonic() < settle:
                assert raw.ready("node-b") in READY
                time.sleep(0.25)
            assert sum(p.metric("k3net_suspicions_total", result="confirmed")
                       for p in procs) == before

            print(f"\nmeasured: link cut to Unknown/PeerUnreachable {lost:.2f}s, link back to"
                  f" Ready {returned:.2f}s (3 agents, shared etcd, default timings)")

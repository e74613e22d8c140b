"""End to end: the LAN splits in two (a failed link between two switches) while both halves
still reach the shared store. Every host lives, so no Node may go not-Ready: each half's agents
suspect the other half's hosts (their held connections go silent), mark their Nodes as
suspected, and each marked agent answers through the store (its Node written, lastSeen fresh),
so the suspicions' verdicts write nothing. Real agents as processes on a netns LAN, real mDNS,
one etcd on a fifth host that both halves reach, default timings (peer-ttl 90 s: nothing
expires here). Status changes are read from every agent's own log of the store's watch, which
sees every write, however short a blip."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from k3lab.agents import AgentFactory, AgentProc, held_everywhere
from k3lab.netns import Lan
from k3lab.nsclient import wait_for
from k3lab.raw import lan_etcd

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("netns_ok", "etcd_ok")]

NAMES = ["node-a", "node-b", "node-c", "node-d"]
READY = {("True", "AgentReady"), ("True", "PeerAlive")}
# Long enough for every held connection across the split to go silent (2 s) and every
# suspicion to end in its verdict (a probe timeout), with room on a loaded machine.
APART = 40.0


def _suspicions(procs: list[AgentProc]) -> float:
    return sum(p.metric("k3net_suspicions_total", result=r) for p in procs
               for r in ("confirmed", "refuted", "withheld"))


# The store near (a LAN's etcd: answers in milliseconds), and far: every byte to and from it
# 150 ms late each way, so that a suspect's answer through it (our mark's write and its watch,
# the suspect's write, our watch) takes about 0.6 s, twice the window a near store needs.
@pytest.mark.parametrize("delay", [0.0, 0.15], ids=["store-near", "store-far"])
def test_a_split_lan_whose_halves_reach_the_store_writes_no_node_not_ready(
    agents: AgentFactory, tmp_path: Path, delay: float
) -> None:
    with Lan(5) as lan:
        with lan_etcd(lan[4], tmp_path, delay=delay) as (_, raw, config):
            procs = agents.start_held(lan.hosts[:4], NAMES, config,
                                      lambda n: raw.ready(n) in READY)
            logged = [len(p.log()) for p in procs]

            lan.split([0, 1], [2, 3])
            try:
                until = time.monotonic() + APART
                while time.monotonic() < until:
                    seen = {n: raw.ready(n) for n in NAMES}
                    assert all(v in READY for v in seen.values()), seen
                    time.sleep(0.25)
                suspected = _suspicions(procs)
            finally:
                lan.split(())
            assert suspected >= 4  # each half lost the other: every agent suspected someone
            for proc, start in zip(procs, logged, strict=True):
                tail = proc.log()[start:]
                assert "PeerUnreachable" not in tail, f"{proc.name}:\n{tail[-3000:]}"
            # Every mark of a suspicion was taken off by the answers.
            wait_for(lambda: not any("k3.network/suspectedBy" in node["metadata"].get(
                "annotations", {}) for node in procs[0].nodes().values()), 10,
                     what="no Node marked as suspected")
            wait_for(lambda: held_everywhere(procs), 30, what="every peer held again")
            assert all(raw.ready(n) in READY for n in NAMES)

"""End to end: what an operator reads in the log at the default level when a peer dies. Real
agents on a simulated LAN (network namespaces), each on its own memory store."""

from __future__ import annotations

import json
import re
import signal
from functools import partial

import pytest

from k3lab.agents import AgentFactory, AgentProc, ready
from k3lab.netns import Lan
from k3lab.nsclient import wait_for

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("netns_ok")]


def _ready_is(agent: AgentProc, want: tuple[str, str]) -> bool:
    return ready(agent.nodes().get("node-b")) == want


def test_a_killed_peer_is_one_warning_with_its_evidence(agents: AgentFactory) -> None:
    with Lan(3) as lan:
        ttl = ("--peer-ttl", "3s")  # probes every 0.5 s: the crash is seen within a second
        text = agents.start(lan[0], "node-a", *ttl, "--log-level", "info")
        b = agents.start(lan[1], "node-b", *ttl)
        as_json = agents.start(lan[2], "node-c", *ttl, "--log-level", "info",
                               "--log-format", "json")
        for agent in (text, b, as_json):
            agent.wait_ready()
        for agent in (text, as_json):
            wait_for(partial(_ready_is, agent, ("True", "PeerAlive")), 15,
                     what=f"node-b Ready at {agent.name}")
        b.signal(signal.SIGKILL)
        for agent in (text, as_json):
            wait_for(partial(_ready_is, agent, ("False", "PeerRefused")), 10,
                     what=f"node-b PeerRefused at {agent.name}")
        endpoint = f"{lan[1].address}:7946"

        wait_for(lambda: "NotReady" in text.log(), 5, what="the line in node-a's log")
        lines = text.log().splitlines()
        joined = [line for line in lines if "k3net.nodes: node node-b Ready" in line]
        assert len(joined) == 1 and " INFO " in joined[0], lines
        assert re.search(rf"node node-b Ready \(PeerAlive\): answered at {re.escape(endpoint)}, "
                         r"last answer \d+\.\d s ago$", joined[0]), joined[0]
        failed = [line for line in lines if "node node-b NotReady" in line]
        assert len(failed) == 1, lines
        assert re.search(
            rf" WARNING k3net\.nodes: node node-b NotReady \(PeerRefused\): "
            rf"{re.escape(endpoint)} refused (twice|\d+ times), last answer \d+\.\d s ago$",
            failed[0]), failed[0]
        # At info, the warnings are exactly the failures: this one.
        # (k3net's own warnings: zeroconf may warn once that a link-local address is not
        # bindable yet, which is about this host, not about a node)
        assert [line for line in lines if " WARNING    k3net" in line or " WARNING k3net" in line] == failed

        wait_for(lambda: "NotReady" in as_json.log(), 5, what="the line in node-c's log")
        records = [json.loads(line) for line in as_json.log().splitlines()]
        [record] = [r for r in records if r.get("reason") == "PeerRefused"]
        assert {k: record[k] for k in ("level", "logger", "node", "peer", "status", "addresses")} \
            == {"level": "warning", "logger": "k3net.nodes", "node": "node-b", "peer": endpoint,
                "status": "NotReady", "addresses": [lan[1].address]}
        assert record["last_answer"] < 10


def test_a_vanished_peer_is_unreachable_with_a_warning_and_returns_with_info(
    agents: AgentFactory,
) -> None:
    with Lan(2) as lan:
        a = agents.start(lan[0], "node-a", "--peer-ttl", "3s", "--log-level", "info")
        b = agents.start(lan[1], "node-b", "--peer-ttl", "3s")
        a.wait_ready()
        b.wait_ready()
        wait_for(partial(_ready_is, a, ("True", "PeerAlive")), 15, what="node-b Ready at a")
        lan[1].link_down()  # nothing answers and nothing refuses: the held connection's silence
        wait_for(partial(_ready_is, a, ("Unknown", "PeerUnreachable")), 10,
                 what="node-b unreachable at node-a")
        lan[1].link_up()
        wait_for(partial(_ready_is, a, ("True", "PeerAlive")), 10, what="node-b back at a")
        wait_for(lambda: a.log().count("node node-b Ready") == 2, 5, what="the return logged")

        lines = [line for line in a.log().splitlines() if "k3net.nodes: node node-b" in line]
        assert len(lines) == 3, lines  # arrival, unreachable, return: one line each
        assert " INFO " in lines[0] and " INFO " in lines[2]
        assert re.search(
            r" WARNING k3net\.nodes: node node-b Unknown \(PeerUnreachable\): "
            rf"{re.escape(lan[1].address)}:7946 went silent, nobody reached it, "
            r"last answer \d+\.\d s ago$",
            lines[1]), lines[1]
        assert re.search(r"Ready \(PeerAlive\): answered at ", lines[2]), lines[2]

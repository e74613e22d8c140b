"""End to end: join by introduction on a namespace LAN. A newcomer on the memory store finds a
running agent (its mDNS query is answered at once), confirms it, and says hello; the running
agent probes it at the hello's source address and confirms it, while the newcomer's own mDNS
registration (RFC 6762 probing, over a second) has not let anybody hear of it yet."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest

from k3lab.agents import AgentFactory, AgentProc
from k3lab.netns import Lan
from k3lab.nsclient import wait_for

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("netns_ok")]


def _peer(agent: AgentProc, name: str) -> dict[str, Any] | None:
    return next((p for p in agent.get_json("/peers")["peers"] if p["name"] == name), None)


def _confirmed(agent: AgentProc, name: str) -> dict[str, Any] | None:
    peer = _peer(agent, name)
    return peer if peer is not None and peer["confirmed"] else None


def test_a_newcomer_is_confirmed_through_its_introduction_before_its_mdns_record(
    agents: AgentFactory,
) -> None:
    with Lan(2) as lan:
        a = agents.start(lan[0], "node-a")
        a.wait_ready()
        wait_for(lambda: a.client.get(a.url + "/readyz")[0] == 200, 15, what="node-a ready")

        b = agents.start(lan[1], "node-b")
        # The first moment node-a follows node-b confirmed: how it heard of it then.
        seen = wait_for(partial(_confirmed, a, "node-b"), 15, interval=0.02,
                        what="node-b confirmed at node-a")
        # node-b's advertisement is not registered yet (its /readyz mdns check fails): node-a
        # can only have heard of it through its hello.
        mdns_check = b.client.get(b.url + "/readyz/mdns")[0]
        assert seen is not None
        assert seen["foundBy"] == "introduced", seen
        assert seen["addresses"] == [lan[1].address]
        assert seen["lastProbe"]["outcome"] == "confirmed"
        assert seen["lastProbe"]["address"] == lan[1].address
        assert mdns_check == 503
        # Once node-b's record is announced, node-a takes mDNS's word (the more direct way).
        wait_for(lambda: (p := _peer(a, "node-b")) is not None and p["foundBy"] == "mdns", 15,
                 what="node-b found over mDNS at node-a later")
        assert "hello to node-a" in b.log()

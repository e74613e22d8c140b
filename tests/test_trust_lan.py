"""End to end, on a simulated LAN (network namespaces on a bridge): what a host without the
cluster key announces about a member never reaches that member's Node, and its forged departures
do not move it (design.md section 6)."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from k3lab.agents import AgentFactory, AgentProc, ready
from k3lab.netns import Lan
from k3lab.nsclient import wait_for

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("netns_ok")]

ROOT = Path(__file__).resolve().parent.parent
KEY = b"6b3a55e0261b4c8d9f1e0a7c2d4b6e8f\n"


def _internal(node: dict[str, Any]) -> list[str]:
    return [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]


def _wait_event(proc: Any, event: str, timeout: float = 15) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        line = proc.stdout.readline()
        if not line:
            break
        if json.loads(line).get("event") == event:
            return
    raise AssertionError(f"the forger did not report {event!r} within {timeout}s")


def _watch(a: AgentProc, seconds: float) -> list[tuple[tuple[str, str] | None, list[str], str]]:
    """Node node-b as node-a's store holds it, sampled every 0.2 s for `seconds`."""
    seen = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        node = a.nodes()["node-b"]
        seen.append((ready(node), _internal(node),
                     node["metadata"]["annotations"].get("k3.network/pid", "")))
        time.sleep(0.2)
    return seen


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "open"])
def test_a_stranger_cannot_write_addresses_pid_or_departures_of_a_member(
    agents: AgentFactory, tmp_path: Path, keyed: bool
) -> None:
    key = tmp_path / "cluster.key"
    key.write_bytes(KEY)
    key.chmod(0o600)
    flags = ("--cluster-key-file", str(key)) if keyed else ()
    with Lan(3) as lan:
        a = agents.start(lan[0], "node-a", *flags)
        b = agents.start(lan[1], "node-b", *flags)
        a.wait_ready()
        b.wait_ready()
        wait_for(lambda: ready(a.nodes().get("node-b")) == ("True", "PeerAlive"), 15,
                 what="node-b Ready at node-a")
        b_pid = a.nodes()["node-b"]["metadata"]["annotations"]["k3.network/pid"]
        foreign = [lan[2].address, "10.77.0.66"]
        forger = lan[2].popen(
            [sys.executable, str(ROOT / "tests" / "helpers" / "forger.py"), "--node", "node-b",
             "--address", lan[1].address, *(f"--address={x}" for x in foreign), "--pid", "31337"],
            stdout=-1, text=True)
        try:
            _wait_event(forger, "registered")
            during = _watch(a, 6)
            # The forger moves node-b to an address where nothing listens, then says goodbye.
            forger.send_signal(signal.SIGTERM)
            _wait_event(forger, "goodbye-sent")
            forger.wait(5)
            ghost = lan[2].popen(
                [sys.executable, str(ROOT / "tests" / "helpers" / "forger.py"), "--node",
                 "node-b", "--address", "10.77.0.67"], stdout=-1, text=True)
            _wait_event(ghost, "registered")
            time.sleep(2)
            ghost.send_signal(signal.SIGTERM)
            _wait_event(ghost, "goodbye-sent")
            ghost.wait(5)
            after = _watch(a, 5)
        finally:
            for proc in (forger, *(p for p in [locals().get("ghost")] if p is not None)):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(5)
        for status, addresses, pid in during + after:
            assert status == ("True", "PeerAlive"), (status, during + after)
            assert addresses == [lan[1].address] and pid == b_pid, (addresses, pid)

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from k3lab import netns
from k3lab.agents import AgentFactory

from .helpers.require import require
from .helpers.sockets import unanswering


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_namespaces() -> Iterator[None]:
    if netns.can_use_netns():
        netns.remove_leftovers()
    yield


# Under pytest-xdist (scripts/test): this process's worker, `gw0`, `gw1`, ...; None when serial.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
# How many namespace tests may run at once across the workers (K3NET_TEST_LAB_SLOTS). They wait
# in real time far more than they compute: 3 on 2 cores took the suite from 3:59 to 2:54.
LAB_SLOTS = int(os.environ.get("K3NET_TEST_LAB_SLOTS", "3"))
_SLOT_WAIT = 900  # seconds; no namespace test takes a slot for that long


@pytest.fixture
def lab_slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One of LAB_SLOTS places for a test on namespace LANs, shared by the xdist workers of a
    run. Such tests start agent processes (about a CPU second each on start) and judge real
    time (a peer-ttl of 3 s, /healthz within 15 s): on two cores, four of them at once would
    starve each other. The other workers go on with the in-process tests meanwhile."""
    if WORKER is None:
        yield
        return
    # The workers' base directories (popen-gw0, ...) share the run's one.
    run_dir = tmp_path_factory.getbasetemp().parent
    deadline = time.monotonic() + _SLOT_WAIT
    while time.monotonic() < deadline:
        for i in range(LAB_SLOTS):
            with open(run_dir / f"lab-slot-{i}", "w") as slot:
                try:
                    fcntl.flock(slot, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                yield  # the lock goes with the file, when the test is done
                return
        time.sleep(0.05)
    pytest.fail(f"no namespace test slot free within {_SLOT_WAIT}s")


@pytest.fixture
def netns_ok(lab_slot: None) -> None:
    require(netns.can_use_netns(), "needs root and iproute2 for network namespaces")


@pytest.fixture
def etcd_ok() -> None:
    require(shutil.which("etcd") is not None and shutil.which("etcdctl") is not None,
            "needs etcd and etcdctl (Debian etcd-server, etcd-client)")


@pytest.fixture
def agents(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[AgentFactory]:
    factory = AgentFactory(tmp_path)
    yield factory
    factory.close()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for agent in factory.agents:
            print(f"----- log of agent {agent.name} -----\n{agent.log()[-6000:]}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    from .helpers.commands import free_port

    return free_port()


@pytest.fixture
def unanswering_port() -> Iterator[int]:
    """A loopback listener whose accept queue is full: new connects hang (SYNs are dropped),
    like a peer that is there but does not answer."""
    yield from unanswering("127.0.0.1")

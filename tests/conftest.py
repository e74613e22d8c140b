from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from k3lab import netns
from k3lab.agents import AgentFactory
from tests.helpers.require import require


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_namespaces() -> Iterator[None]:
    if netns.can_use_netns():
        netns.remove_leftovers()
    yield


@pytest.fixture
def netns_ok() -> None:
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

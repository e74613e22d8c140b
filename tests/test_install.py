"""Installable: a wheel built from this tree holds the agent and nothing of its lab, and
installed into a fresh virtualenv it gives a working `k3net` (--version, an agent in a loopback
namespace); the systemd unit in contrib/systemd verifies against it.

Nothing is downloaded: the wheel is built without build isolation (setuptools comes from the
test group), installed with --no-index, and its dependencies are those of the test environment,
made visible to the fresh virtualenv by a .pth file; `pip check` then proves that the wheel's
declared dependencies are satisfied, as a fresh `pip install` would have to satisfy them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from k3lab.netns import LoopbackHost
from k3lab.nsclient import NetnsClient, wait_for
from k3net import version

REPO = Path(__file__).resolve().parent.parent


def run(*argv: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300,
                          check=True, **kwargs)  # type: ignore[call-overload]


PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The k3net wheel built from this tree."""
    dist = tmp_path_factory.mktemp("dist")
    # setuptools builds in the tree and keeps what an earlier build left in build/: start clean,
    # or the wheel holds files this version no longer ships.
    shutil.rmtree(REPO / "build", ignore_errors=True)
    run(*PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, REPO)
    [built] = dist.glob("k3net-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the built wheel installed; its bin/ directory."""
    target = tmp_path_factory.mktemp("install") / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", target)
    python = target / "bin" / "python"
    purelib = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
                   .stdout.strip())
    # The dependencies: the test environment's site-packages, after the venv's own.
    (purelib / "zz_k3net_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run(*PIP, "--python", python, "install", "--no-index", "--no-deps", wheel)
    run(*PIP, "--python", python, "check")
    return target / "bin"


def test_wheel_holds_the_agent_and_no_lab(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = f"k3net-{version.version()}.dist-info"
    assert {name.split("/")[0] for name in names} == {"k3net", dist_info}
    assert "k3net/agent.py" in names and "k3net/web/static/index.html" in names
    # The lab (namespaces, private servers, the simulation, the benchmarks) and the tests are
    # development code: none of it is shipped.
    lab = [name for name in names
           if any(part in ("harness", "k3lab", "sim", "bench", "tests", "scripts")
                  for part in Path(name).parts)]
    assert lab == []
    top_level = zipfile.ZipFile(wheel).read(f"{dist_info}/top_level.txt").decode().split()
    assert top_level == ["k3net"]


def clean_env() -> dict[str, str]:
    """No K3NET_ settings, and nothing that would import k3net from this source tree."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("K3NET_", "NOTIFY_", "WATCHDOG_")) and k != "PYTHONPATH"}


def test_installed_k3net_version(venv: Path, tmp_path: Path) -> None:
    out = run(venv / "k3net", "--version", cwd=tmp_path, env=clean_env()).stdout
    commit = version.git_commit(REPO)
    assert out == f"k3net {version.version()}" + (f" (commit {commit})" if commit else "") + "\n"
    where = run(venv / "python", "-c", "import k3net, pathlib; print(pathlib.Path(k3net.__file__)"
                ".parent)", cwd=tmp_path, env=clean_env()).stdout.strip()
    assert Path(where).is_relative_to(venv.parent), where  # the wheel's copy, not this tree
    assert (Path(where) / "web" / "static").is_dir()  # the page's assets are in the wheel
    lab = run(venv / "python", "-c", "import importlib.util as u; print(u.find_spec('k3lab'))",
              cwd=tmp_path, env=clean_env()).stdout.strip()
    assert lab == "None"  # installing k3net brings no lab


@pytest.mark.netns
@pytest.mark.usefixtures("netns_ok")
def test_installed_agent_runs(venv: Path, tmp_path: Path) -> None:
    with LoopbackHost() as host, (tmp_path / "agent.log").open("w") as log:
        proc = host.popen([str(venv / "k3net"), "run", "--node-name", "node-w", "--listen",
                           f"{host.address}:7311", "--interface", "lo"],
                          cwd=tmp_path, env=clean_env(), stdout=log, stderr=subprocess.STDOUT)
        client = NetnsClient(host.name)
        url = f"http://{host.address}:7311"
        try:
            wait_for(lambda: proc.poll() is not None or client.get(url + "/readyz")[0] == 200,
                     30, what="the installed agent ready")
            assert proc.poll() is None, (tmp_path / "agent.log").read_text()
            info = json.loads(client.get(url + "/info")[1])
            assert (info["node"], info["version"]) == ("node-w", version.version())
            assert info["commit"] == version.git_commit(REPO)
            nodes = json.loads(client.get(url + "/nodes")[1])
            wait_for(lambda: [n["metadata"]["name"] for n in
                              json.loads(client.get(url + "/nodes")[1])["items"]] == ["node-w"],
                     10, what="its own Node")
            assert nodes["kind"] == "NodeList"
        finally:
            client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_unit_verifies(venv: Path, tmp_path: Path) -> None:
    unit = (REPO / "contrib" / "systemd" / "k3net.service").read_text()
    assert "ExecStart=/usr/local/bin/k3net run" in unit
    for line in ("Type=notify", "DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "EnvironmentFile=-/etc/default/k3net", "Restart=on-failure", "WatchdogSec="):
        assert line in unit, line
    # verify checks that ExecStart exists: point it at the installed k3net.
    path = tmp_path / "k3net.service"
    path.write_text(unit.replace("/usr/local/bin/k3net", str(venv / "k3net")))
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr

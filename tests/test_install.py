"""Installable: a wheel built from this tree and installed into a fresh virtualenv gives a
working `k3net` (--version, an agent in a loopback namespace); the documented install path
(contrib/systemd/install.sh: a virtualenv under /opt/k3net, the unit, root-only credentials) run
from that wheel into a scratch root gives a unit that `systemd-analyze verify` accepts, and the
agent started as the unit starts it (its ExecStart, its Environment= with the credentials
directory) reads its key and config there. No systemd service is started.

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
import stat
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import attrs
import pytest

from k3lab.netns import LoopbackHost
from k3lab.nsclient import NetnsClient, wait_for
from k3net import version
from k3net.core import identity

REPO = Path(__file__).resolve().parent.parent


def run(*argv: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300,
                          check=True, **kwargs)  # type: ignore[call-overload]


PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this tree."""
    work = tmp_path_factory.mktemp("wheel")
    # setuptools builds in the tree and keeps what an earlier build left in build/: start clean,
    # or the wheel holds files this version no longer ships.
    shutil.rmtree(REPO / "build", ignore_errors=True)
    run(*PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", work, REPO)
    [built] = work.glob("k3net-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the built wheel installed; its bin/ directory."""
    work = tmp_path_factory.mktemp("install")
    target = work / "venv"
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


# --- the documented install path: contrib/systemd/install.sh -----------------------------------

INSTALL = REPO / "contrib" / "systemd" / "install.sh"
# Debian's own Python when there is one (the documented path), else the test's.
SYSTEM_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


@attrs.frozen
class Installed:
    root: Path  # stands for / : <root>/opt/k3net, <root>/etc/...
    first_output: str

    @property
    def prefix(self) -> Path:
        return self.root / "opt" / "k3net"

    @property
    def etc(self) -> Path:
        return self.root / "etc" / "k3net"

    @property
    def unit(self) -> Path:
        return self.root / "etc" / "systemd" / "system" / "k3net.service"


def install_env(root: Path) -> dict[str, str]:
    """install.sh's places under `root`, and no download: the wheel alone, its dependencies
    from the test environment (PYTHONPATH: the fresh virtualenv has none of its own)."""
    return {
        **clean_env(),
        "K3NET_PREFIX": str(root / "opt" / "k3net"),
        "K3NET_ETC": str(root / "etc" / "k3net"),
        "K3NET_UNIT_DIR": str(root / "etc" / "systemd" / "system"),
        "K3NET_DEFAULTS": str(root / "etc" / "default" / "k3net"),
        "PYTHON": SYSTEM_PYTHON,
        "K3NET_PIP_ARGS": "--no-index --no-deps",
        "PYTHONPATH": sysconfig.get_path("purelib"),
    }


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The documented install, from the built wheel, into a fresh root."""
    root = tmp_path_factory.mktemp("root")
    out = run("sh", INSTALL, wheel, env=install_env(root)).stdout
    return Installed(root, out)


def unit_values(unit: Path, key: str) -> list[str]:
    return [line.partition("=")[2] for line in unit.read_text().splitlines()
            if line.startswith(key + "=")]


def test_install_script_installs_a_virtualenv_a_unit_and_root_only_credentials(
    installed: Installed, wheel: Path
) -> None:
    prefix, etc = installed.prefix, installed.etc
    assert (prefix / "pyvenv.cfg").exists()  # a virtualenv of its own, not the system Python
    out = subprocess.run([prefix / "bin" / "k3net", "--version"], capture_output=True,
                         text=True, env=install_env(installed.root), check=True).stdout
    assert out.startswith(f"k3net {version.version()}")
    assert unit_values(installed.unit, "ExecStart") == [f"{prefix}/bin/k3net run"]
    assert unit_values(installed.unit, "LoadCredential") == [
        f"cluster.key:{etc}/cluster.key", f"config.yaml:{etc}/config.yaml"]
    assert unit_values(installed.unit, "EnvironmentFile") == [
        f"-{installed.root}/etc/default/k3net"]
    assert (installed.root / "etc" / "default" / "k3net").read_text() == (
        REPO / "contrib" / "systemd" / "k3net.env").read_text()
    assert stat.S_IMODE(etc.stat().st_mode) == 0o700
    for name in ("cluster.key", "config.yaml"):
        assert stat.S_IMODE((etc / name).stat().st_mode) == 0o600, name
    key = (etc / "cluster.key").read_text().strip()
    assert len(key) == 64 and int(key, 16) >= 0  # 32 random bytes in hex
    if shutil.which("systemd-analyze"):
        assert "systemd-analyze verify: ok" in installed.first_output

    # Again (an upgrade): k3net reinstalled, the key and the config kept.
    (etc / "config.yaml").write_text("storage:\n  type: memory\n# edited\n")
    run("sh", INSTALL, wheel, env=install_env(installed.root))
    assert (etc / "cluster.key").read_text().strip() == key
    assert (etc / "config.yaml").read_text().endswith("# edited\n")


def test_shipped_unit_runs_in_its_own_limits() -> None:
    unit = REPO / "contrib" / "systemd" / "k3net.service"
    assert unit_values(unit, "ExecStart") == ["/opt/k3net/bin/k3net run"]
    assert unit_values(unit, "RestartPreventExitStatus") == ["2"]
    assert unit_values(unit, "Restart") == ["on-failure"]
    assert unit_values(unit, "MemoryMax") == ["256M"]
    assert unit_values(unit, "TasksMax") == ["128"]
    assert unit_values(unit, "LimitNOFILE") == ["16384"]
    for line in ("Type=notify", "DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "ProtectHome=yes", "WatchdogSec="):
        assert line in unit.read_text(), line


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_installed_unit_verifies(installed: Installed) -> None:
    done = subprocess.run(["systemd-analyze", "verify", str(installed.unit)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    # And it fails where it should: a unit whose ExecStart is missing does not verify.
    broken = installed.unit.with_name("k3net-broken.service")
    broken.write_text(installed.unit.read_text().replace(
        f"{installed.prefix}/bin/k3net", f"{installed.prefix}/bin/nothing"))
    done = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True,
                          text=True, timeout=60, check=False)
    broken.unlink()
    assert done.returncode != 0


def as_the_unit_runs_it(installed: Installed, credentials: Path) -> tuple[list[str], dict]:
    """ExecStart's command and the environment systemd gives it: the unit's Environment= with
    %d, the credentials directory, expanded, and CREDENTIALS_DIRECTORY."""
    env = install_env(installed.root)
    for value in unit_values(installed.unit, "Environment"):
        name, _, text = value.partition("=")
        env[name] = text.replace("%d", str(credentials))
    env["CREDENTIALS_DIRECTORY"] = str(credentials)
    [command] = unit_values(installed.unit, "ExecStart")
    return command.split(), env


def load_credentials(installed: Installed, into: Path) -> None:
    """What LoadCredential= does: a private copy of each file, readable by the service only."""
    into.mkdir()
    for value in unit_values(installed.unit, "LoadCredential"):
        name, _, source = value.partition(":")
        shutil.copyfile(source, into / name)
        (into / name).chmod(0o400)


@pytest.mark.netns
@pytest.mark.usefixtures("netns_ok")
def test_the_unit_hands_the_agent_its_key_and_config(installed: Installed, tmp_path: Path
                                                     ) -> None:
    creds = tmp_path / "credentials"
    load_credentials(installed, creds)
    argv, env = as_the_unit_runs_it(installed, creds)
    env.update(K3NET_NODE_NAME="node-u", K3NET_LISTEN="127.0.0.1:7313", K3NET_INTERFACE="lo")
    key = (installed.etc / "cluster.key").read_bytes().strip()
    with LoopbackHost() as host, (tmp_path / "agent.log").open("w") as log:
        proc = host.popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        client = NetnsClient(host.name)
        url = "http://127.0.0.1:7313"
        try:
            wait_for(lambda: proc.poll() is not None or client.get(url + "/readyz")[0] == 200,
                     30, what="the agent as the unit starts it, ready")
            assert proc.poll() is None, (tmp_path / "agent.log").read_text()
            nonce = bytes(range(identity.NONCE_BYTES))
            info = json.loads(client.get(f"{url}/info?nonce={nonce.hex()}")[1])
            # It proves the installed key: it read the credential.
            assert info["proof"] == identity.proof(key, nonce, "node-u")
            assert info["store"] == "memory"  # from the config credential
        finally:
            client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_a_bad_config_exits_2_which_the_unit_does_not_restart(installed: Installed,
                                                              tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    load_credentials(installed, creds)
    (creds / "config.yaml").chmod(0o600)
    (creds / "config.yaml").write_text("storage: [not, a, mapping\n")
    argv, env = as_the_unit_runs_it(installed, creds)
    # (on lo alone, should the config ever be taken: nothing may reach the machine's LAN)
    done = subprocess.run([*argv, "--node-name", "node-u", "--listen", "127.0.0.1:7314",
                           "--interface", "lo"], capture_output=True, text=True,
                          env=env, timeout=30, check=False)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "config.yaml" in done.stderr
    assert unit_values(installed.unit, "RestartPreventExitStatus") == ["2"]

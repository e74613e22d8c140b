"""`k3net run` flags: names and defaults of the Go agent, and one-line errors with exit code 2."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from k3net import cli
from k3net.config import ConfigError
from k3net.core.discovery import JoinAddress
from k3net.settings import Settings

from .helpers.commands import exit_code

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name in ("NODE_NAME", "CONFIG_PATH") or name.startswith("K3NET_"):
            monkeypatch.delenv(name)


def settings(*argv: str) -> Settings:
    return cli.settings_from_args(cli.parse_args(["run", *argv]))


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_defaults_match_the_go_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "node-a")
    s = settings()
    assert (s.listen_host, s.listen_port) == ("", 7946)
    assert s.service == "_k3._tcp"
    assert s.domain == "local."
    assert s.node_name == "node-a"
    assert s.peer_ttl == 90.0
    assert s.probe_interval == pytest.approx(15.0)  # peer-ttl / 6
    assert s.probe_timeout == pytest.approx(0.7)
    assert s.register_self is True
    assert s.interfaces == ()
    assert s.storage.type == "memory"
    assert s.config_path is None
    assert (s.log_level, s.log_format) == ("info", "text")


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        (["--listen=127.0.0.1:8080"], "listen_host", "127.0.0.1"),
        (["--listen=127.0.0.1:8080"], "listen_port", 8080),
        (["--listen", ":9000"], "listen_port", 9000),
        (["--listen=[::1]:7000"], "listen_host", "::1"),
        (["--listen=[::1]:7000"], "listen_port", 7000),
        (["--service=_other._tcp"], "service", "_other._tcp"),
        (["--domain", "example.local."], "domain", "example.local."),
        (["--node-name=worker-7.lan"], "node_name", "worker-7.lan"),
        (["--peer-ttl=30s"], "peer_ttl", 30.0),
        (["--peer-ttl=30s"], "probe_interval", 5.0),
        (["--peer-ttl=1m30s"], "peer_ttl", 90.0),
        (["--peer-ttl=2m", "--probe-interval=7s"], "probe_interval", 7.0),
        (["--probe-interval=500ms"], "probe_interval", 0.5),
        (["--probe-interval=500ms"], "peer_ttl", 90.0),
        (["--probe-timeout=250ms"], "probe_timeout", 0.25),
        (["--probe-timeout", "2s"], "probe_timeout", 2.0),
        (["--register-self=false"], "register_self", False),
        (["--register-self=False"], "register_self", False),
        (["--register-self=0"], "register_self", False),
        (["--register-self", "false"], "register_self", False),
        (["--register-self=true"], "register_self", True),
        (["--register-self"], "register_self", True),
        (["--interface=eth0"], "interfaces", ("eth0",)),
        (["--interface=eth0", "--interface", "wlan0"], "interfaces", ("eth0", "wlan0")),
        (["--interface=eth0,eth1", "--interface", "wlan0"], "interfaces", ("eth0", "eth1", "wlan0")),
        (["--interface=eth0", "--interface=eth0"], "interfaces", ("eth0",)),
        (["--join=10.0.0.1", "--join", "node-c:7000"], "join",
         (JoinAddress("10.0.0.1"), JoinAddress("node-c", 7000))),
        (["--scan=10.9.0.0/24", "--scan=10.9.1.0/24"], "scan",
         (ipaddress.ip_network("10.9.0.0/24"), ipaddress.ip_network("10.9.1.0/24"))),
        (["--prune-after=72h"], "prune_after", 72 * 3600.0),
        (["--prune-after=off"], "prune_after", 0.0),
    ],
)
def test_run_flags(
    argv: list[str], field: str, value: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NODE_NAME", "n1")
    got = getattr(settings(*argv), field)
    if isinstance(value, float):
        assert got == pytest.approx(value)
    else:
        assert got == value


@pytest.mark.parametrize(
    ("argv", "attr", "value"),
    [
        (["--log-level=debug"], "log_level", "debug"),
        (["--log-level", "error"], "log_level", "error"),
        (["--log-format=json"], "log_format", "json"),
    ],
)
def test_logging_flags(argv: list[str], attr: str, value: str) -> None:
    assert getattr(settings("--node-name=n1", *argv), attr) == value


BAD_FLAGS = [
    ["run", "--peer-ttl=abc"],
    ["run", "--peer-ttl", "-5s"],
    ["run", "-peer-ttl", "-5s"],
    ["run", "--peer-ttl=10"],
    ["run", "--peer-ttl=0"],
    ["run", "--peer-ttl=-1s"],
    ["run", "--probe-timeout=5x"],
    ["run", "--probe-interval=-1s"],
    ["run", "--probe-interval="],
    ["run", "--listen=7946"],
    ["run", "--listen=:99999"],
    ["run", "--listen=:0"],
    ["run", "--listen=host:http"],
    ["run", "--register-self=maybe"],
    ["run", "--log-level=loud"],
    ["run", "--log-format=xml"],
    ["run", "--scan=10.9.0.0/24", "--scan=10.9.1.0/33"],
    ["run", "--join=a:99999"],
    ["run", "--bogus"],
    ["run", "extra"],
    ["run", "--peer-ttl"],
]


@pytest.mark.parametrize("argv", BAD_FLAGS, ids=" ".join)
def test_bad_run_flag_exits_2_with_one_line_naming_run(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_code(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert one_line(captured.err).startswith("k3net run: error: ")


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["run", "--peer-ttl", "-5s"], "k3net run: error: --peer-ttl: negative duration '-5s'"),
        (["run", "-probe-timeout", "-1s"],
         "k3net run: error: --probe-timeout: negative duration '-1s'"),
        (["run", "--peer-ttl=0"], "k3net run: error: --peer-ttl: duration must be more than 0: '0'"),
        (["run", "--scan=10.9.0.0/24", "--scan=nope"],
         "k3net run: error: --scan: invalid scan range 'nope' (use a CIDR block like 10.0.2.0/24)"),
        (["run", "--bogus"], "k3net run: error: unrecognized arguments: --bogus (see --help)"),
        (["run", "--peer-ttl"], "k3net run: error: --peer-ttl: expected one argument (see --help)"),
        (["prune", "--config=k3.yaml", "--older-than", "-1h"],
         "k3net prune: error: --older-than: negative duration '-1h' (see --help)"),
    ],
)
def test_run_usage_errors_name_the_command_and_the_flag(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_code(argv) == 2
    assert one_line(capsys.readouterr().err) == line


@pytest.mark.parametrize(
    ("argv", "prog"),
    [
        ([], "k3net"), (["fly"], "k3net"), (["--bogus"], "k3net"), (["--bogus", "run"], "k3net"),
        (["run", "run"], "k3net run"),
        (["nodes", "--bogus"], "k3net nodes"), (["peers", "--bogus"], "k3net peers"),
        (["watch", "--bogus"], "k3net watch"), (["prune", "--bogus"], "k3net prune"),
    ],
    ids=lambda a: " ".join(a) if isinstance(a, list) else None,
)
def test_usage_errors_name_the_command_that_has_them(
    argv: list[str], prog: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_code(argv) == 2
    assert one_line(capsys.readouterr().err).startswith(f"{prog}: error: ")


@pytest.mark.parametrize("argv", [["run", "--peer-ttl=abc"], ["run", "--listen=nope"]])
def test_main_bad_flag_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(argv) == 2
    one_line(capsys.readouterr().err)


@pytest.mark.parametrize("value", ["::1", "1:2:3:7946"])
def test_unbracketed_ipv6_listen_is_refused(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(["run", f"--listen={value}"]) == 2
    assert "brackets" in one_line(capsys.readouterr().err)


def test_error_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(["run", "--peer-ttl=abc"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("k3net run: error: --peer-ttl: ") and "abc" in line


@pytest.mark.parametrize(
    "name",
    ["Bad_Name", "UPPER", "-leading", "trailing-", "a..b", "", "x" * 254, "sp ace"],
    ids=["underscore", "upper", "leading-dash", "trailing-dash", "empty-label", "empty",
         "too-long", "space"],
)
def test_bad_node_name_exits_2_without_starting(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(["run", f"--node-name={name}"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--node-name" in line


def test_bad_node_name_from_env_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "Not_Valid")
    with pytest.raises(ConfigError):
        settings()


def test_node_name_comes_from_env_then_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "from-env")
    assert settings().node_name == "from-env"
    assert settings("--node-name=from-flag").node_name == "from-flag"
    monkeypatch.delenv("NODE_NAME")
    assert settings().node_name == socket.gethostname().lower()


def test_config_path_from_env_and_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etcd = tmp_path / "etcd.yaml"
    etcd.write_text("storage:\n  type: etcd\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n")
    mysql = tmp_path / "mysql.yaml"
    mysql.write_text("storage:\n  type: mysql\n")
    monkeypatch.setenv("CONFIG_PATH", str(etcd))
    from_env = settings("--node-name=n1")
    assert from_env.storage.type == "etcd"
    assert from_env.config_path == str(etcd)
    from_flag = settings("--node-name=n1", f"--config={mysql}")
    assert from_flag.storage.type == "mysql"
    assert from_flag.config_path == str(mysql)


@pytest.mark.parametrize(
    "content",
    [None, "storage:\n  type: redis\n", "storage:\n  mysql:\n    port: abc\n", "storage: [\n"],
    ids=["missing", "unknown-type", "bad-port", "bad-yaml"],
)
def test_config_error_exits_2_with_one_line_naming_the_file(
    tmp_path: Path, content: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "k3.yaml"
    if content is not None:
        path.write_text(content)
    assert exit_code(["run", "--node-name=n1", f"--config={path}"]) == 2
    captured = capsys.readouterr()
    assert str(path) in one_line(captured.err)
    assert captured.out == ""


def test_config_error_from_env_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONFIG_PATH", str(tmp_path / "missing.yaml"))
    assert exit_code(["run", "--node-name=n1"]) == 2
    assert "missing.yaml" in one_line(capsys.readouterr().err)


def test_only_the_command_s_own_flags_take_the_next_word() -> None:
    # `peers --server` may stand alone (the local agent): -o is the next flag, not its value.
    args = cli.parse_args(["peers", "--server", "-o", "json"])
    assert args.server != "-o" and args.output == "json"
    args = cli.parse_args(["nodes", "--server", "http://a:1", "-o", "json"])
    assert (args.server, args.output) == ("http://a:1", "json")


def test_help_lists_every_run_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["run", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--config", "--listen", "--service", "--domain", "--node-name", "--peer-ttl",
                 "--register-self", "--probe-interval", "--probe-timeout", "--interface",
                 "--log-level", "--log-format"):
        assert flag in out, flag
    for default in (":7946", "_k3._tcp", "local.", "1m30s", "700ms", "peer-ttl/6", "1m0s"):
        assert f"default: {default}" in out, default


def test_python_m_k3net_bad_duration_exits_2_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_NAME", "CONFIG_PATH")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "k3net", "run", "--peer-ttl=abc"],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=env, check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "--peer-ttl" in one_line(proc.stderr)

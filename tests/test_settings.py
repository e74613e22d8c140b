"""Run settings: every flag also from K3NET_<FLAG> and from the config file's network: section,
precedence flag > environment > config file > default, Go's single-dash flag forms, --version."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from k3net import cli, version
from k3net.config import ConfigError
from k3net.core.discovery import JoinAddress
from k3net.settings import FLAG_BY_NAME, FLAGS, Settings, flag_table, go_flags
from k3net.settings import resolve as resolve_given

REPO = Path(__file__).resolve().parent.parent


def resolve(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    args = cli.parse_args(["run", *argv])
    return cli.settings_from_args(args, {"NODE_NAME": "n1", **(env or {})})


def config(tmp_path: Path, network: str) -> str:
    path = tmp_path / "k3.yaml"
    path.write_text("storage:\n  type: memory\nnetwork:\n" + network)
    return str(path)


# One row per flag: the variable, a value in it, the Settings field and what it becomes.
ENV_CASES: list[tuple[str, str, str, Any]] = [
    ("K3NET_LISTEN", "127.0.0.1:8080", "listen_port", 8080),
    ("K3NET_SERVICE", "_other._tcp", "service", "_other._tcp"),
    ("K3NET_DOMAIN", "lan.", "domain", "lan."),
    ("K3NET_INTERFACE", "eth0,eth1", "interfaces", ("eth0", "eth1")),
    ("K3NET_NODE_NAME", "from-k3net-env", "node_name", "from-k3net-env"),
    ("K3NET_PEER_TTL", "30s", "peer_ttl", 30.0),
    ("K3NET_PROBE_INTERVAL", "2s", "probe_interval", 2.0),
    ("K3NET_PROBE_TIMEOUT", "250ms", "probe_timeout", 0.25),
    ("K3NET_REGISTER_SELF", "false", "register_self", False),
    ("K3NET_PRUNE_AFTER", "72h", "prune_after", 72 * 3600.0),
    ("K3NET_LOG_LEVEL", "debug", "log_level", "debug"),
    ("K3NET_LOG_FORMAT", "json", "log_format", "json"),
    ("K3NET_ADVERTISE_ADDRESS", "10.0.0.9,fd00::1", "advertise_addresses", ("10.0.0.9", "fd00::1")),
    ("K3NET_JOIN", "10.79.2.2,node-c:7000", "join",
     (JoinAddress("10.79.2.2"), JoinAddress("node-c", 7000))),
    ("K3NET_SCAN", "10.79.2.0/24", "scan", (ipaddress.ip_network("10.79.2.0/24"),)),
    ("K3NET_SCAN_INTERVAL", "5m", "scan_interval", 300.0),
    ("K3NET_SCAN_RATE", "20", "scan_rate", 20.0),
    ("K3NET_NODE_LABEL", "env=prod,zone=a", "node_labels", (("env", "prod"), ("zone", "a"))),
]


def test_every_flag_has_an_env_case() -> None:
    # K3NET_CLUSTER_KEY_FILE: tests/test_cluster_key.py (it needs a key file)
    covered = {env for env, *_ in ENV_CASES} | {"K3NET_CONFIG", "K3NET_CLUSTER_KEY_FILE"}
    assert covered == {flag.env for flag in FLAGS}


@pytest.mark.parametrize(("env", "text", "field", "value"), ENV_CASES, ids=[c[0] for c in ENV_CASES])
def test_every_flag_from_its_environment_variable(env: str, text: str, field: str, value: Any) -> None:
    assert getattr(resolve([], {env: text}), field) == value
    assert getattr(resolve([]), field) != value  # the default is something else


def test_config_path_from_k3net_config_before_config_path(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    a.write_text("storage:\n  type: etcd\n")
    b = tmp_path / "b.yaml"
    b.write_text("storage:\n  type: mysql\n")
    assert resolve([], {"CONFIG_PATH": str(a)}).storage.type == "etcd"
    assert resolve([], {"CONFIG_PATH": str(a), "K3NET_CONFIG": str(b)}).storage.type == "mysql"
    assert resolve([f"--config={a}"], {"K3NET_CONFIG": str(b)}).storage.type == "etcd"


def test_k3net_node_name_before_node_name() -> None:
    assert resolve([], {"NODE_NAME": "go-name"}).node_name == "go-name"
    assert resolve([], {"NODE_NAME": "go-name", "K3NET_NODE_NAME": "ours"}).node_name == "ours"


# flag, environment, config file -> the peer-ttl that wins
PRECEDENCE = [
    (None, None, None, 90.0),
    (None, None, "20s", 20.0),
    (None, "30s", "20s", 30.0),
    ("40s", "30s", "20s", 40.0),
    ("40s", None, "20s", 40.0),
    ("40s", "30s", None, 40.0),
    (None, "30s", None, 30.0),
]


@pytest.mark.parametrize(("flag", "env", "file", "expected"), PRECEDENCE)
def test_precedence_flag_env_file_default(
    tmp_path: Path, flag: str | None, env: str | None, file: str | None, expected: float
) -> None:
    environ = {"K3NET_CONFIG": config(tmp_path, f"  peer-ttl: {file}\n" if file else "")}
    if env:
        environ["K3NET_PEER_TTL"] = env
    argv = [f"--peer-ttl={flag}"] if flag else []
    assert resolve(argv, environ).peer_ttl == expected


def test_config_file_network_section(tmp_path: Path) -> None:
    path = config(tmp_path, "  listen: ':7000'\n  PEER_TTL: 60\n  register_self: false\n"
                            "  interface: [eth0, eth1]\n  probe-timeout:\n  log-level: Debug\n")
    s = resolve([f"--config={path}"])
    assert s.listen_port == 7000
    assert s.peer_ttl == 60.0  # a bare number is seconds
    assert s.probe_interval == 10.0  # still derived from peer-ttl
    assert s.register_self is False
    assert s.interfaces == ("eth0", "eth1")
    assert s.probe_timeout == pytest.approx(0.7)  # empty means the default
    assert s.log_level == "debug"


@pytest.mark.parametrize(
    ("network", "words"),
    [
        ("  peer-ttll: 30s\n", ["network.peer-ttll", "unknown"]),
        ("  config: /x.yaml\n", ["network.config", "unknown"]),
        ("  peer-ttl: forever\n", ["network.peer-ttl", "forever"]),
        ("  listen: {a: 1}\n", ["network.listen"]),
        ("  - a\n", ["network"]),
    ],
)
def test_bad_config_file_setting_names_file_and_key(
    tmp_path: Path, network: str, words: list[str]
) -> None:
    path = config(tmp_path, network)
    with pytest.raises(ConfigError) as exc:
        resolve([f"--config={path}"])
    for word in [path, *words]:
        assert word in str(exc.value)


@pytest.mark.parametrize(
    ("env", "text"),
    [("K3NET_PEER_TTL", "soon"), ("K3NET_LISTEN", "7946"), ("K3NET_REGISTER_SELF", "maybe"),
     ("K3NET_LOG_LEVEL", "loud"), ("K3NET_NODE_NAME", "Bad_Name"), ("NODE_NAME", "Bad_Name")],
)
def test_bad_environment_value_exits_2_naming_the_variable(
    env: str, text: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith("K3NET_") or name in ("NODE_NAME", "CONFIG_PATH"):
            monkeypatch.delenv(name)
    monkeypatch.setenv(env, text)
    assert cli.main(["run"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert env in err and text in err


GO_FORMS = [
    (["-listen", ":7000"], "listen_port", 7000),
    (["-listen=:7001"], "listen_port", 7001),
    (["-peer-ttl", "30s"], "peer_ttl", 30.0),
    (["-register-self=false"], "register_self", False),
    (["-register-self"], "register_self", True),
    (["-node-name", "go-node"], "node_name", "go-node"),
    (["-service", "_x._tcp", "-domain", "lan."], "service", "_x._tcp"),
    (["-probe-timeout=1s"], "probe_timeout", 1.0),
]


@pytest.mark.parametrize(("argv", "field", "value"), GO_FORMS, ids=[" ".join(a) for a, *_ in GO_FORMS])
def test_go_single_dash_forms(argv: list[str], field: str, value: Any) -> None:
    assert getattr(resolve(argv), field) == value


def test_a_go_agent_command_line_runs_unchanged() -> None:
    s = resolve("-listen :7946 -service _k3._tcp -domain local. -node-name worker-1 "
                "-peer-ttl 90s -register-self=false".split())
    assert (s.listen_port, s.node_name, s.peer_ttl, s.register_self) == (7946, "worker-1", 90.0, False)


def test_go_forms_leave_other_words_alone() -> None:
    names = {"peer-ttl"}
    assert go_flags(["-o", "json", "-peer-ttl", "1s", "--", "-peer-ttl"], names) == \
        ["-o", "json", "--peer-ttl", "1s", "--", "-peer-ttl"]
    assert go_flags(["-x-unknown"], names) == ["-x-unknown"]


def test_a_flag_with_a_value_takes_the_next_word_as_go_does() -> None:
    names = {"peer-ttl", "register-self"}
    valued = {"peer-ttl"}
    assert go_flags(["-peer-ttl", "-5s", "--register-self", "-x"], names, valued) == \
        ["--peer-ttl=-5s", "--register-self", "-x"]
    assert go_flags(["--peer-ttl=1s", "--peer-ttl"], names, valued) == ["--peer-ttl=1s", "--peer-ttl"]
    assert go_flags(["--", "--peer-ttl", "-5s"], names, valued) == ["--", "--peer-ttl", "-5s"]


def test_run_help_shows_each_default_and_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for flag in FLAGS:
        assert f"--{flag.name}" in out
        assert f"${flag.env}" in out
    for legacy in ("$NODE_NAME", "$CONFIG_PATH"):
        assert legacy in out
    assert "flag, then environment, then config file, then the default" in out
    assert "SIGHUP (systemctl reload) reads the config file again" in out


def test_settings_defaults_are_the_flag_defaults() -> None:
    assert resolve([]) == Settings(node_name="n1")


def test_every_setting_but_the_store_is_set_by_one_flag() -> None:
    by_flags = [field for flag in FLAGS for field in flag.fields]
    assert sorted(by_flags) == sorted(f.name for f in attrs.fields(Settings) if f.name != "storage")
    assert FLAG_BY_NAME["listen"].fields == ("listen_host", "listen_port")
    assert FLAG_BY_NAME["listen"].default == ("", 7946)
    assert len({flag.env for flag in FLAGS}) == len(FLAGS)


# flag -> the default as `k3net run --help` and the README show it: Go's names and values.
GO_DEFAULTS = {
    "listen": ":7946", "service": "_k3._tcp", "domain": "local.", "peer-ttl": "1m30s",
    "probe-interval": "peer-ttl/6", "probe-timeout": "700ms", "register-self": "true",
    "prune-after": "off", "scan-interval": "1m0s", "scan-rate": "100", "log-level": "info",
    "log-format": "text", "node-name": "the host name",
}


@pytest.mark.parametrize(("name", "text"), GO_DEFAULTS.items())
def test_defaults_are_shown_as_go_prints_them(name: str, text: str) -> None:
    assert FLAG_BY_NAME[name].default_text() == text


def test_the_readme_flag_table_is_the_one_the_flags_make() -> None:
    # scripts/flag_table.py writes it; edit the flags in k3net/settings.py, then run it.
    readme = (REPO / "README.md").read_text()
    begin = readme.index("<!-- flags: written by scripts/flag_table.py")
    block = readme[readme.index("\n", begin) + 1:readme.index("<!-- end of flags -->")]
    assert block == flag_table()
    for flag in FLAGS:
        assert f"| `--{flag.name} {flag.metavar}` | " in block


def test_the_probe_interval_follows_the_peer_ttl_unless_given() -> None:
    assert Settings(node_name="a", peer_ttl=12.0).probe_interval == pytest.approx(2.0)
    assert Settings(node_name="a", peer_ttl=12.0, probe_interval=5.0).probe_interval == 5.0
    assert resolve([], {"K3NET_PEER_TTL": "1m"}).probe_interval == pytest.approx(10.0)


def test_repeated_flags_from_each_source(tmp_path: Path) -> None:
    path = config(tmp_path, "  join: [10.79.2.2, 'node-c:7000']\n  scan: 10.79.2.0/24, 10.79.3.0/24\n")
    s = resolve([f"--config={path}"])
    assert s.join == (JoinAddress("10.79.2.2"), JoinAddress("node-c", 7000))
    assert s.scan == (ipaddress.ip_network("10.79.2.0/24"), ipaddress.ip_network("10.79.3.0/24"))
    # The environment wins over the file, the command line over both: never merged.
    s = resolve([f"--config={path}"], {"K3NET_JOIN": "10.79.4.4"})
    assert s.join == (JoinAddress("10.79.4.4"),)
    s = resolve([f"--config={path}", "--join=10.79.5.5", "-join", "10.79.6.6:7001"],
                {"K3NET_JOIN": "10.79.4.4"})
    assert s.join == (JoinAddress("10.79.5.5"), JoinAddress("10.79.6.6", 7001))


def test_a_bad_item_of_a_repeated_setting_names_its_source(tmp_path: Path) -> None:
    path = config(tmp_path, "  join: [10.79.2.2, 'node-c:99999']\n")
    with pytest.raises(ConfigError, match=rf"^{path}: network.join: .*node-c:99999"):
        resolve([f"--config={path}"])
    with pytest.raises(ConfigError, match=r"^--scan: .*10.0.0.0/8"):
        resolve(["--scan=10.79.2.0/24", "--scan=10.0.0.0/8"])
    with pytest.raises(ConfigError, match=r"^K3NET_SCAN: .*nope"):
        resolve([], {"K3NET_SCAN": "10.79.2.0/24,nope"})


def test_resolve_takes_text_or_a_value_already_parsed() -> None:
    assert resolve_given({"prune-after": 3600.0}, {"NODE_NAME": "n"}).prune_after == 3600.0
    assert resolve_given({"prune-after": "1h"}, {"NODE_NAME": "n"}).prune_after == 3600.0


def test_refresh_interval_is_a_third_of_the_peer_ttl() -> None:
    assert Settings(node_name="a", peer_ttl=90.0).refresh_interval == pytest.approx(30.0)
    assert Settings(node_name="a", peer_ttl=12.0).refresh_interval == pytest.approx(4.0)


@pytest.mark.parametrize("argv", [["--version"], ["-version"]])
def test_version(argv: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("K3NET_")}
    proc = subprocess.run([sys.executable, "-m", "k3net", *argv], capture_output=True,
                          text=True, timeout=60, cwd=REPO, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"k3net {version.describe()}\n"
    assert re.fullmatch(r"k3net \d+\.\d+\S* \(commit [0-9a-f]{12}(-dirty)?\)\n", proc.stdout)


def test_commit_of_a_directory_without_git_is_unknown(tmp_path: Path) -> None:
    assert version.git_commit(tmp_path) is None

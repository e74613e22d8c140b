"""Go durations and the `storage:` section of a k3 YAML config."""

from __future__ import annotations

from pathlib import Path

import pytest

from k3net.config import (
    ConfigError,
    EtcdConfig,
    MySQLConfig,
    StorageConfig,
    format_duration,
    load_storage,
    parse_duration,
)
from k3net.durations import go_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("700ms", 0.7),
        ("15s", 15.0),
        ("90s", 90.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1h2m3.5s", 3723.5),
        ("1.5h", 5400.0),
        (".5s", 0.5),
        ("250us", 250e-6),
        ("250µs", 250e-6),
        ("10ns", 10e-9),
        ("0", 0.0),
        ("0s", 0.0),
        (" 15s ", 15.0),
    ],
)
def test_parse_duration_go_syntax(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["10", "5x", "-1s", "", "   ", "ms", "1 s", "s1", "1m30", "abc", "1d"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_negative_duration_is_refused_as_negative() -> None:
    with pytest.raises(ValueError, match="negative duration '-5s'"):
        parse_duration("-5s")


# Go's own table (time_test.go, durationTests): nanoseconds -> Duration.String().
GO_STRINGS = [
    (0, "0s"),
    (1, "1ns"),
    (1100, "1.1µs"),
    (2_200_000, "2.2ms"),
    (3_300_000_000, "3.3s"),
    (245_000_000_000, "4m5s"),
    (245_001_000_000, "4m5.001s"),
    (18_367_001_000_000, "5h6m7.001s"),
    (480_000_000_001, "8m0.000000001s"),
    (2**63 - 1, "2562047h47m16.854775807s"),
    (-(2**63), "-2562047h47m16.854775808s"),
]


@pytest.mark.parametrize(("ns", "text"), GO_STRINGS, ids=[t for _, t in GO_STRINGS])
def test_go_duration_is_go_s_duration_string(ns: int, text: str) -> None:
    assert go_duration(ns) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (90.0, "1m30s"), (0.7, "700ms"), (15.0, "15s"), (120.0, "2m0s"), (60.0, "1m0s"),
        (3600.0, "1h0m0s"), (72 * 3600.0, "72h0m0s"), (3723.5, "1h2m3.5s"), (0.0, "0s"),
        (20 / 6, "3.333s"), (5.0, "5s"), (1.5, "1.5s"), (0.0015, "2ms"), (250e-6, "250µs"),
        (0.123456789, "123ms"), (0.0009999, "999.9µs"),
        (10e-9, "10ns"), (1.0005, "1.001s"), (59.9996, "1m0s"), (-1.5, "-1.5s"),
    ],
)
def test_format_duration_as_go_prints_it(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    if seconds >= 0:
        assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=5e-4)


# --- load_storage -----------------------------------------------------------------------------


def write(tmp_path: Path, text: str | bytes, name: str = "k3.yaml", mode: int = 0o600) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    path.chmod(mode)
    return path


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as err:
        load_storage(path)
    message = str(err.value)
    assert str(path) in message and "not found" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("storage:\n\ttype: etcd\n", 2),
        ("storage:\n  type: memory\n  etcd: x: y\n", 3),
        ("storage:\n  type: etcd\n  etcd:\n    endpoints: [http://a:1\n  mysql: {}\n", 5),
    ],
)
def test_bad_yaml_names_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_storage(path)
    message = str(err.value)
    assert message.startswith(f"{path}:")
    assert f"line {line}" in message
    assert "\n" not in message


def test_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_storage(tmp_path)
    assert str(tmp_path) in str(err.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        pytest.param("- a\n- b\n", "top level", id="top-level-list"),
        pytest.param(
            "storage: [memory]\n", "storage", id="storage-list",
        ),
        pytest.param("storage:\n  type: redis\n", "storage.type", id="unknown-type"),
        pytest.param("storage:\n  type: 5\n", "storage.type", id="type-number"),
        pytest.param("storage:\n  etcd: 5\n", "storage.etcd", id="etcd-number"),
        pytest.param("storage:\n  mysql: [a]\n", "storage.mysql", id="mysql-list"),
        pytest.param("storage:\n  mysql:\n    port: abc\n", "storage.mysql.port", id="port-text"),
        pytest.param("storage:\n  mysql:\n    port: true\n", "storage.mysql.port", id="port-bool"),
        pytest.param("storage:\n  mysql:\n    port: 70000\n", "storage.mysql.port", id="port-range"),
        pytest.param("storage:\n  mysql:\n    port: 0\n", "storage.mysql.port", id="port-zero"),
        pytest.param("storage:\n  mysql:\n    port: 3306.5\n", "storage.mysql.port", id="port-float"),
        pytest.param("storage:\n  mysql:\n    user: [a]\n", "storage.mysql.user", id="user-list"),
        pytest.param("storage:\n  mysql:\n    database: {a: 1}\n", "storage.mysql.database",
                     id="database-mapping"),
        pytest.param("storage:\n  mysql:\n    max_open_conns: many\n", "storage.mysql.max_open_conns",
                     id="max-open-text"),
        pytest.param("storage:\n  mysql:\n    password: [x]\n", "storage.mysql.password",
                     id="mysql-password-list"),
        pytest.param("storage:\n  etcd:\n    endpoints: 5\n", "storage.etcd.endpoints",
                     id="endpoints-number"),
        pytest.param("storage:\n  etcd:\n    endpoints: [http://a:2379, 'not an url']\n",
                     "storage.etcd.endpoints[1]", id="endpoint-garbage"),
        pytest.param("storage:\n  etcd:\n    endpoints: ['http://a:99999']\n",
                     "storage.etcd.endpoints[0]", id="endpoint-port-range"),
        pytest.param("storage:\n  etcd:\n    dial_timeout: soon\n", "storage.etcd.dial_timeout",
                     id="dial-timeout-text"),
        pytest.param("storage:\n  etcd:\n    dial_timeout: -1s\n", "storage.etcd.dial_timeout",
                     id="dial-timeout-negative-text"),
        pytest.param("storage:\n  etcd:\n    dial_timeout: -3\n", "storage.etcd.dial_timeout",
                     id="dial-timeout-negative-number"),
        pytest.param("storage:\n  etcd:\n    dial_timeout: true\n", "storage.etcd.dial_timeout",
                     id="dial-timeout-bool"),
        pytest.param("storage:\n  etcd:\n    username: [a]\n", "storage.etcd.username",
                     id="username-list"),
        # Where the Go loader would read something else than was meant: refused, one line.
        pytest.param("storage:\n  etcd:\n    dial_timeout: 5\n", "storage.etcd.dial_timeout",
                     id="dial-timeout-without-unit"),
        pytest.param("storage:\n  mysql:\n    port: '3306.5'\n", "storage.mysql.port",
                     id="port-quoted-fraction"),
        pytest.param("storage:\n  mysql:\n    Port: 1\n    port: 2\n", "storage.mysql.port",
                     id="key-twice-in-two-cases"),
        pytest.param("storage:\n  etcd:\n    cert_file: /c.pem\n", "storage.etcd",
                     id="cert-without-key"),
        pytest.param("Storage:\n  type: etcd\nstorage:\n  type: mysql\n", "storage",
                     id="section-twice-in-two-cases"),
        pytest.param("storage:\n  mysql:\n    poll_interval: 0\n", "storage.mysql.poll_interval",
                     id="poll-interval-zero"),
    ],
)
def test_wrong_values_are_one_line_naming_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_storage(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {key}:"), message
    assert "\n" not in message


def test_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, b"storage:\n  type: etcd\n  etcd:\n    username: \"\xff\xfe\"\n")
    with pytest.raises(ConfigError) as err:
        load_storage(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty-file"),
        pytest.param("# only a comment\n", id="comment"),
        pytest.param("controller:\n  port: 8080\nscheduler: {x: 1}\n", id="other-sections-only"),
        pytest.param("storage:\n", id="empty-storage"),
        pytest.param("storage:\n  type: memory\n", id="memory"),
    ],
)
def test_defaults(tmp_path: Path, text: str) -> None:
    assert load_storage(write(tmp_path, text)) == StorageConfig()


def test_default_values() -> None:
    storage = StorageConfig()
    assert storage.type == "memory"
    assert storage.etcd.endpoints == ("http://127.0.0.1:2379",)
    assert storage.etcd.dial_timeout == 5.0
    assert (storage.mysql.host, storage.mysql.port) == ("127.0.0.1", 3306)
    assert storage.mysql.max_open_conns == 10 and storage.mysql.max_idle_conns == 5


def test_full_etcd_example(tmp_path: Path) -> None:
    path = write(tmp_path, """\
# a k3 config shared with the Go components
apiserver:
  port: 6443
storage:
  type: etcd
  etcd:
    endpoints:
      - http://10.0.0.1:2379
      - http://[fd00::2]:2380
    dial_timeout: 3s
    username: k3
    password: 1234
  mysql:
    host: ignored
""")
    storage = load_storage(path)
    assert storage.type == "etcd"
    assert storage.etcd == EtcdConfig(
        endpoints=("http://10.0.0.1:2379", "http://[fd00::2]:2380"),
        dial_timeout=3.0,
        username="k3",
        password="1234",
    )


@pytest.mark.parametrize(("value", "seconds"), [("3s", 3.0), ("1m", 60.0), ("'1m30s'", 90.0)])
def test_dial_timeout_is_a_go_duration(tmp_path: Path, value: str, seconds: float) -> None:
    path = write(tmp_path, f"storage:\n  type: etcd\n  etcd:\n    dial_timeout: {value}\n")
    assert load_storage(path).etcd.dial_timeout == pytest.approx(seconds)


def test_single_endpoint_string_is_a_list_of_one(tmp_path: Path) -> None:
    path = write(tmp_path, "storage:\n  type: etcd\n  etcd:\n    endpoints: http://127.0.0.1:2379\n")
    assert load_storage(path).etcd.endpoints == ("http://127.0.0.1:2379",)


def test_full_mysql_example(tmp_path: Path) -> None:
    path = write(tmp_path, """\
storage:
  type: mysql
  mysql:
    host: db.lan
    port: 3307
    user: k3
    password: secret
    database: k3prod
    max_open_conns: 20
    max_idle_conns: 4
""")
    storage = load_storage(path)
    assert storage.type == "mysql"
    assert storage.mysql == MySQLConfig(
        host="db.lan", port=3307, user="k3", password="secret", database="k3prod",
        max_open_conns=20, max_idle_conns=4,
    )
    assert storage.etcd == EtcdConfig()


def test_numeric_mysql_password_is_text(tmp_path: Path) -> None:
    path = write(tmp_path, "storage:\n  type: mysql\n  mysql:\n    password: 1234\n")
    assert load_storage(path).mysql.password == "1234"


# --- parity with the Go loader (viper + mapstructure, weakly typed) ---------------------------
#
# Each case: a storage section the Go components accept, and what they read from it. k3net must
# read the same.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("Storage:\n  Type: etcd\n  ETCD:\n    Endpoints: [http://e:1]\n",
                     StorageConfig(type="etcd", etcd=EtcdConfig(endpoints=("http://e:1",))),
                     id="keys-in-any-case"),
        pytest.param("STORAGE:\n  type: mysql\n  MySQL:\n    Max_Open_Conns: 3\n",
                     StorageConfig(type="mysql", mysql=MySQLConfig(max_open_conns=3)),
                     id="upper-case-section"),
        pytest.param("storage:\n  type: etcd\n  etcd:\n    dial_timeout: ''\n",
                     StorageConfig(type="etcd"), id="empty-dial-timeout-is-default"),
        pytest.param("storage:\n  type: etcd\n  etcd:\n    dial_timeout:\n",
                     StorageConfig(type="etcd"), id="null-dial-timeout-is-default"),
        pytest.param("storage:\n  type: etcd\n  etcd:\n    dial_timeout: 0s\n",
                     StorageConfig(type="etcd", etcd=EtcdConfig(dial_timeout=0.0)),
                     id="dial-timeout-0s-is-no-limit"),
        pytest.param("storage:\n  type: etcd\n  etcd:\n    dial_timeout: 0\n",
                     StorageConfig(type="etcd", etcd=EtcdConfig(dial_timeout=0.0)),
                     id="dial-timeout-0-is-no-limit"),
        pytest.param("storage:\n  type: mysql\n  mysql:\n    max_open_conns: 0\n"
                     "    max_idle_conns: 0\n",
                     StorageConfig(type="mysql", mysql=MySQLConfig(max_open_conns=0,
                                                                   max_idle_conns=0)),
                     id="conns-0-valid"),
        pytest.param("storage:\n  type: mysql\n  mysql:\n    max_idle_conns: -1\n",
                     StorageConfig(type="mysql", mysql=MySQLConfig(max_idle_conns=0)),
                     id="negative-conns-are-0"),
        pytest.param("storage:\n  type: mysql\n  mysql:\n    port: \"3307\"\n"
                     "    max_open_conns: '4'\n",
                     StorageConfig(type="mysql", mysql=MySQLConfig(port=3307, max_open_conns=4)),
                     id="quoted-numbers"),
        pytest.param("storage:\n  type: mysql\n  mysql:\n    port: 3307.0\n",
                     StorageConfig(type="mysql", mysql=MySQLConfig(port=3307)),
                     id="whole-float-port"),
        pytest.param("storage:\n  type: mysql\n  mysql:\n    user: 42\n    database: 7\n",
                     StorageConfig(type="mysql", mysql=MySQLConfig(user="42", database="7")),
                     id="numbers-as-text"),
        pytest.param("storage:\n  type: mysql\n  mysql:\n    host: ''\n    port: ''\n"
                     "    user: ''\n",
                     StorageConfig(type="mysql"), id="empty-values-are-defaults"),
        pytest.param("storage:\n  type: etcd\n  etcd:\n    endpoints: []\n",
                     StorageConfig(type="etcd"), id="empty-endpoints-are-default"),
        pytest.param("storage:\n  type: etcd\n  etcd:\n    endpoints: http://a:1,http://b:2\n",
                     StorageConfig(type="etcd", etcd=EtcdConfig(
                         endpoints=("http://a:1", "http://b:2"))),
                     id="comma-separated-endpoints"),
        pytest.param("storage:\n  type: etcd\n  etcd:\n    endpoints: [https://a:2379]\n"
                     "    ca_file: /ca.pem\n    cert_file: /c.pem\n    key_file: /k.pem\n",
                     StorageConfig(type="etcd", etcd=EtcdConfig(
                         endpoints=("https://a:2379",), ca_file="/ca.pem", cert_file="/c.pem",
                         key_file="/k.pem")),
                     id="etcd-tls"),
        pytest.param("storage:\n  type: mysql\n  mysql:\n    ca_file: /ca.pem\n",
                     StorageConfig(type="mysql", mysql=MySQLConfig(ca_file="/ca.pem")),
                     id="mysql-tls"),
        pytest.param("storage:\n  type: etcd\n  etcd:\n    future_knob: 1\n  other: {a: 1}\n",
                     StorageConfig(type="etcd"), id="unknown-keys-ignored"),
        pytest.param("storage:\n  type: mysql\n  mysql:\n    poll_interval: 2\n",
                     StorageConfig(type="mysql", mysql=MySQLConfig(poll_interval=2.0)),
                     id="k3net-key-bare-seconds"),
    ],
)
def test_read_as_the_go_loader_reads_it(tmp_path: Path, text: str, expected: StorageConfig) -> None:
    assert load_storage(write(tmp_path, text)) == expected


# --- secrets: a config file that holds a password is private; no repr shows a password ------

ETCD_PASSWORD = "storage:\n  type: etcd\n  etcd:\n    username: k3\n    password: hunter2\n"
MYSQL_PASSWORD = "storage:\n  type: mysql\n  mysql:\n    password: hunter2\n"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
@pytest.mark.parametrize("text", [ETCD_PASSWORD, MYSQL_PASSWORD], ids=["etcd", "mysql"])
def test_a_config_with_a_password_others_can_access_is_refused(
    tmp_path: Path, text: str, mode: int
) -> None:
    path = write(tmp_path, text, mode=mode)
    with pytest.raises(ConfigError) as caught:
        load_storage(path)
    message = str(caught.value)
    assert f"permissions {mode:04o}" in message and f"chmod 600 {path}" in message
    assert "password" in message and "hunter2" not in message and "\n" not in message


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_config_with_a_password_is_read(tmp_path: Path, mode: int) -> None:
    assert load_storage(write(tmp_path, MYSQL_PASSWORD, mode=mode)).mysql.password == "hunter2"


def test_a_config_without_a_password_may_be_read_by_all(tmp_path: Path) -> None:
    text = "storage:\n  type: mysql\n  mysql:\n    socket: /run/mysqld/mysqld.sock\n"
    assert load_storage(write(tmp_path, text, mode=0o644)).type == "mysql"
    # An empty password is no password (as the Go loader reads it: the default).
    assert load_storage(write(tmp_path, MYSQL_PASSWORD.replace("hunter2", '""'),
                              mode=0o644)).mysql.password == ""


def test_the_agent_refuses_a_readable_config_with_a_password_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from k3net import cli

    for name in ("K3NET_CONFIG", "CONFIG_PATH"):
        monkeypatch.delenv(name, raising=False)
    path = write(tmp_path, ETCD_PASSWORD, mode=0o644)
    for argv in (["run", "--node-name=n1", f"--config={path}"],
                 ["prune", "--older-than=72h", f"--config={path}"],
                 ["nodes", f"--config={path}"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "chmod 600" in err and "hunter2" not in err


def test_no_config_object_shows_a_password() -> None:
    from k3net.settings import Settings

    etcd = EtcdConfig(username="k3", password="hunter2")
    mysql = MySQLConfig(password="hunter2")
    storage = StorageConfig(type="mysql", etcd=etcd, mysql=mysql)
    settings = Settings(node_name="n1", storage=storage, cluster_key=b"k" * 32)
    for thing in (etcd, mysql, storage, settings):
        assert "hunter2" not in repr(thing) and "hunter2" not in str(thing)
        assert "kkkk" not in repr(thing)
    assert "password='<redacted>'" in repr(mysql)  # says that there is one
    assert "password=''" in repr(MySQLConfig()) and "password=None" in repr(EtcdConfig())

"""The k3 YAML config file: its `storage:` section, shared with the Go components. (k3net's own
`network:` section and the run settings are in `k3net.settings`.) Other sections belong to the Go
components that share the file and are ignored. Every knob below says what it is for and why
its default is what it is.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import attrs
import cattrs

# (also imported from here by the scripts: Go durations are part of the config's language)
from k3net.core.private import exposure
from k3net.durations import format_duration, parse_duration  # noqa: F401


class ConfigError(Exception):
    """A config file or flag value k3net cannot use. The message is one readable line."""


# Types of the fields whose reading has rules of its own (see the hooks below).
# Annotated: plain floats, ints and strings to the code and to mypy; cattrs reads the marks.
GoDuration = Annotated[float, "go-duration"]  # a Go duration string; a bare number only if 0
Seconds = Annotated[float, "seconds"]  # k3net's own keys: a Go duration, or seconds
Port = Annotated[int, "port"]
ConnLimit = Annotated[int, "conn-limit"]  # database/sql: 0 or less is no limit / no idle pool
Endpoints = Annotated[tuple[str, ...], "endpoints"]


def _redacted(password: str | None) -> str:
    """A password as a repr shows it: whether there is one, never what it is."""
    return repr(password) if not password else "'<redacted>'"


@attrs.frozen
class EtcdConfig:
    # Tried in order; the first that answers is used, the next on failure. `https://` endpoints
    # use TLS (ca_file, cert_file, key_file below).
    endpoints: Endpoints = ("http://127.0.0.1:2379",)
    # How long one connection attempt may take before the next endpoint is tried; 0 means no
    # limit, as in the Go client (a dial to a silent address then waits as long as its caller).
    dial_timeout: GoDuration = 5.0
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=_redacted)
    # k3net extension (TLS, for https:// endpoints): the CA bundle that signed the server's
    # certificate (empty: the system's CAs), and a client certificate and key when etcd asks
    # for one (--client-cert-auth). PEM files.
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@attrs.frozen
class MySQLConfig:
    host: str = "127.0.0.1"
    port: Port = 3306
    user: str = "root"
    password: str = attrs.field(default="", repr=_redacted)
    database: str = "k3"
    # Pool bounds, as the Go store's database/sql settings: at most max_open_conns connections
    # (0 or less: no limit), of which max_idle_conns stay open while unused (0 or less: none).
    max_open_conns: ConnLimit = 10
    max_idle_conns: ConnLimit = 5
    # k3net extension: connect through this unix socket instead of host:port. A socket reaches
    # the server from inside any network namespace, which TCP to 127.0.0.1 does not.
    socket: str | None = None
    # k3net extension: MySQL has no watch, so changes are found by polling. 500ms keeps other
    # agents' writes visible well inside a probe interval at the cost of one cheap query.
    poll_interval: Seconds = 0.5
    # k3net extension (TLS): connect with TLS, verifying the server against this CA bundle
    # (PEM); cert_file and key_file add a client certificate for servers that require one.
    # Without ca_file the connection is plain, as the Go store's default DSN. A unix `socket`
    # never leaves the machine and counts as secure (as MariaDB counts it): TLS is for TCP.
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


StoreType = Literal["memory", "etcd", "mysql"]
STORE_TYPES: tuple[StoreType, ...] = ("memory", "etcd", "mysql")


@attrs.frozen
class StorageConfig:
    # `memory` is the embedded default: one agent, no set-up, Nodes visible at /nodes.
    type: StoreType = "memory"
    etcd: EtcdConfig = EtcdConfig()
    mysql: MySQLConfig = MySQLConfig()


# --- reading the k3 YAML file -------------------------------------------------------------------
#
# As the Go components' loader (viper + mapstructure, weakly typed) reads the same file:
# - keys in any case (`Storage:`, `Dial_Timeout:`): viper lower-cases every key;
# - an empty value (`key:` or `key: ""`, an empty list or mapping) means the default;
# - numbers may be quoted (`port: "3306"`), and a number where text belongs is that text;
# - durations are Go durations (`5s`, `1m30s`); `dial_timeout: 0s` is no limit;
# - `max_open_conns: 0`, `max_idle_conns: 0` (and less) are valid: no limit, no idle pool;
# - unknown keys are ignored (other components' settings share the file).
# Where Go would silently read something else than was meant, k3net refuses with one line:
# a bare number as dial_timeout (Go: nanoseconds), a fractional port (Go: truncated), a boolean
# where a number or text belongs, two keys that differ only in case.


class _Bad(ValueError):
    """A value a hook refuses; the message becomes the one line after `path: key:`."""


def _text(value: Any, _: Any = None) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _Bad(f"expected text, got {_show(value)}")
    return value if isinstance(value, str) else str(value)


def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise _Bad(f"expected a number, got {_show(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise _Bad(f"expected a whole number, got {value!r}")
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
        return int(value)
    if isinstance(value, int):
        return value
    raise _Bad(f"expected a number, got {_show(value)}")


def _port(value: Any, _: Any = None) -> Port:
    port = _integer(value)
    if not 0 < port < 65536:
        raise _Bad(f"out of range: {port}")
    return port


def _conn_limit(value: Any, _: Any = None) -> ConnLimit:
    return max(_integer(value), 0)


def _go_duration(value: Any, _: Any = None) -> GoDuration:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value == 0:
            return 0.0
        raise _Bad(f"{value!r} has no unit (the Go components would read nanoseconds);"
                   f" write e.g. {value}s")
    return _duration_text(value)


def _seconds(value: Any, _: Any = None) -> Seconds:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)  # a bare number is seconds (a k3net key: no Go reading to match)
    else:
        seconds = _duration_text(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise _Bad("must be more than 0")
    return seconds


def _duration_text(value: Any) -> float:
    if not isinstance(value, str):
        raise _Bad(f"expected a duration such as 5s, got {_show(value)}")
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _Bad(str(exc)) from None


def _endpoints(value: Any, _: Any = None) -> Endpoints:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]  # viper: "a,b" is a list of two
    if not isinstance(value, list):
        raise _Bad(f"expected a list of endpoints, got {_show(value)}")
    out = []
    for i, item in enumerate(value):
        try:
            endpoint = _text(item)
            parse_endpoint(endpoint, "")
        except (_Bad, ConfigError) as exc:
            raise _At(i, exc) from None
        out.append(endpoint)
    return tuple(out)


class _At(ValueError):
    """A refused item of a list: its index goes into the key path."""

    def __init__(self, index: int, exc: Exception) -> None:
        super().__init__(str(exc).removeprefix(": "))
        self.index = index


def _store_type(value: Any, _: Any = None) -> StoreType:
    if value not in STORE_TYPES:
        raise _Bad(f"unknown store {value!r} (use memory, etcd or mysql)")
    kind: StoreType = value
    return kind


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _is(kind: Any) -> Callable[[Any], bool]:
    return lambda t: bool(t == kind)


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=False, detailed_validation=True)
    converter.register_structure_hook(str, _text)
    for kind, hook in (
        (Port, _port), (ConnLimit, _conn_limit), (GoDuration, _go_duration),
        (Seconds, _seconds), (Endpoints, _endpoints), (StoreType, _store_type),
    ):
        converter.register_structure_hook_func(_is(kind), hook)
    return converter


_converter = _make_converter()


def _lower_keys(data: Any, where: str) -> Any:
    """A mapping with lower-case keys and without empty values (which mean the default), as
    viper reads it; nested mappings alike. Two keys that differ only in case are refused."""
    if not isinstance(data, dict):
        return data
    out: dict[str, Any] = {}
    seen: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).lower()
        if name in seen:
            raise ConfigError(f"{where}{name}: given twice ({seen[name]!r} and {key!r});"
                              " keys are read without regard to case")
        seen[name] = key
        if value is None or value == "" or value == [] or value == {}:
            continue
        out[name] = _lower_keys(value, f"{where}{name}.")
    return out


def _one_line(exc: BaseException, path: Path) -> ConfigError:
    """The first problem cattrs found, as `path: storage.key: what is wrong`."""
    where, leaf = ["storage"], exc
    while isinstance(leaf, BaseExceptionGroup):
        inner = leaf.exceptions[0]
        for note in getattr(inner, "__notes__", []):
            match = re.search(r"@ attribute (\w+)", note)
            if match:
                where.append(match.group(1))
        leaf = inner
    if isinstance(leaf, _At):
        where[-1] += f"[{leaf.index}]"
    if isinstance(leaf, (_Bad, _At)):
        text = str(leaf)
    elif isinstance(leaf, AttributeError | TypeError | KeyError):
        text = "expected a mapping"
    else:
        text = f"cannot read: {leaf}"
    return ConfigError(f"{path}: {'.'.join(where)}: {text}")


def parse_endpoint(endpoint: str, where: str) -> tuple[str, int]:
    """`http://host:port`, `https://host:port` (or `host:port`) as (host, port); ConfigError
    naming `where` if not. Use `endpoint_uses_tls` for the scheme."""
    match = _ENDPOINT.fullmatch(endpoint)
    if match is None:
        raise ConfigError(f"{where}: {endpoint!r} is not an endpoint like http://127.0.0.1:2379")
    port = int(match.group(3) or 2379)
    if not 0 < port < 65536:
        raise ConfigError(f"{where}: {endpoint!r}: port out of range")
    return match.group(2).strip("[]"), port


_ENDPOINT = re.compile(r"(?:(https?)://)?(\[[0-9a-fA-F:]+\]|[^:/\s]+)(?::([0-9]{1,5}))?/?")


def endpoint_uses_tls(endpoint: str) -> bool:
    return endpoint.lower().startswith("https://")


def load_storage(path: str | Path) -> StorageConfig:
    """The `storage:` section of a k3 config file. ConfigError (one line) on any problem,
    also when the file holds a store password and is not private (`read_config`)."""
    return storage_from_data(read_config(path), path)


def read_config(path: str | Path) -> Any:
    """A k3 config file as YAML reads it (the Go components' loader reads the same text).
    ConfigError (one line) if it cannot be read, or if it holds a store password and is not
    private (`_private_enough`)."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            text = file.read().decode()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    import yaml  # only needed with a config file: keeps the agent's start quick without one

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: bad YAML{at}: {problem}") from None
    _private_enough(storage_from_data(data, path), path, mode)
    return data


def _private_enough(config: StorageConfig, path: Path, mode: int) -> None:
    """A config file that holds a store password must be private, as the cluster key file
    (`k3net.core.private.exposure`): else anyone on the machine could read the password."""
    holds = [f"storage.{name}.password" for name, section in
             (("etcd", config.etcd), ("mysql", config.mysql)) if section.password]
    problem = exposure(mode, str(path)) if holds else None
    if problem:
        raise ConfigError(f"{path}: holds {holds[0]}, but its {problem} (or give it to the "
                          "service with systemd's LoadCredential=)")


def storage_from_data(data: Any, path: str | Path) -> StorageConfig:
    """The storage section of an already parsed config file (see load_storage)."""
    path = Path(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level: expected a mapping, got {_show(data)}")
    found = [(k, v) for k, v in data.items() if str(k).lower() == "storage"]
    if len(found) > 1:
        raise ConfigError(f"{path}: storage: given twice ({found[0][0]!r} and {found[1][0]!r});"
                          " keys are read without regard to case")
    storage = found[0][1] if found else None
    try:
        storage = _lower_keys(storage or {}, "storage.")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(storage, dict):
        raise ConfigError(f"{path}: storage: expected a mapping, got {_show(storage)}")
    for section in ("etcd", "mysql"):
        if section in storage and not isinstance(storage[section], dict):
            raise ConfigError(f"{path}: storage.{section}: expected a mapping,"
                              f" got {_show(storage[section])}")
    try:
        config = _converter.structure(storage, StorageConfig)
    except (cattrs.BaseValidationError, _Bad, _At) as exc:
        raise _one_line(exc, path) from None
    return _checked(config, path)


def _checked(config: StorageConfig, path: Path) -> StorageConfig:
    """Rules across fields."""
    for section, tls in (("etcd", config.etcd), ("mysql", config.mysql)):
        if (tls.cert_file is None) != (tls.key_file is None):
            raise ConfigError(f"{path}: storage.{section}: cert_file and key_file go together")
    return config

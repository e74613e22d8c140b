"""The k3 YAML config file: its `storage:` section, shared with the Go components. (k3net's own
`network:` section and the run settings are in `k3net.settings`.) Other sections belong to the Go
components that share the file and are ignored. Every knob below says what it is for and why
its default is what it is.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import attrs


class ConfigError(Exception):
    """A config file or flag value k3net cannot use. The message is one readable line."""


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}


def parse_duration(text: str) -> float:
    """A Go duration (`700ms`, `15s`, `1m30s`, `0`) in seconds. Negative durations are refused."""
    text = text.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(f"invalid duration {text!r} (use Go syntax such as 700ms, 15s, 1m30s)")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text:
        raise ValueError("empty duration")
    return total


def format_duration(seconds: float) -> str:
    """Seconds as a short Go-style duration: 90.0 -> `1m30s`, 0.7 -> `700ms`."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, secs = divmod(seconds, 60)
    secs_text = f"{secs:g}s" if secs else ""
    return f"{int(minutes)}m{secs_text}" if minutes else secs_text


@attrs.frozen
class EtcdConfig:
    # Tried in order; the first that answers is used, the next on failure.
    endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    # How long one connection attempt may take before the next endpoint is tried.
    dial_timeout: float = 5.0
    username: str | None = None
    password: str | None = None


@attrs.frozen
class MySQLConfig:
    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    password: str = ""
    database: str = "k3"
    # Pool bounds, as the Go store's database/sql settings.
    max_open_conns: int = 10
    max_idle_conns: int = 5
    # k3net extension: connect through this unix socket instead of host:port. A socket reaches
    # the server from inside any network namespace, which TCP to 127.0.0.1 does not.
    socket: str | None = None
    # k3net extension: MySQL has no watch, so changes are found by polling. 500ms keeps other
    # agents' writes visible well inside a probe interval at the cost of one cheap query.
    poll_interval: float = 0.5


StoreType = Literal["memory", "etcd", "mysql"]


@attrs.frozen
class StorageConfig:
    # `memory` is the embedded default: one agent, no set-up, Nodes visible at /nodes.
    type: StoreType = "memory"
    etcd: EtcdConfig = EtcdConfig()
    mysql: MySQLConfig = MySQLConfig()


# --- reading the k3 YAML file -------------------------------------------------------------------


def _expect(value: Any, kinds: type | tuple[type, ...], where: str, path: Path) -> Any:
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ConfigError(f"{path}: {where}: expected {_kind_name(kinds)}, got a boolean")
    if not isinstance(value, kinds):
        raise ConfigError(f"{path}: {where}: expected {_kind_name(kinds)}, got {value!r}")
    return value


def _kind_name(kinds: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "a mapping"}
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _duration_value(value: Any, where: str, path: Path) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)  # a bare number is seconds
    else:
        try:
            seconds = parse_duration(_expect(value, str, where, path))
        except ValueError as exc:
            raise ConfigError(f"{path}: {where}: {exc}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"{path}: {where}: must be a positive duration")
    return seconds


def _section(data: dict[str, Any], key: str, where: str, path: Path) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    return _expect(value, dict, f"{where}.{key}", path)


def _etcd(data: dict[str, Any], path: Path) -> EtcdConfig:
    where = "storage.etcd"
    kwargs: dict[str, Any] = {}
    if "endpoints" in data:
        endpoints = data["endpoints"]
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        endpoints = _expect(endpoints, list, f"{where}.endpoints", path)
        if not endpoints:
            raise ConfigError(f"{path}: {where}.endpoints: needs at least one endpoint")
        for i, ep in enumerate(endpoints):
            _expect(ep, str, f"{where}.endpoints[{i}]", path)
            parse_endpoint(ep, f"{path}: {where}.endpoints[{i}]")
        kwargs["endpoints"] = tuple(endpoints)
    if data.get("dial_timeout") is not None:
        kwargs["dial_timeout"] = _duration_value(data["dial_timeout"], f"{where}.dial_timeout", path)
    for key in ("username", "password"):
        if data.get(key) not in (None, ""):
            kwargs[key] = str(_expect(data[key], (str, int), f"{where}.{key}", path))
    return EtcdConfig(**kwargs)


def parse_endpoint(endpoint: str, where: str) -> tuple[str, int]:
    """`http://host:port` (or `host:port`) as (host, port); ConfigError naming `where` if not."""
    match = re.fullmatch(r"(?:(https?)://)?(\[[0-9a-fA-F:]+\]|[^:/\s]+)(?::(\d+))?/?", endpoint)
    if match is None:
        raise ConfigError(f"{where}: {endpoint!r} is not an endpoint like http://127.0.0.1:2379")
    if match.group(1) == "https":
        raise ConfigError(f"{where}: {endpoint!r}: TLS endpoints are not supported yet")
    port = int(match.group(3) or 2379)
    if not 0 < port < 65536:
        raise ConfigError(f"{where}: {endpoint!r}: port out of range")
    return match.group(2).strip("[]"), port


def _mysql(data: dict[str, Any], path: Path) -> MySQLConfig:
    where = "storage.mysql"
    kwargs: dict[str, Any] = {}
    for key in ("host", "user", "database", "socket"):
        if data.get(key) is not None:
            kwargs[key] = _expect(data[key], str, f"{where}.{key}", path)
    if data.get("password") is not None:
        kwargs["password"] = str(_expect(data["password"], (str, int), f"{where}.password", path))
    for key in ("port", "max_open_conns", "max_idle_conns"):
        if data.get(key) is not None:
            value = _expect(data[key], int, f"{where}.{key}", path)
            if value <= 0 or (key == "port" and value > 65535):
                raise ConfigError(f"{path}: {where}.{key}: out of range: {value}")
            kwargs[key] = value
    if data.get("poll_interval") is not None:
        seconds = _duration_value(data["poll_interval"], f"{where}.poll_interval", path)
        if seconds <= 0:
            raise ConfigError(f"{path}: {where}.poll_interval: must be more than 0")
        kwargs["poll_interval"] = seconds
    return MySQLConfig(**kwargs)


def load_storage(path: str | Path) -> StorageConfig:
    """The `storage:` section of a k3 config file. ConfigError (one line) on any problem."""
    path = Path(path)
    try:
        text = path.read_text()
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
    if data is None:
        data = {}
    _expect(data, dict, "top level", path)
    storage = data.get("storage") or {}
    _expect(storage, dict, "storage", path)
    kind = storage.get("type", "memory")
    if kind not in ("memory", "etcd", "mysql"):
        raise ConfigError(
            f"{path}: storage.type: unknown store {kind!r} (use memory, etcd or mysql)"
        )
    return StorageConfig(
        type=kind,
        etcd=_etcd(_section(storage, "etcd", "storage", path), path),
        mysql=_mysql(_section(storage, "mysql", "storage", path), path),
    )

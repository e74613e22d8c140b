"""Run settings of `k3net run`: every flag declared once, with its default, its help and its
environment variable; the command line, `k3net run --help` and `Settings` all read this table.

Where a value comes from, first found wins:

    1. the flag              --peer-ttl 30s      (Go's single-dash forms too: -peer-ttl 30s)
    2. the environment       K3NET_PEER_TTL=30s  (every flag: K3NET_ + name in upper case, _ for -)
    3. the config file       network: {peer-ttl: 30s}   (a k3net-only section of the k3 YAML,
                                                          ignored by the Go components)
    4. the default           90s

The Go agent's own variables are kept: `NODE_NAME` (after K3NET_NODE_NAME) and `CONFIG_PATH`
(after K3NET_CONFIG). A value that cannot be used is a `ConfigError` naming where it came from.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from k3net.config import (
    ConfigError,
    StorageConfig,
    format_duration,
    load_storage,
    parse_duration,
)
from k3net.core.names import name_problem

if TYPE_CHECKING:
    from k3net.core.discovery import JoinAddress, Network

# --- value parsers: text in, value out, ValueError with a readable message ----------------------


def positive_duration(text: str) -> float:
    """A Go duration (`700ms`, `15s`, `1m30s`) that is more than zero, in seconds."""
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"duration must be more than 0: {text!r}")
    return seconds


def duration_or_off(text: str) -> float:
    """A Go duration, or `0`/`off` for "never" (returned as 0.0)."""
    if text.strip().lower() in ("0", "off", "false", "never"):
        return 0.0
    return positive_duration(text)


# Nothing not Ready for less than this is ever pruned (`--prune-after`, `k3net prune
# --older-than`): a Node down for minutes is an outage to see, not a machine gone for good.
MIN_PRUNE_AGE = 3600.0


def prune_age(text: str) -> float:
    """A Go duration of at least MIN_PRUNE_AGE (an hour), in seconds."""
    seconds = positive_duration(text)
    if seconds < MIN_PRUNE_AGE:
        raise ValueError(f"{text!r} is less than an hour, the least allowed "
                         "(pruning is for machines gone for good)")
    return seconds


def prune_after(text: str) -> float:
    """`off` (0.0: never prune), or a prune_age."""
    if text.strip().lower() in ("0", "off", "false", "never"):
        return 0.0
    return prune_age(text)


def parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool, plus yes/no/on/off."""
    lowered = text.strip().lower()
    if lowered in ("1", "t", "true", "yes", "on"):
        return True
    if lowered in ("0", "f", "false", "no", "off"):
        return False
    raise ValueError(f"invalid boolean {text!r} (use true or false)")


def parse_listen(text: str) -> tuple[str, int]:
    """`:7946`, `127.0.0.1:7946`, `[::1]:7946` as (host, port); host "" means every address."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"invalid listen address {text!r} (use HOST:PORT or :PORT)")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address in {text!r}") from None
    elif ":" in host:
        # As Go's net.SplitHostPort: an IPv6 host needs brackets, `[::1]:7946`.
        raise ValueError(f"IPv6 address needs brackets in {text!r} (use [::1]:PORT)")
    return host, port


def node_name(text: str) -> str:
    problem = name_problem(text)
    if problem:
        raise ValueError(f"{text!r}: {problem}")
    return text


def _interfaces(text: str) -> tuple[str, ...]:
    """From the environment or the config file: names separated by commas or spaces."""
    return tuple(part for part in text.replace(",", " ").split() if part)


def advertise_addresses(text: str) -> tuple[str, ...]:
    """Addresses separated by commas or spaces, each one a peer could reach (not loopback,
    link-local, multicast or unspecified: see k3net.core.addresses), in canonical form."""
    from k3net.core import addresses

    out = []
    for part in _interfaces(text):
        ip = addresses.parse(part)
        if ip is None or "%" in part:
            raise ValueError(f"invalid IP address {part!r}")
        problem = addresses.problem(ip)
        if problem is not None:
            raise ValueError(f"{part!r} is a {problem} address, which no peer can reach")
        out.append(str(ip))
    return tuple(dict.fromkeys(out))


def join_addresses(text: str) -> tuple[JoinAddress, ...]:
    """Join addresses (HOST, HOST:PORT, [IPv6]:PORT) separated by commas or spaces."""
    from k3net.core.discovery import parse_joins

    return parse_joins(text)


def scan_ranges(text: str) -> tuple[Network, ...]:
    """Scan ranges (CIDR blocks of at most a /22) separated by commas or spaces."""
    from k3net.core.discovery import parse_scans

    return parse_scans(text)


def scan_rate(text: str) -> float:
    """Connection attempts per second: a number from 1 to 10000."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"invalid rate {text!r} (use a number of attempts per second)") from None
    if not 1 <= value <= 10000:
        raise ValueError(f"rate out of range: {text!r} (1 to 10000 per second)")
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"invalid choice {text!r} (use {', '.join(allowed)})")
        return value

    return parse


# --- the flags ----------------------------------------------------------------------------------


@attrs.frozen
class Flag:
    """One `k3net run` flag. `default` is the value as a user writes it (shown by --help);
    `parse` turns text into the value `Settings` holds. `None` as default means "derived"
    (`derived` says from what) or "none"."""

    name: str
    parse: Callable[[str], Any]
    default: str | None
    help: str
    metavar: str | None = None
    derived: str | None = None
    # Several values: the flag repeats; the environment and config take a comma-separated list.
    repeat: bool = False
    # Boolean flags: given alone (`--register-self`, Go's `-register-self`) they mean true.
    boolean: bool = False
    # Older variables still read after K3NET_<FLAG> (the Go agent's own).
    legacy_env: tuple[str, ...] = ()
    # Not settable from the config file (the config file itself).
    in_file: bool = True

    @property
    def env(self) -> str:
        return "K3NET_" + self.name.upper().replace("-", "_")

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    def default_value(self) -> Any:
        if self.default is None:
            return () if self.repeat else None
        return self.parse(self.default)


FLAGS: tuple[Flag, ...] = (
    Flag("config", str, None, in_file=False, metavar="PATH", legacy_env=("CONFIG_PATH",),
         derived="the embedded memory store",
         help="k3 YAML config: its storage: section (the Go components' store) and k3net's own "
         "network: section (any flag below, by name)"),
    Flag("listen", parse_listen, ":7946", metavar="ADDR",
         help="HTTP listener (/healthz /livez /readyz /info /nodes /metrics /events); its port is "
         "the one advertised over mDNS and probed by peers"),
    Flag("service", str, "_k3._tcp", metavar="NAME", help="DNS-SD service type"),
    Flag("domain", str, "local.", metavar="NAME", help="mDNS domain"),
    Flag("interface", _interfaces, None, metavar="NAME", repeat=True,
         derived="the LAN interfaces: not container/VM bridges, bridge ports or tunnels",
         help="network interface for mDNS; repeat for several"),
    Flag("node-name", node_name, None, metavar="NAME", legacy_env=("NODE_NAME",),
         derived="the host name", help="this node's name (mDNS instance and Node name)"),
    Flag("peer-ttl", positive_duration, "90s", metavar="DUR",
         help="a peer no agent reached for this long is no longer Ready"),
    Flag("probe-interval", positive_duration, None, metavar="DUR", derived="peer-ttl/6",
         help="how often every peer is probed"),
    Flag("probe-timeout", positive_duration, "700ms", metavar="DUR",
         help="a probe that takes longer failed"),
    Flag("register-self", parse_bool, "true", metavar="BOOL", boolean=True,
         help="also keep a Node for this machine"),
    Flag("advertise-address", advertise_addresses, None, metavar="ADDR", repeat=True,
         derived="the addresses of the LAN interfaces, without container/VM bridges and tunnels",
         help="advertise exactly this address over mDNS; repeat for several"),
    Flag("cluster-key-file", str, None, metavar="PATH", derived="none: open, as the Go agent",
         help="shared secret of this cluster (chmod 600, at least 128 bits: make one with k3net "
         "keygen PATH): only agents that prove it are written, and this agent proves it to "
         "them; the key never travels"),
    Flag("prune-after", prune_after, "off", metavar="DUR",
         help="delete managed Nodes not Ready and not seen for longer than this (at least 1h), "
         "with compare-and-swap (as k3net prune --older-than DUR); off keeps them for ever"),
    Flag("join", join_addresses, None, metavar="HOST[:PORT]", repeat=True,
         derived="none",
         help="an agent to ask who it is and follow as a peer, beyond mDNS's reach (another "
         "subnet); the port defaults to ours. Retried with backoff until it answers, never "
         "fatal; repeat for several"),
    Flag("scan", scan_ranges, None, metavar="CIDR", repeat=True, derived="none: no scan",
         help="probe our port on EVERY address of this range each scan interval and follow the "
         "agents that answer (sends traffic to the whole range; at most a /22 per entry); "
         "repeat for several"),
    Flag("scan-interval", positive_duration, "1m", metavar="DUR",
         help="time between two --scan passes: a new agent on a scanned range is found within "
         "it, at one connection attempt per address each time"),
    Flag("scan-rate", scan_rate, "100", metavar="N",
         help="--scan starts at most this many connection attempts per second (a /24 takes "
         "about 2.5 s at 100)"),
    Flag("log-level", _choice("debug", "info", "warning", "error"), "info", metavar="LEVEL",
         help="debug, info, warning or error"),
    Flag("log-format", _choice("text", "json"), "text", metavar="FORMAT",
         help="text for people, json (one object per line) for collectors"),
)
FLAG_BY_NAME = {flag.name: flag for flag in FLAGS}


def default(name: str) -> Any:
    """The default value of a flag, parsed: the one place the defaults are written."""
    return FLAG_BY_NAME[name].default_value()


# --- the settings -------------------------------------------------------------------------------


@attrs.frozen
class Settings:
    """Everything `k3net run` needs, after flags, environment and config file are read. The
    defaults are the flags' (see FLAGS, where each one is explained)."""

    # This node's name: the mDNS instance name and the Node's metadata.name.
    node_name: str
    # HTTP listener; its port is also the one advertised over mDNS and probed by peers.
    listen_host: str = default("listen")[0]
    listen_port: int = default("listen")[1]
    # DNS-SD service type and mDNS domain, as the Go agent.
    service: str = default("service")
    domain: str = default("domain")
    # A peer nobody has reached for this long is no longer Ready (Unknown/PeerExpired).
    peer_ttl: float = default("peer-ttl")
    # How often every known peer is probed; peer_ttl/6 gives about six chances per TTL.
    probe_interval: float = default("peer-ttl") / 6
    # A probe that takes longer than this failed. 700ms is far above LAN round trips.
    probe_timeout: float = default("probe-timeout")
    # Also keep a Node for this machine, heartbeated by this agent.
    register_self: bool = default("register-self")
    # Interface names to advertise and browse on; empty means every multicast-capable one.
    interfaces: tuple[str, ...] = ()
    # Addresses to advertise exactly (--advertise-address), instead of the interfaces' own.
    advertise_addresses: tuple[str, ...] = ()
    # The cluster key (read from --cluster-key-file), or None for the open, Go-compatible
    # behaviour: with it, only peers whose /info answer proves the key are written, and our
    # /info proves it. Never shown (repr=False), never logged, never stored.
    cluster_key: bytes | None = attrs.field(default=None, repr=False)
    # Agents to ask who they are and follow as peers (--join): how subnets that mDNS does not
    # join see each other with the memory store. The port None means our listen port.
    join: tuple[JoinAddress, ...] = ()
    # Address ranges to scan on our listen port every scan_interval (--scan), at scan_rate
    # connection attempts per second at most. Opt-in: it sends traffic to every address there.
    scan: tuple[Network, ...] = ()
    # A minute: a newcomer on a scanned range is found within it, and a /24 costs about four
    # connection attempts per second on average per scanning agent.
    scan_interval: float = default("scan-interval")
    # 100 attempts per second: a /24 in about 2.5 s, a /22 in about 10 s, never a burst.
    scan_rate: float = default("scan-rate")
    storage: StorageConfig = StorageConfig()
    config_path: str | None = None
    # Managed Nodes not Ready for this long are deleted (0: never): see k3net.tasks.prune.
    prune_after: float = default("prune-after")
    log_level: str = default("log-level")
    log_format: str = default("log-format")

    @property
    def refresh_interval(self) -> float:
        """lastSeen is refreshed at most this often per node, by all agents together."""
        return self.peer_ttl / 3


# --- resolving: flag > environment > config file > default --------------------------------------


def _file_text(value: Any, flag: Flag, where: str) -> str:
    """A YAML value as the text a flag takes: `true`, `90`, [eth0, eth1] are fine too."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and flag.parse in (
            positive_duration, duration_or_off, prune_after):
        return f"{value}s"  # a bare number in the file is seconds, as elsewhere in the config
    if isinstance(value, list) and flag.repeat:
        return ",".join(str(v) for v in value)
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ConfigError(f"{where}: expected a single value, got {value!r}")


def network_section(path: str) -> dict[str, Any]:
    """The `network:` section of a k3 config file, keys as flag names (`peer-ttl`, `peer_ttl`
    and `PEER_TTL` all name --peer-ttl). Call after `load_storage` has found the file readable."""
    import yaml  # only with a config file: keeps the start quick without one

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    section = data.get("network") if isinstance(data, dict) else None
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: network: expected a mapping, got {section!r}")
    out: dict[str, Any] = {}
    for key, value in section.items():
        name = str(key).lower().replace("_", "-")
        flag = FLAG_BY_NAME.get(name)
        if flag is None or not flag.in_file:
            known = ", ".join(f.name for f in FLAGS if f.in_file)
            raise ConfigError(f"{path}: network.{key}: unknown setting (known: {known})")
        if value is None or value == "":
            continue  # empty means the default, as the Go loader reads it
        out[name] = _file_text(value, flag, f"{path}: network.{key}")
    return out


def _parse(flag: Flag, text: str, where: str) -> Any:
    try:
        return flag.parse(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def resolve(
    given: Mapping[str, Any],
    environ: Mapping[str, str],
    hostname: Callable[[], str] = socket.gethostname,
) -> Settings:
    """Settings from the flags given on the command line (`given`: flag name -> parsed value,
    only those present), the environment and the config file. ConfigError (one line, naming
    the flag, variable or file) if a value is unusable."""
    values: dict[str, Any] = {}
    config_path = _config_path(given, environ)
    # load_storage first: its errors name the file's problem best (missing, bad YAML).
    storage = load_storage(config_path) if config_path else StorageConfig()
    file_values = network_section(config_path) if config_path else {}
    for flag in FLAGS:
        if flag.name == "config":
            continue
        if flag.name in given:
            values[flag.name] = given[flag.name]
            continue
        env_name = next((n for n in (flag.env, *flag.legacy_env) if environ.get(n)), None)
        if env_name is not None:
            values[flag.name] = _parse(flag, environ[env_name], env_name)
        elif flag.name in file_values:
            where = f"{config_path}: network.{flag.name}"
            values[flag.name] = _parse(flag, file_values[flag.name], where)
        else:
            values[flag.name] = flag.default_value()
    if values["node-name"] is None:
        values["node-name"] = _parse(FLAG_BY_NAME["node-name"], hostname().lower(), "host name")
    peer_ttl = values["peer-ttl"]
    host, port = values["listen"]
    return Settings(
        node_name=values["node-name"],
        listen_host=host,
        listen_port=port,
        service=values["service"],
        domain=values["domain"],
        peer_ttl=peer_ttl,
        probe_interval=values["probe-interval"] or peer_ttl / 6,
        probe_timeout=values["probe-timeout"],
        register_self=values["register-self"],
        interfaces=tuple(values["interface"]),
        # (repeated flags arrive as given: checked here, wherever they came from)
        advertise_addresses=_parse(FLAG_BY_NAME["advertise-address"],
                                   ",".join(values["advertise-address"]), "--advertise-address"),
        cluster_key=_cluster_key(values["cluster-key-file"]),
        join=_parse(FLAG_BY_NAME["join"], ",".join(str(v) for v in values["join"]), "--join"),
        scan=_parse(FLAG_BY_NAME["scan"], ",".join(str(v) for v in values["scan"]), "--scan"),
        scan_interval=values["scan-interval"],
        scan_rate=values["scan-rate"],
        storage=storage,
        config_path=config_path,
        prune_after=values["prune-after"],
        log_level=values["log-level"],
        log_format=values["log-format"],
    )


def _cluster_key(path: str | None) -> bytes | None:
    if not path:
        return None
    from k3net.core.identity import KeyFileError, read_key_file

    try:
        return read_key_file(path)
    except KeyFileError as exc:
        raise ConfigError(str(exc)) from None


def _config_path(given: Mapping[str, Any], environ: Mapping[str, str]) -> str | None:
    if given.get("config"):
        return str(given["config"])
    flag = FLAG_BY_NAME["config"]
    for name in (flag.env, *flag.legacy_env):
        if environ.get(name):
            return environ[name]
    return None


def describe(settings: Settings) -> str:
    """One log line's worth: what the agent runs with."""
    return (
        f"{settings.node_name} on port {settings.listen_port}, store {settings.storage.type}, "
        f"peer-ttl {format_duration(settings.peer_ttl)}, "
        f"probe every {format_duration(settings.probe_interval)}"
    )


# --- Go's flag syntax ---------------------------------------------------------------------------


def go_flags(argv: Sequence[str], long_names: set[str]) -> list[str]:
    """Go's flag package takes `-peer-ttl 90s` and `-register-self=false` with one dash; argparse
    would read `-peer-ttl` as `-p eer-ttl`. Rewrite a single-dash word that names a long flag
    (before a lone `--`) to its double-dash form, so a Go agent's command line runs unchanged."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            out.extend(argv[i:])
            break
        if arg.startswith("-") and not arg.startswith("--") and len(arg) > 2:
            name = arg[1:].split("=", 1)[0]
            if name in long_names:
                arg = "-" + arg
        out.append(arg)
    return out

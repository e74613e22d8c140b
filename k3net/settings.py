"""Run settings of `k3net run`. Each setting is declared once, as a field of `Settings` whose
metadata is its flag: name, parser, default (the field's), help and environment variable
(K3NET_ and the name). Everything else is derived from those declarations: `resolve`, the
options of `k3net run` and `--help` (k3net.cli), the keys of the config file's network:
section, and the README's flag table (`flag_table`; `scripts/flag_table.py` writes it).

Where a value comes from, first found wins:

    1. the flag              --peer-ttl 30s      (Go's single-dash forms too: -peer-ttl 30s)
    2. the environment       K3NET_PEER_TTL=30s  (every flag: K3NET_ + name in upper case, _ for -)
    3. the config file       network: {peer-ttl: 30s}   (a k3net-only section of the k3 YAML,
                                                          ignored by the Go components)
    4. the default           1m30s

Every source is text (or YAML) read by the same parser, so a bad value is the same one-line
`ConfigError` naming where it came from: `--peer-ttl: ...`, `K3NET_PEER_TTL: ...` or
`k3.yaml: network.peer-ttl: ...`. The Go agent's own variables are kept: `NODE_NAME` (after
K3NET_NODE_NAME) and `CONFIG_PATH` (after K3NET_CONFIG).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from k3net.config import ConfigError, StorageConfig, read_config, storage_from_data
from k3net.core import parse
from k3net.core.names import name_problem
from k3net.durations import format_duration, parse_duration

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
    if not sep or not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"invalid listen address {text!r} (use HOST:PORT or :PORT)")
    port = parse.port(port_text)
    if isinstance(port, parse.Foreign):
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
    """Names separated by commas or spaces."""
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


def node_labels(text: str) -> tuple[tuple[str, str], ...]:
    """KEY=VALUE labels separated by commas or spaces, as Kubernetes writes them (see
    k3net.core.nodes.label_problem); never one of k3net's own keys."""
    from k3net.core.nodes import label_problem

    out = []
    for part in _interfaces(text):
        key, sep, value = part.partition("=")
        problem = label_problem(key, value) if sep else "expected KEY=VALUE"
        if problem:
            raise ValueError(f"{part!r}: {problem}")
        out.append((key, value))
    return tuple(out)


def show_labels(labels: Iterable[tuple[str, str]]) -> str:
    return ",".join(f"{key}={value}" for key, value in labels) or "none"


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


def cluster_key_file(path: str) -> bytes:
    """The key in a cluster key file (checked: see k3net.core.identity.read_key_file)."""
    from k3net.core.identity import KeyFileError, read_key_file

    try:
        return read_key_file(path)
    except KeyFileError as exc:
        raise ValueError(str(exc)) from None


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"invalid choice {text!r} (use {', '.join(allowed)})")
        return value

    return parse


# --- showing a value as a flag would take it ----------------------------------------------------


def show_listen(value: tuple[str, int]) -> str:
    host, port = value
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def show_bool(value: bool) -> str:
    return "true" if value else "false"


def show_duration_or_off(seconds: float) -> str:
    return format_duration(seconds) if seconds else "off"


def show_number(value: float) -> str:
    return f"{value:g}"


def show_list(values: Iterable[object]) -> str:
    return ",".join(str(v) for v in values) or "none"


def show_key(key: bytes | None) -> str:
    """A cluster key is never shown, only whether there is one."""
    return "a key" if key else "none"


# --- the flags ----------------------------------------------------------------------------------

_FLAG = "k3net.flag"


@attrs.frozen
class Flag:
    """One `k3net run` flag, declared as the metadata of the `Settings` field(s) it sets.
    `parse` turns a source's text into the field's value, `show` the value back into text
    (for --help's default and the log). The rest is filled in from the fields: `fields`, the
    `Settings` attributes it sets (two for --listen: host and port), and `default`, the value
    they hold when no source gives one (None when `derived` says how it is found)."""

    name: str
    parse: Callable[[str], Any]
    metavar: str
    help: str
    show: Callable[[Any], str] = str
    # The default in words, when it is not a value: worked out at start or from another flag.
    derived: str | None = None
    # Several values: the flag repeats; the environment and config take a comma-separated list.
    repeat: bool = False
    # Boolean flags: given alone (`--register-self`, Go's `-register-self`) they mean true.
    boolean: bool = False
    # Older variables still read after K3NET_<FLAG> (the Go agent's own).
    legacy_env: tuple[str, ...] = ()
    # Not settable from the config file (the config file itself).
    in_file: bool = True
    fields: tuple[str, ...] = ()
    default: Any = None

    @property
    def env(self) -> str:
        return "K3NET_" + self.name.upper().replace("-", "_")

    @property
    def envs(self) -> tuple[str, ...]:
        """The variables read for this flag, first found wins."""
        return (self.env, *self.legacy_env)

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def seconds(self) -> bool:
        """A duration: a bare number in the config file is seconds."""
        return self.parse in (positive_duration, duration_or_off, prune_after)

    def default_text(self) -> str:
        """The default as --help and the README show it."""
        return self.derived or self.show(self.default)

    def settings_values(self, value: Any) -> dict[str, Any]:
        """The `Settings` attributes this flag's value sets."""
        if len(self.fields) == 1:
            return {self.fields[0]: value}
        return dict(zip(self.fields, value, strict=True))


def flag(
    name: str, parse: Callable[[str], Any], metavar: str, help: str, *,
    show: Callable[[Any], str] = str, derived: str | None = None, repeat: bool = False,
    boolean: bool = False, legacy_env: tuple[str, ...] = (), in_file: bool = True,
) -> dict[str, Flag]:
    """The metadata of a `Settings` field set by the flag `--name` (see Flag)."""
    return {_FLAG: Flag(name, parse, metavar, help, show=show, derived=derived, repeat=repeat,
                        boolean=boolean, legacy_env=legacy_env, in_file=in_file)}


_LISTEN = flag(
    "listen", parse_listen, "ADDR", show=show_listen,
    help="HTTP listener (/healthz /livez /readyz /info /nodes /metrics /events); its port is "
    "the one advertised over mDNS and probed by peers")


def _sixth_of_peer_ttl(settings: Settings) -> float:
    return settings.peer_ttl / 6


# --- the settings -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Settings:
    """Everything `k3net run` needs, after flags, environment and config file are read. Each
    field's default is the flag's; its help (in the metadata) says what it is for and why."""

    config_path: str | None = attrs.field(default=None, metadata=flag(
        "config", str, "PATH", legacy_env=("CONFIG_PATH",), in_file=False,
        derived="the embedded memory store",
        help="k3 YAML config: its storage: section (the Go components' store) and k3net's own "
        "network: section (any flag below, by name)"))
    # The config file's storage: section (the memory store without a config file).
    storage: StorageConfig = StorageConfig()
    listen_host: str = attrs.field(default="", metadata=_LISTEN)
    listen_port: int = attrs.field(default=7946, metadata=_LISTEN)
    service: str = attrs.field(default="_k3._tcp", metadata=flag(
        "service", str, "NAME", help="DNS-SD service type"))
    domain: str = attrs.field(default="local.", metadata=flag(
        "domain", str, "NAME", help="mDNS domain"))
    interfaces: tuple[str, ...] = attrs.field(default=(), metadata=flag(
        "interface", _interfaces, "NAME", repeat=True, show=show_list,
        derived="the LAN interfaces: not container/VM bridges, bridge ports or tunnels",
        help="network interface for mDNS; repeat for several"))
    node_name: str = attrs.field(metadata=flag(
        "node-name", node_name, "NAME", legacy_env=("NODE_NAME",), derived="the host name",
        help="this node's name (mDNS instance and Node name): a DNS-1123 subdomain"))
    peer_ttl: float = attrs.field(default=90.0, metadata=flag(
        "peer-ttl", positive_duration, "DUR", show=format_duration,
        help="a peer no agent reached for this long is no longer Ready"))
    probe_interval: float = attrs.field(
        default=attrs.Factory(_sixth_of_peer_ttl, takes_self=True), metadata=flag(
            "probe-interval", positive_duration, "DUR", show=format_duration,
            derived="peer-ttl/6",
            help="how often each peer is probed; a held peer that answers, once per "
                 "lastSeen refresh (peer-ttl/3)"))
    probe_timeout: float = attrs.field(default=0.7, metadata=flag(
        "probe-timeout", positive_duration, "DUR", show=format_duration,
        help="a probe that takes longer failed (700ms is far above LAN round trips)"))
    register_self: bool = attrs.field(default=True, metadata=flag(
        "register-self", parse_bool, "BOOL", boolean=True, show=show_bool,
        help="also keep a Node for this machine, heartbeated by this agent"))
    advertise_addresses: tuple[str, ...] = attrs.field(default=(), metadata=flag(
        "advertise-address", advertise_addresses, "ADDR", repeat=True, show=show_list,
        derived="the addresses of the LAN interfaces, without container/VM bridges and tunnels",
        help="advertise exactly this address over mDNS; repeat for several"))
    # Never shown (repr=False), never logged, never stored.
    cluster_key: bytes | None = attrs.field(default=None, repr=False, metadata=flag(
        "cluster-key-file", cluster_key_file, "PATH", show=show_key,
        derived="none: open, as the Go agent",
        help="shared secret of this cluster (chmod 600, at least 128 bits: make one with k3net "
        "keygen PATH): only agents that prove it are written, and this agent proves it to "
        "them; the key never travels"))
    prune_after: float = attrs.field(default=0.0, metadata=flag(
        "prune-after", prune_after, "DUR", show=show_duration_or_off,
        help="delete managed Nodes not Ready and not seen for longer than this (at least 1h), "
        "with compare-and-swap (as k3net prune --older-than DUR); off keeps them for ever"))
    node_labels: tuple[tuple[str, str], ...] = attrs.field(default=(), metadata=flag(
        "node-label", node_labels, "KEY=VALUE", repeat=True, show=show_labels, derived="none",
        help="a label for this machine's own Node (as kubelet's --node-labels): env=prod, "
        "topology.kubernetes.io/zone=a; repeat for several. A label given before and no "
        "longer given is taken off"))
    join: tuple[JoinAddress, ...] = attrs.field(default=(), metadata=flag(
        "join", join_addresses, "HOST[:PORT]", repeat=True, show=show_list, derived="none",
        help="an agent to ask who it is and follow as a peer, beyond mDNS's reach (another "
        "subnet); the port defaults to ours. Retried with backoff until it answers, never "
        "fatal; repeat for several"))
    scan: tuple[Network, ...] = attrs.field(default=(), metadata=flag(
        "scan", scan_ranges, "CIDR", repeat=True, show=show_list, derived="none: no scan",
        help="probe our port on EVERY address of this range each scan interval and follow the "
        "agents that answer (sends traffic to the whole range; at most a /22 per entry); "
        "repeat for several"))
    scan_interval: float = attrs.field(default=60.0, metadata=flag(
        "scan-interval", positive_duration, "DUR", show=format_duration,
        help="time between two --scan passes: a new agent on a scanned range is found within "
        "it, at one connection attempt per address each time (a /24 every minute is about "
        "four attempts per second)"))
    scan_rate: float = attrs.field(default=100.0, metadata=flag(
        "scan-rate", scan_rate, "N", show=show_number,
        help="--scan starts at most this many connection attempts per second (a /24 takes "
        "about 2.5 s at 100, a /22 about 10 s: never a burst)"))
    log_level: str = attrs.field(default="info", metadata=flag(
        "log-level", _choice("debug", "info", "warning", "error"), "LEVEL",
        help="debug, info, warning or error"))
    log_format: str = attrs.field(default="text", metadata=flag(
        "log-format", _choice("text", "json"), "FORMAT",
        help="text for people, json (one object per line) for collectors"))

    @property
    def refresh_interval(self) -> float:
        """lastSeen is refreshed at most this often per node, by all agents together."""
        return self.peer_ttl / 3


_FACTORY: type = type(attrs.Factory(list))


def _collect_flags() -> tuple[Flag, ...]:
    """The flags in the order of their fields, each with its fields and default filled in."""
    declared: dict[Flag, list[attrs.Attribute[Any]]] = {}
    for field in attrs.fields(Settings):
        if _FLAG in field.metadata:
            declared.setdefault(field.metadata[_FLAG], []).append(field)
    flags = []
    for decl, fields in declared.items():
        # (a default worked out when Settings is made, or none: the flag's `derived` says it)
        defaults = [None if isinstance(f.default, _FACTORY) or f.default is attrs.NOTHING
                    else f.default for f in fields]
        default = defaults[0] if len(fields) == 1 else tuple(defaults)
        flags.append(attrs.evolve(decl, fields=tuple(f.name for f in fields), default=default))
    return tuple(flags)


FLAGS: tuple[Flag, ...] = _collect_flags()
FLAG_BY_NAME = {flag.name: flag for flag in FLAGS}
_FLAG_OF_FIELD = {field: flag for flag in FLAGS for field in flag.fields}


def show(field: str, value: Any) -> str:
    """A `Settings` attribute's value as its flag would take it (`1h0m0s`, `true`, `off`)."""
    flag = _FLAG_OF_FIELD.get(field)
    if flag is None or len(flag.fields) > 1:
        return str(value)
    return flag.show(value)


# --- resolving: flag > environment > config file > default --------------------------------------


def network_section(data: Any, path: str) -> dict[str, Any]:
    """The `network:` section of a k3 config file (`data`, as `read_config` read it), keys as
    flag names (`peer-ttl`, `peer_ttl` and `PEER_TTL` all name --peer-ttl), values as YAML
    read them."""
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
        if value is None or value == "" or value == []:
            continue  # empty means the default, as the Go loader reads it
        out[name] = value
    return out


def _parse(flag: Flag, text: str, where: str) -> Any:
    try:
        return flag.parse(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _joined(flag: Flag, parts: Sequence[Any]) -> Any:
    """The value of a flag given several times: the last one, or for a repeated flag all the
    items, each once, in order."""
    if not flag.repeat:
        return parts[-1]
    return tuple(dict.fromkeys(item for part in parts for item in part))


def _from_command_line(flag: Flag, given: Any) -> Any:
    """What the command line said: a text, a list of texts (a repeated flag), or a value
    already of the flag's type (from a caller that has one)."""
    texts = given if isinstance(given, list) else [given]
    where = f"--{flag.name}"
    return _joined(flag, [_parse(flag, t, where) if isinstance(t, str) else t for t in texts])


def _from_file(flag: Flag, value: Any, where: str) -> Any:
    """A YAML value: text as a flag takes it, and also `true`, `90` (seconds, for a duration),
    or a list for a repeated flag."""
    items = value if isinstance(value, list) and flag.repeat else [value]
    texts = []
    for item in items:
        if isinstance(item, bool):
            texts.append(show_bool(item))
        elif isinstance(item, (int, float)) and flag.seconds:
            texts.append(f"{item}s")  # a bare number is seconds, as elsewhere in the config
        elif isinstance(item, (str, int, float)):
            texts.append(str(item))
        else:
            raise ConfigError(f"{where}: expected a single value, got {item!r}")
    return _joined(flag, [_parse(flag, text, where) for text in texts])


_ABSENT = object()


def _found(flag: Flag, given: Mapping[str, Any], environ: Mapping[str, str],
           file_values: Mapping[str, Any], config_path: str | None) -> Any:
    """The flag's value from the first source that has one, or _ABSENT."""
    if flag.name in given:
        return _from_command_line(flag, given[flag.name])
    for env in flag.envs:
        if environ.get(env):
            return _parse(flag, environ[env], env)
    if flag.name in file_values:
        return _from_file(flag, file_values[flag.name], f"{config_path}: network.{flag.name}")
    return _ABSENT


def flag_value(name: str, given: Mapping[str, Any], environ: Mapping[str, str]) -> Any:
    """One flag, for a command other than `run`: the command line, else the environment, else
    the default (the config file's network: section is the agent's)."""
    flag = FLAG_BY_NAME[name]
    found = _found(flag, given, environ, {}, None)
    return flag.default if found is _ABSENT else found


def resolve(
    given: Mapping[str, Any],
    environ: Mapping[str, str],
    hostname: Callable[[], str] = socket.gethostname,
) -> Settings:
    """Settings from the flags given on the command line (`given`: flag name -> its text, a
    list of texts for a repeated flag; only those present), the environment and the config
    file. What no source gives keeps the default of its `Settings` field. ConfigError (one
    line, naming the flag, variable or file) if a value is unusable."""
    config_path = flag_value("config", given, environ)
    storage, file_values = StorageConfig(), {}
    if config_path:
        data = read_config(config_path)  # read once: both sections are of the same text
        storage = storage_from_data(data, config_path)
        file_values = network_section(data, config_path)
    found: dict[str, Any] = {"config_path": config_path, "storage": storage}
    for flag in FLAGS:
        if flag.name != "config":
            got = _found(flag, given, environ, file_values, config_path)
            if got is not _ABSENT:
                found.update(flag.settings_values(got))
    if "node_name" not in found:
        found["node_name"] = _parse(FLAG_BY_NAME["node-name"], hostname().lower(), "host name")
    return Settings(**found)


def describe(settings: Settings) -> str:
    """One log line's worth: what the agent runs with."""
    return (
        f"{settings.node_name} on port {settings.listen_port}, store {settings.storage.type}, "
        f"peer-ttl {format_duration(settings.peer_ttl)}, "
        f"probe every {format_duration(settings.probe_interval)}"
    )


def flag_table() -> str:
    """The flags of `k3net run` as a Markdown table (the README's: scripts/flag_table.py)."""
    rows = ["| flag | default | environment | meaning |", "|---|---|---|---|"]
    for flag in FLAGS:
        default = flag.derived or f"`{flag.default_text()}`"
        env = ", ".join(f"`{name}`" for name in flag.envs)
        meaning = flag.help.replace("|", "\\|")
        rows.append(f"| `--{flag.name} {flag.metavar}` | {default} | {env} | {meaning} |")
    return "\n".join(rows) + "\n"


# --- Go's flag syntax ---------------------------------------------------------------------------


def go_flags(argv: Sequence[str], long_names: set[str],
             valued: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Go's flag package takes `-peer-ttl 90s` and `-register-self=false` with one dash; argparse
    would read `-peer-ttl` as `-p eer-ttl`. Rewrite a single-dash word that names a long flag
    (before a lone `--`) to its double-dash form, so a Go agent's command line runs unchanged.

    A flag named in `valued` takes the next word as its value whatever it is, as in Go
    (`--peer-ttl -5s` is the value `-5s`, refused as negative, where argparse would take `-5s`
    for an unknown option and say the flag has no value): it is written `--peer-ttl=-5s`."""
    out: list[str] = []
    words = iter(enumerate(argv))
    for i, arg in words:
        if arg == "--":
            out.extend(argv[i:])
            break
        if arg.startswith("-") and not arg.startswith("--") and len(arg) > 2:
            name = arg[1:].split("=", 1)[0]
            if name in long_names:
                arg = "-" + arg
        if arg.startswith("--") and arg[2:] in valued and i + 1 < len(argv):
            arg = f"{arg}={next(words)[1]}"
        out.append(arg)
    return out

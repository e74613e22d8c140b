"""Command line: `k3net run` (the agent) and the views `nodes`, `peers`, `watch`.

Flags of `run` have the names and defaults of the k3 Go agent (`cmd/network`). Durations use Go
syntax (`700ms`, `15s`, `1m30s`), booleans accept `--register-self=false`. A bad flag, value or
config file ends the program with exit code 2 and one readable line: no traceback.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Sequence
from typing import NoReturn

from k3net.config import (
    ConfigError,
    Settings,
    StorageConfig,
    format_duration,
    load_storage,
    parse_duration,
)
from k3net.core.names import name_problem

log = logging.getLogger("k3net")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration must be more than 0: {text!r}")
    return seconds


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "t", "true", "yes", "on"):
        return True
    if lowered in ("0", "f", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r} (use true or false)")


def parse_listen(text: str) -> tuple[str, int]:
    """`:7946`, `127.0.0.1:7946`, `[::1]:7946` as (host, port); host "" means every address."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise argparse.ArgumentTypeError(f"invalid listen address {text!r} (use HOST:PORT or :PORT)")
    port = int(port_text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid IPv6 address in {text!r}") from None
    elif ":" in host:
        # As Go's net.SplitHostPort: an IPv6 host needs brackets, `[::1]:7946`.
        raise argparse.ArgumentTypeError(f"IPv6 address needs brackets in {text!r} (use [::1]:PORT)")
    return host, port


def _default_node_name() -> str:
    return os.environ.get("NODE_NAME") or socket.gethostname().lower()


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=os.environ.get("CONFIG_PATH"),
        metavar="PATH",
        help="k3 YAML config; only its storage: section is read (default: $CONFIG_PATH, "
        "else the embedded memory store)",
    )


def _add_mdns(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--service", default="_k3._tcp", help="DNS-SD service type (default: %(default)s)")
    parser.add_argument("--domain", default="local.", help="mDNS domain (default: %(default)s)")
    parser.add_argument(
        "--interface",
        action="append",
        default=[],
        metavar="NAME",
        help="network interface for mDNS; repeat for several (default: every multicast-capable one)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="k3net", description="LAN node-discovery agent for k3.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    run = sub.add_parser(
        "run",
        help="run the agent",
        description="Advertise this node over mDNS, discover and probe the other agents, and keep "
        "a v1/Node per machine in the k3 store.",
    )
    _add_config(run)
    run.add_argument(
        "--listen", default=":7946", type=parse_listen, metavar="ADDR",
        help="HTTP listener (/healthz /readyz /info /nodes /metrics /events); its port is the "
        "one advertised over mDNS and probed by peers (default: %(default)s)",
    )
    _add_mdns(run)
    run.add_argument(
        "--node-name", default=None, metavar="NAME",
        help="this node's name (default: $NODE_NAME, else the host name)",
    )
    run.add_argument(
        "--peer-ttl", default="90s", type=_duration, metavar="DUR",
        help="a peer no agent reached for this long is no longer Ready (default: %(default)s)",
    )
    run.add_argument(
        "--probe-interval", default=None, type=_duration, metavar="DUR",
        help="how often every peer is probed (default: peer-ttl/6)",
    )
    run.add_argument(
        "--probe-timeout", default="700ms", type=_duration, metavar="DUR",
        help="a probe that takes longer failed (default: %(default)s)",
    )
    run.add_argument(
        "--register-self", default=True, type=_bool, nargs="?", const=True, metavar="BOOL",
        help="also keep a Node for this machine (default: true)",
    )
    run.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="(default: %(default)s)",
    )
    run.add_argument(
        "--log-format", default="text", choices=["text", "json"], help="(default: %(default)s)"
    )

    nodes = sub.add_parser("nodes", help="list the Nodes in the store, like kubectl get nodes")
    _add_config(nodes)
    nodes.add_argument("-o", "--output", choices=["table", "wide", "json"], default="table")

    peers = sub.add_parser("peers", help="browse the LAN once and list the agents found")
    _add_mdns(peers)
    peers.add_argument("--timeout", default="3s", type=_duration, metavar="DUR",
                       help="how long to browse (default: %(default)s)")
    peers.add_argument("--probe-timeout", default="700ms", type=_duration, metavar="DUR",
                       help="(default: %(default)s)")
    peers.add_argument("--json", action="store_true", help="print JSON")

    watch = sub.add_parser("watch", help="follow an agent's /events stream")
    watch.add_argument("url", nargs="?", default="ws://127.0.0.1:7946/events",
                       help="(default: %(default)s)")
    watch.add_argument("--json", action="store_true", help="print the raw JSON messages")
    return parser


def _storage(path: str | None) -> StorageConfig:
    return load_storage(path) if path else StorageConfig()


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The run settings; ConfigError (one line) if a value or the config file is unusable."""
    node_name = args.node_name if args.node_name is not None else _default_node_name()
    problem = name_problem(node_name)
    if problem:
        raise ConfigError(f"--node-name {node_name!r}: {problem}")
    probe_interval = args.probe_interval or args.peer_ttl / 6
    host, port = args.listen
    return Settings(
        node_name=node_name,
        listen_host=host,
        listen_port=port,
        service=args.service,
        domain=args.domain,
        peer_ttl=args.peer_ttl,
        probe_interval=probe_interval,
        probe_timeout=args.probe_timeout,
        register_self=args.register_self,
        interfaces=tuple(args.interface),
        storage=_storage(args.config),
        config_path=args.config,
    )


def setup_logging(level: str, fmt: str) -> None:
    from k3net.logs import configure

    configure(level, fmt)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prog = f"k3net {args.command}"
    try:
        if args.command == "run":
            settings = settings_from_args(args)
            from k3net import mdns

            try:
                mdns.choose_interfaces(settings.interfaces, mdns.list_interfaces())
            except mdns.MdnsError as exc:
                raise ConfigError(str(exc)) from None
            setup_logging(args.log_level, args.log_format)
            from k3net.agent import main as agent_main

            log.info(
                "k3net %s on port %d, store %s, peer-ttl %s, probe every %s",
                settings.node_name, settings.listen_port, settings.storage.type,
                format_duration(settings.peer_ttl), format_duration(settings.probe_interval),
            )
            return agent_main(settings)
        if args.command == "nodes":
            from k3net.views import nodes_main

            return nodes_main(_storage(args.config), args.output)
        if args.command == "peers":
            from k3net.peers import main as peers_main

            return peers_main(
                service=args.service, domain=args.domain, interfaces=tuple(args.interface),
                timeout=args.timeout, probe_timeout=args.probe_timeout, as_json=args.json,
            )
        from k3net.views import watch_main

        return watch_main(args.url, args.json)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

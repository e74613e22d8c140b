"""Command line: `k3net run` (the agent) and the commands `nodes`, `peers`, `watch`, `prune`,
`keygen`.

The flags of `run` are declared once, as the fields of `k3net.settings.Settings` (names and
defaults of the k3 Go agent, `cmd/network`); this module only turns them into argparse options
that keep the text given, which `k3net.settings.resolve` parses as it parses the environment and
the config file. Go's single-dash forms (`-peer-ttl 90s`, `-register-self=false`) are accepted
as well. A bad flag, value, variable or config file ends the program with exit code 2 and one
readable line naming the command and the flag (`k3net run: error: --peer-ttl: ...`): no
traceback. Expected failures of a command (a store or agent that does not answer) are one line
and exit code 1; a traceback is printed only for a bug.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from k3net.commands import CommandError, ServerError, add_output, agent_server, server_base
from k3net.config import ConfigError
from k3net.settings import (
    FLAG_BY_NAME,
    FLAGS,
    Flag,
    Settings,
    describe,
    flag_value,
    go_flags,
    positive_duration,
    prune_age,
    resolve,
)

log = logging.getLogger("k3net")

PRECEDENCE = """\
Each flag can also be set by the environment variable shown (K3NET_ and the flag's name) or in
the config file's network: section, by the flag's name. The first found wins: flag, then
environment, then config file, then the default. Go's single-dash forms work too:
-listen :7946, -peer-ttl 90s, -register-self=false.

SIGHUP (systemctl reload) reads the config file again: the log level and format and the store
change at once, without an mDNS goodbye or a Node going not-Ready; other changes wait for a
restart (the log says which). SIGINT and SIGTERM stop the agent cleanly."""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line naming the command (`k3net run: error: --peer-ttl: ...`), exit 2."""

    def error(self, message: str) -> NoReturn:
        message = message.removeprefix("argument ")  # `--peer-ttl: ...` as for a bad value
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        # argparse reports a command's unknown flag from the top level (`k3net: error`): report
        # it from the command's own parser instead, which names the command.
        words = list(sys.argv[1:] if args is None else args)
        parsed, extras = self.parse_known_args(words, namespace)
        if extras:
            self._parser_of(extras[0], words, parsed).error(
                f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _parser_of(self, word: str, words: list[str],
                   parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The command's parser if `word` came after the command's name, else this one."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                command = getattr(parsed, action.dest, None)
                if command in words and word in words[words.index(command) + 1:]:
                    return action.choices[command]
        return self


class _Version(argparse.Action):
    """`--version`, computed only when asked for (finding the commit may run git)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version (and commit, when known) and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from k3net import version

        print(f"k3net {version.describe()}")
        parser.exit(0)


def _duration(text: str) -> float:
    try:
        return positive_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _prune_age(text: str) -> float:
    try:
        return prune_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _selector(text: str) -> Any:
    from k3net.commands.nodes import parse_selector

    try:
        return parse_selector(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _server(text: str) -> str:
    if text == "":  # `peers --server` alone: this machine's agent, found by agent_server
        return text
    try:
        return server_base(text)
    except ServerError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _sort_by(check: Callable[[str], str]) -> Callable[[str], str]:
    """A --sort-by argument that `check` accepts (ValueError naming the choices if not)."""

    def sort_by(text: str) -> str:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return sort_by


def _node_sort(text: str) -> str:
    from k3net.commands.nodes import check_sort

    return check_sort(text)


def _peer_sort(text: str) -> str:
    from k3net.commands.peers import check_sort

    return check_sort(text)


SERVER_HELP = ("the agent to ask (default: $K3NET_SERVER, else this machine's agent at the port "
               "of $K3NET_LISTEN or of the config file's network.listen, else "
               "http://127.0.0.1:7946)")


def _help(flag: Flag) -> str:
    env = ", ".join(f"${name}" for name in flag.envs)
    return f"{flag.help} (default: {flag.default_text()}; env {env})".replace("%", "%%")


def add_flag(parser: argparse._ActionsContainer, name: str, **overrides: Any) -> None:
    """Add the flag declared in `k3net.settings.Settings` as `--name` to `parser`. It keeps the
    text given (a list of texts for a repeated flag), parsed with the other sources by
    `k3net.settings`. Absent flags are absent from the namespace (SUPPRESS), so that the
    environment and config can fill in."""
    flag = FLAG_BY_NAME[name]
    kwargs: dict[str, Any] = {
        "default": argparse.SUPPRESS, "metavar": flag.metavar, "help": _help(flag),
        "dest": flag.dest,
    }
    if flag.repeat:
        kwargs["action"] = "append"
    if flag.boolean:
        kwargs.update(nargs="?", const="true")
    kwargs.update(overrides)
    parser.add_argument(f"--{name}", **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="k3net", description="LAN node-discovery agent for k3.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    run = sub.add_parser(
        "run",
        help="run the agent",
        description="Advertise this node over mDNS, discover and probe the other agents, and keep "
        "a v1/Node per machine in the k3 store.",
        epilog=PRECEDENCE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for flag in FLAGS:
        add_flag(run, flag.name)

    nodes = sub.add_parser(
        "nodes", help="list the Nodes, like kubectl get nodes",
        description="List the Nodes of the local agent (or of the one at --server), or, with "
        "--config, of the store the config names. Without --server or --config: "
        "$K3NET_SERVER, else the store of $K3NET_CONFIG, else this machine's agent.",
    )
    nodes.add_argument("names", nargs="*", metavar="NAME", help="only these Nodes")
    nodes.add_argument("-l", "--selector", type=_selector, metavar="SELECTOR",
                       help="only Nodes whose labels match, as kubectl's -l: key=value, "
                       "key!=value, 'key in (a,b)', 'key notin (a,b)', key, !key")
    nodes.add_argument("--sort-by", type=_sort_by(_node_sort), metavar="COLUMN|PATH",
                       help="order by a column (name, status, reason, lastseen, age, address, "
                       "managed, port, pid; age and lastseen oldest first) or by a field path "
                       "of the Node's JSON, as kubectl's (.metadata.labels.zone)")
    nodes.add_argument("-w", "--watch", action="store_true",
                       help="after the list, print each change of a Node until interrupted")
    nodes.add_argument("--retry", action="store_true",
                       help="with -w: wait for an agent or store that does not answer yet, "
                       "instead of saying so and exiting 1")
    source = nodes.add_mutually_exclusive_group()
    source.add_argument("--server", metavar="URL", type=_server, help=SERVER_HELP)
    add_flag(source, "config", help="read the store this k3 config names instead of asking "
             "an agent (env $K3NET_CONFIG, $CONFIG_PATH)")
    add_output(nodes, headers=True)

    peers = sub.add_parser(
        "peers", help="browse the LAN once and list the agents found, or (--server) the peers an "
        "agent follows and how each was found",
        description="Browse mDNS from here for --timeout, probe every agent found and list "
        "them with how their probe went. With --server, ask an agent instead for the peers it "
        "follows (also those found by --join, --scan or the store), with their state.",
    )
    peers.add_argument("--server", metavar="URL", nargs="?", const="", type=_server,
                       help="ask this agent (alone: this machine's, found as `k3net nodes` finds "
                       "it) for the peers it follows, with how each was found (mdns, join, scan, "
                       "store), instead of browsing mDNS from here")
    for name in ("service", "domain", "interface"):
        add_flag(peers, name)
    peers.add_argument("--timeout", default="3s", type=_duration, metavar="DUR",
                       help="how long to browse (default: %(default)s)")
    add_flag(peers, "probe-timeout")
    peers.add_argument("--sort-by", type=_sort_by(_peer_sort), metavar="COLUMN|PATH",
                       help="order by a column (name, addresses, port, pid, state, found-by) or a "
                       "field path of the peer's JSON, as -o json shows it (.lastProbe.outcome)")
    add_output(peers, headers=True)

    prune = sub.add_parser(
        "prune", help="remove managed Nodes not Ready and not seen for longer than --older-than",
        description="Delete the Nodes that k3net manages, that are not Ready and whose latest "
        "sign of life (lastSeen, the Ready condition's times) is older than --older-than, each "
        "with compare-and-swap (a Node brought back or changed meanwhile stays). Nodes not "
        "labelled k3.network/managed=true are never touched; a Node that carries what k3net "
        "does not own (cordoned, taints, others' labels or annotations) is kept unless --force.",
    )
    prune.add_argument("--older-than", required=True, type=_prune_age, metavar="DUR",
                       help="not seen for longer than this (Go duration, at least 1h, e.g. 72h)")
    prune.add_argument("--dry-run", action="store_true",
                       help="only list what would be deleted; change nothing")
    prune.add_argument("--force", action="store_true",
                       help="also delete old managed Nodes that carry what k3net does not own "
                       "(spec.unschedulable, taints, others' labels and annotations)")
    add_flag(prune, "config", help="the k3 config naming the store (env $K3NET_CONFIG, "
             "$CONFIG_PATH); required")
    add_output(prune)

    keygen = sub.add_parser(
        "keygen", help="write a new cluster key file (for --cluster-key-file)",
        description="Write 32 random bytes as 64 hex digits to PATH, mode 0600, atomically. "
        "Give every agent of the cluster a copy (e.g. with systemd's LoadCredential=).",
    )
    keygen.add_argument("path", metavar="PATH", help="the key file to write")
    keygen.add_argument("--force", action="store_true",
                        help="replace PATH if it exists (every agent then needs the new key)")

    watch = sub.add_parser(
        "watch", help="follow an agent's /events stream",
        description="Print each event of an agent's /events stream (a snapshot of the Nodes "
        "first, then every Ready change, rejection and removal) until interrupted. No agent "
        "answering is said at once (exit 1) unless --retry.",
    )
    watch.add_argument("url", nargs="?", type=_server, metavar="URL",
                       help="the agent (default: this machine's, found as `k3net nodes` finds "
                       "it: $K3NET_SERVER, $K3NET_LISTEN, the config's network.listen, :7946)")
    watch.add_argument("--retry", action="store_true",
                       help="wait for an agent that does not answer yet, and reconnect without "
                       "limit")
    add_output(watch)

    delete = sub.add_parser(
        "delete", help="delete Nodes from the store, like kubectl delete node",
        description="Delete the named Nodes from the store the config names, each with "
        "compare-and-swap on the version read (a Node rewritten meanwhile is kept). Only "
        "Nodes that k3net manages (label k3.network/managed=true) unless --force.",
    )
    delete.add_argument("kind", choices=("node", "nodes"), metavar="node",
                        help="what to delete: node")
    delete.add_argument("names", nargs="+", metavar="NAME", help="the Nodes to delete")
    delete.add_argument("--force", action="store_true",
                        help="also delete Nodes that k3net does not manage (the k3 "
                        "controller's)")
    add_flag(delete, "config", help="the k3 config naming the store (env $K3NET_CONFIG, "
             "$CONFIG_PATH); required")
    return parser


# Names Go's flag package would take with one dash: `-peer-ttl`, `-help`, `-version`.
_LONG_NAMES = {flag.name for flag in FLAGS} | {"help", "version"}


def _valued(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The long flags of the command in `argv` that take exactly one value: they take the next
    word, whatever it is (`--peer-ttl -5s`, `--older-than -1h`), as Go's flags do."""
    command = next((word for word in argv if not word.startswith("-")), None)
    names = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            if command in action.choices:
                names |= _valued(action.choices[command], ())
        elif action.nargs is None:
            names |= {o[2:] for o in action.option_strings if o.startswith("--")}
    return names


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = build_parser()
    return parser.parse_args(go_flags(argv, _LONG_NAMES, _valued(parser, argv)))


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The `run` flags present on the command line, by flag name: their text, or a list of
    texts for a repeated flag."""
    return {flag.name: getattr(args, flag.dest) for flag in FLAGS if hasattr(args, flag.dest)}


def settings_from_args(
    args: argparse.Namespace, environ: dict[str, str] | None = None
) -> Settings:
    """The run settings; ConfigError (one line) if a value or the config file is unusable."""
    return resolve(given_flags(args), os.environ if environ is None else environ)


def _value(args: argparse.Namespace, name: str) -> Any:
    """A flag of a command other than `run`: the command line, else the environment, else the
    default (the config file's network: section is the agent's)."""
    return flag_value(name, given_flags(args), os.environ)


def _run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    from k3net import mdns

    try:
        mdns.interfaces_for(settings)
    except mdns.MdnsError as exc:
        raise ConfigError(str(exc)) from None
    from k3net.logs import configure

    configure(settings.log_level, settings.log_format)
    from k3net.agent import main as agent_main

    log.info("k3net %s", describe(settings))
    # SIGHUP reads the config file again, with the same command line (k3net.reload).
    return agent_main(settings, reload=lambda: settings_from_args(args))


def _nodes(args: argparse.Namespace) -> int:
    from k3net.commands import nodes

    # --server, else --config, else $K3NET_SERVER, else the config of the environment, else
    # this machine's agent (k3net.commands.agent_server).
    config = None
    if not args.server and (hasattr(args, "config") or not os.environ.get("K3NET_SERVER")):
        config = _value(args, "config")
    source: nodes.Source
    if config:
        from k3net.config import load_storage

        source = nodes.StoreSource.from_config(load_storage(config), retry=args.retry)
    else:
        source = nodes.AgentSource(agent_server(args.server, os.environ), retry=args.retry)
    query = nodes.Query(tuple(args.names), args.selector or (), args.sort_by)
    return nodes.main(source, query, args.output, args.watch, args.headers)


def _peers(args: argparse.Namespace) -> int:
    from k3net.commands import peers

    if args.server is not None:
        server = agent_server(args.server, os.environ)
        return peers.main_agent(server, args.output, headers=args.headers, sort=args.sort_by)
    return peers.main(
        service=_value(args, "service"), domain=_value(args, "domain"),
        interfaces=_value(args, "interface"), timeout=args.timeout,
        probe_timeout=_value(args, "probe-timeout"), output=args.output,
        headers=args.headers, sort=args.sort_by,
    )


def _watch(args: argparse.Namespace) -> int:
    from k3net.commands import watch

    return watch.main(agent_server(args.url, os.environ), args.output, args.retry)


def _delete(args: argparse.Namespace) -> int:
    config = _value(args, "config")
    if not config:
        raise ConfigError("delete works on the store: give --config PATH (or set $K3NET_CONFIG)")
    from k3net.commands import delete
    from k3net.config import load_storage

    return delete.main(load_storage(config), args.names, args.force)


def _prune(args: argparse.Namespace) -> int:
    config = _value(args, "config")
    if not config:
        raise ConfigError("prune works on the store: give --config PATH (or set $K3NET_CONFIG)")
    from k3net.commands import prune
    from k3net.config import load_storage

    return prune.main(load_storage(config), args.older_than, args.dry_run, args.output,
                      force=args.force)


def _keygen(args: argparse.Namespace) -> int:
    from k3net.commands import keygen

    return keygen.main(args.path, args.force)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run, "nodes": _nodes, "peers": _peers, "watch": _watch, "prune": _prune,
    "keygen": _keygen,
    "delete": _delete,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    prog = f"k3net {args.command}"
    status = 0
    try:
        status = COMMANDS[args.command](args)
    except* ConfigError as group:
        for exc in _leaves(group):
            print(f"{prog}: error: {exc}", file=sys.stderr)
        status = 2
    except* CommandError as group:
        for exc in _leaves(group):
            print(f"{prog}: {exc}", file=sys.stderr)
        status = 1
    except* KeyboardInterrupt:
        status = 130
    return status


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]

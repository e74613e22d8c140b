"""The command-line commands other than `run`: `nodes`, `peers`, `watch`, `delete` (and `prune`).

Each command module has a pure formatting part (tested without I/O) and a `main` that does the
I/O and raises `CommandError` (one line, exit 1) for what can be expected to go wrong: a store or
an agent that does not answer. What they print is chosen with one option, `-o`, on all of them:

    table   columns for people (the default); `--no-headers` leaves the header line out
    wide    more columns
    name    `node/NAME` (`peer/NAME`), one a line, as `kubectl get -o name`
    json    machine-readable; a stream (`-w`, `watch`) is one JSON object per line
    yaml    the same data as YAML; a stream is a sequence of `---` documents

Which agent a client command asks (`agent_server`): `--server`, else $K3NET_SERVER, else the
agent this machine runs as configured: the port of $K3NET_LISTEN, else of the `listen` of the
config file's network: section ($K3NET_CONFIG, $CONFIG_PATH), else :7946. An agent that does not
answer within `ANSWER_TIMEOUT` is said so in one line; waiting for one is asked with `--retry`.

Messages about nothing found ("No nodes found.") go to stderr: stdout holds only the data.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

OUTPUTS = ("table", "wide", "name", "json", "yaml")
# Where `k3net nodes` and `k3net watch` find the local agent: the default `--listen` (:7946).
DEFAULT_SERVER = "http://127.0.0.1:7946"
# An agent answers its HTTP endpoints within milliseconds; one that has not accepted the
# connection, or sent a byte, this long after asked is not answering (a silent port, a stopped
# process). Under a second, so that "no agent" is said at once.
ANSWER_TIMEOUT = 0.5


class CommandError(Exception):
    """A command could not do its job for a reason outside k3net (a store or an agent that does
    not answer). The message is one readable line; the exit code is 1."""


def add_output(parser: argparse.ArgumentParser, *, headers: bool = False) -> None:
    """`-o table|wide|name|json|yaml`, the older `--json` (the same as `-o json`), and with
    `headers` `--no-headers`."""
    parser.add_argument("-o", "--output", choices=OUTPUTS, default="table",
                        help="table, wide, name, json or yaml (default: %(default)s)")
    parser.add_argument("--json", dest="output", action="store_const", const="json",
                        help="the same as -o json")
    if headers:
        parser.add_argument("--no-headers", dest="headers", action="store_false",
                            help="print no header line (table and wide)")


class ServerError(ValueError):
    """A --server (or $K3NET_SERVER) that is not an agent's URL."""


def server_base(server: str) -> str:
    """`server` as `http[s]://host:port`: a bare `host:port` is http. ServerError (one line)
    for another scheme or no host."""
    url = server if "://" in server else "http://" + server
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
        raise ServerError(f"{server!r} is not an agent's URL (expected one like {DEFAULT_SERVER})")
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


def local_server(listen: str) -> str:
    """The URL of the agent on this machine that listens at `listen` (`:7947`, `0.0.0.0:7946`,
    `[::]:7946`, `10.0.0.5:7946`): an unspecified host is reached on loopback."""
    from k3net.settings import parse_listen

    host, port = parse_listen(listen)
    if host in ("", "0.0.0.0"):  # noqa: S104 (an address read, not bound)
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def agent_server(given: str | None, environ: Mapping[str, str]) -> str:
    """Which agent a client command asks (module docstring). ConfigError (one line, exit 2)
    if $K3NET_SERVER, $K3NET_LISTEN or the config file's listen is unusable."""
    from k3net.config import ConfigError, read_config
    from k3net.settings import FLAG_BY_NAME, network_section

    if given:
        return server_base(given)
    if environ.get("K3NET_SERVER"):
        try:
            return server_base(environ["K3NET_SERVER"])
        except ServerError as exc:
            raise ConfigError(f"K3NET_SERVER: {exc}") from None
    listen, where = environ.get("K3NET_LISTEN"), "K3NET_LISTEN"
    if not listen:
        flag = FLAG_BY_NAME["config"]
        path = next((environ[n] for n in (flag.env, *flag.legacy_env) if environ.get(n)), None)
        listen = network_section(read_config(path), path).get("listen") if path else None
        where = f"{path}: network.listen"
    if not listen:
        return DEFAULT_SERVER
    try:
        return local_server(listen)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


class Table:
    """Columns padded to the widest cell seen so far. One printer for every command: a stream
    (`nodes -w`) keeps the widths of its first rows, growing only when a wider cell comes.
    `minimums` are widths a column starts with (for a stream: the widest value its vocabulary
    has, so that later rows stay under the header)."""

    def __init__(self, header: Sequence[str], minimums: Sequence[int] = ()) -> None:
        self.header = list(header)
        mins = [*minimums, *[0] * (len(header) - len(minimums))]
        self.widths = [max(len(cell), m) for cell, m in zip(header, mins, strict=True)]

    def lines(self, rows: Sequence[Sequence[str]], *, header: bool = False) -> str:
        """`rows` (and the header first, if asked) as text, one line each, ending in '\\n'."""
        rows = [self.header, *rows] if header else list(rows)
        for row in rows:
            self.widths = [max(w, len(cell)) for w, cell in zip(self.widths, row, strict=True)]
        return "".join(
            "   ".join(cell.ljust(w) for cell, w in zip(row, self.widths, strict=True)).rstrip()
            + "\n"
            for row in rows
        )


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, headers: bool = True) -> str:
    """A whole table at once: header (unless `headers` is False), then rows, as `kubectl get`
    prints it."""
    printer = Table(header)
    printer.lines(rows)  # measure every row before printing any
    return (printer.lines([], header=True) if headers else "") + printer.lines(rows)


def dump(data: Any, output: str) -> str:
    """A whole document as JSON (indented) or YAML."""
    if output == "json":
        return json.dumps(data, indent=2) + "\n"
    if output == "yaml":
        import yaml

        return str(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    raise ValueError(f"not a document format: {output!r}")


def dump_item(data: Any, output: str) -> str:
    """One item of a stream: a JSON line, or a YAML document after `---`."""
    if output == "json":
        return json.dumps(data) + "\n"
    return "---\n" + dump(data, "yaml")


# --- --sort-by: a field path, as kubectl's, or a column name -------------------------------------


def field_path(text: str) -> tuple[str | int, ...]:
    """A kubectl-style field path (`.metadata.name`, `{.status.addresses[1].address}`,
    `.metadata.labels.zone`) as its steps; ValueError if it is not one."""
    inner = text.strip()
    if inner.startswith("{") and inner.endswith("}"):
        inner = inner[1:-1]
    if not inner.startswith(".") or inner == ".":
        raise ValueError(f"invalid field path {text!r} (use one like .metadata.name)")
    steps: list[str | int] = []
    for part in inner[1:].split("."):
        match = re.fullmatch(r"([^\[\]]+)((?:\[\d+\])*)", part)
        if match is None:
            raise ValueError(f"invalid field path {text!r} (use one like .metadata.name)")
        steps.append(match.group(1))
        steps += [int(i) for i in re.findall(r"\[(\d+)\]", match.group(2))]
    return tuple(steps)


def lookup(data: Any, path: Sequence[str | int]) -> Any:
    """The value at `path` in a JSON document, or None if there is none."""
    for step in path:
        if isinstance(step, int):
            data = data[step] if isinstance(data, list) and step < len(data) else None
        else:
            data = data.get(step) if isinstance(data, dict) else None
        if data is None:
            return None
    return data


def sort_key(value: Any) -> tuple[int, Any]:
    """Orders values as kubectl's --sort-by does: numbers by value, the rest as text; items
    without the field last."""
    if value is None:
        return (2, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)


def sort_by(
    items: Sequence[T], spec: str, columns: Mapping[str, Callable[[T], Any]],
    document: Callable[[T], Any],
) -> list[T]:
    """`items` sorted by `spec`: one of `columns` (a column name, case-insensitive: its key), or
    a field path of each item's JSON (`document(item)`). Stable; ValueError naming the choices
    for anything else."""
    column = columns.get(spec.lower())
    if column is not None:
        return sorted(items, key=lambda item: sort_key(column(item)))
    try:
        steps = field_path(spec)
    except ValueError:
        raise ValueError(f"cannot sort by {spec!r}: give a column ({', '.join(columns)}) or a "
                         "field path like .metadata.name") from None
    return sorted(items, key=lambda item: sort_key(lookup(document(item), steps)))


def ready_word(status: str | None) -> str:
    """A Ready condition's status as people read it (`core.nodes.READY_WORDS`): Ready,
    NotReady, or Unknown (also when there is no condition)."""
    from k3net.core.nodes import READY_WORDS, status_readiness

    return READY_WORDS[status_readiness(status)]

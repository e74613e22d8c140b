"""`k3net nodes`: the Nodes, as `kubectl get nodes` shows them.

    k3net nodes [NAME...] [-l SELECTOR] [-o table|wide|name|json|yaml] [--no-headers]
                [--sort-by COLUMN|FIELD-PATH] [-w [--retry]] [--server URL | --config PATH]

Where the Nodes come from: `--server URL` asks that agent; `--config PATH` reads the store that
config names; else $K3NET_SERVER, else the store of $K3NET_CONFIG / $CONFIG_PATH, else the
agent of this machine (`k3net.commands.agent_server`: the port of $K3NET_LISTEN, default
:7946), through its /nodes and /events. An agent that does not answer is said so at once, in one
line; `-w --retry` waits for one instead.

`-l` takes Kubernetes' label selectors (`parse_selector`): `env=prod`, `env!=dev`,
`env in (a,b)`, `env notin (a,b)`, `zone`, `!zone`, `rank>2`. `--sort-by` takes a column name
(NAME, STATUS, REASON, LASTSEEN, AGE, ADDRESS, MANAGED, PORT, PID: AGE and LASTSEEN oldest
first) or a field path of the Node's JSON as kubectl's (`.metadata.labels.zone`,
`{.status.addresses[1].address}`).

`-w` prints the list, then one more row (or object) each time a Node changes, until
interrupted; its rows stay under the header (`STREAM_WIDTHS`). Formatting (`format_nodes`,
`node_row`) is pure and takes `now`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TextIO

import attrs
import trio

from k3net.commands import (
    ANSWER_TIMEOUT,
    CommandError,
    Table,
    dump,
    dump_item,
    ready_word,
    server_base,
    sort_by,
    table,
)
from k3net.config import StorageConfig
from k3net.convert import InvalidNode, node_from_dict, node_list, node_to_dict
from k3net.core import parse
from k3net.core.nodes import READY_WORDS, readiness
from k3net.durations import format_duration
from k3net.model import ANN_LAST_SEEN, ANN_PID, ANN_PORT, Node
from k3net.store.base import Deleted, Lost, Put, Snapshot, Store, StoreError

# `k3net nodes` gives up if the store or the agent has not answered within this many seconds.
DEADLINE = 10.0

HEADER = ("NAME", "STATUS", "REASON", "LASTSEEN", "AGE", "ADDRESS", "MANAGED")
WIDE_HEADER = ("NAME", "STATUS", "REASON", "LASTSEEN", "AGE", "ADDRESSES", "MANAGED", "PORT", "PID")
# The widths `-w` starts its columns with: the longest value each column's vocabulary has
# (NotReady; KubeletNotReady and AgentShutdown; an age like 7d23h or <none>; <unknown>; an IPv4
# address; a port; a pid), so that rows printed later stay under the header. Only a longer name,
# reason or address than these (and than the first list's) moves a later row.
STREAM_WIDTHS = (16, 8, 15, 6, 9, 15, 7, 5, 7)


# --- formatting (pure) --------------------------------------------------------------------------


def age(seconds: float) -> str:
    """A short age as kubectl shows it: 45s, 3m20s, 25m, 5h10m, 30h, 3d4h, 12d."""
    s = max(0, int(seconds))
    m, h, d = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if h < 3:
        return f"{m}m"
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if d < 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    return f"{d}d"




def _since(value: dt.datetime | str | None, now: dt.datetime, missing: str) -> str:
    if value is None:
        return missing
    if isinstance(value, str):
        parsed = parse.rfc3339(value, now)
        if isinstance(parsed, parse.Foreign):
            return "<foreign>"
        value = parsed
    return age((now - value).total_seconds())


def _shown(value: object) -> str:
    """A value read through `core.parse` as a table cell: foreign values are not printed."""
    return "<foreign>" if isinstance(value, parse.Foreign) else str(value)


def _number(text: str | None, reader: Callable[[object], int | parse.Foreign]) -> str:
    return "<none>" if text is None else _shown(reader(text))


def node_row(node: Node, now: dt.datetime, wide: bool) -> list[str]:
    cond = node.condition()
    ips = [_shown(parse.address(a.address)) for a in node.status.addresses if a.type != "Hostname"]
    ann = node.metadata.annotations
    row = [
        node.name,
        READY_WORDS[readiness(node)],
        (cond.reason if cond is not None else None) or "<none>",
        _since(ann.get(ANN_LAST_SEEN), now, "<none>"),
        _since(node.metadata.creation_timestamp, now, "<unknown>"),
        (",".join(ips) if wide else ips[0] if ips else "") or "<none>",
        "true" if node.managed else "false",
    ]
    if wide:
        row += [_number(ann.get(ANN_PORT), parse.port), _number(ann.get(ANN_PID), parse.pid)]
    return row


def format_nodes(
    nodes: Sequence[Node], now: dt.datetime, output: str = "table", *, headers: bool = True
) -> str:
    """The output of `k3net nodes -o OUTPUT`: a table like `kubectl get nodes`, `node/NAME`
    lines, or a NodeList as JSON or YAML. `now` is an aware datetime (the caller reads the
    clock). No Nodes in a table is no text at all: the caller says so on stderr."""
    if output in ("json", "yaml"):
        return dump(node_list(nodes), output)
    if output == "name":
        return "".join(f"node/{n.name}\n" for n in nodes)
    if output not in ("table", "wide"):
        raise ValueError(f"unknown output format {output!r} (use table, wide, name, json or yaml)")
    if not nodes:
        return ""
    wide = output == "wide"
    return table(WIDE_HEADER if wide else HEADER, [node_row(n, now, wide) for n in nodes],
                 headers=headers)


def _ready_condition(node: Node) -> Any:
    return node.condition()


def _ip(node: Node) -> str | None:
    ips = [a.address for a in node.status.addresses if a.type != "Hostname"]
    return ips[0] if ips else None


# --sort-by's column names: what each column is sorted on.
SORT_COLUMNS: Mapping[str, Callable[[Node], Any]] = {
    "name": lambda n: n.name,
    "status": lambda n: ready_word(n.ready_status),
    "reason": lambda n: getattr(n.condition(), "reason", None),
    "lastseen": lambda n: n.metadata.annotations.get(ANN_LAST_SEEN),
    "age": lambda n: n.metadata.creation_timestamp and n.metadata.creation_timestamp.isoformat(),
    "address": _ip,
    "addresses": _ip,
    "managed": lambda n: "true" if n.managed else "false",
    "port": lambda n: n.metadata.annotations.get(ANN_PORT),
    "pid": lambda n: n.metadata.annotations.get(ANN_PID),
}


def sort_nodes(nodes: Sequence[Node], spec: str) -> list[Node]:
    """`nodes` in the order of `--sort-by spec` (module docstring); ValueError if `spec` is
    neither a column nor a field path."""
    return sort_by(nodes, spec, SORT_COLUMNS, node_to_dict)


def check_sort(spec: str) -> str:
    """`spec` if --sort-by can sort by it; ValueError (naming the choices) if not."""
    sort_nodes([], spec)
    return spec


# --- which Nodes (pure) -------------------------------------------------------------------------


@attrs.frozen
class Requirement:
    """One term of a label selector, as Kubernetes' labels.Parse reads it: `key=value` (`==`),
    `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key`, `!key`, `key>1`, `key<1`."""

    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        match self.op:
            case "exists":
                return value is not None
            case "!exists":
                return value is None
            case "=" | "in":
                return value in self.values
            case "!=" | "notin":  # as Kubernetes: true also when the label is absent
                return value not in self.values
            case _:  # gt, lt: the label is an integer above / below the one given
                have = parse.number(value, 0, parse.REVISION_MAX)  # (int64, as Kubernetes)
                if isinstance(have, parse.Foreign):
                    return False
                want = int(self.values[0])
                return have > want if self.op == "gt" else have < want


_LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_TOKEN = re.compile(r"\s*(?:(!=|==|=|!|>|<|\(|\)|,)|([^\s(),!=<>]+))")
SELECTOR_HELP = "key=value, key==value, key!=value, key in (a,b), key notin (a,b), key, !key"


class _Tokens:
    """The tokens of a selector: operators, parentheses, commas and words."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.items: list[str] = []
        pos, text = 0, text.rstrip()
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None:
                raise ValueError(f"invalid label selector {self.text!r}")
            self.items.append(match.group(1) or match.group(2))
            pos = match.end()
        self.pos = 0

    def peek(self) -> str | None:
        return self.items[self.pos] if self.pos < len(self.items) else None

    def take(self) -> str | None:
        token = self.peek()
        self.pos += token is not None
        return token

    def fail(self, what: str) -> ValueError:
        return ValueError(f"invalid label selector {self.text!r}: {what} (use {SELECTOR_HELP})")


def _key(tokens: _Tokens) -> str:
    key = tokens.take()
    if key is None or not _LABEL_KEY.fullmatch(key) or len(key.rpartition("/")[2]) > 63:
        raise tokens.fail(f"expected a label key, got {key!r}" if key else "a label key is missing")
    return key


def _label_value(tokens: _Tokens, value: str) -> str:
    if not _LABEL_VALUE.fullmatch(value) or len(value) > 63:
        raise tokens.fail(f"invalid label value {value!r}")
    return value


def _requirement(tokens: _Tokens) -> Requirement:
    if tokens.peek() == "!":
        tokens.take()
        return Requirement(_key(tokens), "!exists")
    key = _key(tokens)
    op = tokens.peek()
    if op is None or op == ",":
        return Requirement(key, "exists")
    tokens.take()
    if op in ("=", "==", "!="):
        value = tokens.peek()
        if value is None or value == "," or not _is_word(value):
            value = ""
        else:
            tokens.take()
        return Requirement(key, "!=" if op == "!=" else "=", (_label_value(tokens, value),))
    if op in (">", "<"):
        number = tokens.take()
        if number is None or not re.fullmatch(r"-?\d+", number):
            raise tokens.fail(f"{key}{op} needs an integer")
        return Requirement(key, "gt" if op == ">" else "lt", (number,))
    if op in ("in", "notin"):
        if tokens.take() != "(":
            raise tokens.fail(f"'{key} {op}' needs a list in parentheses")
        # Between the parentheses: values separated by commas; an empty one (`()`, `(a,)`)
        # is the empty value, as Kubernetes reads it.
        values: list[str] = [""]
        while (token := tokens.take()) != ")":
            if token is None:
                raise tokens.fail("a ')' is missing")
            if token == ",":
                values.append("")
            elif _is_word(token) and not values[-1]:
                values[-1] = _label_value(tokens, token)
            else:
                raise tokens.fail(f"unexpected {token!r} in the list of {key}")
        return Requirement(key, op, tuple(dict.fromkeys(values)))
    raise tokens.fail(f"unexpected {op!r} after {key!r}")


def _is_word(token: str) -> bool:
    return token not in ("!=", "==", "=", "!", ">", "<", "(", ")", ",")


def parse_selector(text: str) -> tuple[Requirement, ...]:
    """A label selector as kubectl's `-l` takes it (Kubernetes' labels.Parse: terms separated by
    commas, all must hold). ValueError with a readable message if it is not one."""
    tokens = _Tokens(text)
    if not tokens.items:
        raise tokens.fail("it is empty")
    out = [_requirement(tokens)]
    while (token := tokens.take()) is not None:
        if token != ",":
            raise tokens.fail(f"expected ',' before {token!r}")
        if tokens.peek() is None:
            raise tokens.fail("it ends with ','")
        out.append(_requirement(tokens))
    return tuple(out)


@attrs.frozen
class Query:
    """Which Nodes to show: these names (all if empty), whose labels match every requirement,
    in the order of `sort` (a --sort-by spec) if given."""

    names: tuple[str, ...] = ()
    selector: tuple[Requirement, ...] = ()
    sort: str | None = None

    def wants(self, node: Node) -> bool:
        if self.names and node.name not in self.names:
            return False
        return all(r.matches(node.metadata.labels) for r in self.selector)

    def pick(self, nodes: Iterable[Node]) -> tuple[list[Node], list[str]]:
        """The Nodes wanted, in the order of the names asked for (else by name), and the
        names asked for that are not there."""
        chosen = [n for n in nodes if self.wants(n)]
        if not self.names:
            return self.order(sorted(chosen, key=lambda n: n.name)), []
        by_name = {n.name: n for n in chosen}
        found = [by_name[name] for name in dict.fromkeys(self.names) if name in by_name]
        return self.order(found), [name for name in dict.fromkeys(self.names) if name not in by_name]

    def order(self, nodes: Sequence[Node]) -> list[Node]:
        return sort_nodes(nodes, self.sort) if self.sort else list(nodes)


# --- where the Nodes come from ------------------------------------------------------------------


OnChange = Callable[[list[Node], list[Node]], Awaitable[None]]


class Source(Protocol):
    """The Nodes of a store or of an agent: `list()` once, `watch(on_change)` to follow."""

    @property
    def description(self) -> str: ...

    async def list(self) -> list[Node]: ...

    async def watch(self, on_change: OnChange) -> None:
        """Call `on_change(all_nodes, changed)` with the whole list first (changed = all), then
        each time Nodes change, until cancelled. A removed Node is passed in `changed` as it
        was last seen and is missing from `all_nodes`."""
        ...


@attrs.define
class StoreSource:
    """A store, opened by `opener` (a Store as an async context manager). The etcd and MySQL
    backends need a trio-asyncio loop around the calls (`main` opens one)."""

    kind: str
    opener: Callable[[], AbstractAsyncContextManager[Store]]
    # -w: wait for a store that does not answer at first (else: one line, exit 1).
    retry: bool = False

    @classmethod
    def from_config(cls, storage: StorageConfig, retry: bool = False) -> StoreSource:
        from k3net.store import open_store

        return cls(storage.type, lambda: open_store(storage), retry)

    @property
    def description(self) -> str:
        return f"the {self.kind} store"

    async def list(self) -> list[Node]:
        try:
            async with self.opener() as store:
                with trio.fail_after(DEADLINE):
                    scan = await store.scan()
        except trio.TooSlowError:
            raise CommandError(f"the {self.kind} store did not answer within {format_duration(DEADLINE)}") \
                from None
        except StoreError as exc:
            raise CommandError(f"{self.kind} store unavailable: {exc}") from None
        for item in scan.foreign:  # someone else's data under the Node prefix: shown, kept
            print(f"k3net nodes: {item.key} is not a Node ({item.reason}); left as it is",
                  file=sys.stderr)
        return [s.node for s in scan.nodes]

    async def watch(self, on_change: OnChange) -> None:
        async with self.opener() as store, store.watch() as events:
            known: dict[str, Node] = {}
            listed = False
            async for event in events:
                if isinstance(event, Lost) and not listed and not self.retry:
                    raise CommandError(f"{self.kind} store unavailable: {event.reason} "
                                       "(-w --retry waits for it)")
                listed = listed or isinstance(event, Snapshot)
                if isinstance(event, Snapshot):
                    old = known
                    known = {s.name: s.node for s in event.items}
                    changed = [n for name, n in known.items() if old.get(name) != n]
                    changed += [n for name, n in old.items() if name not in known]
                elif isinstance(event, Put):
                    known[event.stored.name] = event.stored.node
                    changed = [event.stored.node]
                elif isinstance(event, Deleted):
                    gone = known.pop(event.name, None)
                    changed = [gone] if gone is not None else []
                else:
                    print(f"k3net nodes: lost the store ({event.reason}); waiting for it",
                          file=sys.stderr)
                    continue
                if changed:
                    await on_change(sorted(known.values(), key=lambda n: n.name), changed)


def http_get(url: str) -> tuple[int, bytes]:
    """GET `url`: (status, body). Each step (connect, every read) must go through within
    ANSWER_TIMEOUT, else TimeoutError: an agent that is silent is not waited for."""
    try:
        with urllib.request.urlopen(  # noqa: S310 (http only, see AgentSource)
            url, timeout=ANSWER_TIMEOUT
        ) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@attrs.define
class AgentSource:
    """A running agent: GET /nodes for the list, its /events stream for changes."""

    server: str
    # -w: wait for an agent that does not answer (else: one line, exit 1, at once).
    retry: bool = False

    @property
    def description(self) -> str:
        return f"the agent at {self.server}"

    @property
    def base(self) -> str:
        """`server` as http[s]://host:port (the CLI checked it: see `server_base`)."""
        return server_base(self.server)

    async def list(self) -> list[Node]:
        url = self.base + "/nodes"
        try:
            with trio.fail_after(DEADLINE):
                status, body = await trio.to_thread.run_sync(
                    http_get, url, abandon_on_cancel=True
                )
        except trio.TooSlowError:
            raise CommandError(f"the agent at {self.base} did not answer within {format_duration(DEADLINE)}") \
                from None
        except (OSError, urllib.error.URLError) as exc:
            raise CommandError(
                f"no k3net agent answers at {self.base} ({no_answer(exc)}): start one with "
                "`k3net run`, point --server at one, or read a store with --config PATH"
            ) from None
        return _nodes_from_answer(self.base, status, body)

    async def watch(self, on_change: OnChange) -> None:
        from k3net.commands.watch import follow

        known: dict[str, Node] = {}

        async def on_message(message: dict[str, Any]) -> None:
            nonlocal known
            if message.get("type") == "rejected":
                return
            old = known
            known = {n.name: n for n in await self.list()}
            if message.get("type") == "snapshot":
                changed = list(known.values())
            else:
                name = message.get("node")
                node = known.get(name) if isinstance(name, str) else None
                if node is None and isinstance(name, str):
                    node = old.get(name)  # removed: shown as it was last seen
                changed = [node] if node is not None else []
            if changed:
                await on_change(sorted(known.values(), key=lambda n: n.name), changed)

        await follow(self.base + "/events", on_message, retry=self.retry, prog="k3net nodes")


def no_answer(exc: BaseException) -> str:
    """Why an agent did not answer, in a few words ("connection refused", "timed out")."""
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, TimeoutError):
        return f"no answer within {format_duration(ANSWER_TIMEOUT)}"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__


def _nodes_from_answer(base: str, status: int, body: bytes) -> list[Node]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    if status != 200:
        message = data.get("message") if isinstance(data, dict) else None
        raise CommandError(f"the agent at {base} answered {status}: "
                           f"{message or body[:200].decode(errors='replace').strip()}")
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise CommandError(f"{base}/nodes: not a NodeList (is this a k3net agent?)")
    nodes = []
    for item in data["items"]:
        try:
            nodes.append(node_from_dict(item))
        except InvalidNode as exc:
            print(f"k3net nodes: skipped an item of {base}/nodes: {exc}", file=sys.stderr)
    return nodes


# --- the command --------------------------------------------------------------------------------


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def show(
    source: Source, query: Query, output: str, out: TextIO = sys.stdout, *, headers: bool = True
) -> int:
    """Print the Nodes once. 1 if a Node asked for by name is not there (after printing the
    others, as kubectl does). Nothing found is said on stderr (stdout holds only data)."""
    found, missing = query.pick(await source.list())
    out.write(format_nodes(found, _utcnow(), output, headers=headers))
    for name in missing:
        print(f"k3net nodes: node {name!r} not found in {source.description}", file=sys.stderr)
    if not found and not missing and output not in ("json", "yaml"):
        print("No nodes found.", file=sys.stderr)
    return 1 if missing else 0


async def follow(
    source: Source, query: Query, output: str, out: TextIO = sys.stdout, *, headers: bool = True
) -> None:
    """`-w`: the matching Nodes, then each change of one, until cancelled."""
    wide = output == "wide"
    printer = Table(WIDE_HEADER if wide else HEADER,
                    STREAM_WIDTHS if wide else STREAM_WIDTHS[:len(HEADER)])
    first = True

    async def on_change(_all: list[Node], changed: list[Node]) -> None:
        nonlocal first
        picked = query.order(sorted((n for n in changed if query.wants(n)), key=lambda n: n.name))
        if output in ("json", "yaml"):
            text = "".join(dump_item(node_to_dict(n), output) for n in picked)
        elif output == "name":
            text = format_nodes(picked, _utcnow(), output)
        else:
            rows = [node_row(n, _utcnow(), wide) for n in picked]
            text = printer.lines(rows, header=first and headers) if rows or first else ""
            if first and not rows:
                print("No nodes found yet; waiting for changes.", file=sys.stderr)
            first = False
        out.write(text)
        out.flush()

    await source.watch(on_change)


def main(source: Source, query: Query, output: str, watch: bool, headers: bool = True) -> int:
    """`k3net nodes`: 0, or 1 if a Node asked for is missing; CommandError if the source does
    not answer."""

    async def run() -> int:
        if watch:
            await follow(source, query, output, sys.stdout, headers=headers)
            return 0
        return await show(source, query, output, sys.stdout, headers=headers)

    async def in_asyncio_loop() -> int:
        import trio_asyncio

        async with trio_asyncio.open_loop():  # the etcd and MySQL backends are asyncio
            return await run()

    if isinstance(source, StoreSource):
        # The command says what happens to the store itself, one line each (StoreSource);
        # the backends' own warnings ("watch lost ...; retrying") would say it twice.
        logging.getLogger("k3net.store").setLevel(logging.ERROR)
        return trio.run(in_asyncio_loop)

    return trio.run(run)

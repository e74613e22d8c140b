"""`k3net nodes`: the Nodes, as `kubectl get nodes` shows them.

    k3net nodes [NAME...] [-l key=value,...] [-o table|wide|json|yaml] [-w]
                [--server URL | --config PATH]

Where the Nodes come from: with `--config` (or $K3NET_CONFIG / $CONFIG_PATH), the store that
config names; otherwise the agent at `--server` (default the local one, http://127.0.0.1:7946),
through its /nodes and /events. An agent that does not answer is said so, in one line.

`-w` prints the list, then one more row (or object) each time a Node changes, until
interrupted. Formatting (`format_nodes`, `node_rows`) is pure and takes `now`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TextIO
from urllib.parse import urlsplit

import attrs
import trio

from k3net.commands import DEFAULT_SERVER, CommandError, Table, dump, dump_item, table
from k3net.config import StorageConfig
from k3net.convert import InvalidNode, node_from_dict, node_list, node_to_dict
from k3net.core import parse
from k3net.core.nodes import Readiness, readiness
from k3net.model import ANN_LAST_SEEN, ANN_PID, ANN_PORT, Node
from k3net.store.base import Deleted, Put, Snapshot, Store, StoreError

# `k3net nodes` gives up if the store or the agent has not answered within this many seconds.
DEADLINE = 10.0

HEADER = ("NAME", "STATUS", "REASON", "LASTSEEN", "AGE", "ADDRESS", "MANAGED")
WIDE_HEADER = ("NAME", "STATUS", "REASON", "LASTSEEN", "AGE", "ADDRESSES", "MANAGED", "PORT", "PID")


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


_STATUS = {Readiness.TRUE: "Ready", Readiness.FALSE: "NotReady", Readiness.UNKNOWN: "Unknown"}


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
        _STATUS[readiness(node)],
        (cond.reason if cond is not None else None) or "<none>",
        _since(ann.get(ANN_LAST_SEEN), now, "<none>"),
        _since(node.metadata.creation_timestamp, now, "<unknown>"),
        (",".join(ips) if wide else ips[0] if ips else "") or "<none>",
        "true" if node.managed else "false",
    ]
    if wide:
        row += [_number(ann.get(ANN_PORT), parse.port), _number(ann.get(ANN_PID), parse.pid)]
    return row


def format_nodes(nodes: Sequence[Node], now: dt.datetime, output: str = "table") -> str:
    """The output of `k3net nodes -o OUTPUT`: a table like `kubectl get nodes`, or a NodeList
    as JSON or YAML. `now` is an aware datetime (the caller reads the clock)."""
    if output in ("json", "yaml"):
        return dump(node_list(nodes), output)
    if output not in ("table", "wide"):
        raise ValueError(f"unknown output format {output!r} (use table, wide, json or yaml)")
    if not nodes:
        return "No nodes found.\n"
    wide = output == "wide"
    return table(WIDE_HEADER if wide else HEADER, [node_row(n, now, wide) for n in nodes])


# --- which Nodes (pure) -------------------------------------------------------------------------


@attrs.frozen
class Requirement:
    """One term of a label selector: `key=value`, `key==value`, `key!=value`, `key`, `!key`."""

    key: str
    op: str  # "=", "!=", "exists", "!exists"
    value: str = ""

    def matches(self, labels: dict[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "=":
            return labels.get(self.key) == self.value
        return labels.get(self.key) != self.value


_LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")


def parse_selector(text: str) -> tuple[Requirement, ...]:
    """A label selector as kubectl's `-l` takes it (equality terms, comma-separated, all must
    hold). ValueError with a readable message if it is not one."""
    out = []
    for term in (t.strip() for t in text.split(",")):
        if not term:
            raise ValueError(f"empty term in label selector {text!r}")
        match = re.fullmatch(r"(!?)([^=!]+)(?:(==|=|!=)(.*))?", term)
        if match is None:
            raise ValueError(f"invalid label selector term {term!r} (use key=value, key!=value, "
                             "key or !key)")
        neg, key, op, value = match.groups()
        key = key.strip()
        if not _LABEL_KEY.fullmatch(key) or (neg and op):
            raise ValueError(f"invalid label selector term {term!r}")
        if op is None:
            out.append(Requirement(key, "!exists" if neg else "exists"))
            continue
        value = value.strip()
        if not _LABEL_VALUE.fullmatch(value):
            raise ValueError(f"invalid label value {value!r} in {term!r}")
        out.append(Requirement(key, "!=" if op == "!=" else "=", value))
    return tuple(out)


@attrs.frozen
class Query:
    """Which Nodes to show: these names (all if empty), whose labels match every requirement."""

    names: tuple[str, ...] = ()
    selector: tuple[Requirement, ...] = ()

    def wants(self, node: Node) -> bool:
        if self.names and node.name not in self.names:
            return False
        return all(r.matches(node.metadata.labels) for r in self.selector)

    def pick(self, nodes: Iterable[Node]) -> tuple[list[Node], list[str]]:
        """The Nodes wanted, in the order of the names asked for (else by name), and the
        names asked for that are not there."""
        chosen = [n for n in nodes if self.wants(n)]
        if not self.names:
            return sorted(chosen, key=lambda n: n.name), []
        by_name = {n.name: n for n in chosen}
        found = [by_name[name] for name in dict.fromkeys(self.names) if name in by_name]
        return found, [name for name in dict.fromkeys(self.names) if name not in by_name]


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

    @classmethod
    def from_config(cls, storage: StorageConfig) -> StoreSource:
        from k3net.store import open_store

        return cls(storage.type, lambda: open_store(storage))

    @property
    def description(self) -> str:
        return f"the {self.kind} store"

    async def list(self) -> list[Node]:
        try:
            async with self.opener() as store:
                with trio.fail_after(DEADLINE):
                    scan = await store.scan()
        except trio.TooSlowError:
            raise CommandError(f"the {self.kind} store did not answer within {DEADLINE:g}s") \
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
            async for event in events:
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
    try:
        with urllib.request.urlopen(url) as response:  # noqa: S310 (http only, see AgentSource)
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@attrs.define
class AgentSource:
    """A running agent: GET /nodes for the list, its /events stream for changes."""

    server: str

    @property
    def description(self) -> str:
        return f"the agent at {self.server}"

    @property
    def base(self) -> str:
        url = self.server if "://" in self.server else "http://" + self.server
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise CommandError(f"--server {self.server!r}: expected a URL like {DEFAULT_SERVER}")
        return f"{parts.scheme}://{parts.netloc}"

    async def list(self) -> list[Node]:
        url = self.base + "/nodes"
        try:
            with trio.fail_after(DEADLINE):
                status, body = await trio.to_thread.run_sync(
                    http_get, url, abandon_on_cancel=True
                )
        except trio.TooSlowError:
            raise CommandError(f"the agent at {self.base} did not answer within {DEADLINE:g}s") \
                from None
        except (OSError, urllib.error.URLError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CommandError(
                f"no k3net agent answers at {self.base} ({reason}): start one with `k3net run`, "
                "point --server at one, or read a store with --config PATH"
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

        await follow(self.base + "/events", on_message)


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


async def show(source: Source, query: Query, output: str, out: TextIO = sys.stdout) -> int:
    """Print the Nodes once. 1 if a Node asked for by name is not there (after printing the
    others, as kubectl does)."""
    found, missing = query.pick(await source.list())
    if found or not missing or output in ("json", "yaml"):
        out.write(format_nodes(found, _utcnow(), output))
    for name in missing:
        print(f"k3net nodes: node {name!r} not found in {source.description}", file=sys.stderr)
    return 1 if missing else 0


async def follow(
    source: Source, query: Query, output: str, out: TextIO = sys.stdout
) -> None:
    """`-w`: the matching Nodes, then each change of one, until cancelled."""
    wide = output == "wide"
    printer = Table(WIDE_HEADER if wide else HEADER)
    first = True

    async def on_change(_all: list[Node], changed: list[Node]) -> None:
        nonlocal first
        picked = sorted((n for n in changed if query.wants(n)), key=lambda n: n.name)
        if output in ("json", "yaml"):
            text = "".join(dump_item(node_to_dict(n), output) for n in picked)
        else:
            rows = [node_row(n, _utcnow(), wide) for n in picked]
            text = printer.lines(rows, header=first) if rows or first else ""
            first = False
        out.write(text)
        out.flush()

    await source.watch(on_change)


def main(source: Source, query: Query, output: str, watch: bool) -> int:
    """`k3net nodes`: 0, or 1 if a Node asked for is missing; CommandError if the source does
    not answer."""

    async def run() -> int:
        import trio_asyncio

        async with trio_asyncio.open_loop():  # the etcd and MySQL backends are asyncio
            if watch:
                await follow(source, query, output)
                return 0
            return await show(source, query, output)

    return trio.run(run)

"""What `k3net nodes` and `k3net watch` print.

`format_nodes` is pure (it takes `now`); `watch` follows an agent's /events websocket and
reconnects with `?since=` so that a dropped connection loses nothing the agent still remembers.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any, TextIO
from urllib.parse import urlencode, urlsplit, urlunsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    open_websocket_url,
)

from k3net.config import StorageConfig
from k3net.convert import node_list, parse_time
from k3net.model import ANN_LAST_SEEN, ANN_PID, ANN_PORT
from k3net.store.base import Stored

DEFAULT_WATCH_URL = "ws://127.0.0.1:7946/events"
# `k3net nodes` gives up if the store has not answered within this many seconds.
NODES_DEADLINE = 10.0
# A snapshot of many Nodes is one websocket message; trio-websocket's default limit is 1 MiB.
MAX_MESSAGE = 64 * 1024 * 1024


# --- k3net nodes ------------------------------------------------------------------------------


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


_STATUS = {"True": "Ready", "False": "NotReady"}


def _since(value: dt.datetime | str | None, now: dt.datetime, missing: str) -> str:
    if value is None:
        return missing
    if isinstance(value, str):
        try:
            value = parse_time(value)
        except ValueError:
            return missing
    return age((now - value).total_seconds())


def _row(stored: Stored, now: dt.datetime, wide: bool) -> list[str]:
    node = stored.node
    cond = node.condition()
    ips = [a.address for a in node.status.addresses if a.type != "Hostname"]
    ann = node.metadata.annotations
    row = [
        node.name,
        _STATUS.get(node.ready_status, "Unknown"),
        (cond.reason if cond is not None else None) or "<none>",
        _since(ann.get(ANN_LAST_SEEN), now, "<none>"),
        _since(node.metadata.creation_timestamp, now, "<unknown>"),
        (",".join(ips) if wide else ips[0] if ips else "") or "<none>",
        "true" if node.managed else "false",
    ]
    if wide:
        row += [ann.get(ANN_PORT) or "<none>", ann.get(ANN_PID) or "<none>"]
    return row


def format_nodes(stored: list[Stored], now: dt.datetime, output: str = "") -> str:
    """The output of `k3net nodes [-o wide|json]`: a table like `kubectl get nodes`, or a
    NodeList as JSON. `now` is an aware datetime (the caller reads the clock)."""
    if output == "json":
        return json.dumps(node_list(s.node for s in stored), indent=2) + "\n"
    if output not in ("", "table", "wide"):
        raise ValueError(f"unknown output format {output!r} (use wide or json)")
    if not stored:
        return "No nodes found.\n"
    wide = output == "wide"
    header = ["NAME", "STATUS", "REASON", "LASTSEEN", "AGE", "ADDRESS", "MANAGED"]
    if wide:
        header[5] = "ADDRESSES"
        header += ["PORT", "PID"]
    rows = [header] + [_row(s, now, wide) for s in stored]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    return "\n".join(lines) + "\n"


def nodes_main(storage: StorageConfig, output: str) -> int:
    """`k3net nodes`: list the Nodes in the configured store. Exit 1 (one line on stderr) if the
    store does not answer."""
    import trio_asyncio

    from k3net.store import StoreError, open_store

    async def main() -> int:
        async with trio_asyncio.open_loop():
            try:
                async with open_store(storage) as store:
                    with trio.fail_after(NODES_DEADLINE):
                        stored = await store.list()
            except trio.TooSlowError:
                print(f"k3net: the {storage.type} store did not answer within "
                      f"{NODES_DEADLINE:g}s", file=sys.stderr)
                return 1
            except StoreError as exc:
                print(f"k3net: {storage.type} store unavailable: {exc}", file=sys.stderr)
                return 1
        sys.stdout.write(format_nodes(stored, dt.datetime.now(dt.UTC), output))
        return 0

    return trio.run(main)


# --- k3net watch ------------------------------------------------------------------------------


class WatchError(Exception):
    """`k3net watch` gave up; the message is one readable line."""


def events_url(url: str, since: int | None = None, epoch: str | None = None) -> str:
    """`url` as a websocket URL of /events (http -> ws, default path), with the resume query."""
    if "://" not in url:
        url = "ws://" + url
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    query = urlencode({k: v for k, v in (("since", since), ("epoch", epoch)) if v is not None})
    return urlunsplit((scheme, parts.netloc, parts.path or "/events", query, ""))


def _clock(ts: str | None) -> str:
    try:
        return parse_time(ts or "").astimezone().strftime("%H:%M:%S")
    except ValueError:
        return "--:--:--"


def format_event(message: dict[str, Any]) -> list[str]:
    """Readable lines for one /events message (a snapshot gives one line per node)."""
    head = f"{_clock(message.get('ts'))} #{message.get('seq')}"
    if message.get("type") == "snapshot":
        nodes = message.get("nodes") or []
        if not nodes:
            return [f"{head} snapshot  (no nodes)"]
        return [_event_line(head, "snapshot", n) for n in nodes]
    return [_event_line(head, str(message.get("type")), message)]


def _event_line(head: str, kind: str, entry: dict[str, Any]) -> str:
    cells = [
        entry.get("node") or "?",
        entry.get("ready") or "-",
        entry.get("reason") or "-",
        ",".join(entry.get("addresses") or []) or "-",
    ]
    if kind == "rejected" and entry.get("message"):
        cells.append(entry["message"])
    return f"{head} {kind:<9} {cells[0]:<16} {cells[1]:<7} {cells[2]:<13} " + " ".join(cells[3:])


async def watch(
    url: str,
    as_json: bool,
    out: TextIO = sys.stdout,
    max_reconnects: int = 10,
    *,
    backoff: float = 0.5,
    max_backoff: float = 10.0,
) -> None:
    """Print /events until cancelled. A lost connection is retried with `?since=<last seq>`
    after `backoff` seconds, doubling up to `max_backoff`; WatchError after `max_reconnects`
    failures in a row (a successful connection resets the count)."""
    last_seq: int | None = None
    epoch: str | None = None
    failures = 0
    while True:
        target = events_url(url, last_seq, epoch)
        try:
            async with open_websocket_url(target, max_message_size=MAX_MESSAGE) as ws:
                failures = 0
                while True:
                    raw = await ws.get_message()
                    text = raw.decode() if isinstance(raw, bytes) else raw
                    message = json.loads(text)
                    if as_json:
                        out.write(text.rstrip("\n") + "\n")
                    else:
                        out.write("".join(line + "\n" for line in format_event(message)))
                    out.flush()
                    last_seq = message.get("seq", last_seq)
                    epoch = message.get("epoch", epoch)
        except ConnectionClosed as exc:
            code = exc.reason.code if exc.reason else None
            reason = exc.reason.reason if exc.reason else None
            if code == 1008:
                raise WatchError(f"{target}: refused: {reason}") from None
            why = f"closed ({code} {reason})" if reason else f"closed ({code})"
        except ConnectionRejected as exc:
            if 400 <= exc.status_code < 500:
                raise WatchError(f"{target}: refused: HTTP {exc.status_code}") from None
            why = f"refused: HTTP {exc.status_code}"
        except (OSError, HandshakeError) as exc:
            why = str(exc.__cause__ or exc) or type(exc).__name__
        failures += 1
        if failures > max_reconnects:
            raise WatchError(f"{url}: giving up after {max_reconnects} reconnects: {why}")
        delay = min(max_backoff, backoff * 2 ** (failures - 1))
        print(f"k3net watch: {why}; reconnecting in {delay:g}s", file=sys.stderr)
        await trio.sleep(delay)


def watch_main(url: str, as_json: bool) -> int:
    """`k3net watch`: follow an agent's /events. Exit 1 with one line on stderr if it gives up."""
    try:
        trio.run(watch, url, as_json)
    except WatchError as exc:
        print(f"k3net watch: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0

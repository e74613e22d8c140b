"""`k3net watch`: follow an agent's /events websocket and print each message.

    k3net watch [URL] [-o table|wide|json|yaml]

A dropped connection is retried with the one backoff of k3net (`k3net.backoff`), resuming with
`?since=<last seq>&epoch=<run>`, so nothing the agent still remembers is lost; an agent that
restarted sends a fresh snapshot. `follow` is also what `k3net nodes -w` uses against an agent.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO
from urllib.parse import urlencode, urlsplit, urlunsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    open_websocket_url,
)

from k3net.backoff import Backoff
from k3net.commands import CommandError, dump_item
from k3net.core import parse

# A snapshot of many Nodes is one websocket message; trio-websocket's default limit is 1 MiB.
MAX_MESSAGE = 64 * 1024 * 1024
# An agent that is away (restarting, say) is retried after 0.5 s, 1 s, ... at most 10 s apart:
# a restart is seen within seconds, and a watcher left running does not hammer a dead port.
WATCH_BACKOFF = Backoff(base=0.5, cap=10.0)
# This many failed connections in a row and `k3net watch` gives up (about a minute at the cap).
MAX_RECONNECTS = 10


def events_url(url: str, since: int | None = None, epoch: str | None = None) -> str:
    """`url` as a websocket URL of /events (http -> ws, default path), with the resume query."""
    if "://" not in url:
        url = "ws://" + url
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    query = urlencode({k: v for k, v in (("since", since), ("epoch", epoch)) if v is not None})
    return urlunsplit((scheme, parts.netloc, parts.path or "/events", query, ""))


# The highest seq an agent's /events is asked to resume after (what its /events accepts).
MAX_SEQ = 10**18 - 1


def read_message(raw: str | bytes) -> dict[str, Any] | None:
    """One /events message, or None if it is not a JSON object."""
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return message if isinstance(message, dict) else None


def _clock(ts: object) -> str:
    moment = parse.timestamp(ts)
    return "--:--:--" if isinstance(moment, parse.Foreign) else \
        moment.astimezone().strftime("%H:%M:%S")


def _text(value: object, limit: int = 256) -> str | None:
    """A message field shown as it is only if it is a string of bounded length (an agent of
    another version, or something else on its port, may send anything)."""
    taken = parse.text(value, limit)
    return taken if isinstance(taken, str) and taken else None


def format_event(message: dict[str, Any], output: str = "table") -> list[str]:
    """Readable lines for one /events message (a snapshot gives one line per node). `wide`
    adds the port, the lastSeen annotation and the condition's message."""
    seq = parse.number(message.get("seq"), 0, MAX_SEQ)
    head = f"{_clock(message.get('ts'))} #{'?' if isinstance(seq, parse.Foreign) else seq}"
    if message.get("type") == "snapshot":
        nodes = message.get("nodes")
        nodes = [n for n in nodes if isinstance(n, dict)] if isinstance(nodes, list) else []
        if not nodes:
            return [f"{head} snapshot  (no nodes)"]
        return [_event_line(head, "snapshot", n, output == "wide") for n in nodes]
    return [_event_line(head, _text(message.get("type"), 16) or "?", message, output == "wide")]


def _event_line(head: str, kind: str, entry: dict[str, Any], wide: bool) -> str:
    listed = entry.get("addresses")
    ips = [parse.address(a) for a in listed] if isinstance(listed, list) else []
    port = parse.port(entry.get("port"))
    cells = [
        _text(entry.get("node")) or "?",
        _text(entry.get("ready"), 16) or "-",
        _text(entry.get("reason")) or "-",
        ",".join(str(ip) for ip in ips if not isinstance(ip, parse.Foreign)) or "-",
    ]
    if wide:
        cells += ["-" if isinstance(port, parse.Foreign) else str(port),
                  _text(entry.get("lastSeen"), parse.MAX_TIME_TEXT) or "-"]
    message = _text(entry.get("message"), 1024)
    if (kind == "rejected" or wide) and message:
        cells.append(message)
    return f"{head} {kind:<9} {cells[0]:<16} {cells[1]:<7} {cells[2]:<13} " + " ".join(cells[3:])


def render(message: dict[str, Any], output: str) -> str:
    """What `k3net watch -o OUTPUT` prints for one message."""
    if output in ("json", "yaml"):
        return dump_item(message, output)
    return "".join(line + "\n" for line in format_event(message, output))


async def follow(
    url: str,
    on_message: Callable[[dict[str, Any]], Awaitable[None]],
    *,
    max_reconnects: int = MAX_RECONNECTS,
    backoff: Backoff = WATCH_BACKOFF,
    rng: random.Random | None = None,
) -> None:
    """Call `on_message` with every /events message until cancelled. A lost connection is
    retried, resuming after the last seq; CommandError after `max_reconnects` failures in a row
    (a successful connection resets the count) or when the agent refuses the request."""
    rng = rng or random.Random()
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
                    message = read_message(raw)
                    if message is None:
                        print(f"k3net watch: skipped a message that is not a JSON object: "
                              f"{str(raw)[:80]!r}", file=sys.stderr)
                        continue
                    await on_message(message)
                    seq = parse.number(message.get("seq"), 0, MAX_SEQ)
                    last_seq = seq if isinstance(seq, int) else last_seq
                    epoch = _text(message.get("epoch"), 64) or epoch
        except ConnectionClosed as exc:
            code = exc.reason.code if exc.reason else None
            reason = exc.reason.reason if exc.reason else None
            if code == 1008:
                raise CommandError(f"{target}: refused: {reason}") from None
            why = f"closed ({code} {reason})" if reason else f"closed ({code})"
        except ConnectionRejected as exc:
            if 400 <= exc.status_code < 500:
                raise CommandError(f"{target}: refused: HTTP {exc.status_code}") from None
            why = f"refused: HTTP {exc.status_code}"
        except (OSError, HandshakeError) as exc:
            why = str(exc.__cause__ or exc) or type(exc).__name__
        failures += 1
        if failures > max_reconnects:
            raise CommandError(f"{url}: giving up after {max_reconnects} reconnects: {why}")
        delay = backoff.delay(failures - 1, rng)
        print(f"k3net watch: {why}; reconnecting in {delay:.1f}s", file=sys.stderr)
        await trio.sleep(delay)


async def watch(
    url: str,
    output: str = "table",
    out: TextIO = sys.stdout,
    *,
    max_reconnects: int = MAX_RECONNECTS,
    backoff: Backoff = WATCH_BACKOFF,
) -> None:
    """Print /events messages until cancelled (see `follow`)."""

    async def show(message: dict[str, Any]) -> None:
        out.write(render(message, output))
        out.flush()

    await follow(url, show, max_reconnects=max_reconnects, backoff=backoff)


def main(url: str, output: str) -> int:
    """`k3net watch`: runs until interrupted; CommandError if it gives up."""
    trio.run(watch, url, output)
    return 0

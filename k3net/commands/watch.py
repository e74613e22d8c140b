"""`k3net watch`: follow an agent's /events websocket and print each message.

    k3net watch [URL] [--retry] [-o table|wide|name|json|yaml]

URL: the agent's address (`http://host:port`, `host:port` or `ws://host:port/events`); default
the agent of this machine, found as `k3net nodes` finds it (`k3net.commands.agent_server`).

No agent answering at first is one line and exit 1, within a second (`ANSWER_TIMEOUT`);
`--retry` waits for one instead (an agent being started), without limit. Once connected, a
dropped connection is retried with the one backoff of k3net (`k3net.backoff`), at most
`MAX_RECONNECTS` times in a row (without limit with `--retry`), resuming with
`?since=<last seq>&epoch=<run>`, so nothing the agent still remembers is lost; an agent that
restarted sends a fresh snapshot. `follow` is also what `k3net nodes -w` uses against an agent.

The Ready column says Ready, NotReady or Unknown, as `k3net nodes` does; `-o json` and `-o yaml`
print the messages as the agent sent them (`ready`: "True", "False", "Unknown").
"""

from __future__ import annotations

import functools
import json
import math
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
from k3net.commands import ANSWER_TIMEOUT, CommandError, dump_item, ready_word
from k3net.core import parse
from k3net.durations import format_duration

# A snapshot of many Nodes is one websocket message; trio-websocket's default limit is 1 MiB.
MAX_MESSAGE = 64 * 1024 * 1024
# An agent that is away (restarting, say) is retried after 0.5 s, 1 s, ... at most 10 s apart:
# a restart is seen within seconds, and a watcher left running does not hammer a dead port.
WATCH_BACKOFF = Backoff(base=0.5, cap=10.0)
# This many failed connections in a row and `k3net watch` gives up (about a minute at the cap).
MAX_RECONNECTS = 10
# The columns of a line: kind, node and ready are as wide as their longest usual value, so lines
# stay aligned (a longer node name pushes only its own line).
KIND_WIDTH, NODE_WIDTH, READY_WIDTH, REASON_WIDTH = 9, 16, 8, 13


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
    ready = _text(entry.get("ready"), 16)
    listed = entry.get("addresses")
    ips = [parse.address(a) for a in listed] if isinstance(listed, list) else []
    port = parse.port(entry.get("port"))
    cells = [
        _text(entry.get("node")) or "?",
        ready_word(ready) if ready else "-",
        _text(entry.get("reason")) or "-",
        ",".join(str(ip) for ip in ips if not isinstance(ip, parse.Foreign)) or "-",
    ]
    if wide:
        cells += ["-" if isinstance(port, parse.Foreign) else str(port),
                  _text(entry.get("lastSeen"), parse.MAX_TIME_TEXT) or "-"]
    message = _text(entry.get("message"), 1024)
    if (kind == "rejected" or wide) and message:
        cells.append(message)
    return (f"{head} {kind:<{KIND_WIDTH}} {cells[0]:<{NODE_WIDTH}} {cells[1]:<{READY_WIDTH}} "
            f"{cells[2]:<{REASON_WIDTH}} " + " ".join(cells[3:]))


def render(message: dict[str, Any], output: str) -> str:
    """What `k3net watch -o OUTPUT` prints for one message."""
    if output in ("json", "yaml"):
        return dump_item(message, output)
    if output == "name":
        if message.get("type") == "snapshot":
            return "".join(f"node/{n.get('node')}\n" for n in message.get("nodes") or [])
        return f"node/{message.get('node')}\n" if message.get("node") else ""
    return "".join(line + "\n" for line in format_event(message, output))


async def follow(
    url: str,
    on_message: Callable[[dict[str, Any]], Awaitable[None]],
    *,
    max_reconnects: int = MAX_RECONNECTS,
    backoff: Backoff = WATCH_BACKOFF,
    rng: random.Random | None = None,
    retry: bool = False,
    prog: str = "k3net watch",
) -> None:
    """Call `on_message` with every /events message until cancelled (module docstring).
    CommandError at once if no agent answers the first connection (unless `retry`), after
    `max_reconnects` failures in a row once connected (a successful connection resets the
    count; no limit with `retry`), or when the agent refuses the request. Messages about
    reconnecting on stderr start with `prog`."""
    rng = rng or random.Random()
    last_seq: int | None = None
    epoch: str | None = None
    failures = 0
    connected = False
    while True:
        target = events_url(url, last_seq, epoch)
        why = f"no answer within {format_duration(ANSWER_TIMEOUT)}"
        # The handshake's own deadline: trio-websocket's connect_timeout leaves its reader task
        # waiting on a port that accepted the connection and says nothing.
        with trio.move_on_after(ANSWER_TIMEOUT) as handshake:
            try:
                async with open_websocket_url(target, max_message_size=MAX_MESSAGE) as ws:
                    handshake.deadline = math.inf  # connected: no deadline on the stream
                    failures, connected = 0, True
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
                why = _os_reason(exc)
        if not connected and not retry:
            raise CommandError(f"no k3net agent answers at {events_url(url)} ({why}): start "
                               "one with `k3net run`, or wait for one with --retry")
        failures += 1
        if failures > max_reconnects and not retry:
            raise CommandError(f"{url}: giving up after {max_reconnects} reconnects: {why}")
        delay = backoff.delay(failures - 1, rng)
        print(f"{prog}: {why}; reconnecting in {format_duration(delay)}", file=sys.stderr)
        await trio.sleep(delay)


def _os_reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words: the system's reason ("connection refused") of
    the first address tried, found through trio's and trio-websocket's wrappers."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror.lower()
        if isinstance(seen, BaseExceptionGroup):
            seen = seen.exceptions[0]
        else:
            seen = seen.__cause__
    return str(exc.__cause__ or exc) or type(exc).__name__


async def watch(
    url: str,
    output: str = "table",
    out: TextIO = sys.stdout,
    *,
    max_reconnects: int = MAX_RECONNECTS,
    backoff: Backoff = WATCH_BACKOFF,
    retry: bool = False,
) -> None:
    """Print /events messages until cancelled (see `follow`)."""

    async def show(message: dict[str, Any]) -> None:
        out.write(render(message, output))
        out.flush()

    await follow(url, show, max_reconnects=max_reconnects, backoff=backoff, retry=retry)


def main(url: str, output: str, retry: bool = False) -> int:
    """`k3net watch`: runs until interrupted; CommandError if it gives up."""
    trio.run(functools.partial(watch, url, output, retry=retry))
    return 0

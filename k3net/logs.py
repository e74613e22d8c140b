"""Logging set-up: readable text for people, one JSON object per line for collectors.

- text: `2026-12-02 17:20:01,123 WARNING k3net.nodes: node b NotReady (PeerRefused): ...`
- json: `{"ts": ..., "level": "warning", "logger": "k3net.nodes", "msg": ..., "node": "b",
  "peer": "10.0.0.5:7946", "reason": "PeerRefused", "addresses": ["10.0.0.5"], ...}`: the
  fields a log call passes with `extra=` are keys of the object.

Under systemd, when stderr is the journal (`JOURNAL_STREAM` names the device and inode of our
stderr, as systemd.exec(5) describes), every line starts with its syslog priority as
sd-daemon(3) reads it (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug), so that
`journalctl -p warning -u k3net` shows exactly the warnings and errors, and text lines carry no
timestamp of their own (the journal has one). Each line of a multi-line message (a traceback)
carries the prefix, or the journal would file its continuation lines as info.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

# Attributes every LogRecord has: whatever else a record holds came from `extra=`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

# Syslog priorities (sd-daemon(3), syslog(3)) by logging level.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (a level between two takes the lower one's)."""
    for level, prio in sorted(_PRIORITY.items(), reverse=True):
        if levelno >= level:
            return prio
    return 7


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a log call passed with `extra=`."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class JournalFormatter(logging.Formatter):
    """Wraps a formatter: every line of its output starts with the record's syslog priority."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).splitlines())


def to_journal(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """True if `stream` is systemd's journal: `JOURNAL_STREAM` is `DEVICE:INODE` of it (a
    redirected stderr under systemd, as `k3net run 2>file`, is not)."""
    value = environ.get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep or not (device.isascii() and device.isdigit() and inode.isascii()
                       and inode.isdigit()):
        return False  # (isdigit alone takes "²", which int() refuses)
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def formatter(fmt: str = "text", *, journal: bool = False) -> logging.Formatter:
    """The formatter of `configure`: `fmt` text or json, `journal` as the journal wants it."""
    if fmt == "json":
        inner: logging.Formatter = JsonFormatter()
    elif journal:
        inner = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    else:
        inner = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    return JournalFormatter(inner) if journal else inner


def configure(level: str = "info", fmt: str = "text", stream: TextIO | None = None,
              environ: Mapping[str, str] = os.environ) -> None:
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(fmt, journal=to_journal(stream, environ)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The libraries are chatty at info level; their warnings still show.
    for noisy in ("hypercorn", "k3net.web.hypercorn", "zeroconf", "asyncio", "trio_asyncio",
                  "aiomysql"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

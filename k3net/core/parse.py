"""The one reader of values from outside: mDNS TXT and SRV, `/info` and `/peers` answers, and
every field of a stored Node. Pure: no sockets, no clock (`now` is an argument).

Whatever another program, another machine or a damaged record says, each reader returns the
value or a `Foreign`, and never raises:

- numbers (`port`, `pid`, `revision`) are ASCII digits, at most a few of them, within their bounds; a JSON
  answer's integer is taken as it is (never a bool). `str.isdigit()` is not enough: it accepts
  "²" and "٣", which `int()` refuses or reads as something nobody wrote;
- times (`timestamp`) are RFC 3339: `2026-11-29T10:21:14Z`, an optional fraction of up to nine
  digits (Go's `RFC3339Nano`), `Z` or a `+hh:mm` offset; nothing else `fromisoformat` would take
  (dates alone, week dates, no zone). `rfc3339` also wants the time in a sane range: not before
  `EARLIEST` (2000-01-01, older than any k3net or k3 record; a host whose clock was never set
  says 1970) and not more than `AHEAD` (one day, more than any time zone or clock drift
  explains) after `now`;
- addresses (`address`) are IPv4 or IPv6 addresses as `ipaddress` reads them, no zone;
- every text has a bounded length (`text`).

What is foreign is skipped by the caller, never fatal and never rewritten: a Node whose port
annotation is foreign is not followed as a peer, and nothing "repairs" it. Given `where` (whose
value it is: `Node b`, `mDNS x._k3._tcp.local.`), a reader also notes it (`note`): counted by
field for `/metrics` (`k3net_foreign_values_total{field}`) and logged once per (where, field),
so that a record read again on every watch event or every restart fills no log.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import re
from typing import Final

import attrs

log = logging.getLogger("k3net.foreign")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PORT_MAX: Final = 65535
# A positive signed 32-bit number: every system's pid fits (Linux stops at 2**22).
PID_MAX: Final = 2**31 - 1
EARLIEST: Final = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
AHEAD: Final = dt.timedelta(days=1)
# Longer than any RFC 3339 time (35 characters with nine fraction digits and an offset).
MAX_TIME_TEXT: Final = 40
# Longer than any IPv6 address in text (45 characters, IPv4-embedded).
MAX_ADDRESS_TEXT: Final = 45
# How much of a foreign value a log line or a Foreign shows.
SHOWN: Final = 64
# How many (where, field) pairs are remembered as logged; beyond that only counted.
MAX_LOGGED: Final = 4096

REVISION_MAX: Final = 2**63 - 1  # a store's resource version: etcd's int64, MySQL's bigint

_DIGITS = re.compile(r"[0-9]{1,19}", re.ASCII)
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))",
    re.ASCII,
)


@attrs.frozen
class Foreign:
    """A value that is not what its field holds: `field` names the field, `shown` is a bounded
    repr of what was there, `reason` says why it is not taken."""

    field: str
    shown: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field} {self.shown}: {self.reason}"


def _foreign(field: str, value: object, reason: str, where: str | None) -> Foreign:
    found = Foreign(field, repr(value)[:SHOWN], reason)
    if where is not None:
        note(where, found)
    return found


def number(value: object, low: int, high: int, *, field: str = "number",
           where: str | None = None) -> int | Foreign:
    """A whole number within low..high: at most 19 ASCII digits (no sign, no spaces), or a JSON
    integer (never a bool)."""
    if isinstance(value, bool):
        return _foreign(field, value, "not a number", where)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value):
        number = int(value)
    else:
        return _foreign(field, value, "not ASCII digits", where)
    if not low <= number <= high:
        return _foreign(field, value, f"not within {low}..{high}", where)
    return number


def port(value: object, *, field: str = "port", where: str | None = None) -> int | Foreign:
    """A TCP port, 1..65535: ASCII digits, or a JSON integer."""
    return number(value, 1, PORT_MAX, field=field, where=where)


def pid(value: object, *, field: str = "pid", where: str | None = None) -> int | Foreign:
    """A process id, 1..PID_MAX: ASCII digits, or a JSON integer."""
    return number(value, 1, PID_MAX, field=field, where=where)


def revision(value: object, *, field: str = "resourceVersion", where: str | None = None
             ) -> int | Foreign:
    """A store's resource version, 0..REVISION_MAX: ASCII digits, or a JSON integer."""
    return number(value, 0, REVISION_MAX, field=field, where=where)


def timestamp(value: object, *, field: str = "time", where: str | None = None
              ) -> dt.datetime | Foreign:
    """An RFC 3339 time, as an aware UTC datetime (fractions past microseconds are cut), in any
    range `datetime` holds. The form alone: the one reader of stored times (`convert`)."""
    if not isinstance(value, str) or len(value) > MAX_TIME_TEXT:
        return _foreign(field, value, "not an RFC 3339 time", where)
    match = _RFC3339.fullmatch(value)
    if match is None:
        return _foreign(field, value, "not an RFC 3339 time", where)
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    try:
        offset = dt.timedelta(0)
        if not zulu:
            if int(off_h) > 23 or int(off_m) > 59:
                raise ValueError("offset out of range")
            offset = dt.timedelta(hours=int(off_h), minutes=int(off_m))
            offset = -offset if sign == "-" else offset
        second_ = int(second)
        leap = second_ == 60  # a leap second (RFC 3339 allows 60): read as the next second
        parsed = dt.datetime(
            int(year), int(month), int(day), int(hour), int(minute), 59 if leap else second_,
            int((fraction or "0")[:6].ljust(6, "0")), tzinfo=dt.timezone(offset),
        )
        if leap:
            parsed += dt.timedelta(seconds=1)
        return parsed.astimezone(dt.UTC)
    except (ValueError, OverflowError) as exc:
        return _foreign(field, value, f"not a time: {exc}", where)


def rfc3339(value: object, now: dt.datetime, *, field: str = "time", where: str | None = None
            ) -> dt.datetime | Foreign:
    """An RFC 3339 time (`timestamp`) within EARLIEST .. now + AHEAD."""
    parsed = timestamp(value, field=field, where=where)
    if isinstance(parsed, Foreign):
        return parsed
    if parsed < EARLIEST:
        return _foreign(field, value, "before 2000 (a clock that was not set)", where)
    if parsed > now + AHEAD:
        return _foreign(field, value, "more than a day in the future", where)
    return parsed


def address(value: object, *, field: str = "address", where: str | None = None
            ) -> IPAddress | Foreign:
    """An IPv4 or IPv6 address (no zone)."""
    if not isinstance(value, str) or len(value) > MAX_ADDRESS_TEXT:
        return _foreign(field, value, "not an IP address", where)
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return _foreign(field, value, "not an IP address", where)
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        return _foreign(field, value, "an address with a zone", where)
    return ip


def text(value: object, limit: int, *, field: str = "text", where: str | None = None
         ) -> str | Foreign:
    """A string of at most `limit` characters."""
    if not isinstance(value, str):
        return _foreign(field, value, "not a string", where)
    if len(value) > limit:
        return _foreign(field, value[:SHOWN], f"longer than {limit} characters", where)
    return value


# --- noting foreign values -------------------------------------------------------------------


@attrs.define
class Tally:
    """Foreign values seen by this process: counted by field, logged once per (where, field).
    One per process (`FOREIGN`): the values come from outside whichever agent reads them."""

    counts: dict[str, int] = attrs.Factory(dict)
    logged: set[tuple[str, str]] = attrs.Factory(set)

    def note(self, where: str, foreign: Foreign) -> bool:
        """Count it; True (and log it) the first time this (where, field) is seen."""
        self.counts[foreign.field] = self.counts.get(foreign.field, 0) + 1
        key = (where[:SHOWN], foreign.field)
        if key in self.logged or len(self.logged) >= MAX_LOGGED:
            return False
        self.logged.add(key)
        log.warning("%s: foreign %s %s (%s): skipped, left as it is",
                    key[0], foreign.field, foreign.shown, foreign.reason)
        return True


FOREIGN: Final = Tally()


def note(where: str, foreign: Foreign) -> bool:
    """Note a foreign value in the process's tally (`Tally.note`)."""
    return FOREIGN.note(where, foreign)

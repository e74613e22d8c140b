"""Durations as Go writes and prints them, so that k3net reads the same flags and config values
as the Go components and shows a duration the way they would: `700ms`, `15s`, `1m30s`, `1h0m0s`.

k3net holds a duration as float seconds; `format_duration` is the one way one is shown (flag
defaults in --help, the startup line, SIGHUP's log of what changed, logs of waits).
"""

from __future__ import annotations

import re

_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}

_NS_PER_MS = 1_000_000
_NS_PER_S = 1_000_000_000


def parse_duration(text: str) -> float:
    """A Go duration (`700ms`, `15s`, `1m30s`, `0`) in seconds. Negative durations are refused:
    nothing k3net waits for can last less than nothing."""
    text = text.strip()
    if text == "0":
        return 0.0
    if not text:
        raise ValueError("empty duration")
    if text.startswith("-"):
        raise ValueError(f"negative duration {text!r}")
    pos, total = 0, 0.0
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None:
            raise ValueError(f"invalid duration {text!r} (use Go syntax such as 700ms, 15s, 1m30s)")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return total


def format_duration(seconds: float) -> str:
    """Seconds as Go's `time.Duration.String` prints them: `1h0m0s`, `72h0m0s`, `1m30s`, `700ms`,
    `250µs`, `0s`.

    A duration of a millisecond or more is first rounded to the millisecond (Go's
    `d.Round(time.Millisecond)`): k3net times nothing finer, and beyond that a float of seconds
    holds only noise (peer-ttl/6 of 20s is 3.3333333333333335, shown `3.333s`; a backoff's
    jitter; a measured wait). Shorter ones keep every nanosecond, so that `500us` reads back as
    `500µs`."""
    ns = round(seconds * _NS_PER_S)
    if abs(ns) >= _NS_PER_MS:
        ns = _round(ns, _NS_PER_MS)
    return go_duration(ns)


def go_duration(ns: int) -> str:
    """Nanoseconds exactly as Go's `time.Duration.String` prints them (`time/time.go`)."""
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u == 0:
        return "0s"
    if u < 1_000:
        return f"{sign}{u}ns"
    if u < _NS_PER_MS:
        return f"{sign}{_fraction(u, 3)}µs"
    if u < _NS_PER_S:
        return f"{sign}{_fraction(u, 6)}ms"
    whole_seconds, _ = divmod(u, _NS_PER_S)
    text = f"{_fraction(u % (60 * _NS_PER_S), 9)}s"
    minutes = whole_seconds // 60
    if minutes:
        text = f"{minutes % 60}m{text}"
        if minutes // 60:
            text = f"{minutes // 60}h{text}"
    return sign + text


def _fraction(value: int, digits: int) -> str:
    """value / 10**digits with the fraction's trailing zeros (and a bare point) left out."""
    whole, fraction = divmod(value, 10**digits)
    tail = f"{fraction:0{digits}d}".rstrip("0")
    return f"{whole}.{tail}" if tail else str(whole)


def _round(ns: int, unit: int) -> int:
    """ns to a multiple of unit, halves away from zero (as Go's Duration.Round)."""
    sign = -1 if ns < 0 else 1
    quotient, rest = divmod(abs(ns), unit)
    if 2 * rest >= unit:
        quotient += 1
    return sign * quotient * unit

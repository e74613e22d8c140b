"""What `nox -s versus` counts, as pure functions: a link's byte counters from `ip -s -j link`,
the steady-state cost of an agent from two readings, and the one table both contestants share."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from k3lab.sim.common import summary


def link_bytes(ip_json: str) -> int:
    """Bytes received plus sent by the link in `ip -s -j link show dev X` output. A reading
    without counters is an error: a cost that cannot be read must not show as 0."""
    links = json.loads(ip_json)
    if not isinstance(links, list) or not links or not isinstance(links[0], dict):
        raise ValueError("no link in `ip -s -j link` output")
    stats = links[0].get("stats64") or links[0].get("stats")
    if not isinstance(stats, dict):
        raise ValueError("no counters in `ip -s -j link` output (was -s given?)")
    return int(stats["rx"]["bytes"]) + int(stats["tx"]["bytes"])


@dataclass(frozen=True)
class Reading:
    """One agent at one moment: its CPU seconds, resident set (kB), its host's link bytes."""

    t: float
    cpu_seconds: float
    rss_kb: int
    link_bytes: int


def cost(before: Reading, after: Reading) -> dict[str, float]:
    """An agent's steady cost between two readings: CPU as % of one core, RSS in MB (at the end),
    bytes per second on its host's link (both directions)."""
    dt = after.t - before.t
    if dt <= 0:
        raise ValueError("the second reading must come after the first")
    return {
        "cpu_percent": round(100 * (after.cpu_seconds - before.cpu_seconds) / dt, 3),
        "rss_mb": round(after.rss_kb / 1024, 1),
        "bytes_per_second": round((after.link_bytes - before.link_bytes) / dt, 1),
    }


def mean(values: Sequence[float]) -> float | None:
    return None if not values else round(sum(values) / len(values), 3)


def fmt_time(s: dict[str, Any]) -> str:
    """A summary of times as "p50 / max (n)": "-" when nothing was measured."""
    if not s.get("n"):
        return "- (none seen)" if "values" in s else "-"
    return f"{_t(s['p50'])} / {_t(s['max'])} (n={s['n']})"


def _t(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}s" if v < 100 else f"{v:.0f}s"


def fmt_cost(per_agent: dict[str, dict[str, float]], key: str, unit: str, digits: int) -> str:
    """ "mean / max unit" over the agents."""
    values = [c[key] for c in per_agent.values()]
    if not values:
        return "-"
    return f"{sum(values) / len(values):.{digits}f} / {max(values):.{digits}f} {unit}"


# The rows of the table: (label, key in a contestant's results, kind). A timing is a summary
# (p50 / max); a count is a number of false failure events in a window; a number is shown as is.
ROWS: list[tuple[str, str, str]] = [
    ("join: start -> seen alive by another member", "join", "time"),
    ("leave: SIGINT (Serf) / SIGTERM (k3net) -> left", "leave", "time"),
    ("crash: SIGKILL, host alive -> failed", "crash", "time"),
    ("host loss: link cut -> failed", "hostloss", "time"),
    ("host loss: alive again while still cut (10 s held)", "alive_again_while_cut", "number"),
    ("host loss: link up -> alive again", "hostback", "time"),
    ("20% frame loss on one host: false failures", "loss", "count"),
    ("starved member (5% of a core): false failures", "starved", "count"),
    ("paused member (2 x 5 s): false failures", "paused", "count"),
]


def cell(result: dict[str, Any] | None, key: str, kind: str) -> str:
    if result is None or key not in result:
        return "-"
    value = result[key]
    if kind == "time":
        return fmt_time(value)
    if kind == "number":
        return str(value)
    if "not_measured" in value:
        return "not measured: " + value["not_measured"]
    return f"{value['false_failures']} in {value['seconds']:g}s"


def table(results: dict[str, dict[str, Any] | None]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: one column per contestant (in the order given)."""
    names = list(results)
    headers = ["measure", *names]
    out = [[label, *(cell(results[n], key, kind) for n in names)] for label, key, kind in ROWS]
    for label, key, unit, digits in (("CPU per agent, steady (mean / max)", "cpu_percent",
                                      "% of a core", 2),
                                     ("RSS per agent (mean / max)", "rss_mb", "MB", 1),
                                     ("bytes/s per host link, steady (mean / max)",
                                      "bytes_per_second", "B/s", 0)):
        out.append([label, *(fmt_cost(r["steady"]["per_agent"], key, unit, digits)
                             if r and "steady" in r else "-" for r in results.values())])
    return headers, out


def markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
             for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def times(values: Sequence[float | None]) -> dict[str, Any]:
    """A timing's summary (k3lab.sim.common.summary) that also counts the trials that saw
    nothing within their bound (`missed`)."""
    return {**summary(values), "missed": sum(1 for v in values if v is None)}

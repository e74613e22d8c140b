"""Shared by the LAN simulation and the benchmarks: signals, statistics, tables, agent logs and
metrics. The namespaces, agents and servers themselves are in k3lab."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from k3net.version import PACKAGE_DIR

# The checkout the agents run from (k3net is installed editable from it).
ROOT = PACKAGE_DIR.parent


class Interrupted(BaseException):
    """SIGINT or SIGTERM: stop the run and clean up (raised in the main thread)."""


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM raise Interrupted, so that every `finally` and `with` runs and the
    namespaces, links and processes are removed."""

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("needs root: the simulation builds network namespaces")


def begin_run(prefix: str) -> Path:
    """What every simulation does first: check for root, remove the namespaces and CPU-limit
    groups of dead runs, make SIGINT/SIGTERM clean up, and return a fresh work directory."""
    from k3lab import cpulimit
    from k3lab.netns import remove_leftovers

    require_root()
    removed = remove_leftovers()
    if removed:
        log(f"removed {len(removed)} namespaces left by dead runs")
    groups = cpulimit.remove_leftovers()
    if groups:
        log(f"removed {len(groups)} CPU-limit groups left by dead runs")
    install_signal_handlers()
    return Path(tempfile.mkdtemp(prefix=prefix))


class Reported:
    """The body of a simulation's main:

        with Reported(results, workdir) as run:
            ...
        return run.code

    an interruption or an error ends the body, is logged and noted as `results["error"]`, and
    sets the exit code (130, 1); the work directory is removed either way."""

    def __init__(self, results: dict[str, Any], workdir: Path) -> None:
        self.results = results
        self.workdir = workdir
        self.code = 0

    def __enter__(self) -> Reported:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
        shutil.rmtree(self.workdir, ignore_errors=True)
        if isinstance(exc, Interrupted):
            log(f"interrupted ({exc}): cleaning up")
            self.results["error"] = f"interrupted by {exc}"
            self.code = 130
            return True
        if isinstance(exc, Exception):  # report what we have, then fail
            log(f"failed: {type(exc).__name__}: {exc}")
            self.results["error"] = f"{type(exc).__name__}: {exc}"
            self.code = 1
            return True
        return False


# --- numbers ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Iterable[float | None]) -> dict[str, Any]:
    got = [v for v in values if v is not None]
    return {
        "n": len(got),
        "p50": _r(percentile(got, 50)),
        "p95": _r(percentile(got, 95)),
        "max": _r(max(got) if got else None),
        "values": [_r(v) for v in got],
    }


def _r(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)


def fmt_s(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}s" if v < 10 else f"{v:.1f}s"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def write_json(path: str | Path, data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def k3net_revision() -> str:
    """The commit the agents ran from, `+dirty` if k3net/ has uncommitted changes."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--", "k3net") else "")


# --- agents: logs and metrics -------------------------------------------------------------------

# time.monotonic() - time.time(): converts the agents' wall-clock log times to the monotonic
# clock of the run (both taken now; the wall clock does not jump during a run).
def wall_to_mono() -> float:
    return time.monotonic() - time.time()


_JOIN_LINE = re.compile(r"peer (\S+) Ready ([0-9.]+)s after its first sighting")


def discoveries(log_path: Path, offset: float) -> dict[str, float]:
    """From an agent's JSON log: peer name -> monotonic time it first saw that peer Ready
    after discovering it over mDNS ("peer X Ready ... after its first sighting")."""
    found: dict[str, float] = {}
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return found
    for line in lines:
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        match = _JOIN_LINE.search(entry.get("msg", ""))
        if match and match.group(1) not in found:
            ts = dt.datetime.fromisoformat(entry["ts"]).timestamp()
            found[match.group(1)] = ts + offset
    return found


def log_lines(log_path: Path, needle: str) -> list[str]:
    try:
        return [line for line in log_path.read_text(errors="replace").splitlines()
                if needle in line]
    except OSError:
        return []


_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = _METRIC.match(line.strip())
        if m:
            try:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return out


def metric_sum(metrics: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith(prefix))


def by_label(metrics: dict[str, float], name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    pat = re.compile(rf'{label}="([^"]*)"')
    for key, value in metrics.items():
        if key.split("{", 1)[0] == name:
            m = pat.search(key)
            if m:
                out[m.group(1)] = out.get(m.group(1), 0) + value
    return out


# --- /proc -------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # fields 14 and 15 of stat(5)


def status_kb(pid: int, key: str) -> int | None:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None

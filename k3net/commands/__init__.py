"""The command-line commands other than `run`: `nodes`, `peers`, `watch` (and `prune`).

Each command module has a pure formatting part (tested without I/O) and a `main` that does the
I/O and raises `CommandError` (one line, exit 1) for what can be expected to go wrong: a store or
an agent that does not answer. What they print is chosen with one option, `-o`, on all of them:

    table   columns for people (the default)
    wide    more columns
    json    machine-readable; a stream (`-w`, `watch`) is one JSON object per line
    yaml    the same data as YAML; a stream is a sequence of `---` documents
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

OUTPUTS = ("table", "wide", "json", "yaml")
# Where `k3net nodes` and `k3net watch` find the local agent: the default `--listen` (:7946).
DEFAULT_SERVER = "http://127.0.0.1:7946"
DEFAULT_EVENTS_URL = "ws://127.0.0.1:7946/events"


class CommandError(Exception):
    """A command could not do its job for a reason outside k3net (a store or an agent that does
    not answer). The message is one readable line; the exit code is 1."""


def add_output(parser: argparse.ArgumentParser) -> None:
    """`-o table|wide|json|yaml`, and the older `--json` (the same as `-o json`)."""
    parser.add_argument("-o", "--output", choices=OUTPUTS, default="table",
                        help="table, wide, json or yaml (default: %(default)s)")
    parser.add_argument("--json", dest="output", action="store_const", const="json",
                        help="the same as -o json")


class Table:
    """Columns padded to the widest cell seen so far. One printer for every command: a stream
    (`nodes -w`) keeps the widths of its first rows, growing only when a wider cell comes."""

    def __init__(self, header: Sequence[str]) -> None:
        self.header = list(header)
        self.widths = [len(cell) for cell in header]

    def lines(self, rows: Sequence[Sequence[str]], *, header: bool = False) -> str:
        """`rows` (and the header first, if asked) as text, one line each, ending in '\\n'."""
        rows = [self.header, *rows] if header else list(rows)
        for row in rows:
            self.widths = [max(w, len(cell)) for w, cell in zip(self.widths, row, strict=True)]
        return "".join(
            "   ".join(cell.ljust(w) for cell, w in zip(row, self.widths, strict=True)).rstrip()
            + "\n"
            for row in rows
        )


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A whole table at once: header, then rows, as `kubectl get` prints it."""
    printer = Table(header)
    printer.lines(rows)  # measure every row before printing any
    return printer.lines([], header=True) + printer.lines(rows)


def dump(data: Any, output: str) -> str:
    """A whole document as JSON (indented) or YAML."""
    if output == "json":
        return json.dumps(data, indent=2) + "\n"
    if output == "yaml":
        import yaml

        return str(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    raise ValueError(f"not a document format: {output!r}")


def dump_item(data: Any, output: str) -> str:
    """One item of a stream: a JSON line, or a YAML document after `---`."""
    if output == "json":
        return json.dumps(data) + "\n"
    return "---\n" + dump(data, "yaml")

"""Log lines: JSON fields from `extra=`, and syslog priorities without timestamps when stderr is
the journal (JOURNAL_STREAM names it), checked in a real child process whose stderr is a file."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from k3net import logs

CHILD = """
import logging, sys
from k3net.logs import configure
configure("debug", sys.argv[1])
log = logging.getLogger("k3net.nodes")
log.debug("probing")
log.info("node b Ready (PeerAlive): answered", extra={"node": "b", "reason": "PeerAlive"})
log.warning("node b NotReady (PeerRefused): 10.0.0.5:7946 refused twice",
            extra={"node": "b", "peer": "10.0.0.5:7946", "reason": "PeerRefused",
                   "addresses": ["10.0.0.5"]})
try:
    1 / 0
except ZeroDivisionError:
    log.exception("store write failed")
"""


def child(tmp_path: Path, fmt: str, journal: str | None) -> list[str]:
    """The child's stderr lines; `journal`: JOURNAL_STREAM for the child ("self": that of its
    stderr file, as systemd sets it)."""
    out = tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with out.open("w") as err:
        if journal == "self":
            st = os.fstat(err.fileno())
            journal = f"{st.st_dev}:{st.st_ino}"
        if journal is not None:
            env["JOURNAL_STREAM"] = journal
        subprocess.run([sys.executable, "-c", CHILD, fmt], stderr=err, env=env, check=True,
                       timeout=30)
    return out.read_text().splitlines()


def test_under_the_journal_every_line_has_its_priority_and_no_timestamp(tmp_path: Path) -> None:
    lines = child(tmp_path, "text", "self")
    assert lines[:3] == [
        "<7>DEBUG k3net.nodes: probing",
        "<6>INFO k3net.nodes: node b Ready (PeerAlive): answered",
        "<4>WARNING k3net.nodes: node b NotReady (PeerRefused): 10.0.0.5:7946 refused twice",
    ]
    assert lines[3] == "<3>ERROR k3net.nodes: store write failed"
    # The traceback's lines too: the journal files each line apart.
    assert len(lines) > 4 and all(line.startswith("<3>") for line in lines[4:])
    assert lines[-1] == "<3>ZeroDivisionError: division by zero"


def test_json_under_the_journal_has_priorities_and_the_fields(tmp_path: Path) -> None:
    lines = child(tmp_path, "json", "self")
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>"]
    warning = json.loads(lines[2][3:])
    assert {k: warning[k] for k in ("level", "logger", "node", "peer", "reason", "addresses")} == {
        "level": "warning", "logger": "k3net.nodes", "node": "b", "peer": "10.0.0.5:7946",
        "reason": "PeerRefused", "addresses": ["10.0.0.5"]}
    assert "ZeroDivisionError" in json.loads(lines[3][3:])["exc"]


@pytest.mark.parametrize("journal", [None, "1:2", "garbage"])
def test_without_the_journal_lines_are_as_for_a_terminal(tmp_path: Path, journal: str | None
                                                        ) -> None:
    # Not set, or naming another stream (k3net run 2>file under systemd): plain lines.
    lines = child(tmp_path, "text", journal)
    assert not any(line.startswith("<") for line in lines)
    assert lines[2].endswith("WARNING k3net.nodes: node b NotReady (PeerRefused): "
                             "10.0.0.5:7946 refused twice")
    assert lines[2][:4].isdigit()  # its own timestamp first
    data = [json.loads(line) for line in child(tmp_path, "json", journal)]
    assert data[1]["node"] == "b" and "peer" not in data[1] and data[1]["level"] == "info"


def test_priorities_of_every_level() -> None:
    assert [logs.priority(level) for level in (
        logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL, 25,
    )] == [7, 6, 4, 3, 2, 6]

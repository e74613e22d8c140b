"""HashiCorp Serf (Debian's `serf` package) on the netns LAN: the measured peer of `nox -s versus`.

One `serf agent` per host, LAN profile (memberlist's DefaultLANConfig: probe every 1 s, probe
timeout 500 ms, 3 indirect probes, suspicion multiplier 4, Lifeguard's awareness), bound to the
host's LAN address. Members find each other with Serf's own mDNS discovery (`-discover`, one
query at start, then every 60 s) on `eth0`, inside the namespaces only; `--discover join` makes
every agent `-join` host 0 instead.

When does Serf know? An agent logs every membership change it applies the moment it applies it
(`serf: EventMemberJoin: serf-2 10.77.0.3`, ...Failed, ...Leave), one line per write on its stdout:
the same stream `serf monitor` shows. A thread per agent reads that pipe and stamps each line with
time.monotonic() as it arrives, so a time is when the agent decided, to the millisecond. An event
handler script would see the same events later: the agent coalesces member events for the
handler (up to 3 s, 1 s of quiet), which is Serf's delivery policy, not its detection.
Host 0's agent is the observer (no fault ever touches host 0); every agent's events are kept,
to count the failures any member declared.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from k3lab.netns import Host

PORT = 7946
CLUSTER = "k3versus"
# One line of a Serf agent's log that records a membership change it applied.
_EVENT = re.compile(r"\bserf: EventMember(Join|Leave|Failed|Update|Reap): (\S+)")
# memberlist suspecting a member (before any failure is declared): counted, not timed.
_SUSPECT = re.compile(r"\bmemberlist: Suspect (\S+) has failed")
INSTALL_TIMEOUT = 600


@dataclass(frozen=True)
class Event:
    t: float  # time.monotonic() when the line arrived
    kind: str  # join, leave, failed, update, reap, suspect
    member: str


def parse_line(t: float, line: str) -> Event | None:
    """A Serf agent log line -> the membership event it records, or None for any other line."""
    m = _EVENT.search(line)
    if m:
        return Event(t, m.group(1).lower(), m.group(2))
    m = _SUSPECT.search(line)
    if m:
        return Event(t, "suspect", m.group(1))
    return None


def alive_members(events: Iterable[Event]) -> set[str]:
    """The members an agent holds alive after these events, in order: join and update make a
    member alive, failed, leave and reap take it away (a suspicion changes nothing)."""
    alive: set[str] = set()
    for ev in events:
        if ev.kind in ("join", "update"):
            alive.add(ev.member)
        elif ev.kind in ("failed", "leave", "reap"):
            alive.discard(ev.member)
    return alive


def ensure_installed(say: Callable[[str], None] = print) -> str:
    """Debian's serf package, installed with apt-get when missing (and nothing else); its
    version line."""
    if shutil.which("serf") is None:
        say("serf: not installed; installing Debian's serf package (apt-get install -y serf)")
        done = subprocess.run(["apt-get", "install", "-y", "-q", "serf"], capture_output=True,
                              text=True, timeout=INSTALL_TIMEOUT,
                              env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if done.returncode != 0 or shutil.which("serf") is None:
            raise RuntimeError(f"apt-get install serf failed: {done.stderr.strip()[-400:]}")
    out = subprocess.run(["serf", "version"], capture_output=True, text=True, timeout=30).stdout
    # The binary's own line, and the Debian package's version (what was installed).
    deb = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "serf"], capture_output=True,
                         text=True, timeout=30).stdout.strip()
    line = out.splitlines()[0].strip() if out else "Serf (unknown version)"
    return f"{line} (Debian serf {deb})" if deb else line


class SerfAgent:
    """`serf agent` on one host; its membership events as they happen (see the module)."""

    def __init__(self, host: Host, name: str, log_path: Path, *, join: str | None = None) -> None:
        self.host = host
        self.name = name
        self.events: list[Event] = []
        self._lock = threading.Lock()
        argv = ["serf", "agent", "-node", name, "-bind", f"{host.address}:{PORT}",
                "-iface", host.interface, "-profile", "lan", "-log-level", "info",
                "-rpc-addr", "127.0.0.1:7373"]
        argv += ["-join", join] if join else ["-discover", CLUSTER]
        self.started_at = time.monotonic()
        self.proc = host.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               bufsize=1)
        self._log = log_path.open("a")
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,),
                                        name=f"serf-{name}", daemon=True)
        self._reader.start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            t = time.monotonic()
            self._log.write(f"{t:.3f} {line}")
            ev = parse_line(t, line)
            if ev is not None:
                with self._lock:
                    self.events.append(ev)

    def events_since(self, since: float) -> list[Event]:
        with self._lock:
            return [e for e in self.events if e.t >= since]

    def alive(self) -> set[str]:
        with self._lock:
            return alive_members(self.events)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 10) -> int:
        """Wait for the agent to exit (a graceful leave takes up to its broadcast timeout),
        SIGKILL after `timeout`."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)
        finally:
            self._reader.join(2)
            self._log.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)  # no leave: the run is over
        self.wait(5)
        self._log.close()

"""Network namespaces for tests and simulations: private LANs on one machine, so that mDNS never reaches a real
interface.

    with LoopbackHost() as host:                 # one namespace, multicast on `lo`
        proc = host.popen([sys.executable, "-m", "k3net", "run", ...])

    with Lan(3) as lan:                          # three namespaces on one bridge
        a, b, c = lan.hosts
        b.link_down(); ...; b.link_up()

Nothing is created in the root namespace: the bridge lives in a namespace of its own and each
veth pair is created there with its peer end moved straight into the host namespace as `eth0`.
Deleting the namespaces therefore removes every link as well.

Names are `k3t<pid>-<n>-...` (pid of the test process, n counts LANs in this process), so two
test runs never collide and `remove_leftovers()` can tell a crashed run's namespaces (their pid
is dead) from a live one's. Needs root and iproute2.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

PREFIX = "k3t"
_COMMAND_TIMEOUT = 15  # seconds; any single `ip` command that takes longer is broken
_STOP_TIMEOUT = 5  # seconds a process gets to exit after SIGTERM before SIGKILL
_counter = itertools.count()


class NetnsError(RuntimeError):
    """An `ip` command failed; the message has the command and its stderr."""


def can_use_netns() -> bool:
    """True if this process may create namespaces (root and `ip` available)."""
    if os.geteuid() != 0:
        return False
    try:
        subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=_COMMAND_TIMEOUT,
                       check=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


def _new_prefix() -> str:
    return f"{PREFIX}{os.getpid()}-{next(_counter)}"


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(_STOP_TIMEOUT)


def _delete_namespace(name: str) -> None:
    # A namespace stays alive while a process runs in it: stop ours first (by pid).
    done = _ip("netns", "pids", name, check=False)
    for pid in done.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass
    _ip("netns", "delete", name, check=False)


def remove_leftovers(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces (and so their links) left by test runs that died without cleaning up:
    names `<prefix><pid>-...` whose pid no longer runs. Returns the names removed."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        if int(pid_text) == os.getpid() or os.path.exists(f"/proc/{pid_text}"):
            continue  # a live run owns it
        _delete_namespace(name)
        removed.append(name)
    return removed


class Host:
    """One network namespace: a machine on the test LAN."""

    def __init__(self, name: str, address: str, interface: str) -> None:
        self.name = name  # the namespace name
        self.address = address  # the host's IPv4 address on its interface
        self.interface = interface  # `eth0` on a Lan, `lo` for a LoopbackHost
        self._procs: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.address!r})"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped to run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def popen(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process in this namespace. It is stopped (SIGTERM, then SIGKILL) on cleanup
        if it still runs; `ip netns exec` execs the command, so the pid is the command's."""
        proc = subprocess.Popen(self.argv(argv), **popen_kwargs)
        self._procs.append(proc)
        return proc

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 30,
            **run_kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run a command in this namespace to completion; text output is captured."""
        run_kwargs.setdefault("capture_output", True)
        run_kwargs.setdefault("text", True)
        return subprocess.run(self.argv(argv), check=check, timeout=timeout, **run_kwargs)

    def link_down(self) -> None:
        """Cut this host off the LAN (its multicast route goes with the link)."""
        _ip("-n", self.name, "link", "set", self.interface, "down")

    def link_up(self) -> None:
        """Reconnect; re-adds the multicast route that `link_down` deleted."""
        _ip("-n", self.name, "link", "set", self.interface, "up")
        _ip("-n", self.name, "link", "set", self.interface, "multicast", "on")
        _ip("-n", self.name, "route", "replace", "224.0.0.0/4", "dev", self.interface)

    def stop_processes(self) -> None:
        for proc in self._procs:
            _stop(proc)
        self._procs.clear()


class _Namespaces:
    """Owns a set of namespaces; `close()` (or leaving `with`) deletes them all."""

    def __init__(self) -> None:
        self.prefix = _new_prefix()
        self._namespaces: list[str] = []
        self.hosts: list[Host] = []

    def _add_namespace(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def close(self) -> None:
        """Stop the hosts' processes, delete the namespaces. Safe to call twice."""
        for host in self.hosts:
            host.stop_processes()
        while self._namespaces:
            _delete_namespace(self._namespaces.pop())

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class LoopbackHost(_Namespaces, Host):
    """One namespace whose `lo` carries multicast: enough for several agents on one "host"
    (different ports). The object is itself the host (`.name`, `.address`, `.popen`, ...)."""

    def __init__(self) -> None:
        _Namespaces.__init__(self)
        try:
            name = self._add_namespace("lo")
            _ip("-n", name, "link", "set", "lo", "multicast", "on")
            _ip("-n", name, "route", "add", "224.0.0.0/4", "dev", "lo")
        except BaseException:
            self.close()
            raise
        Host.__init__(self, name, "127.0.0.1", "lo")
        self.hosts.append(self)


class Lan(_Namespaces):
    """`n_hosts` namespaces joined by a bridge that lives in a namespace of its own. Host i
    (from 0) has `eth0` with the (i+1)-th address of `subnet`, multicast on, and a route for
    224.0.0.0/4 on eth0."""

    def __init__(self, n_hosts: int, subnet: str = "10.77.0.0/24") -> None:
        super().__init__()
        network = ipaddress.ip_network(subnet)
        addresses = list(itertools.islice(network.hosts(), n_hosts))
        if len(addresses) < n_hosts:
            raise ValueError(f"{subnet} has room for {len(addresses)} hosts, not {n_hosts}")
        try:
            self.bridge_namespace = self._add_namespace("br")
            br = self.bridge_namespace
            _ip("-n", br, "link", "add", "br0", "type", "bridge")
            _ip("-n", br, "link", "set", "br0", "up")
            for i, address in enumerate(addresses):
                name = self._add_namespace(f"h{i}")
                _ip("-n", br, "link", "add", f"v{i}", "type", "veth",
                    "peer", "name", "eth0", "netns", name)
                _ip("-n", br, "link", "set", f"v{i}", "master", "br0")
                _ip("-n", br, "link", "set", f"v{i}", "up")
                _ip("-n", name, "addr", "add", f"{address}/{network.prefixlen}", "dev", "eth0")
                host = Host(name, str(address), "eth0")
                host.link_up()
                self.hosts.append(host)
        except BaseException:
            self.close()
            raise

    def __getitem__(self, i: int) -> Host:
        return self.hosts[i]

    def __len__(self) -> int:
        return len(self.hosts)

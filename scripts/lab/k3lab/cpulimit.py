"""Hold a process to a share of one CPU core: a starved member (a host overloaded by other work, a
VM given too little CPU), without touching the rest of the machine.

The kernel's CFS bandwidth control does it: a control group whose tasks may run `quota` µs in
every `period` µs, whatever the machine's load. cgroup v2 (`cpu.max`, "5000 100000" for 5 %) where
the unified hierarchy has the cpu controller; else cgroup v1's cpu controller (`cpu.cfs_quota_us`
and `cpu.cfs_period_us`); else nothing, and the caller reports "not measured":

    limit = CpuLimit.create("gray-node-3", share=0.05)   # None: this machine cannot
    if limit is not None:
        limit.add(pid)           # the process and all its threads
        ...
        limit.close()            # its processes back to the root group, the group removed

Groups are named `k3lab<pid>-<name>`; `remove_leftovers()` deletes those of dead runs. Needs root.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

PERIOD_US = 100_000  # the kernel's default period: 100 ms
V2_ROOT = Path("/sys/fs/cgroup")
V1_ROOT = Path("/sys/fs/cgroup/cpu")
PREFIX = "k3lab"


def quota_us(share: float, period_us: int = PERIOD_US) -> int:
    """The quota for `share` of one core (0 < share <= 64), at least the kernel's 1 ms."""
    if not 0 < share <= 64:
        raise ValueError(f"a CPU share is above 0 and at most 64 cores, not {share!r}")
    return max(1000, round(share * period_us))


def v2_root(root: Path = V2_ROOT) -> Path | None:
    """The cgroup v2 root whose cpu controller can be given to a child group, if any."""
    try:
        controllers = (root / "cgroup.controllers").read_text().split()
    except OSError:
        return None
    return root if "cpu" in controllers else None


def v1_root(root: Path = V1_ROOT) -> Path | None:
    """The cgroup v1 cpu hierarchy with CFS bandwidth control, if mounted."""
    return root if (root / "cpu.cfs_quota_us").exists() else None


def support() -> str | None:
    """"cgroup v2", "cgroup v1" or None: how this machine can limit a process's CPU."""
    if os.geteuid() != 0:
        return None
    if v2_root() is not None:
        return "cgroup v2"
    if v1_root() is not None:
        return "cgroup v1"
    return None


class CpuLimit:
    def __init__(self, path: Path, root: Path, version: int, share: float) -> None:
        self.path = path
        self.root = root
        self.version = version
        self.share = share

    @classmethod
    def create(cls, name: str, share: float) -> CpuLimit | None:
        """A new group allowed `share` of one core; None where the machine has no way."""
        if not re.fullmatch(r"[a-z0-9-]{1,40}", name):
            raise ValueError(f"a cgroup name is lower case letters, digits and '-': {name!r}")
        quota = quota_us(share)
        kind = support()
        if kind is None:
            return None
        if kind == "cgroup v2":
            root = V2_ROOT
            # The children of the root get the cpu controller only if the root hands it down.
            with contextlib.suppress(OSError):
                (root / "cgroup.subtree_control").write_text("+cpu")
            path = root / f"{PREFIX}{os.getpid()}-{name}"
            path.mkdir()
            limit = cls(path, root, 2, share)
            try:
                (path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            except OSError:
                limit.close()
                raise
            return limit
        root = V1_ROOT
        path = root / f"{PREFIX}{os.getpid()}-{name}"
        path.mkdir()
        limit = cls(path, root, 1, share)
        try:
            (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (path / "cpu.cfs_quota_us").write_text(str(quota))
        except OSError:
            limit.close()
            raise
        return limit

    @property
    def kind(self) -> str:
        return f"cgroup v{self.version}"

    def add(self, pid: int) -> None:
        """Move process `pid`, all its threads, into the group (its children follow it)."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def close(self) -> None:
        """Give the group's processes back to the root group and remove the group."""
        for pid in self.pids():
            with contextlib.suppress(OSError):  # it may have exited meanwhile
                (self.root / "cgroup.procs").write_text(str(pid))
        with contextlib.suppress(OSError):
            self.path.rmdir()


def remove_leftovers() -> list[str]:
    """Remove the groups of runs that died without closing them (their pid is gone)."""
    removed = []
    for root in (V2_ROOT, V1_ROOT):
        try:
            entries = list(root.glob(f"{PREFIX}*-*"))
        except OSError:
            continue
        for path in entries:
            pid = path.name[len(PREFIX):].split("-", 1)[0]
            if not pid.isdigit() or Path(f"/proc/{pid}").exists():
                continue
            CpuLimit(path, root, 2 if root == V2_ROOT else 1, 0).close()
            if not path.exists():
                removed.append(str(path))
    return removed

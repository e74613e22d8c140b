"""Which k3net this is: the package version, and the git commit when it is known.

The commit comes from `k3net/_commit.txt`, written into the package when a wheel or sdist is
built from a git checkout, else from the checkout the package runs from (an editable install,
`python -m k3net` in a clone). An install from a tarball without git has no commit: None.
"""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
COMMIT_FILE = PACKAGE_DIR / "_commit.txt"


@functools.cache
def version() -> str:
    try:
        return metadata.version("k3net")
    except metadata.PackageNotFoundError:  # run from a clone that was never installed
        return "0+unknown"


def git_commit(repo: Path) -> str | None:
    """The commit checked out in `repo` (12 hex digits, `-dirty` if files differ), or None."""
    if not (repo / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head or None


@functools.cache
def commit() -> str | None:
    try:
        return COMMIT_FILE.read_text().strip() or None
    except OSError:
        return git_commit(PACKAGE_DIR.parent)


def describe() -> str:
    """`0.1.0 (commit 0123456789ab)`, or just the version."""
    c = commit()
    return f"{version()} (commit {c})" if c else version()

"""`k3net keygen PATH [--force]`: write a new cluster key.

The key is 32 random bytes from the system's CSPRNG (`secrets`), written as 64 hex digits and
a newline, which is what `--cluster-key-file` reads (see `k3net.core.private`: 256 bits). The
file is private from its first byte (mode 0600) and appears whole or not at all: the key goes
into a temporary file in the same directory, which is flushed to disk and then linked to PATH
(which fails if PATH exists: nothing is overwritten) or, with `--force`, renamed over it. The
key is never printed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from k3net.commands import CommandError

KEY_BYTES = 32


def new_key() -> bytes:
    """A fresh cluster key, as its file holds it."""
    return secrets.token_hex(KEY_BYTES).encode("ascii") + b"\n"


def write_key(path: Path, key: bytes, *, force: bool = False) -> None:
    """Write `key` to `path` with mode 0600, atomically; FileExistsError if `path` exists and
    not `force`; OSError for anything else that stops it (nothing is left behind then)."""
    directory = path.parent
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, 0o600)  # mkstemp's mode, whatever the umask
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # atomic, and refuses to replace an existing file
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    _sync_directory(directory)


def _sync_directory(directory: Path) -> None:
    """Make the new name durable (a crash right after must not lose the key)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main(path: str, force: bool, out: TextIO | None = None) -> int:
    """`k3net keygen`: 0 when written; CommandError (one line, exit 1) if not."""
    target = Path(path)
    try:
        write_key(target, new_key(), force=force)
    except FileExistsError:
        raise CommandError(f"{path} exists; --force replaces it (every agent then needs the "
                           "new key)") from None
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
    (out or sys.stdout).write(f"wrote a new cluster key ({8 * KEY_BYTES} bits) to {path}, mode 0600; give every "
              f"agent a copy: --cluster-key-file {path}\n")
    return 0

"""`k3net keygen PATH`: a key that `--cluster-key-file` accepts, private from the start, never
over an existing file unless --force, and nothing left behind when it cannot be written."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from k3net import cli
from k3net.commands.keygen import write_key
from k3net.core.identity import read_key_file
from k3net.core.private import key_bits


@pytest.fixture
def lax_umask() -> Iterator[None]:
    """umask 0: a file made without care would come out world-readable."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("lax_umask")
def test_keygen_writes_a_private_256_bit_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cluster.key"
    assert cli.main(["keygen", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = read_key_file(str(path))  # what the agent reads, with all its checks
    assert key_bits(key) == 256 and len(key) == 64 and path.read_bytes() == key + b"\n"
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1 and str(path) in out and key.decode() not in out
    assert os.listdir(tmp_path) == ["cluster.key"]  # no temporary file left

    other = tmp_path / "other.key"
    assert cli.main(["keygen", str(other)]) == 0
    assert read_key_file(str(other)) != key  # random, not derived from anything


def test_keygen_never_overwrites_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cluster.key"
    path.write_bytes(b"the key every agent has\n")
    path.chmod(0o600)
    assert cli.main(["keygen", str(path)]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "exists" in err and "--force" in err
    assert path.read_bytes() == b"the key every agent has\n"
    assert cli.main(["keygen", "--force", str(path)]) == 0
    assert key_bits(read_key_file(str(path))) == 256
    assert sorted(os.listdir(tmp_path)) == ["cluster.key"]


def test_keygen_where_it_cannot_write_says_so_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["keygen", str(tmp_path / "missing" / "cluster.key")]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "No such file or directory" in err
    # A directory in the way, even with --force: nothing replaced, no temporary file left.
    (tmp_path / "dir").mkdir()
    assert cli.main(["keygen", "--force", str(tmp_path / "dir")]) == 1
    assert len(capsys.readouterr().err.splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["dir"] and os.listdir(tmp_path / "dir") == []


def test_write_key_refuses_an_existing_symlink_too(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"keep me")
    link = tmp_path / "cluster.key"
    link.symlink_to(target)
    with pytest.raises(FileExistsError):
        write_key(link, b"0" * 64 + b"\n")
    assert target.read_bytes() == b"keep me"

"""The cluster key end to end inside one process: the flag and its errors, this agent's /info
proving the key to a real identity probe, and --advertise-address."""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.request
from pathlib import Path

import pytest
import trio

from k3net import cli
from k3net.core.identity import KeyFileError, read_key_file
from k3net.core.private import MIN_KEY_BITS, key_bits
from k3net.current import Current
from k3net.events import EventHub
from k3net.health import StoreHealth
from k3net.metrics import Metrics
from k3net.settings import Settings
from k3net.store.memory import MemoryStore
from k3net.tasks.probe import probe_peer
from k3net.web.app import AppState

from .helpers.web import start_server

KEY = b"6b3a55e0261b4c8d9f1e0a7c2d4b6e8f"


def key_file(tmp_path: Path, content: bytes = KEY + b"\n", mode: int = 0o600) -> Path:
    path = tmp_path / "cluster.key"
    path.write_bytes(content)
    path.chmod(mode)
    return path


def run_settings(*argv: str) -> Settings:
    return cli.settings_from_args(cli.build_parser().parse_args(["run", "--node-name=n1", *argv]))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("K3NET_CLUSTER_KEY_FILE", "K3NET_ADVERTISE_ADDRESS", "NODE_NAME", "CONFIG_PATH"):
        monkeypatch.delenv(name, raising=False)


def test_key_from_flag_and_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = key_file(tmp_path)
    assert run_settings().cluster_key is None  # default: open, as the Go agent
    assert run_settings(f"--cluster-key-file={path}").cluster_key == KEY
    monkeypatch.setenv("K3NET_CLUSTER_KEY_FILE", str(path))
    assert run_settings().cluster_key == KEY
    assert KEY.decode() not in repr(run_settings())  # never in a log line of the settings


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [(None, 0o600, "does not exist"), (b"", 0o600, "is empty"), (KEY, 0o644, "chmod 600"),
     (b"short\n", 0o600, "at least 128"), (b"0123456789abcdef\n", 0o600, "at least 128")],
    ids=["missing", "empty", "readable-by-others", "too-short", "16-characters"],
)
def test_bad_key_file_exits_2_with_one_line(
    tmp_path: Path, content: bytes | None, mode: int, message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "cluster.key"
    if content is not None:
        key_file(tmp_path, content, mode)
    assert cli.main(["run", "--node-name=n1", f"--cluster-key-file={path}"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err and str(path) in err
    assert "Traceback" not in err and KEY.decode() not in err


RANDOM16 = bytes(range(0x80, 0x90))  # 16 raw bytes, no whitespace at either end

# (what, key, accepted): 128 bits at least, judged by the key's alphabet (k3net.core.private).
STRENGTH = [
    ("hex, 31 digits", b"a" * 31, False),
    ("hex, 32 digits", b"0123456789abcdef" * 2, True),
    ("base64 of 15 bytes", base64.b64encode(RANDOM16[:15]), False),
    ("base64 of 16 bytes", base64.b64encode(RANDOM16), True),
    ("base64url, 22 characters", b"Zm9vYmFyYmF6cXV4LW_xyz"[:22], True),
    ("passphrase of 16 characters", b"my secret pass!!", False),
    ("passphrase of 20 characters", b"my secret pass!!word", True),
    ("raw 15 bytes", RANDOM16[:15], False),
    ("raw 16 bytes", RANDOM16, True),
]


@pytest.mark.parametrize(("what", "key", "accepted"), STRENGTH, ids=[c[0] for c in STRENGTH])
def test_a_key_needs_128_bits(what: str, key: bytes, accepted: bool, tmp_path: Path) -> None:
    path = key_file(tmp_path, key + b"\n")
    if accepted:
        assert read_key_file(str(path)) == key
        assert key_bits(key) >= MIN_KEY_BITS
        return
    with pytest.raises(KeyFileError, match="needs at least 128") as caught:
        read_key_file(str(path))
    assert "k3net keygen" in str(caught.value)


def test_advertise_address_is_kept_exactly_and_checked(capsys: pytest.CaptureFixture[str]) -> None:
    s = run_settings("--advertise-address=10.0.0.9", "--advertise-address=fd00::0:1",
                     "--advertise-address=10.0.0.9")
    assert s.advertise_addresses == ("10.0.0.9", "fd00::1")
    for bad in ("127.0.0.1", "fe80::1", "0.0.0.0", "224.0.0.251", "nope"):
        assert cli.main(["run", "--node-name=n1", f"--advertise-address={bad}"]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and bad in err and "Traceback" not in err


async def _serve_info(nursery: trio.Nursery, key: bytes | None) -> int:
    metrics = Metrics()
    state = AppState(
        settings=Current(Settings(node_name="node-a", listen_port=7946, cluster_key=key)),
        store=Current(MemoryStore()), hub=EventHub(metrics), metrics=metrics, health=StoreHealth(),
        started_at=time.time(), addrs=lambda: ["10.77.0.2"],
    )
    return (await start_server(nursery, state)).port


@pytest.mark.parametrize(
    ("served_key", "probe_key", "outcome"),
    [(KEY, KEY, "confirmed"), (None, None, "confirmed"), (None, KEY, "unauthenticated"),
     (b"some-other-cluster-key-0123456789", KEY, "unauthenticated"), (KEY, None, "confirmed")],
    ids=["same-key", "no-keys", "agent-without-key", "other-cluster", "prober-without-key"],
)
async def test_info_proves_the_key_to_a_probe(
    nursery: trio.Nursery, served_key: bytes | None, probe_key: bytes | None, outcome: str
) -> None:
    port = await _serve_info(nursery, served_key)
    result = await probe_peer("node-a", ["127.0.0.1"], port, 5.0, key=probe_key)
    assert result.outcome == outcome, result.error


async def test_info_without_nonce_is_the_go_answer(nursery: trio.Nursery) -> None:
    port = await _serve_info(nursery, KEY)

    def get(path: str) -> dict[str, object]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return dict(json.loads(resp.read()))

    plain = await trio.to_thread.run_sync(get, "/info")
    assert plain["node"] == "node-a" and "proof" not in plain
    bad_nonce = await trio.to_thread.run_sync(get, "/info?nonce=xyz")
    assert "proof" not in bad_nonce
    text = json.dumps(await trio.to_thread.run_sync(get, "/info?nonce=" + "ab" * 16))
    assert "proof" in text and KEY.decode() not in text


@pytest.fixture
async def nursery() -> object:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def test_a_keyed_probe_takes_the_facts_the_mac_covers(nursery: trio.Nursery) -> None:
    """This agent's /info proves its port, pid and addresses under the key; the probe hands
    exactly those to the table."""
    port = await _serve_info(nursery, KEY)
    result = await probe_peer("node-a", ["127.0.0.1"], port, 5.0, key=KEY)
    assert result.outcome == "confirmed", result.error
    assert result.facts is not None
    assert (result.facts.port, result.facts.pid, result.facts.addresses) == (
        7946, os.getpid(), ("10.77.0.2",))

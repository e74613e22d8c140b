"""Identity probes and the cluster key (k3net.core.identity): pure, table-driven."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

import pytest

from k3net.core import identity
from k3net.core.identity import AnswerReader, KeyFileError, judge, judge_reader

KEY = b"0123456789abcdef0123456789abcdef"
NONCE = bytes(range(16))


def http(status: int, body: bytes, *, chunked: bool = False, extra: bytes = b"") -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n".encode() + extra
    if chunked:
        mid = len(body) // 2
        parts = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in (body[:mid], body[mid:]) if p)
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + parts + b"0\r\n\r\n"
    return head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def info(node: object, **more: object) -> bytes:
    return json.dumps({"node": node, "pid": 42, **more}).encode()


def read(raw: bytes, step: int = 7) -> AnswerReader:
    """Feed `raw` in small pieces, as a socket might, then EOF if still wanted."""
    reader = AnswerReader()
    for i in range(0, len(raw), step):
        if reader.feed(raw[i:i + step]):
            return reader
    reader.feed(b"")
    return reader


def test_proof_is_hmac_sha256_of_nonce_and_name() -> None:
    expected = hmac.new(KEY, NONCE + b"node-a", hashlib.sha256).hexdigest()
    assert identity.proof(KEY, NONCE, "node-a") == expected
    assert identity.proof(KEY, NONCE, "node-b") != expected
    assert identity.proof(KEY, bytes(16), "node-a") != expected
    assert identity.proof(b"another key, 16 bytes or more", NONCE, "node-a") != expected


def test_request_asks_info_with_the_nonce() -> None:
    raw = identity.request("10.0.0.2", 7946, NONCE)
    assert raw.startswith(b"GET /info?nonce=000102030405060708090a0b0c0d0e0f HTTP/1.1\r\n")
    assert b"\r\nHost: 10.0.0.2:7946\r\n" in raw and b"Connection: close" in raw
    assert raw.endswith(b"\r\n\r\n")
    assert b"Host: [fd00::2]:7946" in identity.request("fd00::2", 7946, NONCE)


@pytest.mark.parametrize(
    ("query", "nonce"),
    [(b"nonce=000102030405060708090a0b0c0d0e0f", NONCE),
     (b"x=1&nonce=000102030405060708090A0B0C0D0E0F", NONCE),
     (b"", None), (b"nonce=", None), (b"nonce=0001", None), (b"nonce=" + b"zz" * 16, None),
     (b"nonce=" + "é".encode() * 16, None)],
)
def test_nonce_from_query(query: bytes, nonce: bytes | None) -> None:
    assert identity.nonce_from_query(query) == nonce


GOOD_PROOF = identity.proof(KEY, NONCE, "node-a")


@pytest.mark.parametrize(
    ("raw", "key", "outcome", "answered_by"),
    [
        pytest.param(http(200, info("node-a")), None, "confirmed", "node-a", id="go-agent"),
        pytest.param(http(200, info("node-a"), chunked=True), None, "confirmed", "node-a",
                     id="chunked-body"),
        pytest.param(http(200, info("node-a", proof=GOOD_PROOF)), None, "confirmed", "node-a",
                     id="proof-ignored-without-key"),
        pytest.param(http(200, info("node-a", proof=GOOD_PROOF)), KEY, "confirmed", "node-a",
                     id="key-proved"),
        pytest.param(http(200, info("node-a", proof=GOOD_PROOF.upper())), KEY, "confirmed",
                     "node-a", id="proof-hex-any-case"),
        pytest.param(http(200, info("node-a")), KEY, "unauthenticated", "node-a",
                     id="no-proof-with-key"),
        pytest.param(http(200, info("node-a", proof="00" * 32)), KEY, "unauthenticated",
                     "node-a", id="wrong-proof"),
        pytest.param(http(200, info("node-a", proof=identity.proof(KEY, bytes(16), "node-a"))),
                     KEY, "unauthenticated", "node-a", id="replayed-proof-other-nonce"),
        pytest.param(http(200, info("node-a", proof=7)), KEY, "unauthenticated", "node-a",
                     id="proof-not-text"),
        pytest.param(http(200, info("node-b")), None, "wrong-node", "node-b", id="other-agent"),
        pytest.param(http(200, info("node-b", proof=identity.proof(KEY, NONCE, "node-b"))), KEY,
                     "wrong-node", "node-b", id="other-agent-with-key"),
        pytest.param(http(404, b"not found"), None, "unverified", None, id="http-404"),
        pytest.param(http(200, b"<html>"), None, "unverified", None, id="not-json"),
        pytest.param(http(200, b"[1, 2]"), None, "unverified", None, id="json-not-object"),
        pytest.param(http(200, b'{"pid": 1}'), None, "unverified", None, id="no-node"),
        pytest.param(http(200, info("")), None, "unverified", None, id="empty-node"),
        pytest.param(http(200, info(5)), None, "unverified", None, id="node-not-text"),
        pytest.param(b"SSH-2.0-OpenSSH_9.2\r\n", None, "unverified", None, id="not-http"),
        pytest.param(b"", None, "unverified", None, id="closed-at-once"),
        pytest.param(http(200, info("node-a"))[:-5], None, "unverified", None,
                     id="cut-short"),
        pytest.param(http(200, b" " * (identity.MAX_ANSWER + 1)), None, "unverified", None,
                     id="too-long"),
    ],
)
def test_judge_answers(raw: bytes, key: bytes | None, outcome: str, answered_by: str | None) -> None:
    answer = judge_reader(read(raw), probed="node-a", nonce=NONCE, key=key)
    assert answer.outcome == outcome
    assert (answer.answered_by if outcome == "wrong-node" or answer.answered_by else None) == answered_by
    assert GOOD_PROOF not in answer.detail and KEY.decode() not in answer.detail


def test_reader_stops_at_the_end_of_the_answer_without_eof() -> None:
    reader = AnswerReader()
    assert reader.feed(http(200, info("node-a"))) is True  # done: no need to wait for EOF
    assert reader.complete and reader.status == 200


def test_reader_keeps_no_more_than_its_limit() -> None:
    reader = AnswerReader(limit=100)
    raw = http(200, b"x" * 10_000)
    assert reader.feed(raw[:60]) is False
    assert reader.feed(raw[60:]) is True
    assert reader.error is not None and "100" in reader.error
    assert len(reader.body) <= 100


def test_judge_other_name_is_quoted_and_bounded() -> None:
    answer = judge(200, info("x" * 300), probed="node-a", nonce=NONCE, key=None)
    assert answer.outcome == "wrong-node"
    assert answer.answered_by is not None and len(answer.answered_by) == 64


# --- the key file ----------------------------------------------------------------------------

REG = stat.S_IFREG


@pytest.mark.parametrize(
    ("mode", "data", "key", "error"),
    [
        pytest.param(REG | 0o600, KEY + b"\n", KEY, None, id="trailing-newline-dropped"),
        pytest.param(REG | 0o400, b"  " + KEY + b"\r\n", KEY, None, id="read-only-owner"),
        pytest.param(REG | 0o600, b"f" * 32, b"f" * 32, None, id="minimum-length"),
        pytest.param(REG | 0o644, KEY, None, "permissions 0644", id="world-readable"),
        pytest.param(REG | 0o640, KEY, None, "permissions 0640", id="group-readable"),
        pytest.param(REG | 0o602, KEY, None, "chmod 600", id="world-writable"),
        pytest.param(REG | 0o600, b"", None, "is empty", id="empty"),
        pytest.param(REG | 0o600, b" \n\t\n", None, "is empty", id="only-whitespace"),
        pytest.param(REG | 0o600, b"secret\n", None, "needs at least 128", id="too-short"),
        pytest.param(stat.S_IFDIR | 0o700, b"", None, "not a regular file", id="directory"),
    ],
)
def test_key_from_file(mode: int, data: bytes, key: bytes | None, error: str | None) -> None:
    if error is None:
        assert identity.key_from_file("/etc/k3/key", mode, data) == key
        return
    with pytest.raises(KeyFileError) as caught:
        identity.key_from_file("/etc/k3/key", mode, data)
    message = str(caught.value)
    assert error in message and "/etc/k3/key" in message and "\n" not in message
    assert KEY.decode() not in message and "secret" not in message


def test_read_key_file(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(KEY + b"\n")
    path.chmod(0o600)
    assert identity.read_key_file(str(path)) == KEY
    link = tmp_path / "link"
    link.symlink_to(path)  # an orchestrator's mounted secret often is a symlink
    assert identity.read_key_file(str(link)) == KEY
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        identity.read_key_file(str(path))
    with pytest.raises(KeyFileError, match="does not exist"):
        identity.read_key_file(str(tmp_path / "missing"))
    with pytest.raises(KeyFileError, match="not a regular file"):
        os.chmod(tmp_path, 0o700)
        identity.read_key_file(str(tmp_path))


# --- the facts an answer proves ------------------------------------------------------------------

FACTS = {"node": "node-a", "port": 7946, "pid": 42, "addrs": ["10.0.0.9", "10.0.0.2"]}


def keyed_answer(mac_over: dict[str, object] | None = None, **sent: object) -> bytes:
    """A k3net answer with a `mac` computed over `mac_over` (default: what it sends)."""
    data: dict[str, object] = {**FACTS, **sent}
    over = mac_over or data
    data["proof"] = identity.proof(KEY, NONCE, "node-a")
    data["mac"] = identity.facts_mac(KEY, NONCE, str(over["node"]), over["port"],  # type: ignore[arg-type]
                                     over["pid"], over["addrs"])  # type: ignore[arg-type]
    return json.dumps(data).encode()


def test_mac_is_hmac_sha256_over_nonce_and_the_canonical_facts() -> None:
    text = b'{"addrs":["10.0.0.2"],"node":"node-a","pid":42,"port":7946}'
    assert identity.facts_text("node-a", 7946, 42, ["10.0.0.2"]) == text
    expected = hmac.new(KEY, NONCE + b"k3net-info-facts-v1\0" + text, hashlib.sha256).hexdigest()
    assert identity.facts_mac(KEY, NONCE, "node-a", 7946, 42, ["10.0.0.2"]) == expected


def test_a_valid_mac_proves_port_pid_and_addresses() -> None:
    answer = judge(200, keyed_answer(), probed="node-a", nonce=NONCE, key=KEY)
    assert answer.outcome == "confirmed"
    assert answer.facts == identity.Facts("node-a", 7946, 42, ("10.0.0.2", "10.0.0.9"))


@pytest.mark.parametrize("tampered", [
    {"addrs": ["10.0.0.9", "10.0.0.2", "192.168.1.66"]},  # an address added on the way
    {"pid": 31337}, {"port": 8000}, {"addrs": "10.0.0.2"},
])
def test_a_mac_that_does_not_cover_what_is_sent_is_refused(tampered: dict[str, object]) -> None:
    body = keyed_answer(mac_over=FACTS, **tampered)
    answer = judge(200, body, probed="node-a", nonce=NONCE, key=KEY)
    assert (answer.outcome, answer.facts) == ("unauthenticated", None)


def test_a_proof_of_the_name_alone_proves_nothing_else() -> None:
    """An older k3net agent: its name is proven, its port, pid and addresses are not."""
    body = info("node-a", port=7946, addrs=["192.168.1.66"], proof=GOOD_PROOF)
    answer = judge(200, body, probed="node-a", nonce=NONCE, key=KEY)
    assert (answer.outcome, answer.facts) == ("confirmed", identity.Facts("node-a"))


def test_without_a_key_the_peers_own_answer_gives_port_pid_and_addresses() -> None:
    body = info("node-a", port=7946, addrs=["192.168.1.66"])
    answer = judge(200, body, probed="node-a", nonce=NONCE, key=None)
    assert answer.facts == identity.Facts("node-a", 7946, 42, ("192.168.1.66",))
    go = judge(200, info("node-a"), probed="node-a", nonce=NONCE, key=None)  # the Go agent
    assert go.facts == identity.Facts("node-a", None, 42, ())


# --- beats on a held connection ---------------------------------------------------------------


def beats(*seqs: int, key: bytes | None = KEY, node: str = "node-b", nonce: bytes = NONCE,
          framing: bool = True) -> bytes:
    """What a served hold sends after its mark: each beat in an HTTP chunk, as hypercorn does."""
    out = b""
    for seq in seqs:
        line = identity.beat_line(seq, node, key, nonce)
        out += b"%x\r\n%s\r\n" % (len(line), line) if framing else line
    return out


def test_beats_are_counted_through_chunk_framing_and_split_reads() -> None:
    reader = identity.BeatReader("node-b", NONCE, KEY)
    data = beats(1, 2, 3)
    assert reader.feed(data[:7]) == (0, 0)  # half a line: nothing yet
    assert reader.feed(data[7:]) == (3, 0)
    assert reader.seq == 3
    assert reader.feed(beats(4, framing=False)) == (1, 0)  # unframed lines count as well


@pytest.mark.parametrize(("data", "why"), [
    (beats(2, 2), "a repeat"),
    (beats(2, 1), "out of order"),
    (beats(2, key=b"another key of 32 bytes length!!"), "another cluster's key"),
    (beats(2, node="node-c"), "made for another node"),
    (beats(2, nonce=bytes(16)), "made for another connection"),
    (beats(2, key=None), "no proof, and we have a key"),
    (b"beat x\n", "not a number"),
    (b"beat 9" + b"9" * 200 + b"\n", "a line too long"),
])
def test_a_bad_beat_is_counted_and_vouches_for_nothing(data: bytes, why: str) -> None:
    reader = identity.BeatReader("node-b", NONCE, KEY)
    assert reader.feed(beats(1)) == (1, 0)
    good, bad = reader.feed(data)
    assert bad >= 1, why
    assert reader.seq <= 2 and good <= 1, why  # (`2, 2`: the first one is good)


def test_without_a_key_a_beat_needs_no_proof_and_lines_that_are_no_beat_are_ignored() -> None:
    reader = identity.BeatReader("node-b", NONCE, None)
    assert reader.feed(b"hello\n" + beats(1, key=None) + b"x" * 500 + b"\n") == (1, 0)
    assert reader.feed(b"y" * 5000) == (0, 0)  # a line without an end is kept only so long
    assert reader.feed(b"\n" + beats(2, key=None)) == (1, 0)


@pytest.mark.parametrize(("query", "seconds"), [
    (b"nonce=00&beat=15", 15), (b"beat=1", 1), (b"beat=600", 600), (b"beat=0", None),
    (b"beat=601", None), (b"beat=1.5", None), (b"beat=-3", None), (b"beat=", None),
    (b"beat=\xd9\xa3", None), (b"nonce=00", None), (b"", None),
])
def test_the_beat_period_a_hold_asks_for(query: bytes, seconds: int | None) -> None:
    assert identity.beat_from_query(query) == seconds


@pytest.mark.parametrize(("asked", "sent"), [(15.0, 15), (0.25, 1), (2.6, 3), (10_000.0, 600)])
def test_a_holder_asks_for_a_whole_number_of_seconds_within_bounds(asked: float, sent: int) -> None:
    target = identity.hold_target(asked, NONCE)
    assert target == f"/hold?nonce={NONCE.hex()}&beat={sent}"
    assert identity.beat_from_query(target.partition("?")[2].encode()) == sent

"""Who answered a probe, and whether it knows the cluster key. Pure: no sockets, no clock.

Theory of operation. A probe of peer P opens TCP to one of P's addresses and sends

    GET /info?nonce=<32 hex digits> HTTP/1.1

with a fresh random 16-byte nonce. Every agent answers `GET /info` with JSON that holds at least
`{"node": <its name>, ...}`: the k3 Go agent does (it ignores the query string), and so does
k3net. A k3net agent that has a cluster key adds `"proof": <hex>`, the HMAC-SHA256 under the
key of the nonce followed by its node name (UTF-8): `HMAC(key, nonce || name)`. The nonce has a
fixed length, so nonce and name cannot be shifted against each other, and it is fresh for every
probe, so an old answer cannot be replayed. The key itself never travels.

`judge` turns the answer into one of:

| answer | outcome |
|---|---|
| HTTP 200, a JSON object whose `node` is P; with a key: a valid `mac` or `proof` | confirmed |
| the same, but our key is set and `proof` is missing or wrong | unauthenticated |
| `node` names another agent (a shared bridge address, a reused address) | wrong-node |
| anything else: not HTTP, not 200, not JSON, no `node`, too long | unverified |

`AnswerReader` is the sans-I/O HTTP side: the probe feeds it what the socket gives and stops as
soon as the answer is complete (h11 parses it: status line, headers, Content-Length or chunked
body), so an agent that keeps the connection open costs nothing more, and a body larger than
`MAX_ANSWER` bytes is not read further.

The key file rules are here too (`key_from_file`), so that they are tested as a table.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from typing import Any, Literal

import attrs
import h11

from k3net.core import addresses as addrs
from k3net.core.private import MIN_KEY_BITS, exposure, key_bits

NONCE_BYTES = 16
# A Go agent's /info answer is about 200 bytes, k3net's about 400; anything this long is no
# agent's answer, and reading it would only cost memory.
MAX_ANSWER = 16 * 1024

Verdict = Literal["confirmed", "wrong-node", "unauthenticated", "unverified"]


# At most this many addresses are taken from one answer's `addrs` (a host has a few).
MAX_FACT_ADDRESSES = 16


@attrs.frozen
class Facts:
    """What a confirmed answer proves about the peer, in its own words: what may be written into
    its Node. None in a field: the answer did not say it, or (with a key) its MAC does not cover
    it; the prober then uses what it saw itself (the address and port that answered)."""

    node: str
    port: int | None = None
    pid: int | None = None
    addresses: tuple[str, ...] = ()  # canonical order (`core.addresses`); () when not said
    # The addresses are the peer's own whole list (False: only where it answered, as for a Go
    # agent, which lists none: its Node's longer list, written by itself, is then kept).
    listed: bool = True


@attrs.frozen
class Answer:
    """What one address said, judged."""

    outcome: Verdict
    answered_by: str | None = None  # the `node` the answer named, when it named one
    detail: str = ""  # why, for logs and `k3net peers` (never the key, never the proof)
    facts: Facts | None = None  # when confirmed: what the answer proves (`Facts`)


# --- the request and the proof -------------------------------------------------------------


def proof(key: bytes, nonce: bytes, node: str) -> str:
    """HMAC-SHA256(key, nonce || node), in lower-case hex."""
    return hmac.new(key, nonce + node.encode("utf-8"), hashlib.sha256).hexdigest()


_MAC_LABEL = b"k3net-info-facts-v1\0"


def facts_text(node: str, port: int | None, pid: int | None, addresses: list[str]) -> bytes:
    """The canonical bytes a `mac` covers: compact JSON with sorted keys."""
    data = {"addrs": addresses, "node": node, "pid": pid, "port": port}
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")


def facts_mac(
    key: bytes, nonce: bytes, node: str, port: int | None, pid: int | None, addresses: list[str]
) -> str:
    """HMAC-SHA256(key, nonce || label || facts_text(...)), in lower-case hex: what an answer's
    `mac` holds. The answering agent computes it over exactly the values it sends."""
    message = nonce + _MAC_LABEL + facts_text(node, port, pid, addresses)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _same_hex(given: object, expected: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(
        given.lower().encode("ascii", "replace"), expected.encode("ascii"))


def _number(value: object, low: int, high: int) -> int | None:
    """An int within [low, high] from JSON (never a bool), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return None


def _said(data: dict[str, Any], node: str) -> tuple[Facts, list[str] | None]:
    """The facts an answer states about itself, each only if well formed, and its `addrs` as
    sent (None: not a list of text), which is what a `mac` covers."""
    listed = data.get("addrs")
    texts = listed if isinstance(listed, list) and all(isinstance(a, str) for a in listed) \
        else None
    where = addrs.canonical(texts[:MAX_FACT_ADDRESSES], loopback=True) if texts else []
    facts = Facts(node, _number(data.get("port"), 1, 65535),
                  _number(data.get("pid"), 1, 2**31 - 1), tuple(where))
    return facts, texts


def request(host: str, port: int, nonce: bytes) -> bytes:
    """The probe's HTTP/1.1 request for `host:port` (an IP address as text)."""
    return get(host, port, f"/info?nonce={nonce.hex()}")


def get(host: str, port: int, target: str, *, method: str = "GET") -> bytes:
    """An HTTP/1.1 `GET target` (or another `method`, without a body) of `host:port` (an IP
    address as text), closing after it."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return (
        f"{method} {target} HTTP/1.1\r\n"
        f"Host: {authority}\r\n"
        "User-Agent: k3net-probe\r\n"
        "Accept: application/json\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode("ascii")


def nonce_from_query(query: bytes) -> bytes | None:
    """The nonce of an /info query string (`nonce=<32 hex digits>`), or None if there is no
    well-formed one. Used by the answering side."""
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        if name == b"nonce" and len(value) == 2 * NONCE_BYTES:
            try:
                return bytes.fromhex(value.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                return None
    return None


# --- beats on a held connection ---------------------------------------------------------------

# A holder asks for beats with `GET /hold?nonce=<32 hex digits>&beat=<seconds>`; the agent that
# serves the hold then sends one line every `beat` seconds after its `held` mark:
#
#     beat <seq>[ <mac>]\n
#
# seq counts from 1; with a cluster key, mac is HMAC(key, nonce || label || node || NUL || seq),
# which only an agent of the cluster, answering as that node on this very connection (the
# holder's nonce), can make. A beat shows that the process the holder confirmed still runs: its
# event loop answers, not only its kernel. The lines may arrive inside HTTP chunks: anything on a
# line of its own that is not a beat is ignored.
_BEAT_LABEL = b"k3net-hold-beat-v1\0"
BEAT_MIN, BEAT_MAX = 1, 600  # the beat periods a holder may ask for, in whole seconds
_BEAT_LINE = 128  # a longer line is no beat (the rest of it is dropped)


def beat_mac(key: bytes, nonce: bytes, node: str, seq: int) -> str:
    """HMAC-SHA256(key, nonce || label || node || NUL || seq), in lower-case hex."""
    message = nonce + _BEAT_LABEL + node.encode("utf-8") + b"\0" + str(seq).encode("ascii")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def beat_line(seq: int, node: str, key: bytes | None, nonce: bytes | None) -> bytes:
    """The served side's beat number `seq` (with a mac when it has a key and the holder a
    nonce)."""
    if key is None or nonce is None:
        return f"beat {seq}\n".encode("ascii")
    return f"beat {seq} {beat_mac(key, nonce, node, seq)}\n".encode("ascii")


def beat_seconds(beat: float) -> int:
    """The beat period a holder asks for, for a wish of `beat` seconds: made whole and kept
    within BEAT_MIN..BEAT_MAX."""
    return min(BEAT_MAX, max(BEAT_MIN, round(beat)))


def hold_target(beat: float, nonce: bytes) -> str:
    """The request target of a hold that asks for a beat every `beat_seconds(beat)`."""
    return f"/hold?nonce={nonce.hex()}&beat={beat_seconds(beat)}"


def beat_from_query(query: bytes) -> int | None:
    """The beat period a /hold query asks for, in seconds, or None (none asked, or not a whole
    number within BEAT_MIN..BEAT_MAX)."""
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        if name == b"beat":
            if not (value.isdigit() and len(value) <= 4):
                return None
            seconds = int(value)
            return seconds if BEAT_MIN <= seconds <= BEAT_MAX else None
    return None


class BeatReader:
    """Sans-I/O reader of the beats a held connection brings (the part after the `held` mark).
    `feed(data)` returns how many good and how many bad beats the data completed: a good one
    counts up from the last and, when we have a key, carries the mac of `node` for our nonce."""

    def __init__(self, node: str, nonce: bytes, key: bytes | None) -> None:
        self.node, self.nonce, self.key = node, nonce, key
        self.seq = 0  # the last good beat's number
        self._rest = b""  # an incomplete line

    def feed(self, data: bytes) -> tuple[int, int]:
        lines = (self._rest + data).split(b"\n")
        rest = lines.pop()
        self._rest = rest if len(rest) <= _BEAT_LINE else b""
        good = bad = 0
        for line in lines:
            if not line.startswith(b"beat "):
                continue  # chunk framing, or anything else: not a beat
            if len(line) <= _BEAT_LINE and self._good(line[5:].split(b" ")):
                good += 1
            else:
                bad += 1
        return good, bad

    def _good(self, fields: list[bytes]) -> bool:
        if not fields[0].isdigit() or len(fields[0]) > 18:
            return False
        seq = int(fields[0])
        if seq <= self.seq:
            return False  # a repeat, or out of order
        if self.key is not None:
            if len(fields) != 2:
                return False
            expected = beat_mac(self.key, self.nonce, self.node, seq)
            if not hmac.compare_digest(fields[1], expected.encode("ascii")):
                return False
        self.seq = seq
        return True


# --- reading the answer ----------------------------------------------------------------------


# What AnswerReader tells h11 was sent (the bytes themselves go out from `request`).
_SENT = h11.Request(method="GET", target="/info", headers=[("Host", "probe")])
_END = h11.EndOfMessage()


class AnswerReader:
    """Sans-I/O reader of one HTTP/1.1 response. `feed(data)` returns True once nothing more is
    needed (the answer is complete, broken, or too long); `feed(b"")` means the peer closed."""

    def __init__(self, limit: int = MAX_ANSWER) -> None:
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=limit)
        # h11 must see the request go out before it accepts a response. (Built once: building
        # and checking a Request was half the reader's cost, one per probe.)
        self._conn.send(_SENT)
        self._conn.send(_END)
        self.limit = limit
        self.status: int | None = None
        self._body: list[bytes] = []
        self._size = 0
        self.error: str | None = None
        self.complete = False

    def feed(self, data: bytes) -> bool:
        if self.complete or self.error:
            return True
        try:
            self._conn.receive_data(data)
            while True:
                event = self._conn.next_event()
                if event is h11.NEED_DATA:
                    if not data:
                        self.error = "connection closed before the answer was complete"
                        return True
                    return False
                if isinstance(event, h11.Response):
                    self.status = event.status_code
                elif isinstance(event, h11.Data):
                    self._size += len(event.data)
                    if self._size > self.limit:
                        self.error = f"answer longer than {self.limit} bytes"
                        return True
                    self._body.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    self.complete = True
                    return True
                elif isinstance(event, h11.ConnectionClosed):
                    self.error = "connection closed before the answer was complete"
                    return True
        except h11.RemoteProtocolError as exc:
            self.error = f"not an HTTP answer ({exc})"
            return True

    @property
    def body(self) -> bytes:
        return b"".join(self._body)


def judge(
    status: int | None, body: bytes, *, probed: str, nonce: bytes, key: bytes | None
) -> Answer:
    """What an answer (status and body) says about the probed peer `probed`."""
    if status != 200:
        return Answer("unverified", detail=f"HTTP status {status} from /info")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return Answer("unverified", detail="/info answer is not JSON")
    node = data.get("node") if isinstance(data, dict) else None
    if not isinstance(node, str) or not node:
        return Answer("unverified", detail="/info answer names no node")
    shown = node[:64]
    if node != probed:
        return Answer("wrong-node", answered_by=shown, detail=f"{shown!r} answered")
    said, sent = _said(data, node)
    if key is None:
        # An open cluster: the peer's own answer, at an address where it answered as itself,
        # is its word on its port, pid and addresses (what mDNS or another agent announced is
        # not); a Go agent lists none, and then only the address that answered counts.
        return Answer("confirmed", answered_by=node, facts=said)
    mac = data.get("mac")
    if mac is not None:
        # Recomputed over the values as sent: a field it does not cover is not taken.
        raw_port, raw_pid = data.get("port"), data.get("pid")
        covered = (sent is not None and isinstance(raw_port, int | None)
                   and isinstance(raw_pid, int | None))
        if covered and _same_hex(mac, facts_mac(key, nonce, node, raw_port, raw_pid,
                                                sent or [])):
            return Answer("confirmed", answered_by=node, facts=said)
        return Answer("unauthenticated", answered_by=node, detail="wrong mac of the cluster key")
    given = data.get("proof")
    if not isinstance(given, str):
        return Answer("unauthenticated", answered_by=node, detail="no proof of the cluster key")
    if not _same_hex(given, proof(key, nonce, node)):
        return Answer("unauthenticated", answered_by=node, detail="wrong proof of the cluster key")
    # A proof of the name alone (an older agent): nothing else in the answer is proven.
    return Answer("confirmed", answered_by=node, facts=Facts(node))


def judge_reader(reader: AnswerReader, *, probed: str, nonce: bytes, key: bytes | None) -> Answer:
    """`judge` for what an AnswerReader collected."""
    if reader.error is not None:
        return Answer("unverified", detail=reader.error)
    if not reader.complete:
        return Answer("unverified", detail="no complete answer")
    return judge(reader.status, reader.body, probed=probed, nonce=nonce, key=key)


# --- the key file ----------------------------------------------------------------------------


class KeyFileError(Exception):
    """A cluster key file that cannot be used. The message is one line naming the file."""


def key_from_file(path: str, mode: int, data: bytes) -> bytes:
    """The cluster key held in a file, given the file's `st_mode` and its content. Rules:

    - a regular file (not a directory, device or pipe);
    - private: no group or other permission bits (`chmod 600`), as ssh asks of a private key,
      since a key others can read proves nothing (`k3net.core.private.exposure`, the rule the
      config file holding a store password follows too);
    - the key is the content without leading and trailing whitespace (so a final newline, as
      `echo` and editors write it, does not change the key between machines), and it holds at
      least MIN_KEY_BITS bits judged by its alphabet (`k3net.core.private.key_bits`: 32 hex
      digits, 22 base64 characters, 20 other printable characters or 16 raw bytes).
    """
    if not stat.S_ISREG(mode):
        raise KeyFileError(f"cluster key file {path}: not a regular file")
    problem = exposure(mode, path)
    if problem:
        raise KeyFileError(f"cluster key file {path}: {problem}")
    key = data.strip()
    if not key:
        raise KeyFileError(f"cluster key file {path}: is empty")
    bits = key_bits(key)
    if bits < MIN_KEY_BITS:
        raise KeyFileError(
            f"cluster key file {path}: key holds at most {int(bits)} bits, needs at least "
            f"{MIN_KEY_BITS} (make one with: k3net keygen --force {path})"
        )
    return key


def read_key_file(path: str) -> bytes:
    """Read and check a cluster key file (`key_from_file`); KeyFileError if it is unusable."""
    try:
        # (symlinks are followed: a secret mounted by an orchestrator often is one)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KeyFileError(f"cluster key file {path}: does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cluster key file {path}: cannot open: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        data = os.read(fd, 64 * 1024) if stat.S_ISREG(mode) else b""
    except OSError as exc:
        raise KeyFileError(f"cluster key file {path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    return key_from_file(path, mode, data)

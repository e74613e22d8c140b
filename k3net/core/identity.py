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
| HTTP 200, a JSON object whose `node` is P; with a key: a valid `proof` | confirmed |
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
from typing import Literal

import attrs
import h11

from k3net.core.private import MIN_KEY_BITS, exposure, key_bits

NONCE_BYTES = 16
# A Go agent's /info answer is about 200 bytes, k3net's about 400; anything this long is no
# agent's answer, and reading it would only cost memory.
MAX_ANSWER = 16 * 1024

Verdict = Literal["confirmed", "wrong-node", "unauthenticated", "unverified"]


@attrs.frozen
class Answer:
    """What one address said, judged."""

    outcome: Verdict
    answered_by: str | None = None  # the `node` the answer named, when it named one
    detail: str = ""  # why, for logs and `k3net peers` (never the key, never the proof)


# --- the request and the proof -------------------------------------------------------------


def proof(key: bytes, nonce: bytes, node: str) -> str:
    """HMAC-SHA256(key, nonce || node), in lower-case hex."""
    return hmac.new(key, nonce + node.encode("utf-8"), hashlib.sha256).hexdigest()


def request(host: str, port: int, nonce: bytes) -> bytes:
    """The probe's HTTP/1.1 request for `host:port` (an IP address as text)."""
    return get(host, port, f"/info?nonce={nonce.hex()}")


def get(host: str, port: int, target: str) -> bytes:
    """An HTTP/1.1 `GET target` of `host:port` (an IP address as text), closing after it."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return (
        f"GET {target} HTTP/1.1\r\n"
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


# --- reading the answer ----------------------------------------------------------------------


class AnswerReader:
    """Sans-I/O reader of one HTTP/1.1 response. `feed(data)` returns True once nothing more is
    needed (the answer is complete, broken, or too long); `feed(b"")` means the peer closed."""

    def __init__(self, limit: int = MAX_ANSWER) -> None:
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=limit)
        # h11 must see the request go out before it accepts a response.
        self._conn.send(h11.Request(method="GET", target="/info", headers=[("Host", "probe")]))
        self._conn.send(h11.EndOfMessage())
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
    if key is None:
        return Answer("confirmed", answered_by=node)
    given = data.get("proof")
    if not isinstance(given, str):
        return Answer("unauthenticated", answered_by=node, detail="no proof of the cluster key")
    if not hmac.compare_digest(given.lower().encode("ascii", "replace"),
                               proof(key, nonce, node).encode("ascii")):
        return Answer("unauthenticated", answered_by=node, detail="wrong proof of the cluster key")
    return Answer("confirmed", answered_by=node)


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

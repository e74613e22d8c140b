"""whois: ask whoever listens at an address and port who it is, with the identity check of the
probes (`k3net.core.identity`): one `GET /info?nonce=...`, the answer judged by
`k3net.core.discovery.found_in_answer`. Used by the join and scan tasks, which know an address
but not yet a name (a probe checks a name it already knows: `k3net.tasks.probe`).

No timeout here: the caller bounds each call (`trio.move_on_after(probe_timeout)`), as for a
probe.
"""

from __future__ import annotations

import secrets
import socket

import attrs
import trio

from k3net.core.discovery import Found, NotFound, found_in_answer
from k3net.core.identity import NONCE_BYTES, AnswerReader, request

_READ_SIZE = 4096


@attrs.frozen
class Unreachable:
    """Nothing answered at `address`: refused (nothing listens), or no route, or no host."""

    refused: bool
    detail: str


Outcome = Found | NotFound | Unreachable


async def whois(address: str, port: int, *, key: bytes | None) -> Outcome:
    """Connect to `address:port` (an IP address as text), ask /info, judge the answer."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    nonce = secrets.token_bytes(NONCE_BYTES)
    reader = AnswerReader()
    with trio.socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            await sock.connect((address, port))
        except ConnectionRefusedError:
            return Unreachable(True, f"{address}:{port}: connection refused")
        except OSError as exc:
            return Unreachable(False, f"{address}:{port}: {exc.strerror or exc}")
        stream = trio.SocketStream(sock)
        try:
            await stream.send_all(request(address, port, nonce))
            while not reader.feed(await stream.receive_some(_READ_SIZE)):
                pass
        except (OSError, trio.BrokenResourceError) as exc:
            return NotFound("not-agent", f"{address}:{port}: connection broke: {exc}")
    if reader.error is not None or not reader.complete:
        return NotFound("not-agent", f"{address}:{port}: {reader.error or 'no complete answer'}")
    return found_in_answer(reader.status, reader.body, address=address, port=port, nonce=nonce,
                           key=key)

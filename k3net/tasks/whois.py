"""whois: ask whoever listens at an address and port who it is, with the identity check of the
probes (`k3net.core.identity`): one `GET /info?nonce=...`, the answer judged by
`k3net.core.discovery.found_in_answer`. Used by the join and scan tasks, which know an address
but not yet a name (a probe checks a name it already knows: `k3net.tasks.probe`).

No timeout here: the caller bounds each call (`trio.move_on_after(probe_timeout)`), as for a
probe.
"""

from __future__ import annotations

import secrets

import attrs
import trio

from k3net.core import addresses as addrs
from k3net.core.discovery import Found, Listed, NotFound, found_in_answer, listed_peers
from k3net.core.identity import NONCE_BYTES, AnswerReader, get, request
from k3net.tasks.tcp import ATTEMPTS, connect, exchange

# The largest /peers answer read: MAX_LISTED peers of about 150 bytes each, with room.
_PEERS_LIMIT = 1024 * 1024


@attrs.frozen
class Unreachable:
    """Nothing answered at `address`: refused (nothing listens), or no route, or no host."""

    refused: bool
    detail: str


Outcome = Found | NotFound | Unreachable


async def whois(address: str, port: int, *, key: bytes | None, attempts: int = ATTEMPTS
                ) -> Outcome:
    """Connect to `address:port` (an IP address as text), ask /info, judge the answer.
    `attempts`: connection attempts at most (`k3net.tasks.tcp`)."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    reader = AnswerReader()
    try:
        sock = await connect(address, port, attempts=attempts)
    except ConnectionRefusedError:
        return Unreachable(True, f"{address}:{port}: connection refused")
    except OSError as exc:
        return Unreachable(False, f"{address}:{port}: {exc.strerror or exc}")
    with sock:
        try:
            await exchange(trio.SocketStream(sock), request(address, port, nonce), reader)
        except (OSError, trio.BrokenResourceError) as exc:
            return NotFound("not-agent", f"{address}:{port}: connection broke: {exc}")
    if reader.error is not None or not reader.complete:
        return NotFound("not-agent", f"{address}:{port}: {reader.error or 'no complete answer'}")
    return found_in_answer(reader.status, reader.body, address=address, port=port, nonce=nonce,
                           key=key)


async def peers_of(address: str, port: int) -> list[Listed]:
    """The peers the agent at `address:port` reaches now (its `/peers`); [] if it cannot say."""
    reader = AnswerReader(limit=_PEERS_LIMIT)
    try:
        with await connect(address, port) as sock:
            await exchange(trio.SocketStream(sock), get(address, port, "/peers"), reader)
    except (OSError, trio.BrokenResourceError):
        return []
    if reader.error is not None or not reader.complete:
        return []
    asked = addrs.parse(address)
    return listed_peers(reader.status, reader.body,
                        loopback=asked is not None and asked.is_loopback)

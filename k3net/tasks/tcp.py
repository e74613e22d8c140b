"""tcp: the agent's TCP client side: connect to a peer (with attempts staggered, for LANs that
lose packets) and ask it one HTTP request. Used by the probes, the held connections, whois and
/peers.

Why staggered attempts: the kernel sends a connection's first SYN again only after a second
(Linux's initial retransmission timeout), longer than a probe's whole budget (`--probe-timeout`,
700 ms by default). On a LAN that drops packets (a busy Wi-Fi, a bad cable, a switch under
load), one lost SYN or SYN-ACK would make the probe fail, and at 20 % loss that is a third of
all probes: enough for healthy nodes to expire now and then. So when an attempt has not
connected after `STAGGER`, another starts beside it, up to `ATTEMPTS` in all; the first to
connect wins and the others are closed. On a healthy LAN the first connects within a
millisecond and nothing more is sent. Any answer of the host (a refusal, an unreachable error)
ends the attempts at once: only silence is worth another try.
"""

from __future__ import annotations

import socket

import trio

from k3net.core.identity import AnswerReader

# Connection attempts in parallel at most, and how long each waits before the next starts
# (module docstring). After a delay the attempts cover the LAN's round trip many times over.
ATTEMPTS = 4
STAGGER = 0.2

_READ_SIZE = 4096


async def connect(address: str, port: int, *, attempts: int = ATTEMPTS) -> trio.socket.SocketType:
    """A socket connected to `address:port` (an IP address as text). Raises the OSError of the
    first attempt the host answered with (ConnectionRefusedError: nothing listens). No timeout:
    the caller bounds the call, and every attempt ends with it."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    connected: trio.socket.SocketType | None = None
    error: OSError | None = None

    async def attempt(delay: float, done: trio.CancelScope) -> None:
        nonlocal connected, error
        await trio.sleep(delay)
        sock = trio.socket.socket(family, socket.SOCK_STREAM)
        try:
            await sock.connect((address, port))
        except OSError as exc:
            sock.close()
            if connected is None and error is None:
                error = exc
            done.cancel()
            return
        except BaseException:
            sock.close()
            raise
        if connected is None and error is None:
            connected = sock
            done.cancel()
        else:
            sock.close()

    try:
        async with trio.open_nursery() as nursery:
            for i in range(max(1, attempts)):
                nursery.start_soon(attempt, i * STAGGER, nursery.cancel_scope)
    except BaseException:
        if connected is not None:
            connected.close()  # won just as the caller's deadline came: nobody will use it
        raise
    if connected is not None:
        return connected
    assert error is not None  # the attempts end only with an answer, or the caller's deadline
    raise error


async def exchange(stream: trio.SocketStream, message: bytes, reader: AnswerReader) -> None:
    """Send one HTTP request and feed the answer to `reader` until it has what it needs (the
    probes, whois and /peers all ask this way)."""
    await stream.send_all(message)
    while not reader.feed(await stream.receive_some(_READ_SIZE)):
        pass

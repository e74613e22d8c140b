"""probe: TCP-connect to every known peer, concurrently and bounded, with jitter.

A peer is alive if a TCP connection to its advertised port opens on any of its addresses. The
table asks for a probe at once when a peer appears or says goodbye (`ProbeRequest`); every
other peer is probed once per round, spread over the round with jitter so that agents started
together do not probe in lock step.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import trio

from k3net.core.messages import ProbeResult


async def probe_once(name: str, addresses: Sequence[str], port: int) -> ProbeResult:
    """Connect to `port` on each address in turn until one answers. The caller bounds the time
    (`with trio.move_on_after(timeout)`); a cancelled probe returns nothing."""
    start = trio.current_time()
    errors: list[str] = []
    for address in addresses:
        try:
            stream = await trio.open_tcp_stream(address, port)
        except OSError as exc:
            errors.append(f"{address}: {exc.strerror or exc}")
            continue
        await stream.aclose()
        return ProbeResult(name, True, trio.current_time() - start, address=address)
    return ProbeResult(
        name, False, trio.current_time() - start, error="; ".join(errors) or "no address"
    )


async def probe_with_timeout(
    name: str, addresses: Sequence[str], port: int, timeout: float
) -> ProbeResult:
    """One probe; a peer that does not answer within `timeout` failed."""
    with trio.move_on_after(timeout):
        return await probe_once(name, addresses, port)
    return ProbeResult(name, False, timeout, error=f"timed out after {timeout:g}s")


def jitter(interval: float, rng: random.Random) -> float:
    """A delay in [0, interval) to spread one round's probes."""
    return rng.random() * interval

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
from k3net.core.table import Forget, ProbeNow, ProbeTarget
from k3net.metrics import Metrics


def _refused(exc: OSError) -> bool:
    """trio reports a failed connect as an OSError caused by a group of the attempts' errors."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        return all(isinstance(e, ConnectionRefusedError) for e in cause.exceptions)
    return isinstance(exc, ConnectionRefusedError)


async def probe_once(name: str, addresses: Sequence[str], port: int) -> ProbeResult:
    """Connect to `port` on each address in turn until one answers. The caller bounds the time
    (`with trio.move_on_after(timeout)`); a cancelled probe returns nothing."""
    start = trio.current_time()
    errors: list[str] = []
    refused = 0
    for address in addresses:
        try:
            stream = await trio.open_tcp_stream(address, port)
        except OSError as exc:
            refused += _refused(exc)
            errors.append(f"{address}: {exc.strerror or exc}")
            continue
        await stream.aclose()
        return ProbeResult(
            name, "unverified", trio.current_time() - start, address=address, started=start
        )
    return ProbeResult(
        name, "refused" if addresses and refused == len(addresses) else "timeout",
        trio.current_time() - start, error="; ".join(errors) or "no address", started=start,
    )


async def probe_with_timeout(
    name: str, addresses: Sequence[str], port: int, timeout: float  # noqa: ASYNC109
) -> ProbeResult:
    """One probe; a peer that does not answer within `timeout` failed. (Here the timeout is
    not a caller's deadline but what defines a failed probe: --probe-timeout.)"""
    start = trio.current_time()
    with trio.move_on_after(timeout):
        return await probe_once(name, addresses, port)
    return ProbeResult(
        name, "timeout", timeout, error=f"timed out after {timeout:g}s", started=start
    )


def jitter(interval: float, rng: random.Random) -> float:
    """A delay in [0, interval) to spread one round's probes."""
    return rng.random() * interval


class Prober:
    """Probes every target once per round, and a target at once when the table asks.

    A round starts every `interval` (jittered by up to 10% so that agents started together
    drift apart); within a round each probe waits a random moment of up to `spread` seconds, so
    that hundreds of peers are not all dialled in the same millisecond. At most `limit` probes
    run at once, and never two at once for the same peer.
    """

    def __init__(
        self,
        *,
        interval: float,
        timeout: float,
        metrics: Metrics,
        limit: int = 64,
        rng: random.Random | None = None,
    ) -> None:
        self.interval = interval
        self.timeout = timeout
        self.spread = min(1.0, interval / 10)
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.targets: dict[str, ProbeTarget] = {}
        self._limiter = trio.CapacityLimiter(limit)
        self._inflight: set[str] = set()
        self.last_round: float = 0.0  # seconds the last full round took

    async def run(
        self,
        inbox: trio.MemoryReceiveChannel[ProbeNow | Forget],
        results: trio.MemorySendChannel[ProbeResult],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with results, trio.open_nursery() as nursery:
            nursery.start_soon(self._rounds, nursery, results)
            task_status.started()
            async with inbox:
                async for msg in inbox:
                    if isinstance(msg, Forget):
                        self.targets.pop(msg.name, None)
                    else:
                        self.targets[msg.target.name] = msg.target
                        nursery.start_soon(self._probe, msg.target, None, results)
            nursery.cancel_scope.cancel()

    async def _rounds(
        self, nursery: trio.Nursery, results: trio.MemorySendChannel[ProbeResult]
    ) -> None:
        while True:
            await trio.sleep(self.interval * (0.9 + 0.2 * self.rng.random()))
            start = trio.current_time()
            async with trio.open_nursery() as round_:
                for target in list(self.targets.values()):
                    round_.start_soon(self._probe, target, jitter(self.spread, self.rng), results)
            self.last_round = trio.current_time() - start

    async def _probe(
        self,
        target: ProbeTarget,
        delay: float | None,
        results: trio.MemorySendChannel[ProbeResult],
    ) -> None:
        """One probe; `delay` None is an immediate probe, asked for by the table, which runs
        even if a round's probe of that peer is under way (it may predate a goodbye)."""
        if delay is not None:
            await trio.sleep(delay)
            if target.name in self._inflight:
                return
        self._inflight.add(target.name)
        try:
            async with self._limiter:
                result = await probe_with_timeout(
                    target.name, target.addresses, target.port, self.timeout
                )
        finally:
            self._inflight.discard(target.name)
        self.metrics.probes.labels(result=result.outcome).inc()
        self.metrics.probe_latency.observe(result.latency)
        try:
            await results.send(result)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the table is gone: the agent is stopping

"""probe: ask every known peer who it is, concurrently and bounded, each at its own phase.

A probe of peer P is an identity probe (`k3net.core.identity`): on each of P's addresses it
opens TCP to P's port, sends `GET /info?nonce=...` and reads who answers. Every address is tried
at once, each with its own `timeout`, so a silent first address does not hide a working second
one; the first confirmed answer wins and ends the probe. Otherwise the outcome is the most
telling of the addresses' answers, in this order:

    confirmed > unauthenticated > wrong-node > unverified > refused > timeout

`refused` only if every address that counts refused the connection (nothing listens: the agent
died while its host lives); any timeout or unreachable address makes it `timeout` (absence of an
answer is no evidence).

This machine's own addresses (`own`, kept current by the address watcher) are no evidence about
another machine: on our own listen port such an address is not even dialled (we would only
reach ourselves, as with a bridge address every host repeats, like virbr0's 192.168.122.1), and
on any other port only a confirmed answer counts (an agent of that name really runs on this
machine: several agents on one host, `--interface lo`); a refusal, timeout, wrong node or
non-agent there is ignored. A peer with nothing but such addresses gets `timeout`.

The table asks for a probe at once when a peer appears or says goodbye (`ProbeNow`), or after a
delay (a re-probe that confirms a refusal); besides, every peer is probed once per interval at a
phase of its own (see `Prober`).

Held connections: once a peer is confirmed at an address, a connection to its `GET /hold` is
kept open there (an agent answers it and sends nothing more while it runs). When the peer's
process dies, its kernel closes that connection at once, and the peer is probed at once: a crash
on a living host is seen in about a second (the probe, then the table's re-probe), whatever the
probe interval, even by an agent that is the only one to probe it. A link cut or a dead host
closes nothing; the probes and expiry decide as before. A peer that does not answer /hold (a Go
agent) is only probed. At most `MAX_HELD` peers are held, so an agent of a large LAN keeps its
file descriptors.
"""

from __future__ import annotations

import logging
import random
import secrets
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Literal

import attrs
import trio

from k3net.core import addresses as addrs
from k3net.core.identity import NONCE_BYTES, Answer, AnswerReader, get, judge_reader, request
from k3net.core.messages import ProbeOutcome, ProbeResult
from k3net.core.table import Forget, ProbeNow, ProbeTarget
from k3net.metrics import Metrics
from k3net.tasks.tcp import connect, exchange

log = logging.getLogger("k3net.probe")

# Bytes asked of the socket at a time: a whole /info answer fits in one read.
_READ_SIZE = 4096

# Peers whose /hold is held open at most (module docstring): one file descriptor each here and
# one at the peer.
MAX_HELD = 256
# What an agent's /hold sends first (k3net.web.app), after its head.
_HOLD_MARK = b"held\n"
# A hold that ends sooner than this after it was set up is not tried again for that target:
# probes only (a peer that closes at once must not be asked in a loop).
MIN_HOLD = 5.0

# How a held connection ended (Prober._held_until_closed).
_HoldEnd = Literal["closed", "refused", "failed", "no-hold"]

# Most telling first (module docstring); refused and timeout are decided apart.
_RANK: dict[str, int] = {"confirmed": 0, "unauthenticated": 1, "wrong-node": 2, "unverified": 3}


@attrs.frozen
class Own:
    """What a probe must not take for a peer: this machine's addresses and our listen port."""

    addresses: frozenset[str] = frozenset()
    port: int | None = None

    @classmethod
    def of(cls, addresses: Iterable[str], port: int | None) -> Own:
        parsed = (addrs.parse(a) for a in addresses)
        return cls(frozenset(str(ip) for ip in parsed if ip is not None), port)


@attrs.frozen
class _Tried:
    """One address's result: an answer, or how the connection failed."""

    address: str
    answer: Answer | None = None  # None: no connection
    refused: bool = False
    error: str = ""


async def _ask(
    address: str, port: int, name: str, nonce: bytes, key: bytes | None,
    timeout: float,  # noqa: ASYNC109  (not a caller's deadline: --probe-timeout defines failure)
) -> _Tried:
    """Connect to one address, ask /info, judge the answer; all within `timeout`. A connection
    that was accepted but never answered is an answer of its own (unverified)."""
    connected = False
    reader = AnswerReader()
    with trio.move_on_after(timeout):
        try:
            sock = await connect(address, port)
        except ConnectionRefusedError:
            return _Tried(address, refused=True, error=f"{address}: connection refused")
        except OSError as exc:
            return _Tried(address, error=f"{address}: {exc.strerror or exc}")
        connected = True
        with sock:
            try:
                await exchange(trio.SocketStream(sock), request(address, port, nonce), reader)
            except (OSError, trio.BrokenResourceError) as exc:
                reader.error = f"connection broke: {exc}"
        return _Tried(address, judge_reader(reader, probed=name, nonce=nonce, key=key))
    if connected:
        return _Tried(address, Answer(
            "unverified", detail=f"{address}: accepted, but no answer within {timeout:g}s"))
    return _Tried(address, error=f"{address}: timed out after {timeout:g}s")


def _decide(name: str, tried: Sequence[_Tried], skipped: int) -> tuple[ProbeOutcome, _Tried | None, str]:
    """The probe's outcome from what every counted address gave (module docstring)."""
    answered = [t for t in tried if t.answer is not None]
    if answered:
        best = min(answered, key=lambda t: _RANK[t.answer.outcome])  # type: ignore[union-attr]
        assert best.answer is not None
        details = "; ".join(f"{t.address}: {t.answer.detail}" for t in answered
                            if t.answer is not None and t.answer.detail and t is not best)
        detail = best.answer.detail if best.answer.outcome != "confirmed" else ""
        return best.answer.outcome, best, "; ".join(x for x in (detail, details) if x)
    errors = [t.error for t in tried]
    if skipped:
        errors.append(f"{skipped} address(es) of this machine not counted")
    if tried and all(t.refused for t in tried):
        return "refused", None, "; ".join(errors)
    return "timeout", None, "; ".join(errors) or "no address"


async def probe_peer(
    name: str,
    addresses: Sequence[str],
    port: int,
    timeout: float,  # noqa: ASYNC109  (what defines a failed probe: --probe-timeout)
    *,
    key: bytes | None = None,
    own: Own = Own(),
) -> ProbeResult:
    """One identity probe of peer `name` on every address at once, each within `timeout`;
    the first confirmed answer ends it. See the module docstring for the outcome."""
    start = trio.current_time()
    nonce = secrets.token_bytes(NONCE_BYTES)
    tried: list[_Tried] = []
    skipped = 0

    async def one(address: str, mine: bool, scope: trio.CancelScope) -> None:
        nonlocal skipped
        result = await _ask(address, port, name, nonce, key, timeout)
        confirmed = result.answer is not None and result.answer.outcome == "confirmed"
        if mine and not confirmed:
            skipped += 1  # an own address is no evidence about another machine
            return
        tried.append(result)
        if confirmed:
            scope.cancel()  # the first confirmed answer wins

    async with trio.open_nursery() as nursery:
        for address in dict.fromkeys(addresses):
            ip = addrs.parse(address)
            if ip is None:
                continue
            mine = str(ip) in own.addresses
            if mine and port == own.port:
                skipped += 1  # that is us: never dialled
                continue
            nursery.start_soon(one, str(ip), mine, nursery.cancel_scope)
    outcome, best, error = _decide(name, tried, skipped)
    return ProbeResult(
        name, outcome, trio.current_time() - start,
        address=best.address if best else None, error=error, started=start,
        answered_by=best.answer.answered_by if best and best.answer and outcome == "wrong-node"
        else None,
    )


async def probe_with_timeout(
    name: str, addresses: Sequence[str], port: int, timeout: float,  # noqa: ASYNC109
    *, key: bytes | None = None, own: Own = Own(),
) -> ProbeResult:
    """`probe_peer`, under the name `k3net peers` knows."""
    return await probe_peer(name, addresses, port, timeout, key=key, own=own)


class Prober:
    """Probes every target once per `interval`, each at its own phase, and a target at once (or
    after a given delay) when the table asks.

    Each peer gets a random phase in the interval when it first becomes a target, drawn by each
    agent for itself: agents started together do not probe in step, and with k agents probing a
    peer, one of them reaches it every interval/k on average, so a peer that dies is found
    sooner than by rounds in lock step. The load on the LAN is smooth instead of a burst per
    round. At most `limit` probes run at once, and never two scheduled ones for the same peer.
    """

    def __init__(
        self,
        *,
        interval: float,
        timeout: float,
        metrics: Metrics,
        key: bytes | None = None,
        own: Own = Own(),
        limit: int = 64,
        rng: random.Random | None = None,
    ) -> None:
        self.interval = interval
        self.key = key  # the cluster key, if any: answers must prove it
        self.own = own  # replaced by set_own when this machine's addresses change
        self.timeout = timeout
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.targets: dict[str, ProbeTarget] = {}
        self._schedules: dict[str, trio.CancelScope] = {}
        self._limiter = trio.CapacityLimiter(limit)
        self._inflight: Counter[str] = Counter()  # probes under way, by peer
        # Held connections by peer: where, and the scope that releases it (module docstring);
        # and the targets that do not answer /hold.
        self._held: dict[str, tuple[str, int, trio.CancelScope]] = {}
        self._no_hold: set[ProbeTarget] = set()
        self._open: set[trio.CancelScope] = set()  # the holds set up and open now (the gauge)
        self._nursery: trio.Nursery | None = None

    def set_own(self, addresses: Iterable[str]) -> None:
        """This machine's addresses changed (the address watcher): probes from now on ignore
        the new set. Our listen port stays."""
        self.own = Own.of(addresses, self.own.port)

    async def run(
        self,
        inbox: trio.MemoryReceiveChannel[ProbeNow | Forget],
        results: trio.MemorySendChannel[ProbeResult],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with results, trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            async with inbox:
                async for msg in inbox:
                    if isinstance(msg, Forget):
                        self.targets.pop(msg.name, None)
                        schedule = self._schedules.pop(msg.name, None)
                        if schedule is not None:
                            schedule.cancel()
                        self._release(msg.name)
                        continue
                    name = msg.target.name
                    if msg.delay == 0:
                        self._no_hold.discard(msg.target)  # seen anew (restarted?): try again
                    held = self._held.get(name)
                    if held is not None and (held[0] not in msg.target.addresses
                                             or held[1] != msg.target.port):
                        self._release(name)  # it moved: held again once confirmed there
                    self.targets[name] = msg.target
                    if name not in self._schedules:
                        self._schedules[name] = scope = trio.CancelScope()
                        nursery.start_soon(self._every_interval, name, scope, results)
                    nursery.start_soon(self._asked, msg.target, msg.delay, results)
            nursery.cancel_scope.cancel()

    async def _every_interval(
        self, name: str, scope: trio.CancelScope, results: trio.MemorySendChannel[ProbeResult]
    ) -> None:
        """Probe `name` once per interval at its own phase, until it is forgotten."""
        with scope:
            due = trio.current_time() + self.rng.random() * self.interval
            while True:
                if due <= trio.current_time():
                    due = trio.current_time()  # fell behind (a slow probe): no burst to catch up
                await trio.sleep_until(due)
                due += self.interval
                target = self.targets.get(name)
                if target is None:
                    return
                if name not in self._inflight:
                    await self._probe(target, results)

    async def _asked(
        self, target: ProbeTarget, delay: float, results: trio.MemorySendChannel[ProbeResult]
    ) -> None:
        """A probe the table asked for. It runs even if a scheduled probe of that peer is under
        way: that one may predate a goodbye or a restart."""
        if delay > 0:
            await trio.sleep(delay)
            if self.targets.get(target.name) != target:
                return  # forgotten, or replaced by a newer target meanwhile
        await self._probe(target, results)

    async def _probe(
        self, target: ProbeTarget, results: trio.MemorySendChannel[ProbeResult]
    ) -> None:
        self._inflight[target.name] += 1
        try:
            async with self._limiter:
                result = await probe_peer(
                    target.name, target.addresses, target.port, self.timeout,
                    key=self.key, own=self.own,
                )
        finally:
            self._inflight[target.name] -= 1
            if not self._inflight[target.name]:
                del self._inflight[target.name]
        self.metrics.probes.labels(result=result.outcome).inc()
        self.metrics.probe_latency.observe(result.latency)
        if result.outcome == "confirmed" and result.address:
            self._maybe_hold(target, result.address, results)
        try:
            await results.send(result)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the table is gone: the agent is stopping

    # --- held connections (module docstring) ------------------------------------------------

    def _maybe_hold(self, target: ProbeTarget, address: str,
                    results: trio.MemorySendChannel[ProbeResult]) -> None:
        name = target.name
        if (self._nursery is None or name in self._held or target in self._no_hold
                or self.targets.get(name) != target or len(self._held) >= MAX_HELD):
            return
        scope = trio.CancelScope()
        self._held[name] = (address, target.port, scope)
        self._nursery.start_soon(self._hold, target, address, scope, results)

    def held(self) -> dict[str, str]:
        """The peers whose /hold is held open now, by name: the address held (for /peers)."""
        return {name: address for name, (address, _port, scope) in self._held.items()
                if scope in self._open}

    def _release(self, name: str) -> None:
        held = self._held.pop(name, None)
        if held is not None:
            held[2].cancel()
        self._no_hold = {t for t in self._no_hold if t.name != name}

    async def _hold(self, target: ProbeTarget, address: str, scope: trio.CancelScope,
                    results: trio.MemorySendChannel[ProbeResult]) -> None:
        """Hold `target`'s /hold open at `address`; when the peer closes it, probe at once."""
        ended: _HoldEnd = "failed"
        began = trio.current_time()
        with scope:
            ended = await self._held_until_closed(target, address, scope)
        self._open.discard(scope)
        self.metrics.held.set(len(self._open))
        if self._held.get(target.name, (None, None, None))[2] is scope:
            del self._held[target.name]
        if scope.cancelled_caught:
            return  # released: forgotten, or moved
        if ended == "no-hold":
            log.debug("no held connection to %s at %s: probes only", target.name, address)
            self._no_hold.add(target)  # no /hold there (a Go agent): probes only
            return
        if ended == "failed":
            # No answer in time (a LAN losing packets, a busy peer): no evidence of anything.
            # Tried again after the next confirmed probe.
            log.debug("could not hold a connection to %s at %s", target.name, address)
            return
        if ended == "closed":
            log.debug("held connection to %s at %s closed: probing it now", target.name, address)
            self.metrics.held_closed.inc()
            if trio.current_time() - began < MIN_HOLD:
                self._no_hold.add(target)  # closed at once: probes only, never a loop of holds
        else:
            log.debug("hold refused by %s at %s: probing it now", target.name, address)
        # Probed even if a probe is under way: that one began before the close, and may end
        # without a word about it (a connection the crash broke proves nothing).
        now = self.targets.get(target.name)
        if now is not None:
            await self._probe(now, results)

    async def _held_until_closed(self, target: ProbeTarget, address: str,
                                 scope: trio.CancelScope) -> _HoldEnd:
        """How a hold of `target` at `address` ended: `closed` by the peer once set up; or never
        set up: `refused` (nothing listens any more: it died since its probe), `failed` (no
        answer in time), `no-hold` (something answered, but not with an agent's hold)."""
        try:
            with trio.fail_after(self.timeout):
                sock = await connect(address, target.port)
        except ConnectionRefusedError:
            return "refused"
        except (OSError, trio.TooSlowError):
            return "failed"
        with sock:
            stream = trio.SocketStream(sock)
            try:
                with trio.fail_after(self.timeout):
                    await stream.send_all(get(address, target.port, "/hold"))
                    head = b""
                    # An agent's hold: 200, then a first piece of the body that says so. Any
                    # other answer (a Go agent's 404, a web server's page) is no hold.
                    while _HOLD_MARK not in head and len(head) < _READ_SIZE:
                        chunk = await stream.receive_some(_READ_SIZE)
                        if not chunk:
                            return "no-hold"
                        head += chunk
            except (OSError, trio.BrokenResourceError):
                return "no-hold"
            except trio.TooSlowError:
                return "failed"
            if not head.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 ")) or _HOLD_MARK not in head:
                return "no-hold"
            self._open.add(scope)
            self.metrics.held.set(len(self._open))
            try:
                while await stream.receive_some(_READ_SIZE):
                    pass  # nothing more is sent while the peer runs
            except (OSError, trio.BrokenResourceError):
                pass  # reset: closed all the same
        return "closed"

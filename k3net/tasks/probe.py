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

This machine's own addresses (`own`, read from their owner at every probe: they change) are no
evidence about another machine: on our own listen port such an address is not even dialled (we
would only reach ourselves, as with a bridge address every host repeats, like virbr0's
192.168.122.1), and on any other port only a confirmed answer counts (an agent of that name
really runs on this machine: several agents on one host, `--interface lo`); a refusal, timeout,
wrong node or non-agent there is ignored. A peer with nothing but such addresses gets `timeout`.

The table asks for a probe at once when a peer appears or says goodbye (`ProbeNow`), or after a
delay (a re-probe that confirms a refusal), and says where a peer is asked from then on when an
answer proved other addresses than it was asked at (`Retarget`: the table owns the target, the
prober only follows it); besides, every peer is probed once per interval at a phase of its own
(see `Prober`), and a held peer that answered once per lastSeen refresh (`held_interval`).

Bounds (`k3net.limits`): a peer is probed at its first `ADDRESSES_PER_PEER` addresses in the
canonical order (IPv4 first), whatever its source announced, and every probe shares one budget
of `PROBE_SOCKETS` sockets (`tcp.Sockets`): an address waits for a socket before its timeout
starts, so a flood of peers with unreachable addresses slows the probes down but never makes
one fail, nor the agent run out of file descriptors. Both count in k3net_limit_hits_total.

Once a peer is confirmed, its /hold is held open (`k3net.tasks.hold`): when its process dies,
the held connection closes and the peer is probed at once. Its host vanishing shows too (the
hold goes silent), so what only a probe still shows of a held peer is that its process answers
as itself, which its Node needs once per refresh of lastSeen: a held peer whose last probe
confirmed it is probed every `held_interval` (33.75 s at the defaults instead of 15 s), any
other peer every interval. And a held peer's process shows that it runs by itself: its hold
brings a beat every interval (`k3net.core.identity`, proved with the cluster key for this very
connection), so a scheduled probe of a held peer whose last good beat is fresh
(`Holds.beat_window`) is not made at all: the beat stands in for it, as a confirmation dated at
the beat, with the facts the peer proved in its last probe (`_vouched`, counted in
k3net_probes_spared_total). What a held peer says about itself changes only with its
announcement, and a changed announcement is probed at once. At 2,000 peers that is about 133
beats read a second (a few microseconds each) and no probes, instead of 59 probes (connect,
HTTP, proof: about a millisecond each on both sides). A peer without beats (an older agent) is
probed once per `held_interval` as before; one whose beats stop (a frozen process keeps its
hold) is probed at its next due time. So a frozen agent's last beat may refresh its lastSeen
once more: its Node goes Unknown at most one interval (and a probe timeout) later than by
probes alone, still only by peer-ttl.

Suspicion (SWIM's indirect probe): when a held connection goes silent (its host stopped ACKing
the kernel's keepalive), the peer is suspected, and nothing is written before the suspicion is
confirmed (`suspect`). At once and together: the peer is probed directly, and up to HELPERS
other agents, chosen at random among the peers held open now (confirmed, alive, and not the
suspect), are asked over their HTTP port whether they reach it (`GET /reach?node=NAME`, which
probes the peer that agent follows under that name: never an address from the request). The
verdict:

- refuted: the direct probe got any answer from the host (confirmed, unverified: its kernel
  accepted the connection, refused: its kernel lives), or any agent asked reached it;
- withheld: this agent's local health is not 0 (`k3net.health`: its loop lags, many of its holds
  went silent at once, an agent asked did not answer): it may be the one cut off, and accuses
  nobody; the direct probe's result goes to the table as any probe's;
- confirmed: nothing answered at any address (no SYN-ACK within the probe timeout, or "host
  unreachable"), and no agent asked reached it: the table gets the outcome `unreachable`, and
  writes Unknown/PeerUnreachable. An agent with no other peer held decides alone.

Each is counted in k3net_suspicions_total{result}. The verdict takes one probe timeout (the
agents asked answer after their own probe of it), so a vanished host is written about 1-2 s
(the keepalive) + 0.7 s after it went. A peer still silent after a verdict other than confirmed
is followed up (`Prober._follow`): probed every second for up to SILENT_FOLLOW, held again once
it answers, and, when the accusation was only withheld, judged again as soon as this agent's
health is back to 0.

The suspect can answer too, through the store. A confirmed verdict is first told to the table
(`Suspected`), which marks the suspect's Node (`k3net.core.nodes.Suspicion`), and reaches it
ANSWER_TIME later: the suspect's own agent, if it runs and reaches the store, answers by writing
its Node with lastSeen fresh, and the verdict then writes nothing (the table holds it to the
lastSeen of the mark). Only a verdict about to accuse costs the mark: a suspicion refuted or
withheld (a lossy link's aborted holds) writes nothing at all. That is what keeps a LAN split in
two halves, both of which reach the store, from writing either half's Nodes not-Ready: nobody
on the LAN reaches across, but every host lives.
"""

from __future__ import annotations

import errno
import json
import logging
import random
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Literal, Protocol

import attrs
import trio

from k3net import limits
from k3net.core import addresses as addrs
from k3net.core import identity
from k3net.core.identity import NONCE_BYTES, Answer, AnswerReader, Facts, judge_reader, request
from k3net.core.messages import ProbeOutcome, ProbeResult, Suspected
from k3net.core.table import (
    MARK_WAIT,
    Forget,
    MarkSeen,
    ProberOrder,
    ProbeTarget,
    Retarget,
    answer_window,
)
from k3net.durations import format_duration
from k3net.health import LocalHealth
from k3net.metrics import Metrics
from k3net.tasks.hold import Holds, silence
from k3net.tasks.tcp import Sockets, connect, exchange

log = logging.getLogger("k3net.probe")

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
    silent: bool = False  # no connection and no word from the host at all (no SYN-ACK)


# A connection error that says nobody answered at that address (the neighbour did not answer
# ARP, or a router says the host is unreachable): silence, as a connect timeout is. A network
# unreachable is not: that is our own routing, no word about the peer.
_SILENT_ERRNOS = frozenset({errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ETIMEDOUT})


async def _ask(
    address: str, port: int, name: str, nonce: bytes, key: bytes | None,
    timeout: float,  # noqa: ASYNC109  (not a caller's deadline: --probe-timeout defines failure)
    sockets: Sockets | None = None,
) -> _Tried:
    """Connect to one address, ask /info, judge the answer; all within `timeout`, which starts
    once a socket of `sockets` is ours. A connection that was accepted but never answered is an
    answer of its own (unverified)."""
    if sockets is None:
        return await _ask_now(address, port, name, nonce, key, timeout, None)
    async with sockets.one():
        return await _ask_now(address, port, name, nonce, key, timeout, sockets)


async def _ask_now(
    address: str, port: int, name: str, nonce: bytes, key: bytes | None,
    timeout: float,  # noqa: ASYNC109  (as _ask's)
    sockets: Sockets | None,
) -> _Tried:
    connected = False
    reader = AnswerReader()
    with trio.move_on_after(timeout):
        try:
            sock = await connect(address, port, sockets=sockets)
        except ConnectionRefusedError:
            return _Tried(address, refused=True, error=f"{address}: connection refused")
        except OSError as exc:
            return _Tried(address, error=f"{address}: {exc.strerror or exc}",
                          silent=exc.errno in _SILENT_ERRNOS)
        connected = True
        with sock:
            try:
                await exchange(trio.SocketStream(sock), request(address, port, nonce), reader)
            except (OSError, trio.BrokenResourceError) as exc:
                reader.error = f"connection broke: {exc}"
        return _Tried(address, judge_reader(reader, probed=name, nonce=nonce, key=key))
    if connected:
        return _Tried(address, Answer(
            "unverified",
            detail=f"{address}: accepted, but no answer within {format_duration(timeout)}"))
    return _Tried(address, error=f"{address}: timed out after {format_duration(timeout)}",
                  silent=True)


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
    sockets: Sockets | None = None,
) -> ProbeResult:
    """One identity probe of peer `name` on every address at once (the first
    ADDRESSES_PER_PEER of them), each within `timeout` once it has a socket of `sockets`; the
    first confirmed answer ends it. See the module docstring for the outcome."""
    start = trio.current_time()
    nonce = secrets.token_bytes(NONCE_BYTES)
    tried: list[_Tried] = []
    skipped = 0

    async def one(address: str, mine: bool, scope: trio.CancelScope) -> None:
        nonlocal skipped
        result = await _ask(address, port, name, nonce, key, timeout, sockets)
        confirmed = result.answer is not None and result.answer.outcome == "confirmed"
        if mine and not confirmed:
            skipped += 1  # an own address is no evidence about another machine
            return
        tried.append(result)
        if confirmed:
            scope.cancel()  # the first confirmed answer wins

    async with trio.open_nursery() as nursery:
        parsed = dict.fromkeys(ip for ip in map(addrs.parse, addresses) if ip is not None)
        for ip in list(parsed)[:limits.ADDRESSES_PER_PEER]:
            mine = str(ip) in own.addresses
            if mine and port == own.port:
                skipped += 1  # that is us: never dialled
                continue
            nursery.start_soon(one, str(ip), mine, nursery.cancel_scope)
    outcome, best, error = _decide(name, tried, skipped)
    facts = None
    if outcome == "confirmed" and best is not None and best.answer is not None:
        facts = proven(best.answer.facts, name, best.address, port)
    return ProbeResult(
        name, outcome, trio.current_time() - start,
        address=best.address if best else None, error=error, started=start,
        answered_by=best.answer.answered_by if best and best.answer and outcome == "wrong-node"
        else None,
        facts=facts, refused=tuple(t.address for t in tried if t.refused),
        silent=tuple(t.address for t in tried if t.silent) if outcome == "timeout" else (),
    )


def proven(said: Facts | None, name: str, address: str, port: int) -> Facts:
    """What a confirmed answer at `address:port` lets the table write: the addresses, port and
    pid the peer proved in its answer (`core.identity.Facts`); where it proved none, the address
    and port where it answered as itself. Loopback addresses only from an answer on loopback
    (agents of one host)."""
    said = said or Facts(name)
    ip = addrs.parse(address)
    listed = addrs.canonical(said.addresses, loopback=ip is not None and ip.is_loopback)
    return Facts(name, said.port or port, said.pid, listed or (address,), listed=bool(listed))


# --- suspicion (module docstring) ---------------------------------------------------------------

# Other agents asked to reach a suspect, at most (SWIM's k): enough that one agent cut off from the
# suspect alone does not decide, few enough that a suspicion costs a handful of connections.
HELPERS = 3

# How a suspicion ended (k3net_suspicions_total{result}).
Verdict = Literal["confirmed", "refuted", "withheld"]


@attrs.frozen
class Helper:
    """An agent asked to reach a suspect: one of our held peers, where its hold goes."""

    name: str
    address: str
    port: int


def reach_proof(key: bytes, nonce: bytes, helper: str, node: str, reached: bool) -> str:
    """What a /reach answer carries with a cluster key: HMAC over the asker's nonce, who answers,
    about whom, and the answer, so that only a member of the cluster can refute or confirm."""
    return identity.proof(key, nonce, f"reach\0{helper}\0{node}\0{int(reached)}")


def reach_query(node: str, nonce: bytes | None) -> str:
    """The target of a /reach question about `node`."""
    query = f"/reach?node={node}"
    return query + (f"&nonce={nonce.hex()}" if nonce is not None else "")


def judge_reach(reader: AnswerReader, helper: str, node: str, nonce: bytes,
                key: bytes | None) -> bool | None:
    """A /reach answer: True (the helper reached `node`), False (it did not), None (no answer
    worth the name: an error, a 404 or 429, a proof missing or wrong)."""
    if reader.status != 200 or not reader.complete:
        return None
    try:
        data = json.loads(reader.body)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("node") != node:
        return None
    reached = data.get("reached")
    if not isinstance(reached, bool):
        return None
    if key is not None and data.get("proof") != reach_proof(key, nonce, helper, node, reached):
        return None
    return reached


async def ask_reach(
    helper: Helper, node: str,
    timeout: float,  # noqa: ASYNC109  (the question's own budget: the helper's probe and back)
    *, key: bytes | None = None, sockets: Sockets | None = None,
) -> bool | None:
    """Ask `helper` whether it reaches `node` (`judge_reach`); None when it does not answer in
    `timeout`."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    reader = AnswerReader()
    with trio.move_on_after(timeout):
        try:
            if sockets is None:
                sock = await connect(helper.address, helper.port)
            else:
                async with sockets.one():
                    sock = await connect(helper.address, helper.port, sockets=sockets)
            with sock:
                target = reach_query(node, nonce if key is not None else None)
                await exchange(trio.SocketStream(sock), identity.get(
                    helper.address, helper.port, target), reader)
        except (OSError, trio.BrokenResourceError):
            return None
        return judge_reach(reader, helper.name, node, nonce, key)
    return None


def _silent(result: ProbeResult) -> bool:
    """A direct probe that heard nothing at all from the host: no answer, no refusal, silence
    at some address."""
    return result.outcome == "timeout" and not result.refused and bool(result.silent)


async def suspect(
    result_of: Callable[[], Awaitable[ProbeResult]],
    ask: Callable[[Helper], Awaitable[bool | None]],
    helpers: Sequence[Helper],
    health: LocalHealth,
) -> tuple[Verdict, ProbeResult]:
    """Judge a suspect (module docstring): `result_of()` probes it directly, `ask(helper)`
    asks one agent, all at once. The verdict, and the result the table gets: the direct probe's,
    or the same as `unreachable` when confirmed."""
    answers: dict[str, bool | None] = {}
    direct: list[ProbeResult] = []

    async def probe_it(asks: trio.CancelScope) -> None:
        direct.append(await result_of())
        if not _silent(direct[0]):
            asks.cancel()  # the suspect answered itself: the others' word is not needed

    async def ask_one(helper: Helper) -> None:
        answers[helper.name] = await ask(helper)

    async with trio.open_nursery() as nursery:
        asks = trio.CancelScope()
        nursery.start_soon(probe_it, asks)

        async def ask_all() -> None:
            with asks:
                async with trio.open_nursery() as inner:
                    for helper in helpers:
                        inner.start_soon(ask_one, helper)
        nursery.start_soon(ask_all)
    result = direct[0]
    if not _silent(result):
        return "refuted", result
    reached_by = [name for name, reached in answers.items() if reached]
    if reached_by:
        return "refuted", result
    now = trio.current_time()
    health.unanswered(now, len(helpers), sum(1 for r in answers.values() if r is not None))
    if not health.healthy(now):
        return "withheld", result
    asked = f"; none of {len(helpers)} agents asked reach it" if helpers else \
        "; no other agent to ask"
    return "confirmed", attrs.evolve(result, outcome="unreachable", error=result.error + asked)


# A /reach probe's result answers every question about that peer for this long after it ended:
# however fast a client asks, /reach probes a peer at most about twice a second (less than a
# probe timeout old: as fresh as the question can tell).
REACH_REUSE = 0.5


@attrs.define
class _Reaching:
    """A /reach probe under way, shared by every question about that peer meanwhile."""

    done: trio.Event = attrs.Factory(trio.Event)
    result: ProbeResult | None = None
    ended: float = 0.0  # when the probe ended (`REACH_REUSE`)


class Told(Protocol):
    """Where the prober tells an accusation before it is made: the table's inbox."""

    async def send(self, value: Suspected, /) -> None: ...


@attrs.define
class _Marking:
    """An accusation waiting for its mark to be in the store (`Prober._let_it_answer`)."""

    seen: trio.Event = attrs.Factory(trio.Event)


# After a suspicion that was not confirmed while the peer stays silent (refuted by another agent,
# or withheld): the pause between follow-up probes, and for how long at most. It is held again as
# soon as it answers (a blip of the path), and a withheld accusation is judged again once this
# agent is healthy (`Prober._follow`). One probe a second per such peer, on the shared budget.
SILENT_PROBE_PAUSE = 1.0
SILENT_FOLLOW = 60.0
# How long a suspect's answer through a store that pushes changes (etcd) may take once our watch
# shows our mark: its watch, its table and its write, our watch (milliseconds each on a LAN; room
# for a loaded host). A store whose watch polls adds two polls (`Agent._answer_time`). To this
# comes twice the store's recent round trip (`_let_it_answer`, `core.table.answer_window`).
ANSWER_TIME = 0.3

# After a held connection closes: how many probes at most, and the pause between them, while
# they prove nothing either way (a probe that meets a process still going away).
CLOSED_PROBES = 3
CLOSED_PROBE_PAUSE = 0.25

def held_interval(interval: float, refresh: float) -> float:
    """How often a held peer that answered is probed (module docstring): once per lastSeen
    `refresh` (peer-ttl/3), a quarter of `interval` later so that the probe finds the refresh
    due (the stored value changed just after the last probe: it wrote it), and never more
    often than `interval`. Its Node's lastSeen is then written about every `refresh` + interval/4
    by this agent alone (33.75 s of peer-ttl 90 s); a probe that does not confirm it brings back
    the plain interval, so a held peer still has three more chances before peer-ttl."""
    return max(interval, refresh + interval / 4)


class Prober:
    """Probes every target once per `interval`, each at its own phase (a held peer that
    answered once per `held`, see `held_interval`), and a target at once (or after a given
    delay) when the table asks.

    Each peer gets a random phase in the interval when it first becomes a target, drawn by each
    agent for itself: agents started together do not probe in step, and with k agents probing a
    peer, one of them reaches it every interval/k on average, so a peer that dies is found
    sooner than by rounds in lock step. The load on the LAN is smooth instead of a burst per
    round. At most `limit` probes run at once, and never two scheduled ones for the same peer;
they share `sockets` sockets (module docstring).
    A confirmed peer is also held (`k3net.tasks.hold`); when its hold ends, it is probed at once.
    """

    def __init__(
        self,
        *,
        interval: float,
        timeout: float,
        metrics: Metrics,
        held: float | None = None,
        key: bytes | None = None,
        own: Callable[[], Own] = Own,
        limit: int = 64,
        sockets: int = limits.PROBE_SOCKETS,
        rng: random.Random | None = None,
        health: LocalHealth | None = None,
        answer_time: Callable[[], float | None] = lambda: None,
        store_round_trip: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.interval = interval
        # How long a suspect's answer through the store may take to reach the table, now: a
        # confirmed verdict waits that long after the mark (None: no store shared, no mark).
        self.answer_time = answer_time
        self.store_round_trip = store_round_trip  # the store's recent round trip, as measured
        self.held_every = interval if held is None else held  # a held peer that answered
        self.key = key  # the cluster key, if any: answers must prove it
        self.own = own  # what a probe must not take for a peer, now (this machine changes)
        self.timeout = timeout
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.targets: dict[str, ProbeTarget] = {}
        self._schedules: dict[str, trio.CancelScope] = {}
        # Set when a probe of the peer did not confirm it, by any path (a hold's end, the table,
        # a suspicion): its schedule goes back to the plain interval at once (`_every_interval`).
        self._unconfirmed: dict[str, trio.Event] = {}
        self._limiter = trio.CapacityLimiter(limit)
        self._inflight: Counter[str] = Counter()  # probes under way, by peer
        # Every probe's sockets, over all peers (module docstring).
        self._sockets = Sockets(sockets, on_full=lambda: metrics.limit_hit("probe-sockets"))
        self._holds: Holds | None = None  # the peers' held connections, while running
        # Where an accusation is told before it is made (the table marks the suspect's Node),
        # while running; None: nowhere.
        self._suspicions: Told | None = None
        # This agent as an observer (k3net.health): widens timeouts, withholds accusations.
        self.health = health or LocalHealth()
        # /reach probes under way, or ended less than REACH_REUSE ago, by peer.
        self._reaching: dict[str, _Reaching] = {}
        # Accusations waiting for their mark to be in the store (`MarkSeen`), by peer.
        self._marking: dict[str, _Marking] = {}

    async def reach(self, name: str) -> ProbeResult | None:
        """For /reach: probe the peer followed as `name` now (None: no such peer, or the probe
        was cut short). Questions about one peer meanwhile, or within REACH_REUSE after, share
        its probe."""
        target = self.targets.get(name)
        if target is None:
            return None
        pending = self._reaching.get(name)
        if pending is not None and (not pending.done.is_set()
                                    or trio.current_time() - pending.ended < REACH_REUSE):
            await pending.done.wait()
            return pending.result
        pending = self._reaching[name] = _Reaching()
        try:
            # The plain probe timeout, even while this agent's health widens its own: the asker
            # waits 2 x its timeout + 0.5 s for the answer, and a late answer is no answer.
            pending.result = await probe_peer(
                name, target.addresses, target.port, self.timeout,
                key=self.key, own=self.own(), sockets=self._sockets)
        finally:
            pending.ended = trio.current_time()
            pending.done.set()
            if pending.result is None:
                del self._reaching[name]  # cut short: nothing to share
        self._forget_reached()
        return pending.result

    def _forget_reached(self) -> None:
        """Drop shared /reach results older than REACH_REUSE (bounded by the peers followed)."""
        now = trio.current_time()
        for name in [n for n, r in self._reaching.items()
                     if r.done.is_set() and now - r.ended >= REACH_REUSE]:
            del self._reaching[name]

    def _helpers(self, suspect: str) -> list[Helper]:
        """Up to HELPERS agents to ask about `suspect`: held peers, chosen at random."""
        held = [(name, address) for name, address in self.held().items()
                if name != suspect and name in self.targets]
        chosen = self.rng.sample(held, min(HELPERS, len(held)))
        return [Helper(name, address, self.targets[name].port) for name, address in chosen]

    async def _suspect(self, name: str, held: int,
                       results: trio.MemorySendChannel[ProbeResult]) -> None:
        """A held connection to `name` went silent (`held` peers were held): judge it
        (`_judge`), and unless that settled it, follow it up (`_follow`)."""
        self.health.hold_silent(trio.current_time(), held)
        judged = await self._judge(name, results)
        if judged is None:
            return
        verdict, result = judged
        if verdict != "confirmed" and _silent(result):
            await self._follow(name, results, judge=verdict == "withheld")

    async def _judge(self, name: str, results: trio.MemorySendChannel[ProbeResult]
                     ) -> tuple[Verdict, ProbeResult] | None:
        """Judge the suspect `name` (`suspect`; withheld at once while this agent's health is
        not 0) and hand the table its result. None: forgotten meanwhile."""
        target = self.targets.get(name)
        if target is None:
            return None
        health = self.health
        now = trio.current_time()
        if not health.healthy(now):
            log.debug("%s silent; local health %d: no accusation", name, health.score)
            self.metrics.suspicions.labels(result="withheld").inc()
            return "withheld", await self._probe(target, results)
        helpers = self._helpers(name)

        async def direct() -> ProbeResult:
            return await self._probe_only(target)

        async def ask(helper: Helper) -> bool | None:
            # The agent asked probes the suspect itself first (with its own, unwidened probe
            # timeout: see `reach`), then answers.
            return await ask_reach(helper, name, 2 * self.timeout + 0.5, key=self.key,
                                   sockets=self._sockets)

        verdict, result = await suspect(direct, ask, helpers, health)
        if verdict == "confirmed":
            await self._let_it_answer(name, now)
        self.metrics.suspicions.labels(result=verdict).inc()
        if verdict == "confirmed":
            log.info("%s unreachable: %s", name, result.error)
        elif verdict == "withheld":
            # (debug: LocalHealth logs at info when withholding starts and stops, and why)
            log.debug("%s silent, but this agent's local health is %d: no accusation", name,
                      health.score)
        else:
            log.debug("suspicion of %s refuted (%s)", name, result.outcome)
        await self._report(target, result, results)
        return verdict, result

    async def _let_it_answer(self, name: str, since: float) -> None:
        """Before a confirmed verdict on `name` (silent since `since`) goes to the table: tell
        the table (`Suspected`), which marks its Node; wait until our watch shows the mark
        (`MarkSeen`, MARK_WAIT at most), then leave its own agent `answer_time()` and twice the
        store's recent round trip (`store_round_trip`, this mark's write among them) to answer
        through the store (`answer_window`): a far or slow store (a write that takes 300 ms) gets
        the time its answer takes. Waiting for the mark first covers the writer's queue and our
        watch's delay (for a store that polls, a poll). Nothing when nobody could answer there
        (None: this agent's store is its own)."""
        window = self.answer_time()
        if window is None or self._suspicions is None:
            return
        marking = self._marking[name] = _Marking()
        asked = trio.current_time()
        try:
            await self._suspicions.send(Suspected(name, since))
            with trio.move_on_after(MARK_WAIT) as waited:
                await marking.seen.wait()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return  # the table is gone: the agent is stopping
        finally:
            if self._marking.get(name) is marking:
                del self._marking[name]
        if waited.cancelled_caught:
            log.warning("the mark on %s did not show in the store within %s: accusing it "
                        "without waiting for its answer", name, format_duration(MARK_WAIT))
            return
        wait = answer_window(self.store_round_trip(), window)
        self.metrics.answer_wait.set(trio.current_time() - asked + wait)
        log.debug("%s: mark in the store after %s, its answer awaited %s more", name,
                  format_duration(trio.current_time() - asked), format_duration(wait))
        await trio.sleep(wait)

    def mark_seen(self, name: str) -> None:
        """The table's answer to our `Suspected` of `name` (`MarkSeen`): the accusation's wait
        for its mark ends (`_let_it_answer`)."""
        marking = self._marking.get(name)
        if marking is not None:
            marking.seen.set()

    async def _follow(self, name: str, results: trio.MemorySendChannel[ProbeResult], *,
                      judge: bool) -> None:
        """A suspicion not confirmed while the peer stays silent: probe it every
        SILENT_PROBE_PAUSE, for SILENT_FOLLOW at most, until it answers (and is held again) or
        refuses. `judge`: the accusation was withheld, so once this agent's health is back to 0
        the peer is judged again (`_judge`) rather than left to peer-ttl; after a refutation by
        other agents (they reach it) plain probes only."""
        deadline = trio.current_time() + SILENT_FOLLOW
        while trio.current_time() < deadline:
            await trio.sleep(SILENT_PROBE_PAUSE)
            target = self.targets.get(name)
            if target is None or (self._holds is not None and name in self._holds.held()):
                return
            if judge and self.health.healthy(trio.current_time()):
                judged = await self._judge(name, results)
                if judged is None:
                    return
                verdict, result = judged
                if verdict == "confirmed":
                    return  # the table re-probes it from now on
                judge = verdict == "withheld"
            else:
                result = await self._probe(target, results)
            if not _silent(result):
                return

    def held(self) -> dict[str, str]:
        """The peers whose /hold is held open now, by name: the address held (for /peers)."""
        return self._holds.held() if self._holds is not None else {}

    async def run(
        self,
        inbox: trio.MemoryReceiveChannel[ProberOrder],
        results: trio.MemorySendChannel[ProbeResult],
        *,
        suspicions: trio.MemorySendChannel[Suspected] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Probe what `inbox` asks for, and every peer once per interval, until `inbox` ends;
        every result goes to `results`, and each accusation, before it is made, to
        `suspicions` (both closed at the end)."""
        self._suspicions = suspicions
        try:
            await self._run(inbox, results, task_status=task_status)
        finally:
            self._suspicions = None
            if suspicions is not None:
                suspicions.close()

    async def _run(
        self,
        inbox: trio.MemoryReceiveChannel[ProberOrder],
        results: trio.MemorySendChannel[ProbeResult],
        *,
        task_status: trio.TaskStatus[None],
    ) -> None:
        async def closed(name: str) -> None:
            # Probed even if a probe is under way: that one began before the close, and may
            # end without a word about it (a connection the crash broke proves nothing). So
            # may this one, when it lands while the process is still going away: probed again
            # shortly, a few times, until the peer answers as itself or its port refuses.
            for attempt in range(CLOSED_PROBES):
                if attempt:
                    await trio.sleep(CLOSED_PROBE_PAUSE)
                target = self.targets.get(name)
                if target is None:
                    return  # forgotten meanwhile
                result = await self._probe(target, results)
                if result.outcome in ("confirmed", "refused", "unauthenticated"):
                    return

        async with results, trio.open_nursery() as nursery:
            async def silent(name: str, held: int) -> None:
                await self._suspect(name, held, results)

            def quiet() -> float:
                return self.health.widen(silence(self.timeout), trio.current_time())

            holds = self._holds = Holds(nursery, timeout=self.timeout, metrics=self.metrics,
                                        closed=closed, silent=silent, quiet=quiet,
                                        beat=self.interval, key=self.key)
            task_status.started()
            async with inbox:
                async for msg in inbox:
                    if isinstance(msg, Forget):
                        self.targets.pop(msg.name, None)
                        self.mark_seen(msg.name)  # its verdict writes nothing
                        schedule = self._schedules.pop(msg.name, None)
                        if schedule is not None:
                            schedule.cancel()
                        holds.release(msg.name)
                        continue
                    if isinstance(msg, MarkSeen):
                        self.mark_seen(msg.name)
                        continue
                    name = msg.target.name
                    if isinstance(msg, Retarget):  # no probe now: where to ask from now on
                        if name in self.targets:
                            holds.asked(msg.target, anew=False)
                            self.targets[name] = msg.target
                        continue
                    if (len(msg.target.addresses) > limits.ADDRESSES_PER_PEER
                            and self.targets.get(name) != msg.target):
                        self.metrics.limit_hit("addresses-per-peer")  # once per new target
                    holds.asked(msg.target, anew=msg.delay == 0)
                    self.targets[name] = msg.target
                    if name not in self._schedules:
                        self._schedules[name] = scope = trio.CancelScope()
                        nursery.start_soon(self._every_interval, name, scope, results)
                    nursery.start_soon(self._asked, msg.target, msg.delay, results)
            nursery.cancel_scope.cancel()

    async def _every_interval(
        self, name: str, scope: trio.CancelScope, results: trio.MemorySendChannel[ProbeResult]
    ) -> None:
        """Probe `name` once per interval at its own phase, until it is forgotten; while it is
        held and its last probe confirmed it, once per `held_every` (`held_interval`). A probe
        that does not confirm it, whoever asked for it (its hold ended, the table, a suspicion),
        brings the plain interval back at once."""
        with scope:
            due = trio.current_time() + self.rng.random() * self.interval
            began = due  # when the last scheduled probe was due: the phase
            unconfirmed: trio.Event | None = None
            try:
                while True:
                    if due <= trio.current_time():
                        due = trio.current_time()  # fell behind (a slow probe): no burst
                    unconfirmed = self._unconfirmed[name] = trio.Event()
                    with trio.move_on_at(due):
                        await unconfirmed.wait()
                        due = min(due, began + self.interval)
                        continue
                    target = self.targets.get(name)
                    if target is None:
                        return
                    began, every = due, self.interval
                    if name not in self._inflight:
                        if await self._vouched(name, results):
                            every = self.held_every  # (no probe: a beat showed it runs)
                            due = began + every
                            continue
                        result = await self._probe(target, results)
                        if (result.outcome == "confirmed" and self._holds is not None
                                and self._holds.is_open(name)):
                            every = self.held_every
                    due = began + every
            finally:
                if self._unconfirmed.get(name) is unconfirmed:
                    del self._unconfirmed[name]

    async def _vouched(self, name: str, results: trio.MemorySendChannel[ProbeResult]) -> bool:
        """Whether a fresh beat on `name`'s hold (`Holds.vouch`) stood in for its scheduled
        probe: then the table has the confirmation the beat makes, with the facts its process
        proved in its last probe, at the held address, as of the beat."""
        holds = self._holds
        if holds is None:
            return False
        hold = holds.vouch(name, trio.current_time() - holds.beat_window)
        if hold is None:
            return False
        assert hold.beat_at is not None
        self.metrics.probes_spared.inc()
        await self._hand(ProbeResult(name, "confirmed", 0.0, address=hold.address,
                                     started=hold.beat_at, facts=hold.facts), results)
        return True

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
    ) -> ProbeResult:
        result = await self._probe_only(target)
        await self._report(target, result, results)
        return result

    async def _probe_only(self, target: ProbeTarget) -> ProbeResult:
        """One probe of `target`, its timeout widened by local health; not reported yet."""
        self._inflight[target.name] += 1
        try:
            async with self._limiter:
                return await probe_peer(
                    target.name, target.addresses, target.port,
                    self.health.widen(self.timeout, trio.current_time()),
                    key=self.key, own=self.own(), sockets=self._sockets,
                )
        finally:
            self._inflight[target.name] -= 1
            if not self._inflight[target.name]:
                del self._inflight[target.name]

    async def _report(
        self, target: ProbeTarget, result: ProbeResult,
        results: trio.MemorySendChannel[ProbeResult],
    ) -> None:
        """Count a probe's result, hold a confirmed peer, and hand the result to the table."""
        self.metrics.probes.labels(result=result.outcome).inc()
        self.metrics.probe_latency.observe(result.latency)
        if result.outcome != "confirmed" and (unconfirmed := self._unconfirmed.get(
                target.name)) is not None:
            unconfirmed.set()
        if (result.outcome == "confirmed" and result.address and self._holds is not None
                and self.targets.get(target.name) == target):
            self._holds.confirmed(target, result.address, result.facts)
        await self._hand(result, results)

    @staticmethod
    async def _hand(result: ProbeResult, results: trio.MemorySendChannel[ProbeResult]) -> None:
        """Hand a result to the table."""
        try:
            await results.send(result)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the table is gone: the agent is stopping

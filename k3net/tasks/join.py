"""join: find the agents named by `--join HOST[:PORT]` and hand them to the peer table.

Each join address is asked who it is (`k3net.tasks.whois`: `/info` with the identity check, and
the cluster key when one is set); an agent that answers is sent to the table as
`PeerSeen(found_by="join")` with the name, port and addresses it gives. From then on the table
probes and judges it like any peer. The address is asked again every `recheck` seconds, so that a
peer the table forgot (it left, then came back) or one that moved is found again; a peer the
table still follows costs one extra probe per recheck.

Joining is transitive (`k3net.core.discovery`): each time, the agent found is also asked for the
peers it reaches (`/peers`), and those go to the table as `PeerSeen(found_by="join")` too, to be
probed like any other. The first asks come quickly (2 s, 4 s, 8 s, ... up to `recheck`), since
agents that start together know few peers at first.

An address where no agent answers (not up yet, a typo, a firewall) is retried with
`k3net.backoff.Backoff` (1 s doubling to 30 s, Consul's retry interval), forever, in the
background: it is never fatal and the agent runs on meanwhile. It is logged once when it stops
answering (a warning) and once when it answers again, not at every retry. A host name is
resolved at every attempt (a DNS change is followed); each of its addresses is tried in turn.
"""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Sequence

import trio

from k3net.backoff import Backoff
from k3net.core.discovery import Found, JoinAddress, NotFound
from k3net.core.messages import PeerSeen
from k3net.core.table import Message
from k3net.durations import format_duration
from k3net.metrics import Metrics
from k3net.tasks.whois import Outcome, Unreachable, peers_of, whois

log = logging.getLogger("k3net.join")

# An agent found at a join address is asked again this often: it is followed by the prober
# meanwhile, so this only catches a peer the table forgot or one whose name or port changed.
RECHECK = 30.0
# Retries of an address where no agent answers: 1 s, 2 s, 4 s ... up to 30 s (with jitter), so
# that agents started together find each other within seconds and a dead address costs little.
RETRY = Backoff(base=1.0, cap=30.0)
# After an agent is found, it is asked again (and for its peers) this long later, doubling up to
# `recheck`.
FIRST_RECHECK = 2.0


async def ask(join: JoinAddress, port: int, *, key: bytes | None,
              timeout: float) -> Outcome:  # noqa: ASYNC109  (--probe-timeout, per address)
    """Who answers at a join address: each address its host resolves to, in turn, each within
    `timeout`, until an agent answers."""
    target = join.port or port
    try:
        infos = await trio.socket.getaddrinfo(join.host, target, type=socket.SOCK_STREAM)
    except OSError as exc:  # socket.gaierror: the name does not resolve (now)
        return Unreachable(False, f"{join.host}: cannot resolve: {exc.strerror or exc}")
    outcome: Outcome = Unreachable(False, f"{join.host}: no address")
    for address in dict.fromkeys(str(info[4][0]) for info in infos):
        with trio.move_on_after(timeout) as scope:
            outcome = await whois(address, target, key=key)
        if scope.cancelled_caught:
            outcome = Unreachable(
                False, f"{address}:{target}: no answer within {format_duration(timeout)}")
        elif isinstance(outcome, Found):
            return outcome
    return outcome


def _result(outcome: Outcome) -> str:
    if isinstance(outcome, Found):
        return "found"
    if isinstance(outcome, NotFound):
        return outcome.reason
    return "refused" if outcome.refused else "unreachable"


async def run(
    joins: Sequence[JoinAddress],
    out: trio.MemorySendChannel[Message],
    *,
    port: int,
    key: bytes | None,
    timeout: float,  # noqa: ASYNC109  (--probe-timeout: what defines "no answer")
    me: str,
    metrics: Metrics,
    recheck: float = RECHECK,
    retry: Backoff = RETRY,
    rng: random.Random | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Follow every join address until cancelled (module docstring). Started at once: joining
    happens in the background."""
    rng = rng or random.Random()
    async with out, trio.open_nursery() as nursery:
        for join in joins:
            nursery.start_soon(_follow, join, out, port, key, timeout, me, metrics, recheck,
                               retry, rng)
        task_status.started()


async def _follow(
    join: JoinAddress, out: trio.MemorySendChannel[Message], port: int, key: bytes | None,
    timeout: float, me: str, metrics: Metrics, recheck: float,  # noqa: ASYNC109
    retry: Backoff, rng: random.Random,
) -> None:
    failures = finds = 0
    known: Found | None = None
    listed: set[str] = set()  # names learned through this agent's /peers, for the log
    while True:
        outcome = await ask(join, port, key=key, timeout=timeout)
        metrics.discovery_probes.labels(via="join", result=_result(outcome)).inc()
        if isinstance(outcome, Found):
            if outcome.name == me:
                if known is None or failures:
                    log.info("join %s: that is this agent (%s)", join, me)
            elif known != outcome or failures:
                log.info("join %s: found agent %s (port %d, %s)", join, outcome.name,
                         outcome.port, ", ".join(outcome.addresses))
            if failures:
                finds = 0
            failures, known = 0, outcome
            if outcome.name != me:
                await out.send(PeerSeen(outcome.name, outcome.addresses, outcome.port,
                                        outcome.pid, found_by="join"))
            await _pass_on_peers(join, outcome, join.port or port, out, me, timeout, listed)
            await trio.sleep(min(recheck, FIRST_RECHECK * 2 ** finds))
            finds += 1
            continue
        if failures == 0:
            log.warning("join %s: no agent there now (%s); retrying in the background "
                        "(backoff up to %s), logged again once it answers", join,
                        outcome.detail, format_duration(retry.cap))
        else:
            log.debug("join %s: still no agent (%s)", join, outcome.detail)
        delay = retry.delay(failures, rng)
        failures += 1
        await trio.sleep(delay)


async def _pass_on_peers(
    join: JoinAddress, found: Found, port: int, out: trio.MemorySendChannel[Message], me: str,
    timeout: float, listed: set[str],  # noqa: ASYNC109
) -> None:
    """The peers `found` (which answered at its `address` and `port`) reaches, to the table
    (module docstring)."""
    peers = []
    with trio.move_on_after(timeout):
        peers = await peers_of(found.address, port)
    new = sorted({p.name for p in peers} - listed - {me, found.name})
    if new:
        log.info("join %s: %s reaches %s", join, found.name, ", ".join(new))
        listed.update(new)
    for peer in peers:
        if peer.name not in (me, found.name):
            await out.send(PeerSeen(peer.name, peer.addresses, peer.port, None,
                                    found_by="join"))

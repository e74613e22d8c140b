"""join: find the agents named by `--join HOST[:PORT]` and hand them to the peer table.

Each join address is asked who it is (`k3net.tasks.whois`: `/info` with the identity check, and
the cluster key when one is set); an agent that answers is sent to the table as
`PeerSeen(found_by="join")` with the name, port and addresses it gives. From then on the table
probes and judges it like any peer. The address is asked again every `recheck` seconds, so that a
peer the table forgot (it left, then came back) or one that moved is found again; a peer the
table still follows costs one extra probe per recheck.

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
from k3net.metrics import Metrics
from k3net.tasks.whois import Outcome, Unreachable, whois

log = logging.getLogger("k3net.join")

# An agent found at a join address is asked again this often: it is followed by the prober
# meanwhile, so this only catches a peer the table forgot or one whose name or port changed.
RECHECK = 30.0
# Retries of an address where no agent answers: 1 s, 2 s, 4 s ... up to 30 s (with jitter), so
# that agents started together find each other within seconds and a dead address costs little.
RETRY = Backoff(base=1.0, cap=30.0)


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
            outcome = Unreachable(False, f"{address}:{target}: no answer within {timeout:g}s")
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
    failures = 0
    known: Found | None = None
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
            failures, known = 0, outcome
            if outcome.name != me:
                await out.send(PeerSeen(outcome.name, outcome.addresses, outcome.port,
                                        outcome.pid, found_by="join"))
            await trio.sleep(recheck)
            continue
        if failures == 0:
            log.warning("join %s: no agent there now (%s); retrying in the background "
                        "(backoff up to %gs), logged again once it answers", join,
                        outcome.detail, retry.cap)
        else:
            log.debug("join %s: still no agent (%s)", join, outcome.detail)
        delay = retry.delay(failures, rng)
        failures += 1
        await trio.sleep(delay)

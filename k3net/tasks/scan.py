"""scan: every `interval`, ask every address of the `--scan` ranges who listens on our port, and
hand the agents that answer to the peer table as `PeerSeen(found_by="scan")`.

Opt-in, since it sends traffic to every address in the ranges: one TCP connection attempt per
address and scan (SYN; an RST back where nothing listens; where no host is, the router's or our
own ARP requests and no answer). Bounded twice:

- in rate: connection attempts start at most `rate` per second, evenly spaced (a /24 at the
  default 100/s takes about 2.5 s), so a scan is never a burst on the LAN;
- in concurrency: at most `concurrency` attempts are open at once (each ends at its answer or
  after the probe timeout), so an empty range cannot pile up sockets.

This machine's own addresses (read at every scan: they change) are never tried. An agent that
answers is judged as a join address is (`k3net.tasks.whois`: its name, with the cluster key when
one is set). The first scan starts at once; each next one `interval` after the previous one
started (or at once, if a scan took longer than that).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection, Sequence

import trio

from k3net.core.discovery import Found, Network, NotFound, scan_addresses
from k3net.core.messages import PeerSeen
from k3net.core.table import Message
from k3net.durations import format_duration
from k3net.metrics import Metrics
from k3net.tasks.whois import Outcome, whois

log = logging.getLogger("k3net.scan")

# Connection attempts open at once: enough that the rate, not the timeouts of empty addresses,
# sets the pace (100/s x 0.7 s = 70 open at the defaults would be the most), as the prober's.
CONCURRENCY = 64


def _result(outcome: Outcome | None) -> str:
    if outcome is None:
        return "timeout"
    if isinstance(outcome, Found):
        return "found"
    if isinstance(outcome, NotFound):
        return outcome.reason
    return "refused" if outcome.refused else "unreachable"


class Scanner:
    """One scan at a time over `networks`; `last` holds the counts of the last one finished."""

    def __init__(
        self,
        networks: Sequence[Network],
        *,
        port: int,
        key: bytes | None,
        timeout: float,
        rate: float,
        own: Callable[[], Collection[str]],
        me: str,
        metrics: Metrics,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self.networks = tuple(networks)
        self.port = port
        self.key = key
        self.timeout = timeout
        self.rate = rate
        self.own = own  # this machine's addresses, now
        self.me = me
        self.metrics = metrics
        self.concurrency = concurrency
        self.last: Counter[str] = Counter()
        self._found: frozenset[str] = frozenset()

    async def scan(self, out: trio.MemorySendChannel[Message]) -> list[Found]:
        """One scan of every range; the agents found (ourselves left out) are sent to `out` as
        they answer and returned."""
        start = trio.current_time()
        targets = list(scan_addresses(self.networks, frozenset(self.own())))
        slots = trio.Semaphore(self.concurrency)
        counts: Counter[str] = Counter()
        found: list[Found] = []

        async def one(address: str) -> None:
            try:
                outcome: Outcome | None = None
                with trio.move_on_after(self.timeout):
                    # One SYN per address and scan, as the README promises: an agent missed
                    # on a lossy LAN is found at the next scan.
                    outcome = await whois(address, self.port, key=self.key, attempts=1)
            finally:
                slots.release()
            result = _result(outcome)
            counts[result] += 1
            self.metrics.discovery_probes.labels(via="scan", result=result).inc()
            if isinstance(outcome, Found) and outcome.name != self.me:
                found.append(outcome)
                await out.send(PeerSeen(outcome.name, outcome.addresses, outcome.port,
                                        outcome.pid, found_by="scan"))
            elif isinstance(outcome, NotFound):
                log.debug("scan: %s", outcome.detail)

        async with trio.open_nursery() as nursery:
            due = start
            for address in targets:
                await slots.acquire()
                await trio.sleep_until(due)
                nursery.start_soon(one, address)
                # Starts at least 1/rate apart; time lost waiting for a slot is not caught up.
                due = max(due, trio.current_time()) + 1 / self.rate
        took = trio.current_time() - start
        self.last = counts
        self.metrics.scan_seconds.set(took)
        names = frozenset(f.name for f in found)
        level = logging.INFO if names != self._found else logging.DEBUG
        self._found = names
        log.log(level, "scan of %s: %d addresses in %s, %d agent(s)%s; %s",
                ", ".join(str(n) for n in self.networks), len(targets), format_duration(took),
                len(names),
                f" ({', '.join(sorted(names))})" if names else "",
                ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing tried")
        return found


async def run(
    scanner: Scanner,
    out: trio.MemorySendChannel[Message],
    *,
    interval: float,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Scan every `interval` until cancelled (module docstring)."""
    async with out:
        task_status.started()
        while True:
            start = trio.current_time()
            await scanner.scan(out)
            await trio.sleep_until(start + interval)

"""How healthy this agent is: the store it talks to (`StoreHealth`), and its own ability to judge
its peers (`LocalHealth`).

Local health (Lifeguard, the observer checks itself first): a vanished peer is concluded from
silence (`k3net.tasks.hold`, `k3net.tasks.probe`), and silence is also what an observer sees when
the fault is its own: its event loop starved (a CPU quota, a swapping host, a paused process just
resumed), its own link losing packets or cut. An agent that accused its peers then would write
healthy Nodes not-Ready. So the agent keeps a score, 0 when healthy, raised by what only a sick
observer sees:

- its own loop lags: a ticker sleeps TICK and measures how late it wakes; later than LAG is a
  point (a starved or paused agent);
- many holds go silent at once: at least MANY_SILENT, and at least half of the peers held,
  within SILENT_WINDOW: several hosts rarely vanish together, one link (ours) often does;
- agents asked to reach a suspect do not answer: the path to them is bad too.

The score is lowered by one every DECAY seconds without a new point, and capped at MAX_SCORE.
While it is above zero the agent widens its timeouts (x(1 + score): `widen`) and accuses nobody:
a suspicion ends without a verdict (`k3net_suspicions_total{result="withheld"}`); only peer-ttl
judges then. The score is exported as `k3net_local_health`; starting and stopping to withhold
are logged at INFO with the reason.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import attrs
import trio

log = logging.getLogger("k3net.health")

# How often the ticker wakes, and how late a wake-up must be to count as lag: more than a whole
# probe timeout's worth of being unable to run is an agent whose own timers cannot be trusted.
TICK = 0.25
LAG = 0.5
# Holds gone silent together that point at our own link (module docstring).
MANY_SILENT = 2
SILENT_WINDOW = 3.0
# Seconds without a new point for the score to drop by one, and its ceiling: a bad minute is
# forgotten within a minute, and no timeout is ever widened past x(1 + MAX_SCORE).
DECAY = 10.0
MAX_SCORE = 4
# The store calls whose durations make its round trip (`StoreHealth.round_trip`): every write,
# and at least our own Node's refresh every peer-ttl/3, so a few minutes' worth at the least.
ROUND_TRIPS = 8


@attrs.define
class StoreHealth:
    """Whether the store answers, and how long it takes: set by the tasks that talk to it, read
    by /readyz, /metrics and the prober (the time a suspect's answer through the store takes)."""

    ok: bool = False
    reason: str = "store not reached yet"
    # The last ROUND_TRIPS successful calls' durations (`round_trip`).
    _took: deque[float] = attrs.Factory(lambda: deque(maxlen=ROUND_TRIPS))

    @property
    def round_trip(self) -> float:
        """The store's recent round trip: the slowest of its last ROUND_TRIPS answers (0 before
        the first)."""
        return max(self._took, default=0.0)

    def up(self, took: float | None = None) -> None:
        """The store answered (a call that took `took` seconds, if timed)."""
        self.ok, self.reason = True, ""
        if took is not None:
            self._took.append(took)

    def down(self, reason: str) -> None:
        self.ok, self.reason = False, reason


@attrs.define
class LocalHealth:
    """This agent's score as an observer (module docstring). Pure but for `run`: every method
    takes `now`, this agent's monotonic clock."""

    # Called with the score whenever it changes (the k3net_local_health gauge).
    changed: Callable[[int], None] = lambda score: None
    score: int = 0
    _last_point: float = 0.0
    _silent: deque[float] = attrs.Factory(deque)  # when recent holds went silent

    def healthy(self, now: float) -> bool:
        """True when this agent may accuse a peer (the score, decayed to `now`, is 0)."""
        return self.current(now) == 0

    def current(self, now: float) -> int:
        """The score at `now`: lowered by one for every DECAY since the last point."""
        if self.score and now - self._last_point >= DECAY:
            steps = int((now - self._last_point) // DECAY)
            self._set(max(0, self.score - steps), now, "no trouble for a while")
            self._last_point += steps * DECAY
        return self.score

    def widen(self, seconds: float, now: float) -> float:
        """A timeout as this agent should use it now: x(1 + score)."""
        return seconds * (1 + self.current(now))

    def lagged(self, late: float, now: float) -> None:
        """The loop woke `late` seconds after it was due."""
        if late > LAG:
            self.point(now, f"event loop {late:.2f} s late")

    def hold_silent(self, now: float, held: int) -> None:
        """A held connection went silent, with `held` peers held just before."""
        silent = self._silent
        silent.append(now)
        while silent and now - silent[0] > SILENT_WINDOW:
            silent.popleft()
        if len(silent) >= MANY_SILENT and 2 * len(silent) >= held:
            self.point(now, f"{len(silent)} of {held} held connections silent within"
                            f" {SILENT_WINDOW:g} s: our own link is the likely fault")

    def unanswered(self, now: float, asked: int, answered: int) -> None:
        """Of `asked` agents asked to reach a suspect, only `answered` answered."""
        if answered < asked:
            self.point(now, f"{asked - answered} of {asked} agents asked to reach a peer"
                            " did not answer")

    def point(self, now: float, reason: str) -> None:
        self.current(now)
        self._last_point = now
        self._set(min(MAX_SCORE, self.score + 1), now, reason)

    def _set(self, score: int, now: float, reason: str) -> None:
        if score == self.score:
            return
        if not self.score:
            log.info("local health %d: withholding accusations (%s)", score, reason)
        elif not score:
            log.info("local health back to 0: accusing again (%s)", reason)
        self.score = score
        self.changed(score)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """The ticker: how late this agent's own sleeps wake (module docstring)."""
        task_status.started()
        while True:
            due = trio.current_time() + TICK
            await trio.sleep_until(due)
            now = trio.current_time()
            self.lagged(now - due, now)

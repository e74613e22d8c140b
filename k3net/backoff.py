"""The one retry delay used wherever k3net waits for something to come back: the writer and the
store watch (store down), the etcd and MySQL watches (reconnect), `k3net watch` (agent gone)."""

from __future__ import annotations

import random

import attrs


@attrs.frozen
class Backoff:
    """Capped exponential backoff with jitter: the n-th retry (from 0) waits a random time in
    [base*2^n / 2, base*2^n], at most `cap`. The jitter keeps agents that lost the store
    together from all dialling it again in the same millisecond."""

    base: float = 0.1
    cap: float = 2.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(attempt, 32))
        return ceiling / 2 + rng.random() * ceiling / 2


DEFAULT_BACKOFF = Backoff()

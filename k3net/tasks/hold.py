"""hold: connections held open to confirmed peers, so that a crash is seen at once.

Once a peer is confirmed at an address (`k3net.tasks.probe`), a connection to its `GET /hold` is
kept open there: an agent answers it with 200 and a first piece of body, `held`, and sends
nothing more while it runs (`k3net.web.app`) but, when asked (`identity.hold_target`), a beat
line every interval that shows its process runs (`identity.BeatReader` reads them; the prober
lets a fresh one stand in for a scheduled probe, `Holds.vouch`). When the peer's process dies,
its kernel closes that connection at once, and the peer is probed at once: a crash on a living
host is seen in about a second (the probe, then the table's re-probe), whatever the probe
interval, even by an agent that is the only one to probe it.

A link cut, a dead host, a kernel panic or a paused VM closes nothing. So the kernel watches
every held connection (`k3net.keepalive`): while it is idle, a keepalive probe goes out every
second and the peer's kernel ACKs it; when nothing at all came back for the user timeout
(`silence`: max(SILENCE, 2 x probe timeout), widened by this agent's local health), the kernel
aborts the connection and the waiting read fails with ETIMEDOUT: the hold went `silent`, and
the prober starts a suspicion (`k3net.tasks.probe`), which confirms it before anything is
written. This costs no Python at all while the peer lives: two 66-byte packets (IPv4; 86 with
IPv6) a second per held connection, about 130 B/s each way, and the task sleeps in a read.

A paused or CPU-starved *agent* does not trip it: its kernel still ACKs. That is intended: such
an agent is alive, its process will run again, and only peer-ttl judges it (its Node expires if
it never answers a probe again). Silence means the host, or the path to it, is gone.

How a hold ends (`HoldEnd`), and what follows:

- closed: the peer closed it once set up (its process died, or its addresses changed: its
  beats vouched for the facts of its last probe): probe it now. One that lasted less than
  MIN_HOLD is not held again for that target (probes only): a peer that closes at once must not
  be held in a loop;
- refused: nothing listens any more (it died since its probe): probe it now;
- silent: the kernel aborted it, nothing came back from the peer's host for the user timeout
  (`silence`): a suspicion begins (probe it directly, and ask other agents to reach it);
- failed: no connection or no answer in time (a LAN losing packets, a busy peer): no evidence of
  anything; held again after the next confirmed probe;
- no-hold: something answered, but not with an agent's hold (a Go agent's 404, a web server's
  page), or, asked for beats, it sent more than NOISE bytes without a good one: probes only for
  that target.

A hold is released when its peer is forgotten or moves to another address or port (it is held
again once confirmed there). At most `limits.HELD` peers are held, so an agent of a large LAN
keeps its file descriptors; a peer confirmed past that is not held (counted in
k3net_limit_hits_total{limit="held"}) and relies on its probes. The answer is read with the
probes' HTTP reader (`identity.AnswerReader`).
"""

from __future__ import annotations

import errno
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Literal

import attrs
import trio

from k3net import limits
from k3net.core.identity import (
    BEAT_MIN,
    NONCE_BYTES,
    AnswerReader,
    BeatReader,
    beat_seconds,
    get,
    hold_target,
)
from k3net.core.messages import Facts
from k3net.core.table import ProbeTarget
from k3net.keepalive import keepalive
from k3net.metrics import Metrics
from k3net.tasks.tcp import connect

log = logging.getLogger("k3net.hold")

# What an agent's /hold sends first (k3net.web.app), after its head.
HOLD_MARK = b"held\n"
# The least silence (seconds with nothing from the peer's host) that ends a held connection; a
# LAN whose probes need longer gets 2 x its probe timeout (`silence`). With keepalive probes
# every second this is two probes unanswered in a row: the abort comes 2 s after the last ACK,
# 1 to 2 s after the host vanished.
SILENCE = 2.0
# A hold that ends sooner than this after it was set up is not tried again for that target:
# probes only (a peer that closes at once must not be asked in a loop).
MIN_HOLD = 5.0

_READ_SIZE = 4096
# Bytes a held connection may bring after its mark without a good beat among them: more ends it
# as no hold (probes only). A peer's agent sends beats of ~80 bytes and nothing else; a peer
# that streams anything else must not keep the holder reading and splitting it for ever.
NOISE = 64 * 1024

# How a held connection ended (module docstring).
HoldEnd = Literal["closed", "silent", "refused", "failed", "no-hold"]


def silence(probe_timeout: float) -> float:
    """How long a held connection may hear nothing from its peer's host (module docstring),
    before local health widens it."""
    return max(SILENCE, 2 * probe_timeout)


def _timed_out(exc: BaseException) -> bool:
    """The kernel aborted the connection for silence (ETIMEDOUT), however trio wrapped it."""
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    return isinstance(cause, OSError) and cause.errno == errno.ETIMEDOUT


@attrs.define(eq=False)
class Hold:
    """One connection held (or being set up) to a peer's /hold."""

    target: ProbeTarget  # the peer as it was confirmed
    address: str  # the address it was confirmed at, where the connection goes
    # What the peer proved in its last confirmed probe while this hold went to that process:
    # what a beat vouches for (`Holds.vouch`); None once a probe found another process.
    facts: Facts | None = None
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)  # cancelled to release it
    open: bool = False  # set up, and counted in k3net_held_connections
    beat_at: float | None = None  # when its last good beat came (the agent's clock)

    def serves(self, target: ProbeTarget) -> bool:
        """The peer is still where this hold goes (same port, the address still one of its)."""
        return self.address in target.addresses and self.target.port == target.port


async def hold_open(
    address: str, port: int,
    timeout: float,  # noqa: ASYNC109  (not a caller's deadline: --probe-timeout defines failure)
    opened: Callable[[], None],
    quiet: float = SILENCE,
    *,
    path: str = "/hold",
    beats: BeatReader | None = None,
    beaten: Callable[[int, int], None] = lambda good, bad: None,
) -> HoldEnd:
    """Hold a /hold at `address:port` until it ends; how it ended (module docstring). Setting up
    (connect, then the answer) takes at most `timeout`; `opened()` is called once it is held.
    `quiet`: the seconds of silence from the peer's host after which the kernel ends it.
    `path`: the request target (`identity.hold_target` asks for beats); what comes once held
    goes to `beats`, and `beaten(good, bad)` is called for each read that completed beats."""
    try:
        with trio.fail_after(timeout):
            sock = await connect(address, port)
    except ConnectionRefusedError:
        return "refused"
    except (OSError, trio.TooSlowError):
        return "failed"
    with sock:
        keepalive(sock, quiet)
        stream = trio.SocketStream(sock)
        reader = AnswerReader()
        try:
            with trio.fail_after(timeout):
                await stream.send_all(get(address, port, path))
                # An agent's hold: 200, then a first piece of the body that says so. Any other
                # answer, complete or broken, is no hold.
                while True:
                    done = reader.feed(await stream.receive_some(_READ_SIZE))
                    if reader.status == 200 and HOLD_MARK in reader.body:
                        break
                    if done:
                        return "no-hold"
        except (OSError, trio.BrokenResourceError):
            return "no-hold"
        except trio.TooSlowError:
            return "failed"
        rest = reader.body[reader.body.index(HOLD_MARK) + len(HOLD_MARK):]
        del reader  # (its parser's state: beats are read as lines, at 2,048 holds)
        opened()
        noise = 0  # bytes since the last good beat (NOISE)
        try:
            data = rest
            while True:
                if beats is not None and data:
                    good, bad = beats.feed(data)
                    if good or bad:
                        beaten(good, bad)
                    noise = 0 if good else noise + len(data)
                    if noise > NOISE:
                        return "no-hold"  # not an agent's beats: probes only
                data = await stream.receive_some(_READ_SIZE)
                if not data:
                    break  # nothing but beats is sent while the peer runs
        except (OSError, trio.BrokenResourceError) as exc:
            if _timed_out(exc):
                return "silent"  # its host stopped answering the keepalive probes
            # reset: closed all the same
    return "closed"


class Holds:
    """The held connections of one prober, run in its nursery. `closed(name)` is awaited when
    a hold's end calls for a probe of that peer now (closed, refused); `silent(name, held)` when
    it went silent, `held` being how many peers were held just before (for local health)."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        timeout: float,
        metrics: Metrics,
        closed: Callable[[str], Awaitable[None]],
        silent: Callable[[str, int], Awaitable[None]] | None = None,
        quiet: Callable[[], float] = lambda: SILENCE,
        beat: float | None = None,
        key: bytes | None = None,
    ) -> None:
        self.timeout = timeout  # for setting a hold up: the probe timeout
        self.metrics = metrics
        # The beat period asked of every held peer (None: none asked), and the cluster key
        # their beats must prove (module docstring).
        self.beat, self.key = beat, key
        self._nursery = nursery
        self._closed = closed
        self._silent = silent
        self._quiet = quiet  # the silence that ends a hold set up now (`silence`, widened)
        self._held: dict[str, Hold] = {}  # by peer name
        # Targets followed by probes only (module docstring), by peer name.
        self._no_hold: dict[str, set[ProbeTarget]] = {}
        self._open = 0  # holds set up and not ended yet (the gauge)

    def confirmed(self, target: ProbeTarget, address: str, facts: Facts | None = None) -> None:
        """A probe confirmed `target` at `address`, the peer proving `facts`: hold it there,
        unless it is held already, answers no hold, or limits.HELD are held. A hold of it
        keeps the latest facts its process proved (what its beats vouch for)."""
        name = target.name
        held = self._held.get(name)
        if held is not None:
            same = held.facts is not None and facts is not None and facts.pid == held.facts.pid
            held.facts = facts if same else None  # another process: the hold goes to an old one
            return
        if target in self._no_hold.get(name, ()):
            return
        if len(self._held) >= limits.HELD:
            self.metrics.limit_hit("held")
            return
        hold = self._held[name] = Hold(target, address, facts)
        self._nursery.start_soon(self._run, hold)

    def asked(self, target: ProbeTarget, *, anew: bool) -> None:
        """The table asks for a probe of `target`; `anew`: it was seen anew (restarted?), so a
        target that answered no hold is tried again. A hold of it elsewhere is released."""
        if anew and target in self._no_hold.get(target.name, ()):
            self._no_hold[target.name].discard(target)
        hold = self._held.get(target.name)
        if hold is not None and not hold.serves(target):
            self.release(target.name)  # it moved: held again once confirmed there

    def release(self, name: str) -> None:
        """Let go of `name`'s hold (forgotten, or moved), and of what is known of its /hold."""
        hold = self._held.pop(name, None)
        if hold is not None:
            hold.scope.cancel()
        self._no_hold.pop(name, None)

    def _probes_only(self, target: ProbeTarget) -> None:
        """Follow `target` by probes only, until it is seen anew or released."""
        self._no_hold.setdefault(target.name, set()).add(target)

    def is_open(self, name: str) -> bool:
        """A connection to `name`'s /hold is held open now."""
        hold = self._held.get(name)
        return hold is not None and hold.open

    @property
    def beat_window(self) -> float:
        """How old a peer's last good beat may be for it to vouch (`vouch`): the period asked,
        and the probe timeout for a late one (a busy peer). So a frozen process is confirmed at
        most that long after it froze (then probed: it does not answer)."""
        return beat_seconds(self.beat or BEAT_MIN) + self.timeout

    def vouch(self, name: str, since: float) -> Hold | None:
        """`name`'s hold if it is open and a good beat came on it at `since` or later: its
        process ran then, as the facts of `Hold.facts` (never None here) show it."""
        hold = self._held.get(name)
        if (hold is None or not hold.open or hold.facts is None or hold.beat_at is None
                or hold.beat_at < since):
            return None
        return hold

    def held(self) -> dict[str, str]:
        """The peers whose /hold is held open now, by name: the address held (for /peers)."""
        return {name: hold.address for name, hold in self._held.items() if hold.open}

    def _opened(self, hold: Hold) -> None:
        hold.open = True
        self._open += 1
        self.metrics.held.set(self._open)

    async def _run(self, hold: Hold) -> None:
        target, address = hold.target, hold.address
        ended: HoldEnd = "failed"
        began = trio.current_time()
        path, beats = "/hold", None
        if self.beat is not None:
            nonce = secrets.token_bytes(NONCE_BYTES)
            path, beats = hold_target(self.beat, nonce), BeatReader(target.name, nonce, self.key)

        def beaten(good: int, bad: int) -> None:
            if good:
                hold.beat_at = trio.current_time()
                self.metrics.beats.labels(result="good").inc(good)
            if bad:
                self.metrics.beats.labels(result="bad").inc(bad)
                log.debug("%d bad beat(s) from %s at %s: ignored", bad, target.name, address)

        try:
            with hold.scope:
                ended = await hold_open(address, target.port, self.timeout,
                                        lambda: self._opened(hold), self._quiet(),
                                        path=path, beats=beats, beaten=beaten)
        finally:
            if hold.open:
                hold.open = False
                self._open -= 1
                self.metrics.held.set(self._open)
        held = len(self._held)
        if self._held.get(target.name) is hold:
            del self._held[target.name]
        if hold.scope.cancelled_caught:
            return  # released: forgotten, or moved
        if ended == "silent":
            # (debug: on a LAN losing packets this is frequent, and settled by the suspicion)
            log.debug("held connection to %s at %s went silent: suspecting it", target.name,
                      address)
            self.metrics.held_silent.inc()
            if self._silent is not None:
                await self._silent(target.name, held)
            else:
                await self._closed(target.name)  # no suspicion asked for: probe it now
            return
        if ended == "no-hold":
            log.debug("no held connection to %s at %s: probes only", target.name, address)
            self._probes_only(target)  # no /hold there (a Go agent)
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
                self._probes_only(target)  # closed at once: never a loop of holds
        else:
            log.debug("hold refused by %s at %s: probing it now", target.name, address)
        await self._closed(target.name)

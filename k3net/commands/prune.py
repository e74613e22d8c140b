"""`k3net prune`: remove the Nodes of machines that are gone for good.

    k3net prune --older-than 72h [--dry-run] [--force] [-o table|wide|json|yaml] [--config PATH]

A Node is removed only when all of these hold:

- it is k3net's (label `k3.network/managed=true`): a Node the k3 controller reports is never
  touched, whatever its state, `--force` or not;
- its Ready condition is not `True`, and the latest sign of life it carries (the
  `k3.network/lastSeen` annotation, the Ready condition's `lastHeartbeatTime` and
  `lastTransitionTime`) is more than `--older-than` ago, and at least MIN_PRUNE_AGE (an hour)
  whatever the caller asks. The latest of them, because one alone can mislead: a host whose
  clock was not set yet writes a transition in 1970 while its `lastSeen`, refreshed since by
  agents with good clocks, is recent. A Node that carries none of these times is kept: nothing
  says for how long it has been down;
- it carries nothing that k3net does not own (`foreign_marks`): `spec.unschedulable` (cordoned),
  taints or any other `spec` field, labels and annotations other than k3net's own (design.md
  section 1: `kubernetes.io/hostname` and the `k3.network/` keys), conditions other than Ready,
  finalizers or owner references. Someone else has a say in such a Node: it is kept and the
  reason shown, unless `--force`;
- it is unchanged since it was read: the delete is a compare-and-swap on the version read
  (`Store.delete(name, version)`), so a Node that an agent brought back to life meanwhile, or
  that an administrator labelled meanwhile, stays ("changed since read: kept").

Consul reaps failed members after 72 h; k3net has no default: the operator says how long.
Ages are judged on this machine's wall clock against the stored times, which agents wrote:
pruning ages are hours or days, far above the clock skew between machines, and a time in the
future (a writer's clock far ahead) only keeps the Node. `plan` is pure (it takes `now`);
`apply` does the deletes.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import attrs
import trio

from k3net.commands import CommandError, dump, table
from k3net.commands.nodes import age
from k3net.config import StorageConfig
from k3net.core import parse
from k3net.core.nodes import Readiness, readiness
from k3net.durations import format_duration
from k3net.model import ANN_LAST_SEEN, ANN_NODE_LABELS, CONDITION_READY, LABEL_HOSTNAME, Node
from k3net.settings import MIN_PRUNE_AGE
from k3net.store.base import Conflict, NotFound, Store, Stored, StoreError

# `k3net prune` gives up if the store has not answered a call within this many seconds.
DEADLINE = 10.0

# Labels and annotations that are k3net's own (design.md section 1): `kubernetes.io/hostname`
# and every key under k3net's prefix. Any other key was put there by someone else.
OWN_KEYS = frozenset({LABEL_HOSTNAME})
OWN_PREFIX = "k3.network/"
# A verdict names at most this many foreign marks (and how many more there are).
MARKS_SHOWN = 3


@attrs.frozen
class Verdict:
    """What prune makes of one Node: `delete` it, or `keep` it and why."""

    name: str
    version: str
    action: str  # "delete" or "keep"
    why: str
    # How long since its latest sign of life (seconds), when known and not Ready.
    down_for: float | None = None
    # What it carries that k3net does not own, when that alone keeps an old Node.
    foreign: tuple[str, ...] = ()


def _own(key: str) -> bool:
    return key in OWN_KEYS or key.startswith(OWN_PREFIX)


def _set(value: Any) -> bool:
    return value not in (None, False, "", [], {})


def foreign_marks(node: Node) -> list[str]:
    """What the Node carries that k3net does not own, one short text each; empty if none."""
    marks = []
    spec = node.spec
    if _set(spec.get("unschedulable")):
        marks.append("spec.unschedulable")
    taints = spec.get("taints")
    if _set(taints):
        keys = [t.get("key", "?") for t in taints if isinstance(t, dict)] if isinstance(
            taints, list) else []
        marks.append("taint " + ",".join(map(str, keys)) if keys else "spec.taints")
    marks += [f"spec.{key}" for key, value in sorted(spec.items())
              if key not in ("unschedulable", "taints") and _set(value)]
    meta = node.metadata
    # Labels its own agent put there (--node-label, listed in ANN_NODE_LABELS) are k3net's too.
    labelled = set(meta.annotations.get(ANN_NODE_LABELS, "").split(","))
    marks += [f"label {key}" for key in sorted(meta.labels)
              if not _own(key) and key not in labelled]
    marks += [f"annotation {key}" for key in sorted(meta.annotations) if not _own(key)]
    marks += [f"metadata.{key}" for key in ("finalizers", "ownerReferences")
              if _set(meta.extra.get(key))]
    marks += [f"condition {c.type}" for c in node.status.conditions if c.type != CONDITION_READY]
    return marks


def last_alive(node: Node) -> dt.datetime | None:
    """The latest sign of life the Node carries: its lastSeen annotation, its Ready condition's
    heartbeat and transition times (None if it has none that can be read)."""
    times = []
    text = node.metadata.annotations.get(ANN_LAST_SEEN)
    seen = parse.timestamp(text) if text is not None else None
    if isinstance(seen, dt.datetime):
        times.append(seen)  # (a foreign lastSeen is no evidence either way)
    cond = node.condition()
    if cond is not None:
        times += [t for t in (cond.last_heartbeat_time, cond.last_transition_time)
                  if t is not None]
    return max(times, default=None)


def judge(
    stored: Stored, now: dt.datetime, older_than: float, *, force: bool = False
) -> Verdict:
    """The verdict on one Node (see the module's docstring); `now` is an aware datetime.
    `older_than` below MIN_PRUNE_AGE counts as MIN_PRUNE_AGE."""
    node = stored.node
    older_than = max(older_than, MIN_PRUNE_AGE)

    def keep(why: str, down_for: float | None = None, foreign: Sequence[str] = ()) -> Verdict:
        return Verdict(stored.name, stored.version, "keep", why, down_for, tuple(foreign))

    if not node.managed:
        return keep("not managed by k3net")
    cond = node.condition()
    if cond is None:
        return keep("no Ready condition")
    if readiness(node) is Readiness.TRUE:
        return keep("Ready")
    alive = last_alive(node)
    if alive is None:
        return keep("not Ready since an unknown time")
    down_for = (now - alive).total_seconds()
    if down_for <= older_than:
        return keep(f"seen {age(down_for)} ago only", down_for)
    marks = foreign_marks(node)
    if marks and not force:
        shown = ", ".join(marks[:MARKS_SHOWN])
        more = f" and {len(marks) - MARKS_SHOWN} more" if len(marks) > MARKS_SHOWN else ""
        return keep(f"not k3net's alone: {shown}{more} (prune --force removes it)", down_for,
                    marks)
    return Verdict(stored.name, stored.version, "delete",
                   f"{cond.status}/{cond.reason or '-'}, last seen {age(down_for)} ago", down_for)


def plan(
    nodes: Sequence[Stored], now: dt.datetime, older_than: float, *, force: bool = False
) -> list[Verdict]:
    """A verdict for every Node, by name. `now` is an aware datetime."""
    return [judge(s, now, older_than, force=force) for s in sorted(nodes, key=lambda s: s.name)]


@attrs.frozen
class Outcome:
    verdict: Verdict
    # deleted, would-delete (dry run), kept, changed (an agent wrote it since it was read:
    # kept), gone (someone else removed it first)
    result: str


async def apply(store: Store, verdicts: Sequence[Verdict], dry_run: bool) -> list[Outcome]:
    """Delete what the verdicts say, each with compare-and-swap on the version read."""
    outcomes = []
    for verdict in verdicts:
        if verdict.action != "delete":
            outcomes.append(Outcome(verdict, "kept"))
            continue
        if dry_run:
            outcomes.append(Outcome(verdict, "would-delete"))
            continue
        try:
            with trio.fail_after(DEADLINE):
                await store.delete(verdict.name, verdict.version)
        except Conflict:
            outcomes.append(Outcome(verdict, "changed"))
        except NotFound:
            outcomes.append(Outcome(verdict, "gone"))
        else:
            outcomes.append(Outcome(verdict, "deleted"))
    return outcomes


async def prune(
    store: Store, now: dt.datetime, older_than: float, dry_run: bool, *, force: bool = False
) -> list[Outcome]:
    with trio.fail_after(DEADLINE):
        nodes = await store.list()
    return await apply(store, plan(nodes, now, older_than, force=force), dry_run)


_WHY = {
    "deleted": "deleted",
    "would-delete": "would delete (dry run)",
    "changed": "kept: changed since read",
    "gone": "already gone",
}


def format_outcomes(outcomes: Sequence[Outcome], output: str = "table") -> str:
    """The table (by default the Nodes pruned or to be pruned, and the old ones kept only for
    what others put on them; `wide` lists every Node with why it is kept), or every outcome as
    JSON/YAML."""
    if output in ("json", "yaml"):
        return dump([_as_dict(o) for o in outcomes], output)
    shown = [o for o in outcomes
             if output == "wide" or o.verdict.action == "delete" or o.verdict.foreign]
    if not shown:
        return "Nothing to prune.\n"
    rows = [[o.verdict.name, "<unknown>" if o.verdict.down_for is None else age(o.verdict.down_for),
             _WHY.get(o.result, o.result) if o.result != "kept" else f"kept: {o.verdict.why}"]
            for o in shown]
    return table(["NAME", "LAST-SEEN", "RESULT"], rows)


def _as_dict(outcome: Outcome) -> dict[str, Any]:
    v = outcome.verdict
    return {"name": v.name, "result": outcome.result, "reason": v.why,
            "lastSeenSecondsAgo": None if v.down_for is None else round(v.down_for, 3),
            "foreign": list(v.foreign)}


def main(
    storage: StorageConfig, older_than: float, dry_run: bool, output: str,
    out: TextIO | None = None, *, force: bool = False,
) -> int:
    """`k3net prune`: 0 (also when nothing is old enough); CommandError if the store does not
    answer."""
    import trio_asyncio

    from k3net.store import open_store

    async def run() -> list[Outcome]:
        async with trio_asyncio.open_loop():
            try:
                async with open_store(storage) as store:
                    return await prune(store, dt.datetime.now(dt.UTC), older_than, dry_run,
                                       force=force)
            except trio.TooSlowError:
                raise CommandError(
                    f"the {storage.type} store did not answer within {format_duration(DEADLINE)}") from None
            except StoreError as exc:
                raise CommandError(f"{storage.type} store unavailable: {exc}") from None

    (out or sys.stdout).write(format_outcomes(trio.run(run), output))
    return 0

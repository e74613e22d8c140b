"""`k3net prune`: remove the Nodes of machines that are gone for good.

    k3net prune --older-than 72h [--dry-run] [-o table|wide|json|yaml] [--config PATH]

A Node is removed only when all of these hold:

- it is k3net's (label `k3.network/managed=true`): a Node the k3 controller reports is never
  touched, whatever its state;
- its Ready condition is not `True`, and has not been since its `lastTransitionTime`, which is
  more than `--older-than` ago (a managed Node without a Ready condition or without that time
  is kept: nothing says for how long it has been down);
- it is unchanged since it was read: the delete is a compare-and-swap on the version read
  (`Store.delete(name, version)`), so a Node that an agent brought back to life meanwhile stays
  ("changed since read: kept").

Consul reaps failed members after 72 h; k3net has no default: the operator says how long.
Ages are judged on this machine's wall clock against the stored `lastTransitionTime`, which
the agent that saw the transition wrote: pruning ages are hours or days, far above the clock
skew between machines. `plan` is pure (it takes `now`); `apply` does the deletes.
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
from k3net.core.nodes import Readiness, readiness
from k3net.store.base import Conflict, NotFound, Store, Stored, StoreError

# `k3net prune` gives up if the store has not answered a call within this many seconds.
DEADLINE = 10.0


@attrs.frozen
class Verdict:
    """What prune makes of one Node: `delete` it, or `keep` it and why."""

    name: str
    version: str
    action: str  # "delete" or "keep"
    why: str
    # How long it has been not-Ready (seconds), when known.
    down_for: float | None = None


def judge(stored: Stored, now: dt.datetime, older_than: float) -> Verdict:
    node = stored.node

    def keep(why: str, down_for: float | None = None) -> Verdict:
        return Verdict(stored.name, stored.version, "keep", why, down_for)

    if not node.managed:
        return keep("not managed by k3net")
    cond = node.condition()
    if cond is None:
        return keep("no Ready condition")
    if readiness(node) is Readiness.TRUE:
        return keep("Ready")
    if cond.last_transition_time is None:
        return keep("not Ready since an unknown time")
    down_for = (now - cond.last_transition_time).total_seconds()
    if down_for <= older_than:
        return keep(f"not Ready for {age(down_for)} only", down_for)
    return Verdict(stored.name, stored.version, "delete",
                   f"{cond.status}/{cond.reason or '-'} for {age(down_for)}", down_for)


def plan(nodes: Sequence[Stored], now: dt.datetime, older_than: float) -> list[Verdict]:
    """A verdict for every Node, by name. `now` is an aware datetime."""
    return [judge(s, now, older_than) for s in sorted(nodes, key=lambda s: s.name)]


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
    store: Store, now: dt.datetime, older_than: float, dry_run: bool
) -> list[Outcome]:
    with trio.fail_after(DEADLINE):
        nodes = await store.list()
    return await apply(store, plan(nodes, now, older_than), dry_run)


_WHY = {
    "deleted": "deleted",
    "would-delete": "would delete (dry run)",
    "changed": "kept: changed since read",
    "gone": "already gone",
}


def format_outcomes(outcomes: Sequence[Outcome], output: str = "table") -> str:
    """The table (by default only the Nodes pruned or to be pruned; `wide` lists every Node
    with why it is kept), or every outcome as JSON/YAML."""
    if output in ("json", "yaml"):
        return dump([_as_dict(o) for o in outcomes], output)
    shown = [o for o in outcomes if output == "wide" or o.verdict.action == "delete"]
    if not shown:
        return "Nothing to prune.\n"
    rows = [[o.verdict.name, "<unknown>" if o.verdict.down_for is None else age(o.verdict.down_for),
             _WHY.get(o.result, o.result) if o.result != "kept" else f"kept: {o.verdict.why}"]
            for o in shown]
    return table(["NAME", "NOT-READY-FOR", "RESULT"], rows)


def _as_dict(outcome: Outcome) -> dict[str, Any]:
    v = outcome.verdict
    return {"name": v.name, "result": outcome.result, "reason": v.why,
            "notReadySeconds": None if v.down_for is None else round(v.down_for, 3)}


def main(
    storage: StorageConfig, older_than: float, dry_run: bool, output: str, out: TextIO = sys.stdout
) -> int:
    """`k3net prune`: 0 (also when nothing is old enough); CommandError if the store does not
    answer."""
    import trio_asyncio

    from k3net.store import open_store

    async def run() -> list[Outcome]:
        async with trio_asyncio.open_loop():
            try:
                async with open_store(storage) as store:
                    return await prune(store, dt.datetime.now(dt.UTC), older_than, dry_run)
            except trio.TooSlowError:
                raise CommandError(
                    f"the {storage.type} store did not answer within {DEADLINE:g}s") from None
            except StoreError as exc:
                raise CommandError(f"{storage.type} store unavailable: {exc}") from None

    out.write(format_outcomes(trio.run(run), output))
    return 0

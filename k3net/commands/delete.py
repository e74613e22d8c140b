"""`k3net delete node NAME...`: remove Nodes from the store, as `kubectl delete node` does.

    k3net delete node NAME... [--force] [--config PATH]

Each Node is read, judged and deleted with compare-and-swap on the version read
(`Store.delete(name, version)`): a Node that an agent rewrote between the read and the delete
stays ("changed since it was read"), so the command never removes what it did not look at.

Only Nodes that k3net manages (label `k3.network/managed=true`) are deleted; any other Node (one
the k3 controller reports) is refused with one line unless `--force` is given. A Node still
Ready comes back at the next probe of an agent that reaches it: the command says so.

The agent never deletes; this command talks to the store the config names. Exit 0 if every
Node named was deleted, 1 if any was refused, missing, changed, or the store did not answer.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

import attrs
import trio

from k3net.commands import CommandError
from k3net.config import StorageConfig
from k3net.core.nodes import Readiness, readiness
from k3net.durations import format_duration
from k3net.model import LABEL_MANAGED
from k3net.store.base import Conflict, ForeignValue, NotFound, Store, StoreError

# The command gives up if the store has not answered a call within this many seconds.
DEADLINE = 10.0


@attrs.frozen
class Outcome:
    """What happened to one Node: `deleted`, or why not (`detail` is one line for the user)."""

    name: str
    deleted: bool
    detail: str


async def delete_node(store: Store, name: str, force: bool) -> Outcome:
    """Read `name`, refuse it unless it is managed (or `force`), delete it at the version read."""
    try:
        with trio.fail_after(DEADLINE):
            stored = await store.get(name)
    except NotFound:
        return Outcome(name, False, f"node {name!r} not found")
    except ForeignValue as exc:
        return Outcome(name, False, f"node {name!r}: {exc}; not a Node, left as it is")
    node = stored.node
    if not node.managed and not force:
        return Outcome(name, False, f"node {name!r} is not managed by k3net (no label "
                       f"{LABEL_MANAGED}=true): refused; --force deletes it anyway")
    try:
        with trio.fail_after(DEADLINE):
            await store.delete(name, stored.version)
    except Conflict:
        return Outcome(name, False, f"node {name!r} changed since it was read: kept; "
                       "look again and retry")
    except NotFound:
        return Outcome(name, False, f"node {name!r} was removed by someone else meanwhile")
    detail = f"node {name!r} deleted"
    if node.managed and readiness(node) is Readiness.TRUE:
        detail += " (it was Ready: an agent that reaches it writes it again)"
    return Outcome(name, True, detail)


async def delete_nodes(store: Store, names: Sequence[str], force: bool) -> list[Outcome]:
    return [await delete_node(store, name, force) for name in dict.fromkeys(names)]


def main(
    storage: StorageConfig, names: Sequence[str], force: bool, out: TextIO = sys.stdout
) -> int:
    """`k3net delete node`: deleted Nodes on stdout, refusals on stderr (one line each)."""
    import trio_asyncio

    from k3net.store import open_store

    async def run() -> list[Outcome]:
        async with trio_asyncio.open_loop():
            try:
                async with open_store(storage) as store:
                    return await delete_nodes(store, names, force)
            except trio.TooSlowError:
                raise CommandError(
                    f"the {storage.type} store did not answer within {format_duration(DEADLINE)}") from None
            except StoreError as exc:
                raise CommandError(f"{storage.type} store unavailable: {exc}") from None

    outcomes = trio.run(run)
    for outcome in outcomes:
        if outcome.deleted:
            out.write(outcome.detail + "\n")
        else:
            print(f"k3net delete: {outcome.detail}", file=sys.stderr)
    return 0 if all(o.deleted for o in outcomes) else 1

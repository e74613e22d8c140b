"""The MySQL/MariaDB backend: Nodes as rows of the Go k3 store's table.

Table `k8s_core_v1_node`, with exactly the columns the Go store's ORM creates (created here if
missing; a table someone else created with these columns is used as it is):

    id, name, namespace, uid, resource_version, labels, annotations,
    created_at, updated_at, deleted_at, phase, spec, status

Node <-> row: metadata.name/namespace/uid/labels/annotations <-> the columns of the same name,
metadata.creationTimestamp <-> created_at, status.phase <-> phase, spec <-> spec, and the whole
`status` object <-> status (so conditions, addresses, capacity, nodeInfo and unknown keys under
status survive; the phase column wins over status.phase when both are set). Everything under
`spec` and `status` survives a round trip. Unknown top-level keys and unknown metadata keys do
NOT: the table has no column for them. uid and created_at are set at create and never changed
(as in Kubernetes); a Node created without a uid gets `node-<name>`, without a creation time the
current time.

Times, as the Go store's driver writes them (its DSN has `loc=Local`): a `datetime` column holds
the writer's local wall-clock time, without a zone. k3net writes this machine's local time and
reads a stored time as local time too (on a UTC machine that is UTC). Every machine sharing a
MySQL store should therefore run in the same time zone, as with the Go store; a time that does
not exist or repeats locally (a daylight-saving switch) is read as Python's `astimezone` does.

Names match exactly: `name` has the table's case-insensitive collation, so every lookup also
compares the bytes, and `Worker1` (written by the Go side) is not `worker1`. A uid longer than
its column (a name of 251 characters or more gives `node-<name>`) or taken by a name that
differs only in case is stored as `node-<sha256 of the name>` instead (so every valid name can
be created; the uid is the store's to choose, as in Kubernetes).

Soft delete: a row with deleted_at set does not exist for get, list and watch; delete sets it,
and a Node of that name can be created again (a deleted row still holding the same uid is
removed first, as uid is unique, in the same transaction as the insert: a create that fails
leaves the deleted row as it was). If several live rows share a name (name is not unique in the
Go schema), the one with the lowest id is the Node, as the ORM's `First` would pick.

Versions: `resource_version` is the version. Every write stores a fresh one: the current time in
microseconds, or the previous version + 1 if that is larger, so versions only grow, also across
a delete and re-create (an old version can never match a new row). Rows written by others with
any other resource_version (or none) still work: it is compared as it is.

Compare-and-swap: `UPDATE ... WHERE id=? AND resource_version=? AND deleted_at IS NULL`;
0 rows matched is Conflict, or NotFound if no live row of that name is left. Create checks
for a live row of that name and inserts while holding a per-name server lock (GET_LOCK), so
of concurrent creates exactly one wins; the unique uid is a second guard against writers that
do not take the lock. Every query is parameterized.

Watch: MySQL cannot push changes, so the watch polls every `config.poll_interval`, on its own
connection: a Snapshot first, then each round a quick poll that asks only for rows written,
soft-deleted or inserted since the previous round (by updated_at, deleted_at and id, through
indexes: an idle table costs no row), less WINDOW_MARGIN; changed rows are read in full and
yielded as Put in the order they were written (updated_at, then resource_version), rows gone
as Deleted. Every FULL_PASS_SECONDS a pass over every live row's fingerprint (id,
resource_version, updated_at) finds what the quick poll cannot see: rows deleted for good,
writers whose clock is far behind. k3net's own writes take updated_at from the server's clock
(in local time), so every agent's write is seen by the quick poll. Several writes to one Node
between two polls arrive as one Put of the last state. After an outage the next successful
poll yields a fresh Snapshot. The index on updated_at is added to the table if missing.

Pools: the writer's calls (get, create, update, delete) have up to max_open_conns connections
of their own; lists (/nodes, `k3net nodes`) READ_CONNECTIONS others, that many at once; the
watch one more. No reader can take a connection the writer needs.

Limits: statements are bounded on the server (MariaDB's max_statement_time, and lock waits),
because a query cancelled from trio drops the connection while the server keeps running it.
A TCP connection to a server that stops answering (its packets dropped on the way, its host
gone) is ended by the kernel within SERVER_SILENCE (`_watched`: keepalive probes and
TCP_USER_TIMEOUT), so the call fails as StoreUnavailable instead of waiting for TCP to give up
(about 15 minutes): aiomysql has no read timeout of its own.
Rows that are not a Node (invalid JSON, wrong types) are reported as `Foreign` by scan and the
watch and left out of list; get of such a row raises ForeignValue, and update refuses to write
over one (see `k3net.store.base`). max_idle_conns has no equivalent in
aiomysql and is ignored. Every aiomysql,
PyMySQL, OSError and asyncio error becomes StoreUnavailable here, nowhere else. Use this store
inside `trio_asyncio.open_loop()`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import random
import socket
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiomysql
import attrs
import pymysql
import trio
from pymysql.constants import CLIENT, ER
from trio_asyncio import aio_as_trio

from k3net.backoff import DEFAULT_BACKOFF
from k3net.config import MySQLConfig
from k3net.convert import InvalidNode, node_from_dict, node_to_dict
from k3net.core import parse
from k3net.durations import format_duration
from k3net.keepalive import keepalive
from k3net.model import Node
from k3net.store.base import (
    Conflict,
    Deleted,
    Foreign,
    ForeignValue,
    Lost,
    NotFound,
    Put,
    Scan,
    Snapshot,
    Stored,
    StoreUnavailable,
    WatchEvent,
    foreign,
)

log = logging.getLogger(__name__)

TABLE = "k8s_core_v1_node"

# The watch's quick poll reads rows by updated_at. The Go ORM does not index it: k3net adds this
# index to the table (to one it creates, and once to one the Go side created). An index is
# invisible to the ORM; without it (no privilege) the poll still works, reading more rows.
UPDATED_INDEX = "idx_k3net_updated_at"

CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
  id bigint unsigned NOT NULL AUTO_INCREMENT,
  name varchar(255) NOT NULL,
  namespace varchar(255) DEFAULT NULL,
  uid varchar(255) DEFAULT NULL,
  resource_version varchar(255) DEFAULT NULL,
  labels json DEFAULT NULL,
  annotations json DEFAULT NULL,
  created_at datetime(3) DEFAULT NULL,
  updated_at datetime(3) DEFAULT NULL,
  deleted_at datetime(3) DEFAULT NULL,
  phase varchar(50) DEFAULT NULL,
  spec json DEFAULT NULL,
  status json DEFAULT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY idx_{TABLE}_uid (uid),
  KEY idx_{TABLE}_name (name),
  KEY idx_{TABLE}_deleted_at (deleted_at),
  KEY {UPDATED_INDEX} (updated_at)
)"""

COLUMNS = (
    "id, name, namespace, uid, resource_version, labels, annotations, created_at, updated_at,"
    " phase, spec, status"
)
LIVE = "deleted_at IS NULL"
# Exactly this name: the first test uses the index (case-insensitive collation), the second
# compares the bytes, so `Worker1` and `worker1` are two Nodes.
SAME_NAME = "name = %(name)s AND BINARY name = %(name)s"

# Server-side bounds for every statement of our sessions. A statement (or a wait for a row lock)
# that takes this long has failed anyway; without a bound, a query the caller cancelled could
# keep running, and then still apply, long after. `/*M! ... */` is read by MariaDB only;
# MySQL has no equivalent session setting for writes and runs without the statement bound.
STATEMENT_SECONDS = 10
SESSION_INIT = (
    f"SET SESSION innodb_lock_wait_timeout={STATEMENT_SECONDS}"
    f" /*M!100108 , max_statement_time={STATEMENT_SECONDS} */"
)
# A connection attempt that takes this long has failed (the server is down or unreachable).
CONNECT_SECONDS = 5
# A TCP connection whose server's kernel answered nothing (no acknowledgement of what we sent,
# no answer to a keepalive probe) for this long is ended by ours; idle connections are probed
# after SERVER_IDLE. The server's kernel acknowledges at once even while a statement runs for
# STATEMENT_SECONDS, so only a server gone from the network trips it.
SERVER_SILENCE = 10.0
SERVER_IDLE = 10
# A create waits at most this long for another create of the same name (which takes
# milliseconds) before reporting the store unavailable.
CREATE_LOCK_SECONDS = 3
# Closing the pool or a watch during shutdown may take at most this long.
CLOSE_SECONDS = 2.0

# Lists (/nodes, `k3net nodes`) run on a pool of their own, this many at once: a burst of them
# waits for each other, never for the writer's connections.
READ_CONNECTIONS = 2
# The quick poll reads rows written since the previous poll less this margin: a transaction that
# took its time before committing, a writer whose clock is a little behind the server's.
WINDOW_MARGIN = dt.timedelta(seconds=2)
# And a full pass over every live row's fingerprint this often catches the rest (rows deleted
# for good, writers far behind in time). A minute bounds how late such a change is seen while
# keeping its cost (a few small columns per Node) well below the quick polls' budget.
FULL_PASS_SECONDS = 60.0

LIBRARY_ERRORS = (pymysql.err.MySQLError, OSError, asyncio.TimeoutError, asyncio.CancelledError)

T = TypeVar("T")
Cursor = Any  # aiomysql.Cursor, untyped
Events = list[WatchEvent]  # an alias: inside MySQLStore, `list` is the method


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- Node <-> row -------------------------------------------------------------------------------


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _db_time(value: dt.datetime) -> dt.datetime:
    """An aware time as the naive local datetime(3) the columns hold (the Go store's loc=Local)."""
    value = value.astimezone().replace(tzinfo=None)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _from_db_time(value: Any) -> dt.datetime | None:
    """A datetime column's naive local time as an aware UTC time; None for NULL or a value that
    is not a time (MySQL's zero date comes back as text)."""
    if not isinstance(value, dt.datetime):
        return None
    return value.astimezone(dt.UTC)  # a naive datetime is taken as local time


# updated_at and deleted_at come from the server's clock, in this machine's local time (the
# Go store's loc=Local): one clock for every k3net writer, so the watch's quick poll, which
# reads rows by updated_at, cannot miss a write for a writer's clock being behind.
SERVER_NOW = "CONVERT_TZ(UTC_TIMESTAMP(3), '+00:00', %(tz)s)"


def _utc_offset() -> str:
    """This machine's UTC offset now, as MySQL takes it without time-zone tables: `+05:30`."""
    offset = dt.datetime.now().astimezone().utcoffset() or dt.timedelta()
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


UID_CHARS = 255  # the uid column is varchar(255)


def default_uid(name: str) -> str:
    """`node-<name>`, the uid a Node gets when created, if it fits the column."""
    uid = f"node-{name}"
    return uid if len(uid) <= UID_CHARS else hashed_uid(name)


def hashed_uid(name: str) -> str:
    """A uid for `name` that fits the column and no other name (of any case) shares."""
    return "node-" + hashlib.sha256(name.encode()).hexdigest()


def next_version(previous: str | None, now: dt.datetime) -> str:
    """A version newer than `previous`: microseconds since the epoch, or previous + 1."""
    fresh = int(now.timestamp() * 1_000_000)
    number = parse.revision(previous) if previous is not None else None
    if isinstance(number, int):
        fresh = max(fresh, number + 1)  # (a foreign version is simply replaced)
    return str(fresh)


def _json_column(value: Any, column: str) -> dict[str, Any] | None:
    """A JSON object column (labels, annotations, spec, status); NULL is None."""
    if value is None:
        return None
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise InvalidNode(f"{column} is not JSON: {exc}") from exc
    except RecursionError:
        raise InvalidNode(f"{column} is JSON nested too deeply to read") from None
    if data is not None and not isinstance(data, dict):
        raise InvalidNode(f"{column} is not a JSON object")
    return data


def _row_values(node: Node) -> dict[str, Any]:
    """Column values for a Node (all but id, the times and resource_version)."""
    data = node_to_dict(node)
    meta = node.metadata
    return {
        "name": meta.name,
        "namespace": meta.namespace,
        "uid": meta.uid or default_uid(meta.name),
        "labels": json.dumps(meta.labels),
        "annotations": json.dumps(meta.annotations),
        "phase": node.status.phase,
        "spec": json.dumps(data.get("spec", {})),
        "status": json.dumps(data.get("status", {})),
    }


def stored_from_row(row: tuple[Any, ...]) -> Stored:
    """The Stored for a row of COLUMNS; InvalidNode if the row does not hold a Node."""
    (_id, name, namespace, uid, version, labels, annotations, created_at, _updated_at,
     phase, spec, status) = row
    status_data = _json_column(status, "status") or {}
    if phase:
        status_data = {**status_data, "phase": phase}
    metadata: dict[str, Any] = {"name": name}
    for key, value in (
        ("namespace", namespace or None), ("uid", uid), ("resourceVersion", version or ""),
        ("labels", _json_column(labels, "labels")),
        ("annotations", _json_column(annotations, "annotations")),
    ):
        if value is not None:
            metadata[key] = value
    node = node_from_dict({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": metadata,
        "spec": _json_column(spec, "spec") or {},
        "status": status_data,
    })
    created = _from_db_time(created_at)
    if created is not None:
        node.metadata.creation_timestamp = created
    return Stored(node=node, version=version or "")


def _foreign(row: tuple[Any, ...], reason: object) -> Foreign:
    return foreign(str(row[1]), f"{TABLE} id={row[0]}", reason)


def _node_row(row: tuple[Any, ...]) -> Stored:
    """stored_from_row, with a row that is not a Node as ForeignValue."""
    try:
        return stored_from_row(row)
    except InvalidNode as exc:
        raise ForeignValue(_foreign(row, exc)) from exc


def _lock_name(name: str) -> str:
    # GET_LOCK names are at most 64 characters; Node names up to 253.
    return "k3net-node-" + hashlib.sha1(name.encode()).hexdigest()


# --- the statements, run on the asyncio side ----------------------------------------------------


async def _select_live(cur: Cursor, name: str) -> tuple[Any, ...] | None:
    await cur.execute(
        f"SELECT {COLUMNS} FROM {TABLE} WHERE {SAME_NAME} AND {LIVE} ORDER BY id LIMIT 1",
        {"name": name},
    )
    row: tuple[Any, ...] | None = await cur.fetchone()
    return row


async def _get(cur: Cursor, name: str) -> tuple[Any, ...]:
    row = await _select_live(cur, name)
    if row is None:
        raise NotFound(name)
    return row


async def _list(cur: Cursor) -> list[tuple[Any, ...]]:
    await cur.execute(f"SELECT {COLUMNS} FROM {TABLE} WHERE {LIVE} ORDER BY name, id")
    rows: list[tuple[Any, ...]] = list(await cur.fetchall())
    return rows


async def _create(cur: Cursor, node: Node) -> tuple[Any, ...]:
    name = node.metadata.name
    lock = _lock_name(name)
    await cur.execute("SELECT GET_LOCK(%s, %s)", (lock, CREATE_LOCK_SECONDS))
    (locked,) = await cur.fetchone()
    if locked != 1:
        raise StoreUnavailable(f"mysql: another create of {name} holds its lock")
    try:
        # One transaction: removing the soft-deleted row that holds the uid and inserting the
        # new one commit together or not at all, so a failure in between (an error, a dropped
        # connection) leaves the old row as it was.
        await cur.connection.begin()
        try:
            row = await _insert_new(cur, node)
            await cur.connection.commit()
        except asyncio.CancelledError:
            # Cancelled mid-statement, the session is in no state for another: dropping it
            # makes the server roll back.
            cur.connection.close()
            raise
        except BaseException:
            await _roll_back(cur)
            raise
        return row
    finally:
        if not cur.connection.closed:  # a dropped connection released the lock already
            await cur.execute("SELECT RELEASE_LOCK(%s)", (lock,))


async def _insert_new(cur: Cursor, node: Node) -> tuple[Any, ...]:
    """Inside create's transaction: Conflict if a live row of the name exists, else insert
    the Node (after removing a soft-deleted row that still holds its uid) and return its row."""
    name = node.metadata.name
    if await _select_live(cur, name) is not None:
        raise Conflict(f"{name} exists")
    values = _row_values(node)
    now = _utc_now()
    created = node.metadata.creation_timestamp or now
    uids = [values["uid"]]
    if values["uid"] in (f"node-{name}", default_uid(name)):
        # k3net's own form of uid: too long for the column, or taken by a name that differs
        # only in case (the column's collation ignores case): the hashed form instead.
        uids = list(dict.fromkeys([default_uid(name), hashed_uid(name)]))
    for uid in uids:
        # A soft-deleted row keeps its uid, which is unique: it goes before the uid is reused.
        await cur.execute(
            f"DELETE FROM {TABLE} WHERE uid = %s AND BINARY uid = %s AND deleted_at IS NOT NULL",
            (uid, uid),
        )
        try:
            await cur.execute(
                f"INSERT INTO {TABLE} (name, namespace, uid, resource_version, labels,"
                " annotations, created_at, updated_at, phase, spec, status)"
                " VALUES (%(name)s, %(namespace)s, %(uid)s, %(version)s, %(labels)s,"
                f" %(annotations)s, %(created)s, {SERVER_NOW}, %(phase)s, %(spec)s,"
                " %(status)s)",
                {**values, "uid": uid, "version": next_version(None, now),
                 "created": _db_time(created), "tz": _utc_offset()},
            )
            break
        except pymysql.err.IntegrityError as exc:
            # Only this statement is undone; the transaction goes on with the next uid.
            if not (exc.args and exc.args[0] == ER.DUP_ENTRY):
                raise
            if uid == uids[-1]:
                raise Conflict(f"{name}: uid {uid} is taken") from exc
    return await _get(cur, name)


async def _roll_back(cur: Cursor) -> None:
    """Undo create's transaction. A connection that is gone needs nothing: the server rolls
    back what a closed session left uncommitted."""
    if cur.connection.closed:
        return
    try:
        await cur.connection.rollback()
    except LIBRARY_ERRORS as exc:
        log.debug("mysql: rollback of a create failed: %s", describe(exc))
        cur.connection.close()


async def _update(cur: Cursor, node: Node, version: str) -> tuple[Any, ...]:
    name = node.metadata.name
    row = await _get(cur, name)
    _node_row(row)  # never write over someone else's row, whatever its resource_version
    now = _utc_now()
    values = _row_values(node)
    await cur.execute(
        f"UPDATE {TABLE} SET namespace = %(namespace)s, labels = %(labels)s,"
        " annotations = %(annotations)s, phase = %(phase)s, spec = %(spec)s, status = %(status)s,"
        f" resource_version = %(new)s, updated_at = {SERVER_NOW}"
        f" WHERE id = %(id)s AND COALESCE(resource_version, '') = %(old)s AND {LIVE}",
        {**values, "new": next_version(version, now), "tz": _utc_offset(), "id": row[0],
         "old": version},
    )
    if cur.rowcount == 0:
        current = await _get(cur, name)  # NotFound if it went away meanwhile
        raise Conflict(f"{name} is at version {current[4]}, not {version}")
    return await _get(cur, name)


async def _delete(cur: Cursor, name: str, version: str | None) -> None:
    if version is None:
        await cur.execute(
            f"UPDATE {TABLE} SET deleted_at = {SERVER_NOW} WHERE {SAME_NAME} AND {LIVE}",
            {"tz": _utc_offset(), "name": name},
        )
        if cur.rowcount == 0:
            raise NotFound(name)
        return
    row = await _get(cur, name)
    _node_row(row)  # someone else's row stays, whatever its resource_version
    await cur.execute(
        f"UPDATE {TABLE} SET deleted_at = {SERVER_NOW}"
        f" WHERE id = %(id)s AND COALESCE(resource_version, '') = %(version)s AND {LIVE}",
        {"tz": _utc_offset(), "id": row[0], "version": version},
    )
    if cur.rowcount == 0:
        current = await _get(cur, name)  # NotFound if it went away meanwhile
        raise Conflict(f"{name} is at version {current[4]}, not {version}")


async def _fingerprints(cur: Cursor) -> list[tuple[Any, ...]]:
    await cur.execute(
        f"SELECT id, name, resource_version, updated_at FROM {TABLE} WHERE {LIVE} ORDER BY id"
    )
    rows: list[tuple[Any, ...]] = list(await cur.fetchall())
    return rows


async def _server_now(cur: Cursor) -> dt.datetime:
    """The server's clock, as this machine's local time (naive, as the columns hold times)."""
    await cur.execute("SELECT UTC_TIMESTAMP(3)")
    (now,) = await cur.fetchone()
    local: dt.datetime = now.replace(tzinfo=dt.UTC).astimezone().replace(tzinfo=None)
    return local


async def _snapshot(cur: Cursor) -> tuple[dt.datetime, list[tuple[Any, ...]]]:
    now = await _server_now(cur)
    return now, await _list(cur)


async def _recent(
    cur: Cursor, since: dt.datetime, max_id: int
) -> tuple[dt.datetime, list[tuple[Any, ...]]]:
    """The server's time now, and (id, name, resource_version, updated_at, deleted_at) of
    every row written or deleted since `since`, or inserted above `max_id`: three index range
    reads (updated_at, deleted_at, id) that find nothing on an idle table."""
    now = await _server_now(cur)
    columns = "id, name, resource_version, updated_at, deleted_at"
    await cur.execute(
        f"SELECT {columns} FROM {TABLE} WHERE updated_at >= %(since)s"
        f" UNION SELECT {columns} FROM {TABLE} WHERE deleted_at >= %(since)s"
        f" UNION SELECT {columns} FROM {TABLE} WHERE id > %(max_id)s",
        {"since": since, "max_id": max_id},
    )
    rows: list[tuple[Any, ...]] = list(await cur.fetchall())
    return now, rows


async def _live_fingerprints(cur: Cursor, names: list[str]) -> list[tuple[Any, ...]]:
    marks = ", ".join(["%s"] * len(names))
    await cur.execute(
        f"SELECT id, name, resource_version, updated_at FROM {TABLE}"
        f" WHERE name IN ({marks}) AND {LIVE}", names,
    )
    wanted = set(names)  # IN follows the column's case-insensitive collation: exact names only
    return [row for row in await cur.fetchall() if row[1] in wanted]


async def _rows_by_id(cur: Cursor, ids: list[int]) -> list[tuple[Any, ...]]:
    marks = ", ".join(["%s"] * len(ids))
    await cur.execute(f"SELECT {COLUMNS} FROM {TABLE} WHERE id IN ({marks}) AND {LIVE}", ids)
    rows: list[tuple[Any, ...]] = list(await cur.fetchall())
    return rows


async def _on_connection(pool: Any, work: Callable[..., Awaitable[T]], *args: Any) -> T:
    async with pool.acquire() as conn:
        if getattr(pool, "k3net_tls", False) and not conn._secure:
            # aiomysql quietly stays plain with a server that offers no TLS: refuse that.
            conn.close()
            raise TLSRefused("the server did not start TLS (storage.mysql.ca_file is set)")
        _watched(conn)
        async with conn.cursor() as cur:
            return await work(cur, *args)


def _watched(conn: Any) -> None:
    """Have the kernel watch `conn`'s TCP connection (module docstring), once per connection; a
    unix socket needs nothing (no packet of it is ever lost)."""
    if getattr(conn, "k3net_watched", False):
        return
    conn.k3net_watched = True
    writer = getattr(conn, "_writer", None)
    sock = writer.get_extra_info("socket") if writer is not None else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        keepalive(sock, SERVER_SILENCE, idle=SERVER_IDLE)


class TLSRefused(pymysql.err.OperationalError):
    """TLS was asked for and the server did not start it (a library-level failure)."""


def tls_context(config: MySQLConfig) -> ssl.SSLContext | None:
    """The TLS context for `config` (None without ca_file): the server is verified against
    ca_file, and its name too when connecting by host (a unix socket has no name to check)."""
    if config.ca_file is None:
        return None
    context = ssl.create_default_context(cafile=config.ca_file)
    if config.cert_file is not None:
        context.load_cert_chain(config.cert_file, config.key_file)
    if config.socket:
        context.check_hostname = False
    return context


# --- the store ------------------------------------------------------------------------------


@attrs.define
class PollStats:
    """What the watch's polls cost, counted by the store (the benchmark reads it)."""

    polls: int = 0  # quick polls (the window query)
    full_passes: int = 0  # fingerprint passes over every live row
    rows_read: int = 0  # rows fetched by quick polls and full passes, snapshots excluded


class MySQLStore:
    kind = "mysql"

    def __init__(self, config: MySQLConfig) -> None:
        self._config = config
        # Three pools, so that no reader can starve the writer: "write" (get, create, update,
        # delete: the agent's writer) holds up to max_open_conns connections; "read" (list and
        # scan: /nodes, `k3net nodes`) holds READ_CONNECTIONS and lets that many lists run at
        # once; "poll" is the watch's own connection. Made on first use.
        self._pools: dict[str, Any] = {}
        self._reads = trio.CapacityLimiter(READ_CONNECTIONS)
        self._table_ready = False
        self._lock = trio.Lock()
        self.poll_stats = PollStats()

    async def _run(self, work: Callable[..., Awaitable[T]], *args: Any, pool: str = "write") -> T:
        """Run `work(cursor, *args)` on a connection of `pool`; library errors are
        StoreUnavailable, k3net's own errors pass through."""
        ready = await self._ready_pool(pool)
        try:
            return await aio_as_trio(_on_connection)(ready, work, *args)
        except LIBRARY_ERRORS as exc:
            if isinstance(exc, pymysql.err.ProgrammingError) and exc.args[:1] == (ER.NO_SUCH_TABLE,):
                self._table_ready = False  # dropped behind our back: create it again next time
            raise StoreUnavailable(f"mysql: {describe(exc)}") from exc

    async def _ready_pool(self, name: str) -> Any:
        async with self._lock:
            try:
                if name not in self._pools:
                    size = {"write": self._config.max_open_conns, "read": READ_CONNECTIONS,
                            "poll": 1}[name]
                    self._pools[name] = await aio_as_trio(self._create_pool)(size)
                pool = self._pools[name]
                if not self._table_ready:
                    await aio_as_trio(_on_connection)(pool, _create_table)
                    self._table_ready = True
            except LIBRARY_ERRORS as exc:
                raise StoreUnavailable(f"mysql: {describe(exc)}") from exc
            return pool

    async def _create_pool(self, size: int) -> Any:
        c = self._config
        where: dict[str, Any] = (
            {"unix_socket": c.socket} if c.socket else {"host": c.host, "port": c.port}
        )
        tls = tls_context(c)
        pool = await aiomysql.create_pool(
            minsize=0, maxsize=size, user=c.user, password=c.password, db=c.database,
            autocommit=True, charset="utf8mb4", client_flag=CLIENT.FOUND_ROWS,
            connect_timeout=CONNECT_SECONDS, init_command=SESSION_INIT, ssl=tls, **where,
        )
        pool.k3net_tls = tls is not None
        return pool

    async def get(self, name: str) -> Stored:
        return _node_row(await self._run(_get, name))

    async def list(self) -> list[Stored]:
        return (await self.scan()).nodes

    async def scan(self) -> Scan:
        async with self._reads:
            return _scan(await self._run(_list, pool="read"))

    async def create(self, node: Node) -> Stored:
        return stored_from_row(await self._run(_create, node))

    async def update(self, node: Node, version: str) -> Stored:
        return stored_from_row(await self._run(_update, node, version))

    async def delete(self, name: str, version: str | None = None) -> None:
        await self._run(_delete, name, version)

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        events = self._poll()
        try:
            yield events
        finally:
            with trio.move_on_after(CLOSE_SECONDS, shield=True):
                await events.aclose()

    async def _poll(self) -> AsyncGenerator[WatchEvent, None]:
        state: _PollState | None = None  # None: the next poll reads a full Snapshot
        failures = 0
        rng = random.Random()
        while True:
            try:
                if state is None:
                    now, rows = await self._run(_snapshot, pool="poll")
                    state = _PollState(
                        known=_first_per_name(_fingerprint(r) for r in rows),
                        since=now - WINDOW_MARGIN, max_id=max((r[0] for r in rows), default=0),
                        full_pass_at=trio.current_time() + FULL_PASS_SECONDS,
                    )
                    scan = _scan(rows)
                    del rows
                    if scan.foreign:
                        log.warning("mysql: %d rows of %s are not Nodes (first: %s: %s)",
                                    len(scan.foreign), TABLE, scan.foreign[0].key,
                                    scan.foreign[0].reason)
                    yield Snapshot(tuple(scan.nodes), tuple(scan.foreign))
                else:
                    for event in await self._changes(state):
                        yield event
                failures = 0
                await trio.sleep(self._config.poll_interval)
            except StoreUnavailable as exc:
                delay = DEFAULT_BACKOFF.delay(failures, rng)
                failures += 1
                log.warning("mysql watch: poll failed (%s); retrying in %s", exc,
                            format_duration(delay))
                yield Lost(str(exc))
                state = None
                await trio.sleep(delay)

    async def _changes(self, state: _PollState) -> Events:
        """Put/Deleted for what changed since the last poll; `state` is updated to match.

        The quick poll asks only for rows written, soft-deleted or inserted since the last
        poll (less a margin for clocks and transactions in flight): with the updated_at index,
        an idle table costs no row at all. Every FULL_PASS_SECONDS a pass over every live row's
        fingerprint also finds what the quick poll cannot see: rows removed for good, and
        writers that set an older updated_at (a clock behind) or none."""
        stats = self.poll_stats
        if trio.current_time() >= state.full_pass_at:
            state.full_pass_at = trio.current_time() + FULL_PASS_SECONDS
            everything = await self._run(_fingerprints, pool="poll")
            stats.full_passes += 1
            stats.rows_read += len(everything)
            return await self._diff(state, _first_per_name(everything), complete=True)
        now, recent = await self._run(_recent, state.since, state.max_id, pool="poll")
        stats.polls += 1
        stats.rows_read += len(recent)
        state.since = now - WINDOW_MARGIN
        state.max_id = max([state.max_id, *(r[0] for r in recent)])
        if not recent:
            return []
        live = [r[:4] for r in recent if r[4] is None]
        gone = {r[1] for r in recent if r[4] is not None and r[1] in state.known
                and state.known[r[1]][0] == r[0]}
        # A name whose Node row was deleted: another live row of that name may now be its Node.
        if gone:
            others = await self._run(_live_fingerprints, sorted(gone), pool="poll")
            stats.rows_read += len(others)
            live += others
        current: dict[str, Any] = _first_per_name(live)
        for name in gone - set(current):
            current[name] = None  # no live row left
        return await self._diff(state, current, complete=False, gone=gone)

    async def _diff(
        self, state: _PollState, current: dict[str, Any], *, complete: bool,
        gone: set[str] | frozenset[str] = frozenset(),
    ) -> Events:
        """Events for the fingerprints in `current` (every live row's if `complete`, else the
        recent ones, None for a name without a live row) against what was yielded before."""
        known = state.known
        changed = []
        for name, fp in current.items():
            old = known.get(name)
            if fp is None or fp == old:
                continue
            if old is not None and not complete and fp[0] > old[0] and name not in gone:
                continue  # a newer duplicate row of a name: the lowest id stays its Node
            changed.append(fp[0])
        rows = await self._run(_rows_by_id, changed, pool="poll") if changed else []
        self.poll_stats.rows_read += len(rows)
        events: Events = []
        for row in sorted(rows, key=_write_order):
            known[row[1]] = _fingerprint(row)
            try:
                events.append(Put(stored_from_row(row)))
            except InvalidNode as exc:
                item = _foreign(row, exc)
                log.warning("mysql: %s (%s) is no longer a Node: %s", item.key, item.name,
                            item.reason)
                events.append(Deleted(item.name, foreign=item))
        if complete:
            vanished = set(known) - set(current)
        else:
            vanished = {name for name, fp in current.items() if fp is None and name in known}
        for name in sorted(vanished):
            del known[name]
            events.append(Deleted(name))
        return events

    async def aclose(self) -> None:
        pools, self._pools = self._pools, {}
        self._table_ready = False
        with trio.move_on_after(CLOSE_SECONDS, shield=True):
            for pool in pools.values():
                try:
                    pool.close()
                    await aio_as_trio(pool.wait_closed)()
                except LIBRARY_ERRORS as exc:
                    log.debug("closing a mysql pool: %s", describe(exc))


@attrs.define
class _PollState:
    known: dict[str, tuple[Any, ...]]  # name -> fingerprint of the row last yielded
    since: dt.datetime  # the next quick poll reads rows written from here on (local time)
    max_id: int  # and rows inserted above this id
    full_pass_at: float  # trio time of the next full pass


def _fingerprint(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """(id, name, resource_version, updated_at) of a row of COLUMNS."""
    return (row[0], row[1], row[4], row[8])


async def _create_table(cur: Cursor) -> None:
    # Asking first spares the server's "already exists" note (a Python warning in aiomysql).
    await cur.execute("SHOW TABLES LIKE %s", (TABLE,))
    if not await cur.fetchall():
        await cur.execute(CREATE_TABLE)
        return
    await cur.execute(f"SHOW INDEX FROM {TABLE} WHERE Column_name = 'updated_at'")
    if await cur.fetchall():
        return
    try:
        await cur.execute(f"CREATE INDEX {UPDATED_INDEX} ON {TABLE} (updated_at)")
    except pymysql.err.MySQLError as exc:
        log.warning("mysql: cannot index %s.updated_at (%s): every poll reads more rows",
                    TABLE, describe(exc))


def _first_per_name(fingerprints: Any) -> dict[str, tuple[Any, ...]]:
    """name -> (id, name, resource_version, updated_at) of the lowest id per name."""
    out: dict[str, tuple[Any, ...]] = {}
    for fp in sorted(fingerprints, key=lambda fp: fp[0]):
        out.setdefault(fp[1], tuple(fp))
    return out


def _write_order(row: tuple[Any, ...]) -> tuple[Any, ...]:
    updated_at, number = row[8], parse.revision(row[4])
    return (updated_at or dt.datetime.min, number if isinstance(number, int) else 0, row[0])


def _scan(rows: list[tuple[Any, ...]]) -> Scan:
    """One item per name (its lowest id), Nodes and foreign rows, each sorted by name."""
    nodes: dict[str, Stored] = {}
    others: dict[str, Foreign] = {}
    for row in sorted(rows, key=lambda r: r[0]):
        if row[1] in nodes or row[1] in others:
            continue
        try:
            nodes[row[1]] = stored_from_row(row)
        except InvalidNode as exc:
            others[row[1]] = _foreign(row, exc)
    return Scan([nodes[n] for n in sorted(nodes)], [others[n] for n in sorted(others)])

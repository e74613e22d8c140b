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
removed first, as uid is unique). If several live rows share a name (name is not unique in the
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

Watch: MySQL cannot push changes, so the watch polls every `config.poll_interval`: a Snapshot
first, then, each round, the fingerprint (id, resource_version, updated_at) of every live row;
changed rows are read in full and yielded as Put in the order they were written (updated_at,
then resource_version), rows gone as Deleted. Several writes to one Node between two polls
arrive as one Put of the last state. After an outage the next successful poll yields a fresh
Snapshot.

Limits: statements are bounded on the server (MariaDB's max_statement_time, and lock waits),
because a query cancelled from trio drops the connection while the server keeps running it.
Rows that are not a Node (invalid JSON, wrong types) are reported as `Foreign` by scan and the
watch and left out of list; get of such a row raises ForeignValue, and update refuses to write
over one (see `k3net.store.base`). The pool keeps up to max_open_conns
connections; max_idle_conns has no equivalent in aiomysql and is ignored. Every aiomysql,
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
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiomysql
import pymysql
import trio
from pymysql.constants import CLIENT, ER
from trio_asyncio import aio_as_trio

from k3net.backoff import DEFAULT_BACKOFF
from k3net.config import MySQLConfig
from k3net.convert import InvalidNode, node_from_dict, node_to_dict
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
  KEY idx_{TABLE}_deleted_at (deleted_at)
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
# A create waits at most this long for another create of the same name (which takes
# milliseconds) before reporting the store unavailable.
CREATE_LOCK_SECONDS = 3
# Closing the pool or a watch during shutdown may take at most this long.
CLOSE_SECONDS = 2.0

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
    if previous and previous.isdigit():
        fresh = max(fresh, int(previous) + 1)
    return str(fresh)


def _json_column(value: Any, column: str) -> dict[str, Any] | None:
    """A JSON object column (labels, annotations, spec, status); NULL is None."""
    if value is None:
        return None
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise InvalidNode(f"{column} is not JSON: {exc}") from exc
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
                    " %(annotations)s, %(created)s, %(updated)s, %(phase)s, %(spec)s, %(status)s)",
                    {**values, "uid": uid, "version": next_version(None, now),
                     "created": _db_time(created), "updated": _db_time(now)},
                )
                break
            except pymysql.err.IntegrityError as exc:
                if not (exc.args and exc.args[0] == ER.DUP_ENTRY):
                    raise
                if uid == uids[-1]:
                    raise Conflict(f"{name}: uid {uid} is taken") from exc
        return await _get(cur, name)
    finally:
        if not cur.connection.closed:  # a dropped connection released the lock already
            await cur.execute("SELECT RELEASE_LOCK(%s)", (lock,))


async def _update(cur: Cursor, node: Node, version: str) -> tuple[Any, ...]:
    name = node.metadata.name
    row = await _get(cur, name)
    _node_row(row)  # never write over someone else's row, whatever its resource_version
    now = _utc_now()
    values = _row_values(node)
    await cur.execute(
        f"UPDATE {TABLE} SET namespace = %(namespace)s, labels = %(labels)s,"
        " annotations = %(annotations)s, phase = %(phase)s, spec = %(spec)s, status = %(status)s,"
        " resource_version = %(new)s, updated_at = %(updated)s"
        f" WHERE id = %(id)s AND COALESCE(resource_version, '') = %(old)s AND {LIVE}",
        {**values, "new": next_version(version, now), "updated": _db_time(now), "id": row[0],
         "old": version},
    )
    if cur.rowcount == 0:
        current = await _get(cur, name)  # NotFound if it went away meanwhile
        raise Conflict(f"{name} is at version {current[4]}, not {version}")
    return await _get(cur, name)


async def _delete(cur: Cursor, name: str, version: str | None) -> None:
    if version is None:
        await cur.execute(
            f"UPDATE {TABLE} SET deleted_at = %(now)s WHERE {SAME_NAME} AND {LIVE}",
            {"now": _db_time(_utc_now()), "name": name},
        )
        if cur.rowcount == 0:
            raise NotFound(name)
        return
    row = await _get(cur, name)
    _node_row(row)  # someone else's row stays, whatever its resource_version
    await cur.execute(
        f"UPDATE {TABLE} SET deleted_at = %s"
        f" WHERE id = %s AND COALESCE(resource_version, '') = %s AND {LIVE}",
        (_db_time(_utc_now()), row[0], version),
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
        async with conn.cursor() as cur:
            return await work(cur, *args)


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


class MySQLStore:
    kind = "mysql"

    def __init__(self, config: MySQLConfig) -> None:
        self._config = config
        self._pool: Any = None  # aiomysql.Pool, made on first use
        self._table_ready = False
        self._lock = trio.Lock()

    async def _run(self, work: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `work(cursor, *args)` on a pooled connection; library errors are
        StoreUnavailable, k3net's own errors pass through."""
        pool = await self._ready_pool()
        try:
            return await aio_as_trio(_on_connection)(pool, work, *args)
        except LIBRARY_ERRORS as exc:
            if isinstance(exc, pymysql.err.ProgrammingError) and exc.args[:1] == (ER.NO_SUCH_TABLE,):
                self._table_ready = False  # dropped behind our back: create it again next time
            raise StoreUnavailable(f"mysql: {describe(exc)}") from exc

    async def _ready_pool(self) -> Any:
        async with self._lock:
            try:
                if self._pool is None:
                    self._pool = await aio_as_trio(self._create_pool)()
                if not self._table_ready:
                    await aio_as_trio(_on_connection)(self._pool, _create_table)
                    self._table_ready = True
            except LIBRARY_ERRORS as exc:
                raise StoreUnavailable(f"mysql: {describe(exc)}") from exc
            return self._pool

    async def _create_pool(self) -> Any:
        c = self._config
        where: dict[str, Any] = (
            {"unix_socket": c.socket} if c.socket else {"host": c.host, "port": c.port}
        )
        tls = tls_context(c)
        pool = await aiomysql.create_pool(
            minsize=0, maxsize=c.max_open_conns, user=c.user, password=c.password, db=c.database,
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
        return _scan(await self._run(_list))

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
        known: dict[str, tuple[Any, ...]] = {}  # name -> fingerprint of the row last yielded
        resync = True
        failures = 0
        rng = random.Random()
        while True:
            try:
                if resync:
                    rows = await self._run(_list)
                    known = _first_per_name((r[0], r[1], r[4], r[8]) for r in rows)
                    resync = False
                    scan = _scan(rows)
                    if scan.foreign:
                        log.warning("mysql: %d rows of %s are not Nodes (first: %s: %s)",
                                    len(scan.foreign), TABLE, scan.foreign[0].key,
                                    scan.foreign[0].reason)
                    yield Snapshot(tuple(scan.nodes), tuple(scan.foreign))
                else:
                    for event in await self._changes(known):
                        yield event
                failures = 0
                await trio.sleep(self._config.poll_interval)
            except StoreUnavailable as exc:
                delay = DEFAULT_BACKOFF.delay(failures, rng)
                failures += 1
                log.warning("mysql watch: poll failed (%s); retrying in %.1fs", exc, delay)
                yield Lost(str(exc))
                resync = True
                await trio.sleep(delay)

    async def _changes(self, known: dict[str, tuple[Any, ...]]) -> Events:
        """Put/Deleted for what changed since `known`, which is updated to match."""
        current = _first_per_name(await self._run(_fingerprints))
        changed = [fp[0] for name, fp in current.items() if known.get(name) != fp]
        rows = await self._run(_rows_by_id, changed) if changed else []
        events: Events = []
        for row in sorted(rows, key=_write_order):
            known[row[1]] = (row[0], row[1], row[4], row[8])
            try:
                events.append(Put(stored_from_row(row)))
            except InvalidNode as exc:
                item = _foreign(row, exc)
                log.warning("mysql: %s (%s) is no longer a Node: %s", item.key, item.name,
                            item.reason)
                events.append(Deleted(item.name, foreign=item))
        for name in sorted(set(known) - set(current)):
            del known[name]
            events.append(Deleted(name))
        return events

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        self._table_ready = False
        if pool is None:
            return
        with trio.move_on_after(CLOSE_SECONDS, shield=True):
            try:
                pool.close()
                await aio_as_trio(pool.wait_closed)()
            except LIBRARY_ERRORS as exc:
                log.debug("closing the mysql pool: %s", describe(exc))


async def _create_table(cur: Cursor) -> None:
    # Asking first spares the server's "already exists" note (a Python warning in aiomysql).
    await cur.execute("SHOW TABLES LIKE %s", (TABLE,))
    if not await cur.fetchall():
        await cur.execute(CREATE_TABLE)


def _first_per_name(fingerprints: Any) -> dict[str, tuple[Any, ...]]:
    """name -> (id, name, resource_version, updated_at) of the lowest id per name."""
    out: dict[str, tuple[Any, ...]] = {}
    for fp in sorted(fingerprints, key=lambda fp: fp[0]):
        out.setdefault(fp[1], tuple(fp))
    return out


def _write_order(row: tuple[Any, ...]) -> tuple[Any, ...]:
    updated_at, version = row[8], row[4] or ""
    return (updated_at or dt.datetime.min, int(version) if version.isdigit() else 0, row[0])


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

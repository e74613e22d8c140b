"""The etcd backend: Nodes as JSON under the Go k3 store's keys.

Layout, shared with the Go components: key `/kubernetes//v1/Node/<name>` (the Go store's
`/kubernetes/<group>/<version>/<kind>/<name>` with the empty core group), value = the Node as
JSON (`node_to_json`). `metadata.resourceVersion` is not stored: the version is the key's
`mod_revision`, set on every Node this backend returns.

Writes are etcd transactions: create succeeds only if the key does not exist
(`create_revision == 0`), update only if `mod_revision` is still the version the caller read.

Connection: made on first use, not in `__init__`. `config.endpoints` are tried in order, each
for at most `dial_timeout`; after any failure the connection is dropped and the next call dials
again, so a restarted etcd or a dead endpoint costs one failed call. Every request has a
deadline (REQUEST_TIMEOUT: a store on the LAN answers in milliseconds), so a store that stops
answering (its packets dropped on the way, a hung server) fails the request within seconds and
the agent says so (/readyz `store`) instead of waiting on it; gRPC keepalive pings let a silently
dead connection that nobody is asking anything fail too. Every aetcd, gRPC and asyncio error
becomes StoreUnavailable here, nowhere else.

Watch: a Snapshot (with the revision it was read at), then Put/Deleted from an etcd watch that
starts at the next revision, so nothing falls between the two. When the watch breaks (etcd
restarted: aetcd's watch raises and never resumes) the watch dials again with capped backoff and
yields a fresh Snapshot. Each watch has its own connection, so a failed `get` does not disturb it.

Values that are not a Node (corrupt or foreign data under the prefix) are reported as `Foreign`
by `scan` and the watch and left out of `list`, so one bad key cannot hide every other Node;
`get` of such a key raises ForeignValue (neither NotFound, which would invite a create, nor a
valid Node). See `k3net.store.base`.

All library calls run through `trio_asyncio.aio_as_trio`: use this store inside
`trio_asyncio.open_loop()`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import aetcd
import aetcd.exceptions
import aetcd.rpc
import aetcd.watcher
import attrs
import grpc
import grpc.aio
import trio
from trio_asyncio import aio_as_trio

from k3net.backoff import DEFAULT_BACKOFF
from k3net.config import EtcdConfig, endpoint_uses_tls, parse_endpoint
from k3net.convert import InvalidNode, node_from_json, node_to_json
from k3net.core import parse
from k3net.durations import format_duration
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

PREFIX = "/kubernetes//v1/Node/"

# Ping every 10 s, give up on a connection that does not answer a ping within 5 s. etcd refuses
# pings more often than every 5 s (--grpc-keepalive-min-time), so 10 s is the safe side of that.
GRPC_OPTIONS = {
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.max_pings_without_data": 0,
    # One page of 500 Nodes of up to 64 kB each (gRPC's default is 4 MiB).
    "grpc.max_receive_message_length": 32 * 1024 * 1024,
}
# Every request (read, transaction, the creation of a watch; not the watch's stream) fails once
# it has waited this long: a store on the LAN answers in milliseconds, and a list of 10,000 Nodes
# is read in pages of PAGE_SIZE. Without it a request on a connection whose packets are dropped
# waited for the keepalive above, up to 15 s, while the agent still called the store healthy.
REQUEST_TIMEOUT = 5
# Nodes per page when listing: 500 Nodes of a few kB each make a response of a few MB, well
# inside the receive limit below (a k3 Node is 1-3 kB; a Go-written one with many images more).
PAGE_SIZE = 500
# Lists that may run at once on the read connection; more wait for their turn.
READ_CONCURRENCY = 2
_PREFIX_END = PREFIX[:-1].encode() + bytes([ord(PREFIX[-1]) + 1])  # the end of the prefix range
# Closing a client or cancelling a watch during shutdown may take at most this long.
CLOSE_TIMEOUT = 2.0

# What aetcd and gRPC raise when etcd is down, unreachable or refuses us. A stray
# asyncio.CancelledError (not caused by a trio cancellation, which arrives as trio.Cancelled)
# means aetcd tore down its own task: the connection is gone as well.
LIBRARY_ERRORS = (
    aetcd.exceptions.ClientError,
    grpc.RpcError,
    asyncio.TimeoutError,
    asyncio.CancelledError,
    OSError,
)

T = TypeVar("T")


def node_key(name: str) -> bytes:
    return f"{PREFIX}{name}".encode()


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def stored_from_kv(kv: Any) -> Stored:
    """The Stored for an etcd key-value; InvalidNode if the value is not this key's Node."""
    name = kv.key.decode(errors="replace").removeprefix(PREFIX)
    try:
        node = node_from_json(kv.value)
    except AttributeError as exc:  # cattrs on a string where a mapping belongs (labels: "x")
        raise InvalidNode(f"not a v1/Node: {exc}") from exc
    if node.metadata.name != name:
        raise InvalidNode(f"metadata.name is {node.metadata.name!r}, not {name!r}")
    version = str(kv.mod_revision)
    node.metadata.resource_version = version
    return Stored(node=node, version=version)


def _value(node: Node) -> bytes:
    unversioned = attrs.evolve(node, metadata=attrs.evolve(node.metadata, resource_version=None))
    return node_to_json(unversioned).encode()


def _written(value: bytes, revision: int) -> Stored:
    """What a successful write of `value` at `revision` stored (a fresh copy for the caller)."""
    node = node_from_json(value)
    node.metadata.resource_version = str(revision)
    return Stored(node=node, version=str(revision))


async def _close_client(client: aetcd.Client) -> None:
    """Close a client that may be broken; never raises, never blocks shutdown for long."""
    with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
        try:
            await aio_as_trio(client.close)()
        except LIBRARY_ERRORS as exc:
            log.debug("closing etcd client: %s", describe(exc))


class _Connection:
    """One aetcd client, dialled on first use and dropped after any failure."""

    def __init__(self, config: EtcdConfig) -> None:
        self._config = config
        self._client: aetcd.Client | None = None
        self._lock = trio.Lock()

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(client, *args)` on the asyncio side; any library error is StoreUnavailable."""
        client = await self._connected()
        try:
            return await aio_as_trio(fn)(client, *args)
        except LIBRARY_ERRORS as exc:
            await self.drop(client)
            raise StoreUnavailable(f"etcd: {describe(exc)}") from exc

    async def _connected(self) -> aetcd.Client:
        async with self._lock:
            if self._client is None:
                self._client = await self._dial()
            return self._client

    async def _dial(self) -> aetcd.Client:
        failures = []
        for endpoint in self._config.endpoints:
            host, port = parse_endpoint(endpoint, "storage.etcd.endpoints")
            password = self._config.password or "" if self._config.username else None
            client = _client(self._config, endpoint, host, port, password)
            answered = False
            try:
                # dial_timeout 0 is no limit, as in the Go client: the caller's deadline rules.
                with trio.move_on_after(self._config.dial_timeout or math.inf) as scope:
                    try:
                        # connect() only builds the channel (and authenticates); a read proves
                        # that this endpoint answers and lets us read Nodes.
                        await aio_as_trio(_check)(client)
                        answered = True
                    except LIBRARY_ERRORS as exc:
                        failures.append(f"{endpoint}: {describe(exc)}")
            finally:
                if not answered:  # also when cancelled: no channel may outlive its loop
                    await _close_client(client)
            if answered:
                return client
            if scope.cancelled_caught:
                failures.append(f"{endpoint}: no answer within "
                                f"{format_duration(self._config.dial_timeout)}")
        raise StoreUnavailable("etcd: no endpoint answered (" + "; ".join(failures) + ")")

    async def drop(self, client: aetcd.Client | None = None) -> None:
        """Forget the client (only if it is still `client`, when given) and close it."""
        if self._client is None or (client is not None and client is not self._client):
            return
        client, self._client = self._client, None
        await _close_client(client)


def _client(
    config: EtcdConfig, endpoint: str, host: str, port: int, password: str | None
) -> aetcd.Client:
    if not endpoint_uses_tls(endpoint):
        return aetcd.Client(host, port, username=config.username, password=password,
                            timeout=REQUEST_TIMEOUT, options=GRPC_OPTIONS)
    return _TLSClient(host, port, username=config.username, password=password,
                      timeout=REQUEST_TIMEOUT, options=GRPC_OPTIONS,
                      credentials=_credentials(config))


def _credentials(config: EtcdConfig) -> grpc.ChannelCredentials:
    """TLS credentials from the config's PEM files; StoreUnavailable naming a file that cannot
    be read (it may appear later, as a certificate being renewed does)."""
    files = {}
    for key in ("ca_file", "cert_file", "key_file"):
        name = getattr(config, key)
        if name is None:
            continue
        try:
            files[key] = Path(name).read_bytes()
        except OSError as exc:
            raise StoreUnavailable(f"etcd: storage.etcd.{key} {name}: {exc.strerror}") from None
    return grpc.ssl_channel_credentials(
        root_certificates=files.get("ca_file"), private_key=files.get("key_file"),
        certificate_chain=files.get("cert_file"),
    )


class _TLSClient(aetcd.Client):  # type: ignore[misc]
    """An aetcd client on a TLS channel: aetcd itself only dials plain ones. Same stubs, same
    authentication; only the channel differs."""

    def __init__(self, *args: Any, credentials: grpc.ChannelCredentials, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        self.channel = grpc.aio.secure_channel(
            f"{self._host}:{self._port}", self._credentials, options=list(self._options.items())
        )
        if self._username is not None and self._password is not None:
            self.auth_stub = aetcd.rpc.AuthStub(self.channel)
            response = await self.auth_stub.Authenticate(
                aetcd.rpc.AuthenticateRequest(name=self._username, password=self._password),
                timeout=self._timeout,
            )
            self.metadata = (("token", response.token),)
        self.kvstub = aetcd.rpc.KVStub(self.channel)
        self.clusterstub = aetcd.rpc.ClusterStub(self.channel)
        self.leasestub = aetcd.rpc.LeaseStub(self.channel)
        self.maintenancestub = aetcd.rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd.watcher.Watcher(
            aetcd.rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
        )
        self._connected.set()


async def _check(client: aetcd.Client) -> None:
    await client.connect()
    await client.get(PREFIX.encode())


class EtcdStore:
    kind = "etcd"

    def __init__(self, config: EtcdConfig) -> None:
        self._config = config
        self._conn = _Connection(config)
        # Lists (/nodes, `k3net nodes`: megabytes with many Nodes) run on a connection of their
        # own, READ_CONCURRENCY at once, so a burst of them cannot crowd the writer's channel.
        self._read_conn = _Connection(config)
        self._reads = trio.CapacityLimiter(READ_CONCURRENCY)

    async def get(self, name: str) -> Stored:
        kv = await self._conn.call(lambda c: c.get(node_key(name)))
        if kv is None:
            raise NotFound(name)
        try:
            return stored_from_kv(kv)
        except InvalidNode as exc:
            raise ForeignValue(_foreign(kv, exc)) from exc

    async def list(self) -> list[Stored]:
        return (await self.scan()).nodes

    async def scan(self) -> Scan:
        async with self._reads:
            kvs, _ = await _read_all(self._read_conn)
            return _scan(kvs)

    async def create(self, node: Node) -> Stored:
        key, value = node_key(node.metadata.name), _value(node)

        def txn(c: aetcd.Client) -> Awaitable[Any]:
            tx = c.transactions
            return c.transaction(
                compare=[tx.create(key) == 0], success=[tx.put(key, value)], failure=[]
            )

        ok, responses = await self._conn.call(txn)
        if not ok:
            raise Conflict(f"{node.metadata.name} exists")
        return _written(value, responses[0].response_put.header.revision)

    async def update(self, node: Node, version: str) -> Stored:
        name = node.metadata.name
        revision = _revision(name, version)
        key, value = node_key(name), _value(node)

        def txn(c: aetcd.Client) -> Awaitable[Any]:
            tx = c.transactions
            return c.transaction(
                compare=[tx.mod(key) == revision], success=[tx.put(key, value)],
                failure=[tx.get(key)],
            )

        ok, responses = await self._conn.call(txn)
        if not ok:
            _lost_race(name, version, responses)
        return _written(value, responses[0].response_put.header.revision)

    async def delete(self, name: str, version: str | None = None) -> None:
        key = node_key(name)
        if version is None:
            deleted = await self._conn.call(lambda c: c.delete(key))
            if deleted is None:
                raise NotFound(name)
            return
        revision = _revision(name, version)

        def txn(c: aetcd.Client) -> Awaitable[Any]:
            tx = c.transactions
            return c.transaction(
                compare=[tx.mod(key) == revision], success=[tx.delete(key)],
                failure=[tx.get(key)],
            )

        ok, responses = await self._conn.call(txn)
        if not ok:
            _lost_race(name, version, responses)

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        watch = _Watch(_Connection(self._config))
        events = watch.events()
        try:
            yield events
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await events.aclose()
                await watch.close()

    async def aclose(self) -> None:
        await self._conn.drop()
        await self._read_conn.drop()


def _revision(name: str, version: str) -> int:
    number = parse.revision(version)
    if isinstance(number, parse.Foreign):
        raise Conflict(f"{name}: {version[:64]!r} is not an etcd revision")
    return number


def _lost_race(name: str, version: str, responses: Any) -> NoReturn:
    """A compare-and-swap transaction failed: NotFound if the key is gone, else Conflict."""
    current = responses[0] if responses else []
    if not current:
        raise NotFound(name)
    _, kv = current[0]
    raise Conflict(f"{name} is at version {kv.mod_revision}, not {version}")


async def _read_all(conn: _Connection) -> tuple[list[Any], int]:
    """Every key-value under the prefix, read in pages at one revision (a consistent snapshot),
    and that revision. One response for everything would outgrow gRPC's message limit at a few
    thousand Nodes."""
    first = await conn.call(_range_page, PREFIX.encode(), 0)
    revision = first.header.revision
    kvs = list(first.kvs)
    more = first.more
    while more:
        page = await conn.call(_range_page, kvs[-1].key + b"\0", revision)
        kvs.extend(page.kvs)
        more = page.more
    return kvs, revision


async def _range_page(client: aetcd.Client, start: bytes, revision: int) -> Any:
    """Up to PAGE_SIZE key-values from `start` to the end of the prefix, at `revision` (0: the
    newest). aetcd's get_prefix has no limit nor revision, so the request is made here."""
    await client.connect()
    request = aetcd.rpc.RangeRequest(
        key=start, range_end=_PREFIX_END, limit=PAGE_SIZE, revision=revision
    )
    return await client.kvstub.Range(request, timeout=client._timeout, metadata=client.metadata)


def _foreign(kv: Any, reason: object) -> Foreign:
    key = kv.key.decode(errors="replace")
    return foreign(key.removeprefix(PREFIX), key, reason)


def _scan(result: Any) -> Scan:
    """The Nodes and the foreign values among key-values, each sorted by name."""
    nodes, others = [], []
    for kv in result:
        try:
            nodes.append(stored_from_kv(kv))
        except InvalidNode as exc:
            others.append(_foreign(kv, exc))
    return Scan(sorted(nodes, key=lambda s: s.name), sorted(others, key=lambda f: f.name))


async def _watch_from(client: aetcd.Client, revision: int) -> Any:
    return await client.watch_prefix(PREFIX.encode(), start_revision=revision)


async def _next_event(_client: aetcd.Client, iterator: AsyncIterator[Any]) -> Any:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return None


class _Watch:
    """One consumer's watch: its own connection, and the aetcd watch currently open on it."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._handle: Any = None  # aetcd Watch, while one is open

    async def events(self) -> AsyncGenerator[WatchEvent, None]:
        failures = 0
        rng = random.Random()
        while True:
            try:
                kvs, revision = await _read_all(self._conn)
                scan = _scan(kvs)
                del kvs  # 10,000 Nodes are megabytes: not kept while the watch runs
                if scan.foreign:
                    log.warning("etcd: %d values under %s are not Nodes (first: %s: %s)",
                                len(scan.foreign), PREFIX, scan.foreign[0].key,
                                scan.foreign[0].reason)
                yield Snapshot(tuple(scan.nodes), tuple(scan.foreign))
                failures = 0
                self._handle = await self._conn.call(_watch_from, revision + 1)
                iterator = self._handle.__aiter__()
                while True:
                    event = await self._conn.call(_next_event, iterator)
                    if event is None:
                        raise StoreUnavailable("etcd: the watch ended")
                    yield _watch_event(event)
            except StoreUnavailable as exc:
                delay = DEFAULT_BACKOFF.delay(failures, rng)
                failures += 1
                log.warning("etcd watch lost (%s); retrying in %s", exc, format_duration(delay))
                yield Lost(str(exc))
                # Closing the client ends its watch stream; the handle must not be cancelled
                # on its own (aetcd fails on a closed client's watch).
                self._handle = None
                await self._conn.drop()
                await trio.sleep(delay)

    async def _cancel_handle(self) -> None:
        """Cancel the open watch. Only while its client is live: whenever the connection is
        dropped (on any failure) the handle is forgotten with it."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
            try:
                await aio_as_trio(handle.cancel)()
            except LIBRARY_ERRORS as exc:
                log.debug("cancelling etcd watch: %s", describe(exc))

    async def close(self) -> None:
        await self._cancel_handle()
        await self._conn.drop()


def _watch_event(event: Any) -> WatchEvent:
    name = event.kv.key.decode(errors="replace").removeprefix(PREFIX)
    if event.kind == "DELETE":
        return Deleted(name)
    try:
        return Put(stored_from_kv(event.kv))
    except InvalidNode as exc:
        item = _foreign(event.kv, exc)
        log.warning("etcd: %s is no longer a Node: %s", item.key, item.reason)
        return Deleted(name, foreign=item)

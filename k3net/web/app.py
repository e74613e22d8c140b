"""The agent's HTTP and websocket endpoints, as a plain ASGI app (no framework).

| path | answer |
|---|---|
| `GET /` | the cluster page (`k3net.web.page`; its assets under `/static/`) |
| `GET /healthz` | `200 ok` while the process runs (as the Go agent) |
| `GET /livez` | `200 ok` while the process serves; `?verbose`, `?exclude=` (see `k3net.web.checks`) |
| `GET /readyz` | `200 ok` when the checks `store`, `mdns`, `http` pass, else 503 naming the failed ones; `?verbose`, `?exclude=`, `/readyz/<check>` (and `/livez/<check>`) |
| `GET /info` | this agent: node, port, pid, addrs, ts, mdns {service, domain}, selfUp, startedAt, version, commit, store, subscribers, epoch |
| `GET /hold` | `200` and then nothing while the agent runs: peers hold it open, and see its end at once when this process dies (`k3net.tasks.hold`); with `?nonce=N&beat=S`, a beat line every S seconds (1..600) that shows this process runs (`k3net.core.identity.beat_line`); 429 past `limits.HOLDS_PER_CLIENT` from one client address, 503 past `limits.HOLDS` in all |
| `POST /hello?node=N&port=P` | an agent introduces itself (`k3net.tasks.introduce`): 202, and it is probed at the request's source address (a hint, never written as such); 400 for a bad query, 429 past `limits.INTRODUCTIONS_PER_CLIENT` from one client address, 503 past `limits.INTRODUCTIONS` in all, 404 where introductions are not taken |
| `GET /peers` | the peers this agent follows: name, addresses, port, pid, state, foundBy (mdns, join, scan, store, introduced), confirmed, held (the address of the connection held to its /hold, or null), lastProbe {outcome, latencySeconds, address, error} (null before the first; a beat on its hold that stood in for a probe shows as confirmed in 0 s at the held address) |
| `GET /reach?node=NAME` | whether this agent reaches the peer it follows as NAME, probed now (`k3net.tasks.probe`, the suspicion's indirect probe): `{node, reached, outcome, latencySeconds, by}` (with a cluster key and `&nonce=`, `proof`); never an address from the request; 404 for a name it does not follow; 429 past `limits.REACHES_PER_CLIENT` questions at once from one client address, 503 past `limits.REACHES` |
| `GET /nodes` | every Node in the store as a Kubernetes `NodeList` (503 `Status` if unreachable) |
| `GET /metrics` | Prometheus text format |
| `GET /events/snapshot` | the event hub's current view: the snapshot message /events starts with |
| `/events` (websocket) | the event stream of `k3net.events`; `?since=N[&epoch=E]` resumes; refused with HTTP 429 past `limits.SUBSCRIBERS_PER_CLIENT` from one client address, 503 past `limits.SUBSCRIBERS` in all |

The app runs in hypercorn's trio worker (possibly inside `trio_asyncio.open_loop()`, so store
calls of the etcd and MySQL backends work): everything here is trio code. It only reads: the
store is written by the agent's writer task alone.

Websocket close codes: 1001 "agent shutting down" (hub closed or server stopping), 4008
"subscriber fell behind" (resume with `?since=`), 1008 for a bad query string, 1009 (by
hypercorn) for a client message longer than `limits.WEBSOCKET_MESSAGE` bytes.

Connections that stay open (/hold, /events) are admitted per client address and in all
(`Admission`): one client cannot take the slots that the others, or a restarted agent, need.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qs

import attrs
import trio
from prometheus_client import CONTENT_TYPE_LATEST

from k3net import limits, version
from k3net.convert import format_time, node_list
from k3net.core import identity, parse
from k3net.core.messages import ProbeResult
from k3net.core.table import PeerView
from k3net.current import Current
from k3net.durations import format_duration
from k3net.events import EventHub, Subscription
from k3net.health import StoreHealth
from k3net.metrics import Metrics
from k3net.settings import Settings
from k3net.store.base import Store, StoreError
from k3net.tasks.probe import reach_proof
from k3net.web import checks
from k3net.web.page import Asset, load_assets, not_modified

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# /nodes answers 503 if the store takes longer than this (the caller's deadline: see STYLE 4).
STORE_DEADLINE = 5.0

CLOSE_SHUTDOWN = (1001, "agent shutting down")
CLOSE_FELL_BEHIND = (4008, "subscriber fell behind")
CLOSE_BAD_REQUEST = 1008


def _never_up() -> bool:
    return False


def _no_mdns() -> bool:
    # An app served without an mDNS advertisement (tests, benchmarks) has none to wait for.
    return True


def _no_peers() -> list[PeerView]:
    return []


def _no_conflict() -> str | None:
    return None


def _no_addrs() -> Sequence[str]:
    return ()
def _none_held() -> dict[str, str]:
    return {}


@attrs.define
class AppState:
    """What the endpoints read: the agent's owners of what changes, and what never does."""

    # The agent's owners of its settings and of its store (a reload may change either): read at
    # every request, never copied.
    settings: Current[Settings]
    store: Current[Store]
    hub: EventHub
    metrics: Metrics
    health: StoreHealth
    # Wall-clock start of the agent (time.time()), reported as /info startedAt.
    started_at: float
    # This node's addresses as advertised over mDNS now (read from their owner on every /info).
    addrs: Callable[[], Sequence[str]] = _no_addrs
    # Returns once what /info answers for this node changes (its advertised addresses): every
    # held connection (/hold) ends then, so that its holder probes again and learns them; its
    # beats would go on vouching for the old ones.
    facts_changed: Callable[[], Awaitable[None]] = trio.sleep_forever
    # True once this agent's own Node is written Ready (read on every /info).
    self_up: Callable[[], bool] = _never_up
    # True while this agent's mDNS advertisement is registered (the /readyz `mdns` check).
    mdns_up: Callable[[], bool] = _no_mdns
    # The peers the agent's table follows now (read on every /peers).
    peers: Callable[[], list[PeerView]] = _no_peers
    # The peers whose /hold this agent holds open now: name -> address (read on every /peers).
    held: Callable[[], dict[str, str]] = _none_held
    # Why this agent stands down from its own name (another live agent holds it), or None
    # (the /readyz `name` check; /info then no longer answers as that name).
    name_conflict: Callable[[], str | None] = _no_conflict
    # Takes an introduction (client address, query string) -> (HTTP status, a line to answer):
    # `k3net.tasks.introduce.Introductions.offer`. None: /hello is not served.
    introduce: Callable[[str, bytes], tuple[int, str]] | None = None
    # Probes the peer followed under a name now, for /reach (None: no such peer); None: no
    # prober runs, every name is unknown.
    reach: Callable[[str], Awaitable[ProbeResult | None]] | None = None


class QueryError(ValueError):
    """A query string the endpoint cannot use; the message is for the client."""


def parse_events_query(query: bytes) -> tuple[int | None, str | None]:
    """`since` (a non-negative integer) and `epoch` from an /events query string."""
    params = parse_qs(query.decode("latin-1"), keep_blank_values=True)
    since: int | None = None
    if "since" in params:
        text = params["since"][-1]
        number = parse.number(text, 0, 10**18 - 1)  # ASCII digits only (core.parse)
        if isinstance(number, parse.Foreign):
            raise QueryError(f"bad since {text[:40]!r}: expected a non-negative integer")
        since = number
    epoch = params["epoch"][-1] if "epoch" in params else None
    return since, epoch


class Admission:
    """Long-lived connections of one kind open now, counted by client address: at most
    `per_client` from one address and `overall` in all. Pure bookkeeping."""

    def __init__(self, per_client: int, overall: int) -> None:
        self.per_client = per_client
        self.overall = overall
        self._open: dict[str, int] = {}
        self.total = 0

    def admit(self, client: str) -> str | None:
        """Count one more connection from `client` and return None, or return which cap
        refuses it ("per-client" or "overall") and count nothing."""
        if self._open.get(client, 0) >= self.per_client:
            return "per-client"
        if self.total >= self.overall:
            return "overall"
        self._open[client] = self._open.get(client, 0) + 1
        self.total += 1
        return None

    def release(self, client: str) -> None:
        """One connection `admit` let in has ended."""
        left = self._open[client] - 1
        if left:
            self._open[client] = left
        else:
            del self._open[client]
        self.total -= 1


def _client(scope: Scope) -> str:
    """The client's address (no port): what the caps per client count by."""
    client = scope.get("client")
    return str(client[0]) if client else ""


class App:
    """The ASGI application. `shutdown()` (called by `k3net.web.serve.run` when it stops)
    ends every /events stream with 1001, so that hypercorn does not wait for them. The hub is
    left open: the agent closes it (which ends the streams too)."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._streams: set[Subscription] = set()
        self._holds: set[trio.Event] = set()  # set to end a /hold (shutdown)
        self._hold_slots = Admission(limits.HOLDS_PER_CLIENT, limits.HOLDS)
        self._event_slots = Admission(limits.SUBSCRIBERS_PER_CLIENT, limits.SUBSCRIBERS)
        self._reach_slots = Admission(limits.REACHES_PER_CLIENT, limits.REACHES)
        self._stopping = False
        self._assets = load_assets()
        self._routes: dict[str, Callable[[], Awaitable[tuple[int, str, bytes]]]] = {
            "/healthz": self._healthz,
            "/info": self._info,
            "/nodes": self._nodes,
            "/peers": self._peers,
            "/metrics": self._metrics,
            "/events/snapshot": self._snapshot,
        }

    def shutdown(self) -> None:
        self._stopping = True
        for sub in self._streams:
            sub.shutdown()
        for hold in self._holds:
            hold.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope["path"] == "/hold" and scope["method"] == "GET":
                await self._hold(_client(scope), scope.get("query_string", b""), receive, send)
            elif scope["path"] == "/hello" and scope["method"] == "POST":
                await self._hello(scope, send)
            else:
                await self._http(scope, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)

    # --- plain HTTP ---------------------------------------------------------------------------

    async def _http(self, scope: Scope, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        asset = self._assets.get(path)
        if asset is not None and method in ("GET", "HEAD"):
            await _send_asset(scope, send, asset)
            return
        handler = self._routes.get(path)
        if path == "/reach":
            handler = functools.partial(self._reach, scope)
        health = path in ("/livez", "/readyz") or path.startswith(("/livez/", "/readyz/"))
        if handler is None and health and method in ("GET", "HEAD"):
            endpoint, _, only = path[1:].partition("/")
            status, ctype, body = checks.answer(
                endpoint, self._checks(endpoint), scope.get("query_string", b""), only or None
            )
        elif handler is None and path == "/events":
            status, ctype, body = 426, "text/plain", b"/events is a websocket\n"
        elif handler is None and asset is None and not health:
            status, ctype, body = 404, "text/plain", b"not found\n"
        elif method not in ("GET", "HEAD"):
            status, ctype, body = 405, "text/plain", b"method not allowed\n"
        elif path == "/info":
            status, ctype, body = await self._info(scope.get("query_string", b""))
        else:
            assert handler is not None  # a GET of an asset was answered above
            status, ctype, body = await handler()
        headers = [
            (b"content-type", ctype.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        if status == 405:
            headers.append((b"allow", b"GET, HEAD"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    async def _hold(self, client: str, query: bytes, receive: Receive, send: Send) -> None:
        """Answer 200, then send nothing more until the client goes, this agent stops or its
        addresses change (`AppState.facts_changed`); but a beat every `?beat=` seconds
        (`identity.beat_line`: with a cluster key, made for the holder's `?nonce=`), while this
        agent answers as its name."""
        refused = "stopping" if self._stopping else self._hold_slots.admit(client)
        if refused is not None:
            status, body = self._refusal(refused, "held connections", "holds", client)
            await send({"type": "http.response.start", "status": status, "headers": [
                (b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        done = trio.Event()
        self._holds.add(done)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/plain"), (b"cache-control", b"no-store"),
                (b"connection", b"close")]})
            # hypercorn sends the head with the first piece of the body.
            await send({"type": "http.response.body", "body": b"held\n", "more_body": True})

            async def client_gone() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                done.set()

            async def facts_changed() -> None:
                await self.state.facts_changed()
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(client_gone)
                nursery.start_soon(facts_changed)
                beat = identity.beat_from_query(query)
                if beat is not None:
                    nursery.start_soon(self._beats, beat, identity.nonce_from_query(query), send)
                await done.wait()
                nursery.cancel_scope.cancel()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self._holds.discard(done)
            self._hold_slots.release(client)

    async def _beats(self, every: int, nonce: bytes | None, send: Send) -> None:
        """A held connection's beats (`_hold`), none while standing down from our name. Never
        more often than our own probe interval: holders of our cluster ask for theirs, and
        one who asks for more could make every slot of `limits.HOLDS` beat once a second."""
        seq = 0
        while True:
            await trio.sleep(max(every, self.state.settings.value.probe_interval))
            settings = self.state.settings.value  # (a reload may change name and key)
            if self.state.name_conflict() is not None:
                continue
            seq += 1
            line = identity.beat_line(seq, settings.node_name, settings.cluster_key, nonce)
            await send({"type": "http.response.body", "body": line, "more_body": True})

    async def _hello(self, scope: Scope, send: Send) -> None:
        """An introduction (k3net.tasks.introduce): its query says who, the connection where.
        The request body is never read."""
        introduce = self.state.introduce
        if introduce is None or self._stopping:
            status, line = (404, "not found") if introduce is None else (503, "shutting down")
        else:
            status, line = introduce(_client(scope), scope.get("query_string", b""))
        body = (line + "\n").encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": body})

    def _refusal(self, why: str, what: str, limit: str, client: str) -> tuple[int, bytes]:
        """The status and body refusing a long-lived connection; counts the cap reached."""
        if why == "stopping":
            return 503, b"shutting down\n"
        if why == "per-client":
            self.state.metrics.limit_hit(f"{limit}-per-client")
            return 429, f"too many {what} from {client}\n".encode()
        self.state.metrics.limit_hit(limit)
        return 503, f"too many {what}\n".encode()

    async def _healthz(self) -> tuple[int, str, bytes]:
        return 200, "text/plain; charset=utf-8", b"ok\n"

    def _checks(self, endpoint: str) -> dict[str, checks.Check]:
        if endpoint == "livez":
            return {"ping": lambda: None}  # answering is the check: the store is no reason to restart
        s = self.state
        return {
            "store": lambda: None if s.health.ok else s.health.reason,
            "mdns": lambda: None if s.mdns_up() else "advertisement not registered",
            "http": lambda: "shutting down" if self._stopping else None,
            "name": s.name_conflict,
        }

    async def _info(self, query: bytes = b"") -> tuple[int, str, bytes]:
        """Who we are. Peers' probes ask this with `?nonce=...`; with a cluster key the answer
        carries `proof`, HMAC(key, nonce || node), and `mac`, which covers the node, port, pid and
addresses too: see k3net.core.identity."""
        s = self.state
        settings = s.settings.value
        conflict = s.name_conflict()
        if conflict is not None:
            # Standing down: answering as the name would make peers write our facts into the
            # Node the other agent holds.
            return _json(409, {"error": conflict})
        info: dict[str, Any] = {
            "node": settings.node_name,
            "port": settings.listen_port,
            "pid": os.getpid(),
            "addrs": list(s.addrs()),
            "ts": format_time(dt.datetime.now(dt.UTC)),
            "mdns": {"service": settings.service, "domain": settings.domain},
            "selfUp": bool(s.self_up()),
            "startedAt": format_time(dt.datetime.fromtimestamp(s.started_at, dt.UTC)),
            "version": version.version(),
            "commit": version.commit(),
            "store": s.store.value.kind,
            "subscribers": s.hub.subscriber_count,
            "epoch": s.hub.epoch,
        }
        key = settings.cluster_key
        nonce = identity.nonce_from_query(query) if key is not None else None
        if key is not None and nonce is not None:
            info["proof"] = identity.proof(key, nonce, settings.node_name)
            info["mac"] = identity.facts_mac(key, nonce, settings.node_name, info["port"],
                                             info["pid"], info["addrs"])
        return _json(200, info)

    async def _reach(self, scope: Scope) -> tuple[int, str, bytes]:
        """Whether we reach the peer we follow under `?node=` (the suspicion's indirect probe,
        `k3net.tasks.probe`). Only a name is taken: the peer is probed where this agent knows
        it, so a stranger cannot make it dial an address of its choosing. Any sign of the host
        (an answer, a refusal, a connection accepted) is `reached`: it refutes a suspicion."""
        s = self.state
        query = scope.get("query_string", b"")
        names = parse_qs(query.decode("latin-1")).get("node", [])
        if len(names) != 1 or not names[0]:
            return _json(400, {"error": "expected one node=NAME"})
        name = names[0]
        client = _client(scope)
        refused = "stopping" if self._stopping else self._reach_slots.admit(client)
        if refused is not None:
            status, body = self._refusal(refused, "reach questions", "reaches", client)
            return status, "text/plain", body
        try:
            result = await s.reach(name) if s.reach is not None else None
        finally:
            self._reach_slots.release(client)
        if result is None:
            return _json(404, {"error": f"no peer {name[:64]!r} followed here"})
        settings = s.settings.value
        reached = result.outcome != "timeout"
        answer: dict[str, Any] = {
            "node": name, "reached": reached, "outcome": result.outcome,
            "latencySeconds": round(result.latency, 6), "by": settings.node_name,
        }
        key = settings.cluster_key
        nonce = identity.nonce_from_query(query) if key is not None else None
        if key is not None and nonce is not None:
            answer["proof"] = reach_proof(key, nonce, settings.node_name, name, reached)
        return _json(200, answer)

    async def _snapshot(self) -> tuple[int, str, bytes]:
        # From the hub's memory, not the store: the page polls it for lastSeen, which /events
        # does not stream (heartbeats would drown the interesting events).
        return _json(200, self.state.hub.snapshot())

    async def _nodes(self) -> tuple[int, str, bytes]:
        try:
            with trio.fail_after(STORE_DEADLINE):
                stored = await self.state.store.value.list()
        except trio.TooSlowError:
            return _status_503(f"store did not answer within {format_duration(STORE_DEADLINE)}")
        except StoreError as exc:
            return _status_503(f"store unavailable: {exc}")
        return _json(200, node_list(s.node for s in stored))

    async def _peers(self) -> tuple[int, str, bytes]:
        held = self.state.held()
        return _json(200, {"peers": [
            {"name": p.name, "addresses": list(p.addresses), "port": p.port, "pid": p.pid,
             "state": p.state, "foundBy": p.found_by, "confirmed": p.confirmed,
             "held": held.get(p.name), "lastProbe": _probe_answer(p.last_probe)}
            for p in self.state.peers()
        ]})

    async def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, await self.state.metrics.exposition()

    # --- /events ------------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        connect = await receive()
        if connect["type"] != "websocket.connect":
            return
        if scope["path"] != "/events":
            await send({"type": "websocket.close"})  # before accept: hypercorn answers 403
            return
        client = _client(scope)
        refused = self._event_slots.admit(client)
        if refused is not None:
            status, body = self._refusal(refused, "/events subscribers", "subscribers", client)
            await send({"type": "websocket.http.response.start", "status": status, "headers": [
                (b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "websocket.http.response.body", "body": body})
            return
        try:
            await self._subscribed(scope, receive, send)
        finally:
            self._event_slots.release(client)

    async def _subscribed(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        try:
            since, epoch = parse_events_query(scope.get("query_string", b""))
        except QueryError as exc:
            await send({"type": "websocket.close", "code": CLOSE_BAD_REQUEST, "reason": str(exc)})
            return
        with self.state.hub.subscribe(since, epoch) as sub:
            if self._stopping:
                sub.shutdown()
            self._streams.add(sub)
            try:
                await self._stream(sub, receive, send)
            finally:
                self._streams.discard(sub)

    async def _stream(self, sub: Subscription, receive: Receive, send: Send) -> None:
        async with trio.open_nursery() as nursery:
            # The client leaving (or hypercorn closing the connection) ends the stream.
            nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
            async for message in sub:
                await send({"type": "websocket.send", "text": json.dumps(message)})
            code, reason = CLOSE_FELL_BEHIND if sub.dropped else CLOSE_SHUTDOWN
            await send({"type": "websocket.close", "code": code, "reason": reason})
            nursery.cancel_scope.cancel()


async def _send_asset(scope: Scope, send: Send, asset: Asset) -> None:
    """One page asset, or 304 when the browser already has it."""
    headers = dict(scope.get("headers") or [])
    if_none_match = headers.get(b"if-none-match", b"").decode("latin-1")
    status, body = (304, b"") if not_modified(asset, if_none_match) else (200, asset.body)
    response_headers = [*asset.headers(), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "websocket.disconnect":
        pass  # a client has nothing to say on /events; ignore what it sends
    scope.cancel()


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _probe_answer(result: ProbeResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {"outcome": result.outcome, "latencySeconds": round(result.latency, 6),
            "address": result.address, "error": result.error}


def _json(status: int, data: Any) -> tuple[int, str, bytes]:
    return status, "application/json", (json.dumps(data) + "\n").encode()


def _status_503(message: str) -> tuple[int, str, bytes]:
    """A Kubernetes `Status` object, as the API server answers errors."""
    return _json(503, {
        "apiVersion": "v1", "kind": "Status", "status": "Failure",
        "reason": "ServiceUnavailable", "message": message, "code": 503,
    })


def make_app(state: AppState) -> App:
    return App(state)

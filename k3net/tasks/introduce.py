"""introduce: join by introduction. A new agent tells the agents it finds that it is here, so
that they probe it at once instead of waiting to hear of it over mDNS or through the store.

Why: a newcomer's own mDNS record reaches its peers only once its registration is done, and
RFC 6762 makes that take at least 0.75 s of probing for the name (1.2-1.7 s measured); a shared
store tells its peers only after its first write and their watch. But the newcomer hears of its
peers much sooner: they answer its mDNS query for the service type at once (the browser's first
query, tasks/browse.py), `--join` answers its first ask, and the store's first snapshot lists
the Ready Nodes. So the newcomer introduces itself, as Serf's joiner does over TCP.

    newcomer                                       peer
    browse/join/store --PeerSeen--> table --ProbeNow--> prober --GET /info--> (confirmed)
    prober --confirmed--> tap --POST /hello?node=N&port=P-->  Introductions (admitted, bounded)
                                                              --PeerSeen(found_by="introduced",
                                                                  addresses=(TCP source,))-->
                                                              table --> probe N at that address

Sending (`tap`): every probe result passes through on its way to the table; the first time a
peer is confirmed (it answered at an address as itself, with the cluster key's proof if one is
set), this agent says hello to it there, once per peer name while it runs (a peer that
restarts is found again by the other ways), if the peer still needs it (`needed`): once this
agent's own mDNS record is out, a peer found over mDNS has that record already, so only peers
found other ways (the store, `--join`, `--scan`, beyond a router) are greeted then. An agent up
before 2,000 peers start makes 2,000 connections fewer. Only proven agents are greeted: an announcement
from a stranger cannot make us send requests anywhere. At most `SENDERS` hellos are under way
at once; each is bounded by the probe timeout; a hello that fails is not retried (the other
ways of discovery go on).

Receiving (`Introductions`): an introduction is a HINT, like an mDNS announcement
(design.md section 6). It carries only a name and a port; the address is the TCP connection's
source, never anything the request says. The peer table probes it like any peer, and only its
identity answer (at that address, as that name, with the key's proof when a key is set) is ever
written; one that does not answer as itself at its first probe is forgotten at once
(core/table.py). So the most a stranger's hello can do is make this agent probe the stranger's
own address, once. A hello never changes where a peer found another way is probed: "introduced"
is the last of `core.table.FOUND_BY`, and the store's Ready Node takes over from it. Hellos are admitted per client address and in all within a sliding
window (`limits.INTRODUCTIONS_PER_CLIENT`, `limits.INTRODUCTIONS`, per
`limits.INTRODUCTION_WINDOW`): a refusal answers 429 or 503 and counts in
`k3net_limit_hits_total`. The admitted wait in a small queue for the table (`QUEUE`); when it is
full the hello is refused the same way (overall).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

import attrs
import trio

from k3net import limits
from k3net.core import addresses as addrs
from k3net.core import parse
from k3net.core.identity import AnswerReader, get
from k3net.core.messages import PeerSeen, ProbeResult
from k3net.core.names import name_problem
from k3net.core.table import Message
from k3net.metrics import Metrics
from k3net.tasks.tcp import connect, exchange

log = logging.getLogger("k3net.introduce")

# Hellos under way at once from this agent: a newcomer on a LAN of hundreds greets them in
# waves, not with hundreds of sockets at once (each hello takes one, for a few milliseconds).
SENDERS = 8
# Admitted introductions waiting for the table. The table takes one in microseconds; the queue
# only absorbs a burst (a LAN of agents greeting a restarted one at once).
QUEUE = 64
# The longest query string read: a node name (253) and a port, with room.
MAX_QUERY = 512


@attrs.frozen
class Hello:
    """What an introduction says: who the sender is and where it listens."""

    node: str
    port: int


def parse_hello(query: bytes) -> Hello | parse.Foreign:
    """The one reader of `/hello`'s query string `node=NAME&port=PORT`: a Hello, or Foreign
    saying why not. Never raises."""
    if len(query) > MAX_QUERY:
        return parse.Foreign("query", repr(query[:parse.SHOWN]), "too long")
    try:
        params = parse_qs(query.decode("ascii"), keep_blank_values=True, strict_parsing=False,
                          max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        return parse.Foreign("query", repr(query[:parse.SHOWN]), "not a query string")
    node = params.get("node", [""])[-1]
    problem = name_problem(node)
    if problem is not None:
        return parse.Foreign("node", repr(node[:parse.SHOWN]), problem)
    port = parse.port(params.get("port", [""])[-1])
    if isinstance(port, parse.Foreign):
        return port
    return Hello(node, port)


def source_address(client: str) -> str | None:
    """The sender's address as the table takes it (an IPv4 client seen on a dual-stack socket
    as ::ffff:a.b.c.d is a.b.c.d), or None if there is none to probe."""
    ip = addrs.parse(client)
    if ip is None:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped if mapped is not None else ip)


class Window:
    """Events within a sliding window of `seconds`, per key and in all: `admit(key, now)` counts
    one and returns None, or says which cap refuses it ("per-client" or "overall") and counts
    nothing. Pure bookkeeping; memory stays within `overall` entries."""

    def __init__(self, per_key: int, overall: int, seconds: float) -> None:
        self.per_key = per_key
        self.overall = overall
        self.seconds = seconds
        self._times: collections.deque[tuple[float, str]] = collections.deque()
        self._count: dict[str, int] = {}

    def _expire(self, now: float) -> None:
        while self._times and self._times[0][0] <= now - self.seconds:
            _, key = self._times.popleft()
            left = self._count[key] - 1
            if left:
                self._count[key] = left
            else:
                del self._count[key]

    def admit(self, key: str, now: float) -> str | None:
        self._expire(now)
        if self._count.get(key, 0) >= self.per_key:
            return "per-client"
        if len(self._times) >= self.overall:
            return "overall"
        self._times.append((now, key))
        self._count[key] = self._count.get(key, 0) + 1
        return None


class Introductions:
    """The receiving side of /hello (module docstring). `offer` is called by the web app for
    each request; `run` hands what was admitted to the table."""

    def __init__(self, me: str, metrics: Metrics, *,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.me = me
        self.metrics = metrics
        self.clock = clock
        self.window = Window(limits.INTRODUCTIONS_PER_CLIENT, limits.INTRODUCTIONS,
                             limits.INTRODUCTION_WINDOW)
        self._send, self._recv = trio.open_memory_channel[PeerSeen](QUEUE)

    def offer(self, client: str, query: bytes) -> tuple[int, str]:
        """Take one hello from `client` (the TCP peer's address): the HTTP status and a line
        for the answer. 202: the sender will be probed at `client`; nothing is written."""
        hello = parse_hello(query)
        if isinstance(hello, parse.Foreign):
            return 400, f"bad hello: {hello}"
        address = source_address(client)
        if address is None:
            return 400, "no client address to probe"
        if hello.node == self.me:
            return 409, f"{self.me} is this agent"
        refused = self.window.admit(address, self.clock())
        if refused == "per-client":
            self.metrics.limit_hit("introductions-per-client")
            return 429, f"too many introductions from {address}"
        if refused is None:
            try:
                self._send.send_nowait(PeerSeen(hello.node, (address,), hello.port,
                                                found_by="introduced"))
            except trio.WouldBlock:
                refused = "overall"
        if refused is not None:
            self.metrics.limit_hit("introductions")
            return 503, "too many introductions"
        log.debug("introduced: %s at %s:%d", hello.node, address, hello.port)
        return 202, f"{hello.node} will be probed at {address}:{hello.port}"

    async def run(self, out: trio.MemorySendChannel[Message], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hand every admitted introduction to the table until cancelled."""
        async with out:
            task_status.started()
            async for seen in self._recv:
                await out.send(seen)


def hello_request(host: str, port: int, me: str, my_port: int) -> bytes:
    """The HTTP/1.1 `POST /hello` that introduces `me` (listening on `my_port`) to the agent at
    `host:port` (an IP address as text)."""
    return get(host, port, f"/hello?node={me}&port={my_port}", method="POST")


async def say_hello(address: str, port: int, me: str, my_port: int) -> int | None:
    """Introduce `me` to the agent at `address:port`: the answer's HTTP status, or None if none
    came. No timeout: the caller bounds the call."""
    reader = AnswerReader()
    try:
        with await connect(address, port) as sock:
            await exchange(trio.SocketStream(sock), hello_request(address, port, me, my_port),
                           reader)
    except (OSError, trio.BrokenResourceError):
        return None
    return reader.status if reader.complete else None


# How a hello is sent: say_hello, or a test's script of the answers.
Greet = Callable[[str, int, str, int], Awaitable[int | None]]


async def tap(
    inbox: trio.MemoryReceiveChannel[ProbeResult],
    out: trio.MemorySendChannel[Message],
    *,
    me: str,
    port: int,
    timeout: float,  # noqa: ASYNC109  (--probe-timeout: each hello is bounded by it)
    greet: Greet = say_hello,
    needed: Callable[[str], bool] = lambda name: True,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Pass every probe result on to `out` (the table); greet each peer the first time it is
    confirmed while `needed(name)` says it has not heard of us yet (module docstring). Ends
    when the prober closes `inbox`."""
    greeted: set[str] = set()
    limiter = trio.CapacityLimiter(SENDERS)

    async def one(name: str, address: str, peer_port: int) -> None:
        async with limiter:
            status = None
            with trio.move_on_after(timeout):
                status = await greet(address, peer_port, me, port)
        log.debug("hello to %s at %s:%d: %s", name, address, peer_port, status or "no answer")

    async with out, inbox, trio.open_nursery() as nursery:
        task_status.started()
        async for result in inbox:
            await out.send(result)
            # The port where it answered as itself (the prober completes the facts with it).
            peer_port = result.facts.port if result.facts is not None else None
            if (result.outcome == "confirmed" and result.address is not None and peer_port
                    and result.name not in greeted and len(greeted) < limits.PEERS
                    and needed(result.name)):
                greeted.add(result.name)
                nursery.start_soon(one, result.name, result.address, peer_port)
        nursery.cancel_scope.cancel()

"""GET /reach?node=NAME, the indirect probe of a suspicion (`k3net.tasks.probe`), served by real
hypercorn on loopback: it probes only a peer the agent follows under that name, answers a name it
does not follow with 404, is capped per client and in all, and proves its answer with the
cluster key; `ask_reach` is the asking side."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from k3net import limits
from k3net.core.messages import ProbeResult
from k3net.core.table import ProbeTarget
from k3net.current import Current
from k3net.metrics import Metrics
from k3net.settings import Settings
from k3net.tasks.probe import Helper, Prober, ask_reach

from .helpers.fakeagent import FakeAgent
from .helpers.sockets import unanswering
from .helpers.web import Web, connect_from, get, start_web

KEY = b"a-cluster-key-of-32-bytes-------"


@pytest.fixture
async def web(nursery: trio.Nursery) -> AsyncIterator[Web]:
    w = await start_web(nursery)
    yield w
    await w.stop()


@pytest.fixture
def silent_port() -> Iterator[int]:
    yield from unanswering("127.0.0.1")


@pytest.fixture
async def prober(web: Web, nursery: trio.Nursery, silent_port: int, closed_port: int) -> Prober:
    """The agent's prober behind /reach: peer-a answers, peer-b's host is silent, peer-c's
    refuses."""
    listeners = await nursery.start(functools.partial(
        trio.serve_tcp, FakeAgent("peer-a").handle, 0, host="127.0.0.1"))
    prober = Prober(interval=15.0, timeout=0.3, metrics=Metrics())
    prober.targets["peer-a"] = ProbeTarget(
        "peer-a", ("127.0.0.1",), listeners[0].socket.getsockname()[1])
    prober.targets["peer-b"] = ProbeTarget("peer-b", ("127.0.0.1",), silent_port)
    prober.targets["peer-c"] = ProbeTarget("peer-c", ("127.0.0.1",), closed_port)
    web.state.reach = prober.reach
    return prober


async def reach(web: Web, query: str) -> tuple[int, dict[str, object]]:
    status, _, body = await get(web.url(f"/reach?{query}"))
    return status, json.loads(body) if body.startswith(b"{") else {}


async def test_reach_answers_whether_this_agent_reaches_the_peer(
    web: Web, prober: Prober
) -> None:
    status, answer = await reach(web, "node=peer-a")
    assert (status, answer["reached"], answer["outcome"], answer["by"]) == (
        200, True, "confirmed", "node-a")
    status, answer = await reach(web, "node=peer-b")
    assert (status, answer["reached"], answer["outcome"]) == (200, False, "timeout")
    # A refusal is its host's kernel answering: reached (it refutes a suspicion).
    status, answer = await reach(web, "node=peer-c")
    assert (status, answer["reached"], answer["outcome"]) == (200, True, "refused")


async def test_a_name_not_followed_is_404_and_nothing_is_dialled(
    web: Web, prober: Prober, nursery: trio.Nursery
) -> None:
    dialled = trio.Event()

    async def count(stream: trio.SocketStream) -> None:
        dialled.set()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, count, 0,
                                                      host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    for query in ("node=peer-z", f"node=127.0.0.1:{port}", "node=127.0.0.1",
                  f"node=peer-a&address=127.0.0.1&port={port}"):
        status, answer = await reach(web, query)
        if "peer-a" in query:
            assert status == 200  # the name counts; the address and port given are ignored
        else:
            assert status == 404, query
            assert "followed here" in str(answer["error"])
    assert not dialled.is_set()
    assert (await reach(web, ""))[0] == 400
    assert (await reach(web, "node=a&node=b"))[0] == 400


async def test_without_a_prober_every_name_is_unknown(web: Web) -> None:
    assert (await reach(web, "node=peer-a"))[0] == 404


async def test_reach_is_capped_per_client_and_counted(web: Web) -> None:
    release = trio.Event()
    asked: list[str] = []
    # Set once that many questions are under way.
    under_way = {n: trio.Event() for n in range(1, limits.REACHES_PER_CLIENT + 2)}

    async def slow(name: str) -> ProbeResult | None:
        asked.append(name)
        under_way[len(asked)].set()
        await release.wait()
        return ProbeResult(name, "timeout", 0.7)

    web.state.reach = slow

    async def question(source: str) -> bytes:
        stream = await connect_from(source, web.port)
        async with stream:
            await stream.send_all(b"GET /reach?node=peer-a HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            with trio.fail_after(5):
                while b"\r\n\r\n" not in answer:
                    answer += await stream.receive_some(4096)
            return answer

    answers: list[bytes] = []

    async def keep(source: str) -> None:
        answers.append(await question(source))

    async with trio.open_nursery() as nursery:
        for _ in range(limits.REACHES_PER_CLIENT):
            nursery.start_soon(keep, "127.0.0.1")
        with trio.fail_after(5):
            await under_way[limits.REACHES_PER_CLIENT].wait()
        refused = await question("127.0.0.1")
        assert refused.startswith(b"HTTP/1.1 429")
        # Another client address still gets its answer.
        nursery.start_soon(keep, "127.0.0.2")
        with trio.fail_after(5):
            await under_way[limits.REACHES_PER_CLIENT + 1].wait()
        release.set()
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers)
    assert web.metrics.limit_hits.labels(limit="reaches-per-client")._value.get() == 1


async def test_ask_reach_reads_the_answer_and_checks_the_key(
    web: Web, prober: Prober
) -> None:
    helper = Helper("node-a", "127.0.0.1", web.port)
    assert await ask_reach(helper, "peer-a", 5.0) is True
    assert await ask_reach(helper, "peer-b", 5.0) is False
    assert await ask_reach(helper, "peer-z", 5.0) is None  # 404: no answer
    # With a cluster key, only an answer proved with it counts.
    web.state.settings = Current(Settings(node_name="node-a", listen_port=7946, cluster_key=KEY))
    assert await ask_reach(helper, "peer-a", 5.0, key=KEY) is True
    assert await ask_reach(helper, "peer-b", 5.0, key=KEY) is False
    assert await ask_reach(helper, "peer-a", 5.0, key=b"another-key-of-32-bytes---------") \
        is None
    assert await ask_reach(Helper("node-b", "127.0.0.1", web.port), "peer-a", 5.0,
                           key=KEY) is None  # proved by another agent than the one asked


async def test_ask_reach_gets_no_answer_from_a_silent_helper(
    autojump_clock: trio.testing.MockClock, silent_port: int
) -> None:
    assert await ask_reach(Helper("node-a", "127.0.0.1", silent_port), "peer-a", 1.9) is None

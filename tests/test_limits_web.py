"""The caps on /hold, /events and websocket messages (k3net.limits), against the app served by
real hypercorn on loopback: clients from 127.0.0.1 and 127.0.0.2 (both loopback on Linux) are two
client addresses."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from k3net import limits
from k3net.web.app import Admission

from .helpers.web import Web, connect_from, start_web


@pytest.fixture
async def web(nursery: trio.Nursery) -> AsyncIterator[Web]:
    w = await start_web(nursery)
    yield w
    await w.stop()


async def ask_hold(stream: trio.SocketStream) -> bytes:
    """Send GET /hold and read until the status line and the first body piece are in."""
    await stream.send_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in answer or not (b"held\n" in answer or b"too many" in answer):
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            answer += chunk
    return answer


def hits(web: Web, limit: str) -> float:
    return web.metrics.limit_hits.labels(limit=limit)._value.get()


# --- pure bookkeeping -------------------------------------------------------------------------


def test_admission_caps_each_client_and_all() -> None:
    slots = Admission(per_client=2, overall=3)
    assert [slots.admit("a"), slots.admit("a"), slots.admit("a")] == [None, None, "per-client"]
    assert slots.admit("b") is None
    assert slots.admit("c") == "overall"  # 3 open in all
    slots.release("a")
    assert slots.admit("c") is None  # a slot freed is free for anyone
    assert slots.admit("a") == "overall"
    for client in ("a", "b", "c"):
        slots.release(client)
    assert slots.total == 0 and slots.admit("a") is None


# --- /hold -------------------------------------------------------------------------------------


async def test_one_client_gets_its_share_of_holds_and_another_still_gets_its_own(
    web: Web,
) -> None:
    streams = [await connect_from("127.0.0.1", web.port) for _ in range(20)]
    answers = [await ask_hold(stream) for stream in streams]
    held = [a for a in answers if a.startswith(b"HTTP/1.1 200")]
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 429")]
    assert len(held) == limits.HOLDS_PER_CLIENT
    assert len(refused) == 20 - limits.HOLDS_PER_CLIENT
    assert b"too many held connections from 127.0.0.1" in refused[0]
    assert hits(web, "holds-per-client") == 20 - limits.HOLDS_PER_CLIENT

    other = await connect_from("127.0.0.2", web.port)
    assert (await ask_hold(other)).startswith(b"HTTP/1.1 200")

    # A hold that ends frees its slot for the same client.
    await streams[0].aclose()
    with trio.fail_after(5):
        while True:
            again = await connect_from("127.0.0.1", web.port)
            answer = await ask_hold(again)
            if answer.startswith(b"HTTP/1.1 200"):
                break
            await again.aclose()
            await trio.sleep(0.05)  # the server has not seen the close yet
    for stream in [*streams, other, again]:
        await stream.aclose()


# --- /events -----------------------------------------------------------------------------------


async def test_events_subscribers_per_client_are_capped_with_429(
    web: Web, nursery: trio.Nursery
) -> None:
    async def subscribe(source: str) -> WebSocketConnection:
        ws = await wrap_client_stream(nursery, await connect_from(source, web.port),
                                      "127.0.0.1", "/events")
        with trio.fail_after(5):
            await ws.get_message()  # its snapshot: it is served
        return ws

    async def refused(source: str) -> bytes:
        """A websocket handshake that the app refuses: its whole HTTP answer."""
        stream = await connect_from(source, web.port)
        await stream.send_all(
            b"GET /events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        answer = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(4096):
                answer += chunk
        await stream.aclose()
        return answer

    admitted = [await subscribe("127.0.0.1") for _ in range(limits.SUBSCRIBERS_PER_CLIENT)]
    answer = await refused("127.0.0.1")
    assert answer.startswith(b"HTTP/1.1 429"), answer
    assert answer.endswith(b"too many /events subscribers from 127.0.0.1\n")
    assert hits(web, "subscribers-per-client") == 1
    other = await subscribe("127.0.0.2")  # another client still gets its own
    assert web.hub.subscriber_count == limits.SUBSCRIBERS_PER_CLIENT + 1

    await admitted[0].aclose()
    with trio.fail_after(5):
        while web.hub.subscriber_count > limits.SUBSCRIBERS_PER_CLIENT:  # noqa: ASYNC110
            await trio.sleep(0.02)  # (the hub has no hook to wait on)
    again = await subscribe("127.0.0.1")  # its slot is free again
    for ws in [*admitted[1:], other, again]:
        await ws.aclose()


async def test_websocket_message_over_the_cap_closes_1009(web: Web) -> None:
    async with web.ws() as ws:
        with trio.fail_after(5):
            await ws.get_message()  # the snapshot
        await ws.send_message("x" * limits.WEBSOCKET_MESSAGE)  # at the cap: ignored, kept open
        with trio.move_on_after(0.3):
            await ws.get_message()
        assert not ws.closed
        await ws.send_message("x" * (limits.WEBSOCKET_MESSAGE + 1))
        with pytest.raises(ConnectionClosed) as info, trio.fail_after(5):
            while True:
                await ws.get_message()
    assert info.value.reason is not None and info.value.reason.code == 1009

"""Several etcd endpoints are tried in order: a dead first endpoint costs time, not the store; a
store that goes silent fails requests within their deadline."""

from __future__ import annotations

import attrs
import pytest
import trio

from k3lab.services import free_port
from k3net.config import EtcdConfig
from k3net.store import etcd
from k3net.store.base import StoreUnavailable
from k3net.store.etcd import EtcdStore

from ..helpers.stores import RawEtcd, make_node

pytestmark = pytest.mark.etcd


async def test_dead_first_endpoint_fails_over_to_the_next(
    etcd_settings: EtcdConfig, raw_etcd: RawEtcd
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = attrs.evolve(etcd_settings, endpoints=(dead, *etcd_settings.endpoints),
                          dial_timeout=1.0)
    store = EtcdStore(config)
    try:
        with trio.fail_after(10):
            await store.create(make_node("failover"))
            assert (await store.get("failover")).name == "failover"
        assert await raw_etcd.keys() == ["/kubernetes//v1/Node/failover"]
    finally:
        await store.aclose()


async def test_every_endpoint_dead_is_unavailable_and_names_them(
    etcd_settings: EtcdConfig, aio_loop: object
) -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    store = EtcdStore(attrs.evolve(etcd_settings, endpoints=tuple(dead), dial_timeout=1.0))
    try:
        with trio.fail_after(10), pytest.raises(StoreUnavailable) as caught:
            await store.list()
        for endpoint in dead:
            assert endpoint in str(caught.value)
    finally:
        await store.aclose()


class _Relay:
    """A TCP relay to etcd that can go silent: from `mute()` on, it keeps every connection
    open but passes nothing either way (a store whose packets are dropped on the way)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.muted = trio.Event()
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream(*self.target)

        async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
            while not self.muted.is_set():
                data = await source.receive_some(65536)
                if not data or self.muted.is_set():
                    break
                await sink.send_all(data)
            await trio.sleep_forever()  # silent, never closed

        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, server)
            nursery.start_soon(pump, server, client)


async def test_a_store_that_goes_silent_fails_requests_within_the_deadline(
    etcd_settings: EtcdConfig, raw_etcd: RawEtcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that worked and then passes nothing (packets dropped, a hung server): a
    request fails as StoreUnavailable once REQUEST_TIMEOUT has passed, instead of waiting for the
    keepalive to give the connection up (10 s + 5 s)."""
    monkeypatch.setattr(etcd, "REQUEST_TIMEOUT", 1)
    host, port = etcd_settings.endpoints[0].removeprefix("http://").rsplit(":", 1)
    relay = _Relay((host, int(port)))
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.run)
        store = EtcdStore(attrs.evolve(
            etcd_settings, endpoints=(f"http://127.0.0.1:{relay.port}",)))
        try:
            await store.create(make_node("silent"))
            relay.muted.set()
            with trio.fail_after(5), pytest.raises(StoreUnavailable):
                await store.get("silent")
        finally:
            await store.aclose()
            nursery.cancel_scope.cancel()

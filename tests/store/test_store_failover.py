"""Several etcd endpoints are tried in order: a dead first endpoint costs time, not the store."""

from __future__ import annotations

import attrs
import pytest
import trio

from k3lab.services import free_port
from k3net.config import EtcdConfig
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

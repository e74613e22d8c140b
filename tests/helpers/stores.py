"""Shared by the store tests: Nodes as the k3 controller stores them, the next watch event,
and the shared data read and written raw, as the Go components do (etcd keys, SQL rows)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import aetcd
import pymysql
import trio
from trio_asyncio import aio_as_trio

from k3net.config import MySQLConfig
from k3net.model import Node, NodeAddress, NodeCondition, NodeStatus, ObjectMeta
from k3net.store.base import WatchEvent
from k3net.store.etcd import PREFIX
from k3net.store.mysql import TABLE

CREATED = dt.datetime(2026, 11, 29, 10, 21, 14, tzinfo=dt.UTC)


def make_node(name: str, **annotations: str) -> Node:
    return Node(
        metadata=ObjectMeta(
            name=name, uid=f"node-{name}", creation_timestamp=CREATED,
            labels={"kubernetes.io/hostname": name, "k3.network/managed": "true"},
            annotations=dict(annotations),
        ),
        spec={"podCIDR": "10.42.0.0/24"},
        status=NodeStatus(
            phase="Running",
            addresses=[NodeAddress("Hostname", name), NodeAddress("InternalIP", "10.77.0.2")],
            conditions=[NodeCondition("Ready", "True", reason="PeerAlive", message="reachable",
                                      last_heartbeat_time=CREATED, last_transition_time=CREATED)],
        ),
    )


async def next_event(events: Any) -> WatchEvent:
    with trio.fail_after(5):
        event: WatchEvent = await events.__anext__()
        return event


# A Node as the Go k3 components write it: more than k3net models, keys k3net does not know.
GO_NODE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {
        "name": "go-node",
        "uid": "3f0c2a8e-0000-4000-8000-000000000001",
        "resourceVersion": "17",
        "creationTimestamp": "2026-11-29T10:21:14Z",
        "labels": {"kubernetes.io/hostname": "go-node", "node-role.kubernetes.io/worker": ""},
        "annotations": {"k3.io/owner": "controller"},
        "finalizers": ["k3.io/cleanup"],
    },
    "spec": {"podCIDR": "10.42.1.0/24", "taints": [{"key": "k3/x", "effect": "NoSchedule"}]},
    "status": {
        "phase": "Running",
        "capacity": {"cpu": "8", "memory": "16Gi"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "lastHeartbeatTime": "2026-11-29T10:21:14Z",
                        "lastTransitionTime": "2026-11-29T10:00:00Z"}],
        "addresses": [{"type": "InternalIP", "address": "10.77.0.9"}],
        "nodeInfo": {"kubeletVersion": "v1.31.0"},
    },
}


GO_ROW = {
    "name": "go-node",
    "uid": GO_NODE["metadata"]["uid"],
    "resource_version": "17",
    "labels": json.dumps(GO_NODE["metadata"]["labels"]),
    "annotations": json.dumps(GO_NODE["metadata"]["annotations"]),
    "created_at": dt.datetime(2026, 11, 29, 10, 21, 14),
    "updated_at": dt.datetime(2026, 11, 29, 10, 21, 15, 123000),
    "phase": "Running",
    "spec": json.dumps(GO_NODE["spec"]),
    "status": json.dumps(GO_NODE["status"]),
}


async def insert_go_row(raw: RawMySQL, **changes: Any) -> None:
    row = {**GO_ROW, **changes}
    columns = ", ".join(row)
    marks = ", ".join(f"%({c})s" for c in row)
    await raw.sql(f"INSERT INTO k8s_core_v1_node ({columns}) VALUES ({marks})", row)


# Fast polling keeps the MySQL watch tests short.
TEST_POLL_INTERVAL = 0.05


class RawEtcd:
    """Plain etcd key/value access, as etcdctl or the Go store sees the data."""

    def __init__(self, client: aetcd.Client) -> None:
        self.client = client

    async def put(self, key: str, value: str | bytes) -> None:
        data = value.encode() if isinstance(value, str) else value
        await aio_as_trio(self.client.put)(key.encode(), data)

    async def get(self, key: str) -> bytes | None:
        kv = await aio_as_trio(self.client.get)(key.encode())
        return None if kv is None else kv.value

    async def keys(self, prefix: str = PREFIX) -> list[str]:
        result = await aio_as_trio(self.client.get_prefix)(prefix.encode())
        return [kv.key.decode() for kv in result]

    async def clear(self) -> None:
        await aio_as_trio(self.client.delete_prefix)(PREFIX.encode())


class RawMySQL:
    """Plain SQL on the test database, as the Go store's ORM would run it (blocking PyMySQL,
    run in a thread so the store under test keeps going)."""

    def __init__(self, config: MySQLConfig) -> None:
        self.config = config

    def _run_sync(self, sql: str, args: Any) -> list[tuple[Any, ...]]:
        conn = pymysql.connect(
            unix_socket=self.config.socket, user=self.config.user, password=self.config.password,
            database=self.config.database, autocommit=True, charset="utf8mb4",
        )
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    async def sql(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        return await trio.to_thread.run_sync(self._run_sync, sql, args)

    async def create_go_table(self) -> None:
        """The table as the Go store's ORM (GORM) creates it, independent of k3net's DDL."""
        await self.sql(
            f"CREATE TABLE {TABLE} (`id` bigint unsigned AUTO_INCREMENT,"
            " `name` varchar(255) NOT NULL, `namespace` varchar(255), `uid` varchar(255),"
            " `resource_version` varchar(255), `labels` json, `annotations` json,"
            " `created_at` datetime(3) NULL, `updated_at` datetime(3) NULL,"
            " `deleted_at` datetime(3) NULL, `phase` varchar(50), `spec` json, `status` json,"
            f" PRIMARY KEY (`id`), INDEX `idx_{TABLE}_name` (`name`),"
            f" INDEX `idx_{TABLE}_deleted_at` (`deleted_at`),"
            f" CONSTRAINT `uni_{TABLE}_uid` UNIQUE (`uid`))"
        )

    async def drop_table(self) -> None:
        await self.sql(f"DROP TABLE IF EXISTS {TABLE}")

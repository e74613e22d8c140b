"""SIGHUP reloads the config file: the log level and format and the store at once, everything
else on restart (said so in the log), a bad config refused with one line; the agent keeps
running, keeps its mDNS registration and sends no goodbye, and no Node flaps."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from k3lab.agents import AgentFactory, ready
from k3lab.netns import Lan, LoopbackHost
from k3lab.nsclient import NetnsClient, wait_for
from k3lab.raw import ETCD_PEER_PORT, ETCD_PORT, RawEtcd, write_config
from k3lab.services import EtcdServer
from k3net import reload
from k3net.config import ConfigError, EtcdConfig, MySQLConfig, StorageConfig
from k3net.current import Current
from k3net.settings import Settings
from k3net.store.base import StoreError

OLD = Settings(node_name="n1")


def test_changes_split_live_and_restart() -> None:
    etcd = StorageConfig(type="etcd")
    new = Settings(node_name="n1", log_level="debug", peer_ttl=30.0, listen_port=7000,
                   storage=etcd)
    live, later = reload.changes(OLD, new)
    assert live == {"log_level": ("info", "debug"), "storage": (StorageConfig(), etcd)}
    # (the probe interval is still peer-ttl/6: it changes with it)
    assert later == {"peer_ttl": (90.0, 30.0), "probe_interval": (15.0, 5.0),
                     "listen_port": (7946, 7000)}


def test_the_log_names_a_store_by_where_it_is_never_its_password() -> None:
    mysql = StorageConfig(type="mysql", mysql=MySQLConfig(host="db1", password="hunter2"))
    assert reload.show("storage", mysql) == "mysql root@db1:3306/k3"
    etcd = StorageConfig(type="etcd", etcd=EtcdConfig(endpoints=("https://e1:2379",),
                                                      password="hunter2"))
    assert reload.show("storage", etcd) == "etcd https://e1:2379"
    assert reload.show("cluster_key", b"hunter2") == "a key"
    assert reload.show("cluster_key", None) == "none"


@pytest.mark.parametrize(
    ("name", "value", "text"),
    [("peer_ttl", 3600.0, "1h0m0s"), ("probe_interval", 20 / 6, "3.333s"),
     ("probe_timeout", 0.7, "700ms"), ("prune_after", 72 * 3600.0, "72h0m0s"),
     ("prune_after", 0.0, "off"), ("scan_interval", 90.0, "1m30s"),
     ("register_self", False, "false"), ("scan_rate", 100.0, "100"),
     ("interfaces", ("eth0", "eth1"), "eth0,eth1"), ("interfaces", (), "none"),
     ("listen_port", 7000, "7000"), ("config_path", None, "None")],
)
def test_the_log_shows_a_value_as_its_flag_takes_it(name: str, value: object, text: str) -> None:
    assert reload.show(name, value) == text


def test_a_changed_duration_is_logged_as_go_prints_it(caplog: pytest.LogCaptureFixture) -> None:
    old = Settings(node_name="n1", peer_ttl=30.0)
    new = Settings(node_name="n1", peer_ttl=20.0)
    with caplog.at_level(logging.INFO, "k3net.reload"):
        reload.reconsider(old, lambda: new, lambda *a: None)
    messages = [r.message for r in caplog.records]
    assert "SIGHUP: peer-ttl changed (30s -> 20s): takes effect on restart, running value kept" \
        in messages
    assert "SIGHUP: probe-interval changed (5s -> 3.333s): takes effect on restart, running " \
        "value kept" in messages


def test_reconsider_applies_the_log_level_and_keeps_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    configured: list[tuple[str, str]] = []
    new = Settings(node_name="n1", log_level="debug", log_format="json", peer_ttl=30.0)
    with caplog.at_level(logging.INFO, "k3net.reload"):
        running = reload.reconsider(OLD, lambda: new, lambda *a: configured.append(a))
    assert configured == [("debug", "json")]
    assert (running.log_level, running.log_format, running.peer_ttl) == ("debug", "json", 90.0)
    assert any("peer-ttl changed" in r.message and "restart" in r.message for r in caplog.records)


def test_a_bad_config_is_refused_with_one_line(caplog: pytest.LogCaptureFixture) -> None:
    def bad() -> Settings:
        raise ConfigError("/etc/k3/config.yaml: bad YAML at line 3, column 1")

    configured: list[tuple[str, str]] = []
    with caplog.at_level(logging.INFO, "k3net.reload"):
        running = reload.reconsider(OLD, bad, lambda *a: configured.append(a))
    assert running is OLD and configured == []
    [record] = caplog.records
    assert record.levelno == logging.ERROR and "bad YAML at line 3" in record.message


async def test_each_sighup_leaves_the_running_settings_in_their_owner() -> None:
    """What runs after a SIGHUP is in the agent's one owner of its settings (what /info and the
    rest read): the new live values, the old everything else; a store that cannot be used is
    left out and the running one stays."""
    etcd = StorageConfig(type="etcd")
    mysql = StorageConfig(type="mysql")
    settings = Current(OLD)
    configs = [
        Settings(node_name="n1", log_level="debug", peer_ttl=30.0, storage=etcd),
        Settings(node_name="n1", log_level="warning", storage=mysql),
    ]
    tried: list[StorageConfig] = []
    refused = trio.Event()

    async def use_storage(storage: StorageConfig) -> None:
        tried.append(storage)
        if storage == mysql:
            refused.set()
            raise StoreError("mysql: connection refused")

    async with trio.open_nursery() as nursery:
        await nursery.start(reload.run, settings, lambda: configs[len(tried)], lambda *a: None,
                            use_storage)
        with trio.fail_after(5):
            os.kill(os.getpid(), signal.SIGHUP)
            now = await settings.wait_changed(0)
            assert (now.log_level, now.storage, now.peer_ttl) == ("debug", etcd, 90.0)
            os.kill(os.getpid(), signal.SIGHUP)
            await refused.wait()
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert tried == [etcd, mysql]
    assert (settings.value.log_level, settings.value.storage) == ("warning", etcd)


def write(path: Path, storage: str, log_level: str) -> None:
    path.write_text(json.dumps({"storage": {"type": storage},
                                "network": {"log-level": log_level}}))


@pytest.mark.netns
@pytest.mark.usefixtures("netns_ok")
def test_sighup_reloads_without_dropping_the_registration(tmp_path: Path) -> None:
    config = tmp_path / "k3.yaml"
    write(config, "memory", "info")
    log_path = tmp_path / "agent.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("K3NET_")}
    with LoopbackHost() as host, log_path.open("w") as log_file:
        proc = host.popen([sys.executable, "-m", "k3net", "run", "--node-name", "node-h",
                           "--listen", f"{host.address}:7321", "--interface", "lo",
                           "--config", str(config), "--peer-ttl", "3s"],
                          env=env, stdout=log_file, stderr=subprocess.STDOUT)
        client = NetnsClient(host.name)
        url = f"http://{host.address}:7321"

        def log_has(text: str) -> bool:
            assert proc.poll() is None, log_path.read_text()
            return text in log_path.read_text()

        try:
            wait_for(lambda: client.get(url + "/readyz")[0] == 200, 30, what="agent ready")
            started = json.loads(client.get(url + "/info")[1])["startedAt"]

            config.write_text(json.dumps({"network": {"log-level": "debug", "probe-interval": "3s"}}))
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: log_has("SIGHUP: log-level info -> debug"), 10, what="reload")
            assert log_has("probe-interval changed (500ms -> 3s): takes effect on restart")
            # The own Node's heartbeat (every second at peer-ttl 3s) is logged at debug level.
            wait_for(lambda: log_has(" DEBUG "), 10, what="debug lines after the reload")

            config.write_text("storage: [\n")
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: log_has("SIGHUP: config refused"), 10, what="bad config refused")

            # Still the same agent, still advertised, never said goodbye.
            assert json.loads(client.get(url + "/info")[1])["startedAt"] == started
            assert client.get(url + "/readyz?verbose")[0] == 200
            assert not log_has("goodbye")
        finally:
            client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    refused = [line for line in log_path.read_text().splitlines() if "config refused" in line]
    assert len(refused) == 1


@pytest.mark.netns
@pytest.mark.usefixtures("netns_ok", "etcd_ok")
def test_sighup_moves_to_another_store_without_a_flap(agents: AgentFactory,
                                                       tmp_path: Path) -> None:
    # Two agents on a LAN, each on its own memory store; node-a is told to use etcd instead.
    timings = ("--peer-ttl", "3s", "--probe-interval", "500ms")
    with Lan(2) as lan, EtcdServer(tmp_path / "etcd", client_host=lan[0].address,
                                   client_port=ETCD_PORT, peer_port=ETCD_PEER_PORT,
                                   netns=lan[0].name) as etcd:
        raw = RawEtcd(lan[0], etcd.address)
        config = write_config(tmp_path / "a.yaml", {"type": "memory"})
        a = agents.start(lan[0], "node-a", *timings, config=config)
        b = agents.start(lan[1], "node-b", *timings)
        a.wait_ready()
        b.wait_ready()
        wait_for(lambda: ready(a.nodes().get("node-b")) == ("True", "PeerAlive")
                 and ready(b.nodes().get("node-a")) == ("True", "PeerAlive"), 15,
                 what="each Ready in the other's store")
        assert raw.nodes() == {}

        write_config(config, {"type": "etcd", "etcd": {"endpoints": [etcd.endpoint]}})
        a.signal(signal.SIGHUP)
        seen_at_b: set[tuple[str, str] | None] = set()
        seen_in_etcd: set[tuple[str, str] | None] = set()

        def moved() -> bool:
            seen_at_b.add(ready(b.nodes().get("node-a")))
            nodes = raw.nodes()
            seen_in_etcd.update(ready(node) for node, _ in nodes.values())
            return (ready(nodes.get("node-a", ({}, 0))[0]) == ("True", "AgentReady")
                    and ready(nodes.get("node-b", ({}, 0))[0]) == ("True", "PeerAlive"))

        wait_for(moved, 10, interval=0.1, what="node-a and node-b Ready in etcd")
        assert "store: moved to etcd" in a.log()
        assert a.get_json("/info")["store"] == "etcd"
        assert {n["metadata"]["name"] for n in a.get_json("/nodes")["items"]} == {"node-a",
                                                                                 "node-b"}
        # Past two peer-ttls on the new store: the Nodes stay Ready there, and node-b, which
        # never heard a goodbye, kept node-a Ready all along.
        deadline = time.monotonic() + 6.5
        while time.monotonic() < deadline:
            moved()
            time.sleep(0.2)
        assert seen_at_b == {("True", "PeerAlive")}, seen_at_b
        assert seen_in_etcd <= {("True", "AgentReady"), ("True", "PeerAlive")}, seen_in_etcd
        assert "said goodbye" not in b.log() and "sent mDNS goodbye" not in a.log()
        assert a.client.get(a.url + "/readyz")[0] == 200  # the new store answers

        # node-a now works on etcd: its own shutdown is written there.
        a.signal(signal.SIGTERM)
        wait_for(lambda: ready(raw.nodes().get("node-a", ({}, 0))[0])
                 == ("False", "AgentShutdown"), 5, what="node-a's shutdown in etcd")
        assert a.proc.wait(5) == 0

"""SIGHUP reloads the config file: the log level and format at once, everything else on restart
(said so in the log), a bad config refused with one line; the agent keeps running, keeps its
mDNS registration and sends no goodbye."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from k3net import reload
from k3net.config import ConfigError
from k3net.harness.netns import LoopbackHost
from k3net.harness.nsclient import NetnsClient, wait_for
from k3net.settings import Settings

OLD = Settings(node_name="n1")


def test_changes_split_live_and_restart() -> None:
    new = Settings(node_name="n1", log_level="debug", peer_ttl=30.0, listen_port=7000)
    live, later = reload.changes(OLD, new)
    assert live == {"log_level": ("info", "debug")}
    assert later == {"peer_ttl": (90.0, 30.0), "listen_port": (7946, 7000)}


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

            write(config, "etcd", "debug")
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: log_has("SIGHUP: log-level info -> debug"), 10, what="reload")
            assert log_has("storage changed") and log_has("takes effect on restart")
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

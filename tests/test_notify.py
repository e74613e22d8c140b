"""systemd's notify protocol (`Type=notify`): READY=1 once HTTP listens and mDNS is registered,
STOPPING=1 on shutdown, WATCHDOG=1 pings; against a unix datagram socket the test opens."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from k3lab.netns import LoopbackHost
from k3lab.nsclient import NetnsClient
from k3net import notify


@pytest.mark.parametrize(
    ("value", "address"),
    [("", None), ("/run/systemd/notify", "/run/systemd/notify"), ("@abstract", "\0abstract"),
     ("relative/path", None)],
)
def test_socket_address(value: str, address: str | None) -> None:
    assert notify.socket_address({"NOTIFY_SOCKET": value}) == address


@pytest.mark.parametrize(
    ("environ", "interval"),
    [({}, None), ({"WATCHDOG_USEC": "0"}, None), ({"WATCHDOG_USEC": "x"}, None),
     ({"WATCHDOG_USEC": "30000000"}, 15.0), ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 15.0),
     ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "43"}, None)],
)
def test_watchdog_interval(environ: dict[str, str], interval: float | None) -> None:
    assert notify.watchdog_interval(environ, pid=42) == interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """The supervisor's end: a unix datagram socket, as systemd's notify socket."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)  # a bound on waiting for the next message, never a timing assertion
    yield sock, path
    sock.close()


def messages(sock: socket.socket, until: str) -> list[str]:
    """Datagrams received, up to and including the first containing `until`."""
    got: list[str] = []
    while not got or until not in got[-1]:
        got.append(sock.recv(4096).decode())
    return got


async def test_ready_then_stopping_with_watchdog_pings(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = notify.Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier is not None
    ready, stopping = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: notify.run(notifier, ready.wait, stopping.wait,
                                              status="serving", watchdog=0.001))
        first = await trio.to_thread.run_sync(messages, sock, "WATCHDOG=1")
        assert first == ["WATCHDOG=1"]  # pings start before READY: a slow start is not killed
        ready.set()
        got = await trio.to_thread.run_sync(messages, sock, "READY=1")
        assert got[-1] == "READY=1\nSTATUS=serving"
        assert set(got[:-1]) <= {"WATCHDOG=1"}
        stopping.set()
        got = await trio.to_thread.run_sync(messages, sock, "STOPPING=1")
        assert got[-1] == "STOPPING=1\nSTATUS=shutting down"
    notifier.close()


async def test_a_vanished_supervisor_does_not_stop_the_agent(tmp_path: Path) -> None:
    notifier = notify.Notifier(str(tmp_path / "nobody.sock"))
    await notifier.send("READY=1")  # logged, not raised
    await notifier.send("WATCHDOG=1")
    notifier.close()


@pytest.mark.netns
@pytest.mark.usefixtures("netns_ok")
def test_agent_notifies_ready_and_stopping(listener: tuple[socket.socket, str], tmp_path: Path) -> None:
    sock, path = listener
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("K3NET_", "WATCHDOG_", "NOTIFY_"))}
    env.update(NOTIFY_SOCKET=path, WATCHDOG_USEC="200000")
    with LoopbackHost() as host, (tmp_path / "agent.log").open("w") as log:
        proc = host.popen([sys.executable, "-m", "k3net", "run", "--node-name", "node-n",
                           "--listen", f"{host.address}:7301", "--interface", "lo"],
                          env=env, stdout=log, stderr=subprocess.STDOUT)
        got = messages(sock, "READY=1")
        assert got[-1].startswith("READY=1\n"), got
        client = NetnsClient(host.name)
        try:
            # Ready means ready: HTTP answers and the advertisement is registered.
            assert client.get(f"http://{host.address}:7301/readyz/mdns") == (200, "ok\n")
            assert client.get(f"http://{host.address}:7301/readyz/http") == (200, "ok\n")
        finally:
            client.close()
        assert "WATCHDOG=1" in messages(sock, "WATCHDOG=1")  # the pings go on while it runs
        proc.send_signal(signal.SIGTERM)
        assert messages(sock, "STOPPING=1")[-1].startswith("STOPPING=1")
        assert proc.wait(10) == 0

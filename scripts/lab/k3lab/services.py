"""Private etcd and MariaDB servers for tests that stop and start them (outages).

Each server is its own process with its own data directory, so stopping it never touches the
machine's shared services. Leaving the `with` block stops the server and removes its data (the
log stays next to it, for a failed test's report). Both are plain context managers (synchronous:
they are also meant for a nox LAN simulation); from trio, call `start`/`stop` through `trio.to_thread.run_sync` so
that the code under test keeps running meanwhile. Every wait is bounded.

    with EtcdServer(tmp_path / "etcd", client_port=free_port(), peer_port=free_port()) as etcd:
        ...  # etcd.endpoint is "http://127.0.0.1:<port>"
        etcd.stop(); etcd.start()

    with MariaDBServer(tmp_path / "db") as db:
        ...  # db.socket; user root, no password
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from k3lab.tls import Certs

ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
MARIADBD = "/usr/sbin/mariadbd"
MARIADB = "/usr/bin/mariadb"
MARIADB_INSTALL_DB = "/usr/bin/mariadb-install-db"


class ServiceError(RuntimeError):
    """A test server did not start or stop in time; the message includes its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until(check: object, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    tail = ""
    if log is not None and log.exists():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    raise ServiceError(f"{what} within {timeout:g}s{tail}")


def _quiet(cmd: list[str], timeout: float) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _terminate(proc: subprocess.Popen[bytes], timeout: float, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class _Server:
    """start/stop and the context-manager protocol shared by both servers."""

    name = "server"
    binary = ""  # the server's program, checked before a start
    package = ""  # the Debian package that has it
    start_timeout = 30.0
    stop_timeout = 30.0

    def __init__(self, log: Path) -> None:
        self.log = log
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Called before every start."""

    def start(self) -> None:
        if self.running:
            return
        if self.binary and not os.access(self.binary, os.X_OK):
            raise ServiceError(f"{self.name} is not installed ({self.binary}: Debian package "
                               f"{self.package}; scripts/test installs it)")
        self._prepare()
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            _wait_until(
                lambda: self._exited_early() or self._answers(), self.start_timeout,
                f"{self.name} did not answer", self.log,
            )
            if self._exited_early():
                raise ServiceError(f"{self.name} exited at start; see {self.log}")
        except BaseException:
            self.stop()
            raise

    def _exited_early(self) -> bool:
        return self._proc is not None and self._proc.poll() is not None

    def stop(self, *, crash: bool = False) -> None:
        """Stop the server: cleanly (SIGTERM), or as a crash (SIGKILL) if `crash`."""
        if self._proc is not None:
            _terminate(self._proc, self.stop_timeout, signal.SIGKILL if crash else signal.SIGTERM)
            self._proc = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        # The data is only for this server's life (a MariaDB's is over 100 MB); the log stays.
        shutil.rmtree(self._data, ignore_errors=True)

    @property
    def _data(self) -> Path:
        raise NotImplementedError


class EtcdServer(_Server):
    """A one-member etcd cluster of its own, listening on client_host:client_port (and the peer
    port on the same host), optionally inside the network namespace `netns`."""

    name = "etcd"
    binary, package = ETCD, "etcd-server"
    start_timeout = 20.0
    stop_timeout = 10.0

    def __init__(
        self, data_dir: str | os.PathLike[str], client_host: str = "127.0.0.1",
        client_port: int = 23791, peer_port: int = 23801, netns: str | None = None,
        tls: Certs | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(self.data_dir / "etcd.log")
        self.client_host, self.client_port, self.peer_port = client_host, client_port, peer_port
        self.netns = netns
        # With certificates: clients connect over https and must show a client certificate.
        self.tls = tls

    @property
    def address(self) -> str:
        """host:port, as K3NET_TEST_ETCD and etcdctl take it."""
        return f"{self.client_host}:{self.client_port}"

    @property
    def endpoint(self) -> str:
        """http(s)://host:port, as the k3 config's storage.etcd.endpoints take it."""
        return f"{'https' if self.tls else 'http'}://{self.address}"

    @property
    def _data(self) -> Path:
        return self.data_dir / "data"

    def _in_netns(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else cmd

    def _command(self) -> list[str]:
        peer = f"http://{self.client_host}:{self.peer_port}"
        return self._in_netns([
            ETCD, "--name", "k3net-test", "--data-dir", str(self._data),
            "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"k3net-test={peer}", "--initial-cluster-state", "new",
            "--logger", "zap", "--log-level", "error", *self._tls_flags(),
        ])

    def _tls_flags(self) -> list[str]:
        if self.tls is None:
            return []
        return ["--cert-file", str(self.tls.server_cert), "--key-file", str(self.tls.server_key),
                "--trusted-ca-file", str(self.tls.ca), "--client-cert-auth"]

    def ctl_flags(self) -> list[str]:
        """etcdctl flags that reach this server (with TLS: its CA and the client certificate)."""
        flags = [f"--endpoints={self.endpoint if self.tls else self.address}"]
        if self.tls is not None:
            flags += [f"--cacert={self.tls.ca}", f"--cert={self.tls.client_cert}",
                      f"--key={self.tls.client_key}"]
        return flags

    def _answers(self) -> bool:
        return _quiet(self._in_netns([
            ETCDCTL, *self.ctl_flags(), "--dial-timeout=1s", "--command-timeout=1s",
            "endpoint", "health",
        ]), timeout=5)


class MariaDBServer(_Server):
    """A MariaDB of its own: data in base_dir/data, unix socket base_dir/mysqld.sock, no TCP.
    User root without a password. The data directory is made on the first start.

    With a `port` it also listens on 127.0.0.1:port, where `TCP_USER` / `TCP_PASSWORD` may
    connect; with `tls` too (certificates from `k3lab.tls`) it requires TLS there (the
    socket stays plain: MariaDB counts it as secure)."""

    name = "mariadb"
    binary, package = MARIADBD, "mariadb-server"
    TCP_USER, TCP_PASSWORD = "k3tcp", "k3tcp-secret"

    def __init__(
        self, base_dir: str | os.PathLike[str], *, tls: Certs | None = None, port: int = 0
    ) -> None:
        if tls is not None and not port:
            raise ValueError("a TLS MariaDB needs a port")
        self.tls, self.port = tls, port
        self.base_dir = Path(base_dir).resolve()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(self.base_dir / "mariadb.log")
        self.data_dir = self.base_dir / "data"
        self.socket = str(self.base_dir / "mysqld.sock")
        if len(self.socket) > 100:
            raise ValueError(f"unix socket path too long for the kernel: {self.socket}")

    @property
    def _data(self) -> Path:
        return self.data_dir

    def _prepare(self) -> None:
        if (self.data_dir / "mysql").is_dir():
            return
        try:
            result = subprocess.run(
                [MARIADB_INSTALL_DB, "--no-defaults", f"--datadir={self.data_dir}", "--user=root",
                 "--auth-root-authentication-method=normal", "--skip-test-db"],
                capture_output=True, timeout=120,
            )
        except subprocess.TimeoutExpired:
            raise ServiceError("mariadb-install-db did not finish within 120s") from None
        if result.returncode != 0:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise ServiceError(f"mariadb-install-db failed: {result.stderr.decode()[-2000:]}")

    def _command(self) -> list[str]:
        network = ["--skip-networking"]
        if self.port:
            network = ["--bind-address=127.0.0.1", f"--port={self.port}", "--skip-name-resolve"]
        if self.tls is not None:
            network += [
                f"--ssl-ca={self.tls.ca}", f"--ssl-cert={self.tls.server_cert}",
                f"--ssl-key={self.tls.server_key}", "--require-secure-transport=ON",
            ]
        return [
            MARIADBD, "--no-defaults", f"--datadir={self.data_dir}", f"--socket={self.socket}",
            f"--pid-file={self.base_dir / 'mariadbd.pid'}", *network, "--user=root",
            "--innodb-buffer-pool-size=16M", f"--log-error={self.log}",
        ]

    def start(self) -> None:
        super().start()
        if self.port:
            self.sql(f"CREATE USER IF NOT EXISTS '{self.TCP_USER}'@'127.0.0.1'"
                     f" IDENTIFIED BY '{self.TCP_PASSWORD}';"
                     f" GRANT ALL ON *.* TO '{self.TCP_USER}'@'127.0.0.1'")

    def _answers(self) -> bool:
        return _quiet(self._client(["-e", "SELECT 1"]), timeout=5)

    def _client(self, args: list[str]) -> list[str]:
        return [MARIADB, "--no-defaults", "--protocol=socket", f"--socket={self.socket}", "-uroot",
                "--connect-timeout=2", *args]

    def sql(self, statement: str) -> str:
        """Run SQL as root (the server must be running); its output, tab-separated."""
        result = subprocess.run(
            self._client(["--batch", "--skip-column-names", "-e", statement]),
            capture_output=True, timeout=30, text=True,
        )
        if result.returncode != 0:
            raise ServiceError(f"mariadb: {statement!r}: {result.stderr.strip()}")
        return result.stdout

"""Real k3net agents as processes on test hosts (network namespaces), for end-to-end tests and
simulations."""

from __future__ import annotations

import compileall
import functools
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from k3lab.netns import Host
from k3lab.nsclient import NetnsClient, wait_for


@functools.cache
def bytecode() -> None:
    """Compile k3net's modules, once per lab run, as pip does when it installs k3net. An agent
    started from this source tree would otherwise compile every module of its own at each start
    (PYTHONDONTWRITEBYTECODE is set, or the tree was edited since): 100-150 ms on a 2-core
    machine that an installed agent never spends, and that start-up and join figures would
    count."""
    import k3net

    compileall.compile_dir(Path(k3net.__file__).parent, quiet=1)


class AgentProc:
    def __init__(
        self, host: Host, name: str, port: int, log_dir: Path, *args: str, config: Path | None = None
    ) -> None:
        bytecode()
        self.host = host
        self.name = name
        self.port = port
        self.address = host.address
        # As it goes before ":port" (an IPv6 address in brackets).
        self._host = f"[{host.address}]" if ":" in host.address else host.address
        self.log_path = log_dir / f"{name}.log"
        argv = [
            sys.executable, "-m", "k3net", "run",
            "--node-name", name,
            "--listen", f"{self._host}:{port}",
            "--interface", host.interface,
            "--log-level", "debug",
            *args,
        ]
        if config is not None:
            argv += ["--config", str(config)]
        self._log = self.log_path.open("w")
        self.started_at = time.monotonic()
        self.proc = host.popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        self.client = NetnsClient(host.name)

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def get_json(self, path: str) -> Any:
        return self.client.get_json(self.url + path)

    def wait_ready(self, timeout: float = 15, *, advertised: bool = True) -> None:
        """Until the agent answers /healthz and, with `advertised`, its mDNS record is
        registered (/readyz/mdns): peers may know of it sooner (the store, its hellos), but
        only then can they see it leave over mDNS."""
        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.name} exited with {self.proc.returncode}:\n"
                                   + self.log())
            if self.client.get(self.url + "/healthz")[0] != 200:
                return False
            return not advertised or self.client.get(self.url + "/readyz/mdns")[0] == 200

        try:
            wait_for(up, timeout, what=f"{self.name} /healthz")
        except RuntimeError as exc:
            raise AssertionError(str(exc)) from None

    def metric(self, name: str, **labels: str) -> float:
        """The sum of this agent's /metrics samples called `name` (e.g.
        `k3net_store_operations_total`) whose labels include `labels`; 0 if there are none."""
        status, text = self.client.get(self.url + "/metrics")
        if status != 200:
            raise AssertionError(f"GET {self.url}/metrics: {status}")
        return sum(sample.value for family in text_string_to_metric_families(text)
                   for sample in family.samples
                   if sample.name == name and labels.items() <= sample.labels.items())

    def nodes(self) -> dict[str, dict[str, Any]]:
        """The Nodes this agent's store holds, by name."""
        return {n["metadata"]["name"]: n for n in self.get_json("/nodes")["items"]}

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 5) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def close(self) -> None:
        self.stop()
        self.client.close()
        self._log.close()


class AgentFactory:
    """Starts agents and closes them all at the end (a test's `agents` fixture)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.agents: list[AgentProc] = []

    def start(self, host: Host, name: str, *args: str, port: int = 7946,
              config: Path | None = None) -> AgentProc:
        agent = AgentProc(host, name, port, self.log_dir, *args, config=config)
        self.agents.append(agent)
        return agent

    def close(self) -> None:
        for agent in self.agents:
            agent.close()

    def start_held(self, hosts: Sequence[Host], names: Sequence[str], config: Path,
                   ready_in_store: Callable[[str], bool]) -> list[AgentProc]:
        """One agent per host, on the store of `config`; returns once every Node is Ready in the
        store (`ready_in_store(name)`) and every agent holds a connection to every other one
        (what notices a silence)."""
        procs = [self.start(host, name, config=config)
                 for host, name in zip(hosts, names, strict=False)]
        for proc in procs:
            proc.wait_ready()
        wait_for(lambda: all(ready_in_store(n) for n in names), 15,
                 what="every Node Ready in the store")
        wait_for(lambda: held_everywhere(procs), 30, what="every peer held everywhere")
        return procs


def held_everywhere(procs: Sequence[AgentProc]) -> bool:
    """Every agent of `procs` holds a connection to every other one."""
    names = {proc.name for proc in procs}
    return all({p["name"] for p in proc.get_json("/peers")["peers"] if p["held"]}
               == names - {proc.name} for proc in procs)


def ready(node: dict[str, Any] | None) -> tuple[str, str] | None:
    """(status, reason) of a Node JSON's Ready condition."""
    if node is None:
        return None
    for cond in node.get("status", {}).get("conditions", []):
        if cond.get("type") == "Ready":
            return cond.get("status"), cond.get("reason")
    return None

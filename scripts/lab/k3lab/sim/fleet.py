"""The agents of a simulated LAN: one `k3net run` per namespace host, all on the run's store."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from k3lab.agents import AgentProc
from k3lab.netns import Lan
from k3lab.sim.common import parse_metrics
from k3lab.sim.stores import SimStore

PORT = 7946


class Fleet:
    """One k3net agent per host; agent i is `node-i` on host i, port 7946."""

    def __init__(self, lan: Lan, store: SimStore, log_dir: Path) -> None:
        self.lan = lan
        self.store = store
        self.log_dir = log_dir
        self.agents: dict[int, AgentProc] = {}
        self.incarnation = 0
        self.logs: list[Path] = []  # every agent log of the run, for discovery times
        # Flags agent i gets besides the fleet's own (a scenario's LAN shape may need some).
        self.extra_args: Callable[[int], Sequence[str]] = lambda i: ()

    @property
    def names(self) -> list[str]:
        return [f"node-{i}" for i in range(len(self.lan))]

    def start(self, i: int, ttl: float | None) -> AgentProc:
        self.incarnation += 1
        log_dir = self.log_dir / f"run{self.incarnation:02d}"
        log_dir.mkdir(parents=True, exist_ok=True)
        args = ["--log-format", "json", *self.extra_args(i)]
        if ttl is not None:
            args += ["--peer-ttl", f"{ttl:g}s"]
        agent = AgentProc(self.lan[i], f"node-{i}", PORT, log_dir, *args, config=self.store.config)
        self.agents[i] = agent
        self.logs.append(agent.log_path)
        return agent

    def start_all(self, ttl: float | None) -> dict[int, float]:
        return {i: self.start(i, ttl).started_at for i in range(len(self.lan))}

    def stop(self, i: int, sig: int = signal.SIGTERM, wait: float = 5) -> int | None:
        self.agents[i].proc.send_signal(sig)
        return self.reap(i, wait)

    def reap(self, i: int, wait: float = 5) -> int | None:
        """Wait for agent i, already signalled, to exit (a second SIGTERM would kill it
        mid-shutdown); SIGKILL after `wait` seconds."""
        agent = self.agents.pop(i)
        try:
            code = agent.proc.wait(wait)
        except subprocess.TimeoutExpired:
            agent.proc.kill()
            code = agent.proc.wait(5)
        agent.close()
        return code

    def stop_all(self) -> None:
        for i in list(self.agents):
            with contextlib.suppress(Exception):
                self.stop(i)

    def metrics(self) -> dict[str, dict[str, float]]:
        out = {}
        for agent in self.agents.values():
            try:
                status, body = agent.client.get(agent.url + "/metrics")
                if status == 200:
                    out[agent.name] = parse_metrics(body)
            except OSError:
                pass
        return out


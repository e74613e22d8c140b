"""The probes' caps (k3net.limits): addresses dialled per peer and sockets open for probing over
all peers, with real sockets on loopback (the kernel's file descriptors are the point)."""

from __future__ import annotations

import os
import random

import trio
import trio.testing

from k3net import limits
from k3net.core.messages import ProbeResult
from k3net.core.table import ProbeNow, ProberOrder, ProbeTarget
from k3net.metrics import Metrics
from k3net.tasks.probe import Prober, probe_peer

LOOPBACK = "127.0.0.1"
PROBE_TIMEOUT = 0.7  # as the agent's default --probe-timeout


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def hits(metrics: Metrics, limit: str) -> float:
    value = metrics.registry.get_sample_value("k3net_limit_hits_total", {"limit": limit})
    assert value is not None
    return value


async def test_a_peer_is_dialled_at_its_first_addresses_only(closed_port: int) -> None:
    announced = [f"127.0.0.{n}" for n in range(2, 202)]  # 200 addresses, nothing listens
    result = await probe_peer("flood", announced, closed_port, 5.0)
    assert result.outcome == "refused"
    dialled = [part.split(":")[0] for part in result.error.split("; ")]
    assert dialled and len(dialled) == limits.ADDRESSES_PER_PEER
    assert set(dialled) <= set(announced[: limits.ADDRESSES_PER_PEER])


async def test_probes_share_one_budget_of_sockets_and_none_fails_for_it(
    autojump_clock: trio.testing.MockClock, unanswering_port: int
) -> None:
    """Peers whose addresses never answer, and peers that do, all at once on a budget of 3
    sockets: at no moment are more than 3 probe sockets open, and the peers that answer still
    answer (a probe waits for a socket before its timeout starts)."""
    autojump_clock.autojump_threshold = 0.01  # a real loopback connect is never overtaken
    budget = 3
    metrics = Metrics()
    prober = Prober(interval=3600, timeout=PROBE_TIMEOUT, metrics=metrics, sockets=budget,
                    rng=random.Random(1))
    inbox_send, inbox_recv = trio.open_memory_channel[ProberOrder](0)
    results_send, results_recv = trio.open_memory_channel[ProbeResult](0)
    answering = await trio.open_tcp_listeners(0, host=LOOPBACK)
    port = answering[0].socket.getsockname()[1]
    accepted: list[trio.SocketStream] = []

    async def accept(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            accepted.append(await answering[0].accept())  # and never answer: unverified

    baseline = open_files()
    most = 0

    async def watch_files() -> None:
        nonlocal most
        while True:
            most = max(most, open_files() - baseline - len(accepted))
            await trio.sleep(0.01)

    silent = [ProbeTarget(f"silent-{n}", (LOOPBACK,), unanswering_port) for n in range(6)]
    alive = [ProbeTarget(f"alive-{n}", (LOOPBACK,), port) for n in range(3)]
    async with trio.open_nursery() as nursery:
        await nursery.start(accept)
        await nursery.start(prober.run, inbox_recv, results_send)
        nursery.start_soon(watch_files)
        for target in silent + alive:
            await inbox_send.send(ProbeNow(target))
        results: dict[str, str] = {}
        with trio.fail_after(60):
            while len(results) < len(silent) + len(alive):
                result = await results_recv.receive()
                results[result.name] = result.outcome
        nursery.cancel_scope.cancel()
    for listener in answering:
        await listener.aclose()
    for stream in accepted:
        await stream.aclose()
    assert {results[t.name] for t in silent} == {"timeout"}
    assert {results[t.name] for t in alive} == {"unverified"}
    # Each silent probe would take up to 4 sockets (staggered attempts) without the budget.
    assert 0 < most <= budget
    assert hits(metrics, "probe-sockets") > 0


async def test_a_target_over_the_address_cap_is_counted_once() -> None:
    metrics = Metrics()
    prober = Prober(interval=3600, timeout=PROBE_TIMEOUT, metrics=metrics)
    inbox_send, inbox_recv = trio.open_memory_channel[ProberOrder](0)
    results_send, results_recv = trio.open_memory_channel[ProbeResult](10)
    many = tuple(f"127.0.1.{n}" for n in range(1, 21))
    async with trio.open_nursery() as nursery:
        await nursery.start(prober.run, inbox_recv, results_send)
        for _ in range(3):  # the same target asked again: counted once
            await inbox_send.send(ProbeNow(ProbeTarget("many", many, 9), delay=3600))
        await inbox_send.send(ProbeNow(ProbeTarget("few", many[:2], 9), delay=3600))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert hits(metrics, "addresses-per-peer") == 1

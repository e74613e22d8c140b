"""The whole agent in-process, on trio's fake clock: the start-up and shutdown order.

Everything that touches the machine is replaced by a recorder: the LAN (mDNS advertise and
browse), the HTTP server, and the store (the memory store, with its writes recorded). What is
checked is what a peer or an operator would see: HTTP up before the advertisement, and on stop
HTTP down, then the mDNS goodbye, then this agent's own Node False/AgentShutdown, then exit.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import trio
import trio.testing

from k3net.agent import SHUTDOWN_DEADLINE, Agent
from k3net.core.nodes import Alive, render
from k3net.core.table import Message

from .helpers.inprocess import (
    HERE,
    ME,
    FakeLan,
    Recorder,
    RecordingStore,
    agent,
    fake_http,
    own_status,
    running,
    settings,
)


async def test_start_up_order_http_before_the_advertisement(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Recorder()
    store = RecordingStore(log)
    async with running(agent(log, store), store):
        pass
    assert log.index("http up") < log.index("advertise 192.168.1.2")
    assert log.index("advertise") < log.index(f"write {ME} True/AgentReady")


async def test_shutdown_order_http_goodbye_own_node_exit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Recorder()
    store = RecordingStore(log)
    async with running(agent(log, store), store):
        log.add("stop")
    log.add("exit")
    order = [log.index(e) for e in
             ("stop", "http down", "goodbye", f"write {ME} False/AgentShutdown", "exit")]
    assert order == sorted(order), log.events
    assert await own_status(store) == "False"


async def test_shutdown_with_the_store_down_ends_within_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Recorder()
    store = RecordingStore(log)
    async with running(agent(log, store), store):
        store.down = True
        stopped_at = trio.current_time()
    took = trio.current_time() - stopped_at
    assert SHUTDOWN_DEADLINE - 0.01 <= took <= SHUTDOWN_DEADLINE + 0.01
    assert "goodbye" in log.events  # the goodbye does not wait for the store
    assert await own_status(store) == "True"  # the last write could not be made


async def test_a_crashing_task_ends_the_agent_with_its_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class BrokenLan(FakeLan):
        async def browse(
            self, out: trio.MemorySendChannel[Message], *, task_status: Any = trio.TASK_STATUS_IGNORED
        ) -> None:
            async with out:
                task_status.started()
                await trio.sleep(1.0)
                raise OSError("interface vanished")

    log = Recorder()
    a = Agent(settings(), store=RecordingStore(log), lan=BrokenLan(log), addresses=HERE,
              serve=fake_http(log))
    with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="interface vanished"), flatten_subgroups=True):
        await a.run()
    assert "goodbye" in log.events and "http down" in log.events


async def test_a_move_to_another_store_carries_the_own_node_over_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Recorder()
    first, second = RecordingStore(log), RecordingStore(log)
    a = agent(log, first)
    async with running(a, first):
        moved_at = trio.current_time()
        assert await a.use_store(second) is first
        # Ready in the new store before use_store returns: no heartbeat interval waited for.
        assert await own_status(second) == "True"
        assert trio.current_time() - moved_at < 0.1
        assert a.web.store.value is second  # what /nodes, /info and /readyz read
        # The new store is the one followed now: someone else's Node there is seen.
        node_z = render(None, Alive("node-z", ("192.168.1.9",), 7946, None),
                        dt.datetime.now(dt.UTC))
        assert node_z is not None
        await second.create(node_z)
        await trio.sleep(1)
        assert "node-z" in {n["node"] for n in a.hub.snapshot()["nodes"]}
    assert "goodbye" in log.events and log.events.count("advertise 192.168.1.2") == 1
    assert await own_status(second) == "False"  # the shutdown goes to the new store
    assert await own_status(first) == "True"  # and the old one is left as it was

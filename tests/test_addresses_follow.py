"""This machine's addresses followed live, in-process on trio's fake clock: the address
watcher (tasks/addresses.py), setting their one owner, and what follows a change (own Node,
/info, mDNS, the prober's own set). The real thing, on a namespace LAN: tests/test_real_hosts.py."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from k3net.agent import Agent
from k3net.core.addresses import MachineAddresses
from k3net.current import Current
from k3net.model import Node
from k3net.tasks import addresses

from .helpers.inprocess import (
    ME,
    FakeLan,
    Recorder,
    RecordingStore,
    fake_http,
    settings,
    wait_for_own,
)

FIRST = MachineAddresses(("192.168.1.2",), frozenset({"192.168.1.2", "192.168.122.1"}))
MOVED = MachineAddresses(("192.168.1.9",), frozenset({"192.168.1.9", "192.168.122.1"}))


class Machine:
    """What mdns.machine_addresses would read, set by the test; a reading may fail."""

    def __init__(self) -> None:
        self.now = FIRST
        self.fail = False
        self.reads = 0

    def __call__(self) -> MachineAddresses:
        self.reads += 1
        if self.fail:
            raise OSError("interface gone for a moment")
        return self.now


async def test_watcher_sets_changes_only(autojump_clock: trio.testing.MockClock) -> None:
    machine = Machine()
    here = Current(FIRST)
    async with trio.open_nursery() as nursery:
        await nursery.start(addresses.run, machine, here)
        start = trio.current_time()
        with trio.move_on_after(10):
            await here.wait_changed(0)
            raise AssertionError("no change, yet something was set")
        assert machine.reads >= 4  # it kept polling, every POLL_INTERVAL
        machine.fail = True
        await trio.sleep(3 * addresses.POLL_INTERVAL)  # failed readings: logged, not set
        machine.fail = False
        machine.now = MOVED
        changed_at = trio.current_time()
        assert await here.wait_changed(0) == MOVED
        assert here.version == 1
        assert trio.current_time() - changed_at <= addresses.POLL_INTERVAL
        assert trio.current_time() - start > 10
        nursery.cancel_scope.cancel()


async def test_a_reading_with_nothing_to_advertise_keeps_what_is_advertised(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The LAN interface lost its address but a bridge still has one: this machine's own set
    changes (the prober and the scanner follow it), our record and Node keep the last addresses
    (a record with none would only make peers lose us)."""
    machine = Machine()
    here = Current(FIRST)
    caplog.set_level(logging.WARNING, logger=addresses.__name__)
    async with trio.open_nursery() as nursery:
        await nursery.start(addresses.run, machine, here)
        machine.now = MachineAddresses((), frozenset({"192.168.122.1"}))
        assert await here.wait_changed(0) == MachineAddresses(
            FIRST.advertised, frozenset({"192.168.122.1"}))
        machine.now = MOVED
        assert await here.wait_changed(1) == MOVED
        nursery.cancel_scope.cancel()
    assert [r.getMessage() for r in caplog.records] == [
        "no usable address on this machine's LAN interfaces now; still advertising 192.168.1.2"]


async def test_a_series_of_failed_readings_is_logged_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An interface that lost its address (a DHCP lease gone) fails every reading for as long:
    one warning when it starts, one line when readings work again, not one every poll."""
    machine = Machine()
    caplog.set_level(logging.INFO, logger=addresses.__name__)
    async with trio.open_nursery() as nursery:
        await nursery.start(addresses.run, machine, Current(FIRST))
        machine.fail = True
        await trio.sleep(10 * addresses.POLL_INTERVAL)
        machine.fail = False
        await trio.sleep(2 * addresses.POLL_INTERVAL)
        nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if r.name == addresses.__name__]
    assert lines == [
        "cannot read this machine's addresses: interface gone for a moment; keeping "
        "192.168.1.2 until they can be read again",
        "this machine's addresses can be read again",
    ]


def _internal_ips(node: Node) -> list[str]:
    return [a.address for a in node.status.addresses if a.type == "InternalIP"]


async def test_agent_follows_a_readdress(autojump_clock: trio.testing.MockClock) -> None:
    log = Recorder()
    store = RecordingStore(log)
    machine = Machine()
    lan = FakeLan(log)
    a = Agent(settings(), store=store, lan=lan, addresses=FIRST, machine=machine,
              serve=fake_http(log))
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await wait_for_own(store, "True")
        own = await store.get(ME)
        assert own is not None and _internal_ips(own.node) == ["192.168.1.2"]
        holds_end = trio.Event()  # what a held connection served now waits for

        async def a_hold_served() -> None:
            await a.web.facts_changed()
            holds_end.set()

        nursery.start_soon(a_hold_served)
        await trio.sleep(3 * addresses.POLL_INTERVAL)
        assert not holds_end.is_set()  # the same addresses: held on
        machine.now = MOVED
        with trio.fail_after(3 * addresses.POLL_INTERVAL):
            async with store.watch() as events:
                async for _ in events:  # every write of our own Node, followed
                    stored = await store.get(ME)
                    assert stored is not None
                    assert stored.node.ready_status == "True"  # never not-Ready meanwhile
                    if _internal_ips(stored.node) == ["192.168.1.9"]:
                        break
        assert "readdress 192.168.1.9" in log.events  # the mDNS record follows
        assert holds_end.is_set()  # held connections end: their holders probe and learn
        assert a.web.addrs() == ("192.168.1.9",)  # what /info shows
        # What the probes must not take for a peer: the new set (made once, then kept).
        assert a._own().addresses == MOVED.own and a._own() is a._own()
        a.stop()
    assert a.addresses.value == MOVED

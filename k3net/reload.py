"""SIGHUP: read the config file again, as Consul and Serf do on `kill -HUP` (or a terminal's
hang-up), instead of dying without a goodbye.

What a reload changes at once: the log level and format, and the store (the agent moves to the
new one: `Agent.use_store`; our own Node and the peers that answer are written there Ready before
its watch starts). The mDNS registration, the HTTP listener and the probes go on: a reload never
makes a peer see a goodbye or a Node flap. A setting that needs a restart (the listener, the
node name, timings) is logged as such and the running value is kept. A config that cannot be
used is refused with one log line and the running settings stay. The environment is the process's own and does not
change on SIGHUP (systemd reads an EnvironmentFile again only on restart); flags on the command
line still win over the config file, as at start.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable

import attrs
import trio

from k3net.config import ConfigError, StorageConfig
from k3net.current import Current
from k3net.settings import Settings
from k3net.settings import show as show_setting
from k3net.store.base import StoreError

log = logging.getLogger(__name__)

# Settings a reload applies to the running agent; every other change waits for a restart.
LIVE = ("log_level", "log_format", "storage")

# Moves the running agent to a new store (serve's `Agent.use_store` with a store made from it).
UseStorage = Callable[[StorageConfig], Awaitable[None]]


def changes(old: Settings, new: Settings, live_fields: tuple[str, ...] = LIVE) -> tuple[
    dict[str, tuple[object, object]], dict[str, tuple[object, object]]
]:
    """(applied now, needing a restart): field -> (old value, new value), for what differs."""
    live: dict[str, tuple[object, object]] = {}
    later: dict[str, tuple[object, object]] = {}
    for field in attrs.fields(Settings):
        before, after = getattr(old, field.name), getattr(new, field.name)
        if before != after:
            (live if field.name in live_fields else later)[field.name] = (before, after)
    return live, later


def reconsider(current: Settings, load: Callable[[], Settings],
               configure: Callable[[str, str], None],
               live_fields: tuple[str, ...] = LIVE) -> Settings:
    """One reload, but for the store: logging reconfigured, every change logged. Returns the
    settings to run with (the old ones if the new config is refused); the caller moves to their
    store if it changed."""
    try:
        new = load()
    except ConfigError as exc:
        log.error("SIGHUP: config refused, running settings kept: %s", exc)
        return current
    live, later = changes(current, new, live_fields)
    if {"log_level", "log_format"} & live.keys():
        configure(new.log_level, new.log_format)
    for name, (before, after) in live.items():
        log.info("SIGHUP: %s %s -> %s", name.replace("_", "-"), show(name, before),
                 show(name, after))
    for name, (before, after) in later.items():
        log.warning("SIGHUP: %s changed (%s -> %s): takes effect on restart, running value kept",
                    name.replace("_", "-"), show(name, before), show(name, after))
    if not live and not later:
        log.info("SIGHUP: config read again, nothing changed")
    # What runs now: the new live values on the old everything else.
    return attrs.evolve(current, **{name: getattr(new, name) for name in live})


def show(name: str, value: object) -> str:
    """A setting's value for the log as its flag would take it (`1m30s`, `3.333s`, `off`): a
    store by where it is (never its password), a key never."""
    if isinstance(value, StorageConfig):
        if value.type == "etcd":
            return "etcd " + ",".join(value.etcd.endpoints)
        if value.type == "mysql":
            m = value.mysql
            where = m.socket or f"{m.host}:{m.port}"
            return f"mysql {m.user}@{where}/{m.database}"
        return value.type
    text = show_setting(name, value)
    return text if len(text) <= 80 else text[:77] + "..."


async def run(
    settings: Current[Settings],
    load: Callable[[], Settings],
    configure: Callable[[str, str], None],
    use_storage: UseStorage | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Reload on every SIGHUP until cancelled; `settings` (the agent's owner of them) holds
    what runs after each. Without `use_storage` a changed store waits for a restart."""
    live = LIVE if use_storage is not None else tuple(f for f in LIVE if f != "storage")
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        task_status.started()
        async for _ in signals:
            current = settings.value
            # Reading the file and re-checking the interfaces is quick, local I/O.
            new = reconsider(current, load, configure, live)
            if use_storage is not None and new.storage != current.storage:
                try:
                    await use_storage(new.storage)
                except (StoreError, OSError, ValueError) as exc:
                    log.error("SIGHUP: store %s cannot be used (%s); staying on %s",
                              show("storage", new.storage), exc, show("storage", current.storage))
                    new = attrs.evolve(new, storage=current.storage)
            settings.set(new)

"""SIGHUP: read the config file again, as Consul and Serf do on `kill -HUP` (or a terminal's
hang-up), instead of dying without a goodbye.

What a reload changes at once: the log level and the log format. The mDNS registration, the
HTTP listener and the Nodes are untouched: a reload never makes a peer see a goodbye or a Node
flap. A setting that needs a restart (the store, the listener, the node name, timings) is
logged as such and the running value is kept. A config that cannot be used is refused with one
log line and the running settings stay. The environment is the process's own and does not
change on SIGHUP (systemd reads an EnvironmentFile again only on restart); flags on the command
line still win over the config file, as at start.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import attrs
import trio

from k3net.config import ConfigError
from k3net.settings import Settings

log = logging.getLogger(__name__)

# Settings a reload applies to the running agent; every other change waits for a restart.
LIVE = ("log_level", "log_format")


def changes(old: Settings, new: Settings) -> tuple[dict[str, tuple[object, object]],
                                                   dict[str, tuple[object, object]]]:
    """(applied now, needing a restart): field -> (old value, new value), for what differs."""
    live: dict[str, tuple[object, object]] = {}
    later: dict[str, tuple[object, object]] = {}
    for field in attrs.fields(Settings):
        before, after = getattr(old, field.name), getattr(new, field.name)
        if before != after:
            (live if field.name in LIVE else later)[field.name] = (before, after)
    return live, later


def reconsider(current: Settings, load: Callable[[], Settings],
               configure: Callable[[str, str], None]) -> Settings:
    """One reload: the settings now running (the old ones if the new config is refused)."""
    try:
        new = load()
    except ConfigError as exc:
        log.error("SIGHUP: config refused, running settings kept: %s", exc)
        return current
    live, later = changes(current, new)
    if live:
        configure(new.log_level, new.log_format)
    for name, (before, after) in live.items():
        log.info("SIGHUP: %s %s -> %s", name.replace("_", "-"), before, after)
    for name, (before, after) in later.items():
        log.warning("SIGHUP: %s changed (%s -> %s): takes effect on restart, running value kept",
                    name.replace("_", "-"), _short(before), _short(after))
    if not live and not later:
        log.info("SIGHUP: config read again, nothing changed")
    # What runs now: the new live values on the old everything else.
    return attrs.evolve(current, **{name: getattr(new, name) for name in live})


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


async def run(
    current: Settings,
    load: Callable[[], Settings],
    configure: Callable[[str, str], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Reload on every SIGHUP until cancelled."""
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        task_status.started()
        async for _ in signals:
            # Reading the file and re-checking the interfaces is quick, local I/O.
            current = reconsider(current, load, configure)

"""Messages the agent's tasks send each other over memory channels. Plain, immutable data."""

from __future__ import annotations

import attrs


@attrs.frozen
class PeerSeen:
    """browse: an agent was added or updated on the LAN (already validated and resolved)."""

    name: str  # TXT `node`, else the instance name; a valid DNS-1123 subdomain
    addresses: tuple[str, ...]  # A/AAAA records as text, IPv4 first
    port: int  # TXT `port`, else the SRV port
    pid: int | None = None  # TXT `pid`, if it was a number


@attrs.frozen
class PeerGone:
    """browse: an agent said goodbye (mDNS Removed)."""

    name: str


@attrs.frozen
class PeerRejected:
    """browse: an mDNS entry that was dropped, never written. `reason` is a short slug."""

    instance: str
    reason: str  # invalid-name | bad-port | bad-txt | no-address | overflow
    detail: str = ""


@attrs.frozen
class ProbeResult:
    """probe: one TCP connect to a peer's advertised port."""

    name: str
    ok: bool
    latency: float  # seconds the probe took
    address: str | None = None  # the address that answered, if any
    error: str = ""
    started: float = 0.0  # when the probe began, on the agent's clock


@attrs.frozen
class Tick:
    """expire: time to look for Nodes whose stored lastSeen went stale."""


@attrs.frozen
class SelfHeartbeat:
    """self: this agent is alive; refresh our own Node when due."""

"""A test's requirement (root, etcd, a test service) that is missing: skipped, or failed under
scripts/test, which promises every requirement (K3NET_REQUIRE_SERVICES=1)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_SERVICES = os.environ.get("K3NET_REQUIRE_SERVICES") == "1"


def require(condition: bool, reason: str) -> None:
    """Skip when a test's requirement is missing, but fail under scripts/test, which promises
    every requirement: a suite that silently skips its real-network tests proves nothing."""
    if not condition:
        if REQUIRE_SERVICES:
            pytest.fail(f"missing test requirement: {reason}")
        pytest.skip(reason)


def missing(what: str) -> NoReturn:
    """Skip the test for lack of `what`; fail it instead when K3NET_REQUIRE_SERVICES=1
    (scripts/test promises every service: a suite that skips them proves nothing)."""
    if os.environ.get("K3NET_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what}, and K3NET_REQUIRE_SERVICES=1 requires it")
    pytest.skip(what)

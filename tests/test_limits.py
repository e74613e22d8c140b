"""k3net.limits: every cap is documented and exported, and their sum fits the unit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from k3net import limits
from k3net.metrics import Metrics

DOCS = Path(__file__).parent.parent / "docs" / "network.md"


def test_every_counted_limit_has_a_row_in_the_docs_table() -> None:
    section = DOCS.read_text().split("## Limits", 1)[1].split("\n## ", 1)[0]
    labels = re.findall(r"^\| .*?\(`([a-z-]+)`\)", section, flags=re.MULTILINE)
    assert sorted(labels) == sorted(limits.NAMES)


def test_every_limit_is_exported_at_zero_and_counts() -> None:
    metrics = Metrics()
    for name in limits.NAMES:
        assert metrics.registry.get_sample_value(
            "k3net_limit_hits_total", {"limit": name}) == 0
    metrics.limit_hit("peers")
    assert metrics.registry.get_sample_value("k3net_limit_hits_total", {"limit": "peers"}) == 1
    with pytest.raises(AssertionError):
        metrics.limit_hit("no-such-limit")


def test_the_caps_fit_the_file_descriptors_the_unit_allows() -> None:
    """LimitNOFILE=16384 in the unit (docs/network.md): every socket the caps allow, twice over."""
    sockets = limits.HOLDS + limits.HELD + limits.PROBE_SOCKETS + limits.SUBSCRIBERS
    assert 2 * sockets <= 16384
    assert "LimitNOFILE=16384" in DOCS.read_text()

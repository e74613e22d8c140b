"""The address rule and the canonical order (k3net.core.addresses): pure, table-driven."""

from __future__ import annotations

import pytest

from k3net.core import addresses


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param(["10.0.0.10", "10.0.0.9", "10.0.0.1"], ("10.0.0.1", "10.0.0.9", "10.0.0.10"),
                     id="v4-numeric-not-text-order"),
        pytest.param(["2a00::2", "10.0.0.1", "fd00::1", "192.168.1.1"],
                     ("10.0.0.1", "192.168.1.1", "2a00::2", "fd00::1"), id="v4-first-then-v6"),
        pytest.param(["fd00::10", "fd00::9"], ("fd00::9", "fd00::10"), id="v6-numeric"),
        pytest.param(["10.0.0.1", "10.0.0.1", "2A00:0::1", "2a00::1"], ("10.0.0.1", "2a00::1"),
                     id="duplicates-any-spelling"),
        pytest.param(["127.0.0.1", "127.1.2.3", "::1"], (), id="no-loopback"),
        pytest.param(["0.0.0.0", "::"], (), id="no-unspecified"),
        pytest.param(["224.0.0.251", "239.1.1.1", "ff02::fb"], (), id="no-multicast"),
        pytest.param(["169.254.1.1", "fe80::1", "fe80::2%eth0"], (), id="no-link-local"),
        pytest.param(["255.255.255.255"], (), id="no-broadcast"),
        pytest.param(["::ffff:10.0.0.1"], (), id="no-v4-mapped"),
        pytest.param(["10.0.0.1", "172.17.0.1", "192.168.122.1", "fd00::1"],
                     ("10.0.0.1", "172.17.0.1", "192.168.122.1", "fd00::1"),
                     id="private-and-ula-kept-as-go-isglobalunicast"),
        pytest.param(["2a00::1%eth0"], ("2a00::1",), id="zone-dropped"),
        pytest.param(["", "x", "300.1.1.1", "10.0.0", "1.2.3.4/24", "010.0.0.1"], (),
                     id="garbage-left-out"),
    ],
)
def test_canonical(given: list[str], expected: tuple[str, ...]) -> None:
    assert addresses.canonical(given) == expected
    assert addresses.canonical(reversed(given)) == expected  # any order in, one order out


def test_loopback_kept_only_when_asked() -> None:
    assert addresses.canonical(["::1", "127.0.0.1", "10.0.0.1"], loopback=True) == (
        "10.0.0.1", "127.0.0.1", "::1")
    assert addresses.canonical(["0.0.0.0", "fe80::1"], loopback=True) == ()


@pytest.mark.parametrize(
    ("text", "problem"),
    [("10.1.2.3", None), ("2001:db8::1", None), ("127.0.0.1", "loopback"),
     ("0.0.0.0", "unspecified"), ("224.0.0.251", "multicast"), ("fe80::1", "link-local"),
     ("169.254.0.9", "link-local"), ("255.255.255.255", "broadcast")],
)
def test_problem_names_the_rule(text: str, problem: str | None) -> None:
    ip = addresses.parse(text)
    assert ip is not None
    assert addresses.problem(ip) == problem
    assert addresses.usable(text) is (problem is None)


def test_same_compares_as_canonical_lists() -> None:
    assert addresses.same(["10.0.0.2", "10.0.0.1"], ["10.0.0.1", "10.0.0.2", "10.0.0.1"])
    assert not addresses.same(["10.0.0.2"], ["10.0.0.1", "10.0.0.2"])

"""The lab (k3lab, scripts/lab: namespaces, private servers): what it builds is what it claims."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from k3lab.netns import Lan, RoutedLan
from k3lab.reach import listening, multicast_reaches, tcp_outcome

from .helpers.require import require


def test_agent_never_imports_the_lab() -> None:
    # The lab runs `ip netns`, etcd and MariaDB: none of it belongs in an installed agent.
    code = ("import sys, k3net.agent, k3net.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('k3lab', 'tests')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def _imported_by(modules: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules starting with `prefixes` that importing `modules` (a comma-separated list)
    brings in, in a fresh interpreter."""
    code = (f"import sys, {modules}; "
            f"print(sorted(m for m in sys.modules if m.startswith({prefixes!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    return json.loads(done.stdout.replace("'", '"'))


def test_the_layers_import_only_downwards() -> None:
    """The store backends use no task or web code (what they share with the tasks, such as
    `k3net.keepalive`, lies below both); the pure logic in k3net.core runs no trio and no
    asyncio (design.md: the shape of the code)."""
    assert _imported_by("k3net.store.memory, k3net.store.etcd, k3net.store.mysql",
                        ("k3net.tasks", "k3net.web", "k3net.agent")) == []
    core = ", ".join(f"k3net.core.{p.stem}" for p in sorted(
        (Path(__file__).parents[1] / "k3net" / "core").glob("*.py")) if p.stem != "__init__")
    assert _imported_by(core, ("trio", "asyncio", "k3net.tasks", "k3net.store")) == []


# --- field LAN shapes (network namespaces, root) ---------------------------------------------

PORT = 7946


@pytest.mark.netns
@pytest.mark.usefixtures("netns_ok")
def test_shared_bridge_address_answers_only_on_its_own_host() -> None:
    with Lan(2) as lan:
        a, b = lan.hosts
        lan.add_shared_bridge()
        for host in (a, b):
            assert host.addresses("virbr0") == ["192.168.122.1/24"]
            link = json.loads(host.ip("-j", "link", "show", "virbr0").stdout)[0]
            assert "LOWER_UP" in link["flags"], link  # carrier, as with a running guest
            assert "MULTICAST" in link["flags"], link
        with listening(b, "192.168.122.1", PORT):
            # The same address on a: a's own kernel answers (nothing listens there), never b.
            assert tcp_outcome(a, "192.168.122.1", PORT) == "refused"
            assert tcp_outcome(b, "192.168.122.1", PORT) == "connected"
            assert tcp_outcome(a, b.address, PORT) == "refused"  # b listens on virbr0 only


@pytest.mark.netns
@pytest.mark.usefixtures("netns_ok")
def test_second_lan_address_is_reachable_from_the_lan() -> None:
    with Lan(2) as lan:
        a, b = lan.hosts
        b.add_address("10.77.0.50/24")
        assert b.addresses() == [f"{b.address}/24", "10.77.0.50/24"]
        with listening(b, "0.0.0.0", PORT):
            assert tcp_outcome(a, "10.77.0.50", PORT) == "connected"
            assert tcp_outcome(a, b.address, PORT) == "connected"


@pytest.mark.netns
@pytest.mark.usefixtures("netns_ok")
def test_readdress_moves_the_host_and_keeps_multicast() -> None:
    with Lan(3) as lan:
        a, b, c = lan.hosts
        old = b.address
        b.readdress("10.77.0.60/24")
        assert b.address == "10.77.0.60"
        assert b.addresses() == ["10.77.0.60/24"]
        assert "224.0.0.0/4" in b.ip("route", "show", "224.0.0.0/4").stdout
        with listening(b, "0.0.0.0", PORT):
            assert tcp_outcome(a, "10.77.0.60", PORT) == "connected"
            assert tcp_outcome(a, old, PORT, timeout=1.0) in ("timeout", "unreachable")
        assert multicast_reaches(b, [a, c]) == {a.name: True, c.name: True}


@pytest.mark.netns
@pytest.mark.usefixtures("netns_ok")
def test_router_forwards_unicast_but_not_multicast() -> None:
    with RoutedLan((2, 1)) as net:
        (a, b), (c,) = net.segments
        assert net.gateways == ["10.79.1.1", "10.79.2.1"]
        assert (a.address, b.address, c.address) == ("10.79.1.2", "10.79.1.3", "10.79.2.2")
        with listening(c, c.address, PORT):
            assert tcp_outcome(a, c.address, PORT) == "connected"
        with listening(a, a.address, PORT):
            assert tcp_outcome(c, a.address, PORT) == "connected"
        # mDNS's group and TTL: heard on a's own segment, never across the router.
        assert multicast_reaches(a, [b, c]) == {b.name: True, c.name: False}
        assert multicast_reaches(c, [a, b]) == {a.name: False, b.name: False}
        # A cut link takes the default route with it; link_up brings both routes back.
        c.link_down()
        c.link_up()
        with listening(a, a.address, PORT):
            assert tcp_outcome(c, a.address, PORT) == "connected"


@pytest.mark.netns
@pytest.mark.usefixtures("netns_ok")
def test_one_way_reject() -> None:
    require(shutil.which("nft") is not None, "needs Debian nftables")
    with Lan(3) as lan:
        a, b, c = lan.hosts
        with listening(a, "0.0.0.0", PORT), listening(b, "0.0.0.0", PORT), \
                listening(c, "0.0.0.0", PORT):
            a.reject_tcp(b.address, PORT)
            assert tcp_outcome(a, b.address, PORT) == "refused"
            assert tcp_outcome(b, a.address, PORT) == "connected"  # the other way works
            assert tcp_outcome(c, b.address, PORT) == "connected"  # other hosts reach b
            assert tcp_outcome(a, c.address, PORT) == "connected"  # a reaches other hosts
            a.clear_rejects()
            assert tcp_outcome(a, b.address, PORT) == "connected"


# --- the simulation's command line (no namespaces: options are checked first) ----------------

ROOT = Path(__file__).resolve().parents[1]


def _lan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "lan.py"), *args],
                          capture_output=True, text=True, timeout=60)


def test_lan_help_lists_every_registered_scenario() -> None:
    done = _lan("--help")
    assert done.returncode == 0
    listed = done.stdout.split("scenarios:\n", 1)[1].split()
    for name in ("floor", "join", "leave", "crash", "linkcut", "restart", "outage", "steady"):
        assert name in listed


@pytest.mark.parametrize(("args", "message"), [
    (["--scenario", "crash,nope"], "unknown scenario 'nope'"),
    (["--hosts", "1"], "--hosts must be between 2 and 60"),
    (["--store", "memory", "--hosts", "2"], "--store memory needs --hosts 3 or more"),
])
def test_lan_bad_option_exits_2_with_one_line(args: list[str], message: str) -> None:
    done = _lan(*args)
    assert done.returncode == 2
    assert message in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr


def test_a_missing_server_program_is_named_with_its_package(tmp_path: Path) -> None:
    """A machine without etcd (or MariaDB) gets one line that says what to install, and nothing
    is started, instead of "exited at start" and a log that the run's cleanup removes."""
    from k3lab.services import EtcdServer, MariaDBServer, ServiceError

    for server in (EtcdServer(tmp_path / "etcd"), MariaDBServer(tmp_path / "db")):
        server.binary = str(tmp_path / "not-installed")
        with pytest.raises(ServiceError, match=f"{server.name} is not installed .* Debian "
                                               f"package {server.package}"):
            server.start()
        assert not server.running

"""nox sessions. `nox` runs tests, lint and typing; `nox -s lan` and `nox -s bench` are slow and
need root (network namespaces), so they run only when asked for.

    nox -s tests -- -k table          # arguments after -- go to pytest
    nox -s lan -- --hosts 5 --store etcd --scenario all
    nox -s hostile -- --store etcd                  # each hostile attack, keyed and open
    nox -s bench -- --peers 50 200 500
    nox -s bench-page -- --nodes 500             # the cluster page in headless chromium
    nox -s versus -- --trials 3 --md docs/versus-sample.md   # k3net against Serf, same faults
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typing"]
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")


def _install(session: nox.Session, *groups: str) -> None:
    """k3net and the lab (scripts/lab: namespaces, private servers, the simulation; a package of
    its own, never in k3net's wheel), both editable, and the dependency groups."""
    session.install("-e", ".", "-e", "scripts/lab")
    for group in groups:
        session.install(*nox.project.dependency_groups(PYPROJECT, group))


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite, with its services (private etcd, MariaDB) started and stopped."""
    _install(session, "test")
    python = f"{session.virtualenv.bin}/python"
    session.run("bash", "scripts/test", *session.posargs, env={"K3NET_PYTHON": python},
                external=True)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and import order (k3net, the tests, the lab in scripts/lab, the scripts)."""
    _install(session, "lint")
    session.run("ruff", "check", "k3net", "tests", "scripts", "noxfile.py", *session.posargs)


@nox.session
def typing(session: nox.Session) -> None:
    """mypy on the package, the tests, the lab (scripts/lab) and the scripts."""
    _install(session, "lint", "test")
    session.run("mypy", "k3net", "tests", "scripts", *session.posargs)


@nox.session(default=False)
def lan(session: nox.Session) -> None:
    """Simulated multi-host LAN (network namespaces, root): scenarios timed at the shared store.
    `nox -s lan -- --hosts 5 --store etcd --scenario all`; `-- --help` lists the options."""
    _install(session, "test")
    session.run("python", "-m", "k3lab.lan", *session.posargs)


@nox.session(default=False)
def versus(session: nox.Session) -> None:
    """k3net against HashiCorp Serf (Debian's `serf`, installed with apt-get when missing) on
    the same 5-host netns LAN (root), through the same faults: join, leave, crash, host loss,
    20% loss, a starved and a paused member; CPU, RSS and bytes per agent. Prints one table;
    writes results/versus.json (--out) and markdown (--md). `-- --help` lists the options."""
    _install(session, "test")
    session.run("python", "-m", "k3lab.versus.run", *session.posargs)


@nox.session(default=False)
def hostile(session: nox.Session) -> None:
    """Hostile and careless hosts against real agents on a netns LAN (root), a keyed and an
    open cluster on etcd: forged mDNS facts and departures, bad records, floods, hogs, twins,
    prune. Prints a table of measures and goals; writes results/hostile.json and
    docs/hostile-sample.md. `nox -s hostile -- --store etcd`; `-- --help` lists the options."""
    _install(session, "test")
    session.run("python", "-m", "k3lab.hostile", *session.posargs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """One agent tracking P simulated peers (network namespaces, root): join time, CPU, RSS,
    probe rounds. `nox -s bench -- --peers 50 200 500`."""
    _install(session, "test")
    session.run("python", "-m", "k3lab.bench.peers", *session.posargs)


@nox.session(name="bench-outage", default=False)
def bench_outage(session: nox.Session) -> None:
    """Store outages (network namespaces, root): time from the store's return until it holds
    the true state again, for etcd and MariaDB. `nox -s bench-outage -- --rounds 5`."""
    _install(session, "test")
    session.run("python", "-m", "k3lab.bench.outage", *session.posargs)


@nox.session(name="bench-page", default=False)
def bench_page(session: nox.Session) -> None:
    """The cluster page: weight, and first render of a 500-Node snapshot in Debian's headless
    chromium (chromium + chromium-driver). Writes docs/page-sample.md.
    `nox -s bench-page -- --nodes 500 --repeats 5`."""
    _install(session, "test")
    session.run("python", "-m", "k3lab.bench.page", *session.posargs)


@nox.session(name="bench-store", default=False)
def bench_store(session: nox.Session) -> None:
    """One agent following 10,000 Nodes in a private etcd and a private MariaDB (network
    namespace, root): start to first snapshot, RSS, watch-event p99, rows an idle MySQL poll
    reads. Writes docs/bench-store.md. `nox -s bench-store -- --nodes 10000 --idle 10`."""
    _install(session, "test")
    session.run("python", "-m", "k3lab.bench.store", "--record", "docs/bench-store.md",
                *session.posargs)

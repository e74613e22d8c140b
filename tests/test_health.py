"""Health as the Kubernetes components answer it (/livez, /readyz with ?verbose, ?exclude= and
/readyz/<check>), /healthz as the Go agent, and the metrics every Prometheus client exports."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from k3net import version
from k3net.web import checks

from .helpers.web import Web, get, start_web

OK = None


@pytest.fixture
async def web(nursery: trio.Nursery) -> AsyncIterator[Web]:
    w = await start_web(nursery)
    yield w
    await w.stop()


def table(**problems: str | None) -> dict[str, checks.Check]:
    return {name: _answers(problem) for name, problem in problems.items()}


def _answers(problem: str | None) -> checks.Check:
    """A check that always finds `problem` (None: healthy)."""
    return lambda: problem


@pytest.mark.parametrize(
    ("problems", "query", "status", "body"),
    [
        ({"store": OK, "mdns": OK}, b"", 200, "ok\n"),
        ({"store": OK, "mdns": OK}, b"verbose", 200,
         "[+]store ok\n[+]mdns ok\nreadyz check passed\n"),
        ({"store": "connection refused", "mdns": OK}, b"", 503,
         "[-]store failed: connection refused\nreadyz check failed\n"),
        ({"store": "connection refused", "mdns": OK}, b"verbose", 503,
         "[-]store failed: connection refused\n[+]mdns ok\nreadyz check failed\n"),
        ({"store": "down", "mdns": OK}, b"exclude=store", 200, "ok\n"),
        ({"store": "down", "mdns": OK}, b"verbose&exclude=store", 200,
         "[+]store excluded: ok\n[+]mdns ok\nreadyz check passed\n"),
        ({"store": "down", "mdns": "x"}, b"exclude=store&exclude=mdns", 200, "ok\n"),
        ({"store": "down", "mdns": "x"}, b"exclude=store,mdns", 200, "ok\n"),
        ({"store": OK}, b"verbose&exclude=nope", 200,
         "[+]store ok\nwarn: some health checks cannot be excluded: no matches for 'nope'\n"
         "readyz check passed\n"),
    ],
)
def test_answer(problems: dict[str, str | None], query: bytes, status: int, body: str) -> None:
    got = checks.answer("readyz", table(**problems), query)
    assert (got[0], got[2].decode()) == (status, body)


def test_one_check_alone() -> None:
    checks_ = table(store="down", mdns=OK)
    assert checks.answer("readyz", checks_, b"", "mdns")[::2] == (200, b"ok\n")
    assert checks.answer("readyz", checks_, b"", "store")[::2] == (503, b"[-]store failed: down\n")
    assert checks.answer("readyz", checks_, b"", "nope")[0] == 404


async def test_readyz_verbose_with_the_store_down(web: Web) -> None:
    web.health.down("etcd: connection refused")
    status, headers, body = await get(web.url("/readyz?verbose"))
    assert status == 503
    assert headers["content-type"].startswith("text/plain")
    assert body.decode().splitlines() == [
        "[-]store failed: etcd: connection refused", "[+]mdns ok", "[+]http ok", "[+]name ok",
        "readyz check failed"]
    assert (await get(web.url("/readyz?exclude=store")))[::2] == (200, b"ok\n")
    assert (await get(web.url("/readyz/store")))[0] == 503
    assert (await get(web.url("/readyz/http")))[::2] == (200, b"ok\n")
    # Liveness does not depend on the store: restarting the agent would not bring it back.
    assert (await get(web.url("/livez")))[::2] == (200, b"ok\n")
    assert (await get(web.url("/livez?verbose")))[::2] == (200, b"[+]ping ok\nlivez check passed\n")
    assert (await get(web.url("/healthz")))[::2] == (200, b"ok\n")
    web.health.up()
    assert (await get(web.url("/readyz")))[::2] == (200, b"ok\n")


async def test_readyz_waits_for_the_mdns_advertisement(web: Web) -> None:
    web.health.up()
    registered = False
    web.state.mdns_up = lambda: registered
    status, _, body = await get(web.url("/readyz"))
    assert (status, body) == (503, b"[-]mdns failed: advertisement not registered\n"
                                   b"readyz check failed\n")
    registered = True
    assert (await get(web.url("/readyz")))[::2] == (200, b"ok\n")


async def test_health_is_get_only(web: Web) -> None:
    assert (await get(web.url("/readyz"), "POST"))[0] == 405
    assert (await get(web.url("/livez"), "HEAD"))[::2] == (200, b"")
    assert (await get(web.url("/livez/ping")))[::2] == (200, b"ok\n")
    assert (await get(web.url("/livez/ping/x")))[0] == 404


async def test_metrics_set(web: Web) -> None:
    web.metrics.probes.labels(result="confirmed").inc()
    status, _, body = await get(web.url("/metrics"))
    assert status == 200
    samples = {s.name: s for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_start_time_seconds", "process_open_fds", "python_info",
                 "k3net_probes_total", "k3net_store_up"):
        assert name in samples, name
    build = samples["k3net_build_info"]
    assert build.value == 1
    assert build.labels == {"version": version.version(), "commit": version.commit() or "unknown"}
    assert not [name for name in samples if name.endswith("_created")]

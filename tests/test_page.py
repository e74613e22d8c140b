"""The cluster page at `/`.

Three layers: the HTTP side (assets, headers, /info and /events/snapshot fields the page reads)
against the app served by real hypercorn on 127.0.0.1; the page's own logic in a real headless
chromium against that same in-process app, driven through its MemoryStore; and the page's
end-to-end claims with real agents on a netns LAN, the browser inside a host namespace.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from k3lab import browser as browser_mod
from k3lab.agents import AgentProc, ready
from k3lab.browser import Browser, screenshot_page
from k3lab.netns import Lan, LoopbackHost
from k3lab.nsclient import wait_for
from k3net.model import ANN_LAST_SEEN
from k3net.web.page import ASSETS, CSP

from .helpers.nodes import make_node
from .helpers.require import require
from .helpers.web import Web, get, start_web, write_nodes

T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T | None]]) -> T:
    """Await `check()` until it returns something true; the caller bounds the time."""
    while True:
        value = await check()
        if value:
            return value
        await trio.sleep(0.05)


async def _has_nodes(snapshot: Awaitable[dict[str, Any]]) -> bool:
    return bool((await snapshot)["nodes"])


# --- HTTP: what the agent serves ------------------------------------------------------------


@pytest.fixture
async def web(nursery: trio.Nursery) -> AsyncIterator[Web]:
    w = await start_web(nursery)
    yield w
    await w.stop()


async def test_page_and_assets_are_served_with_their_types_and_policy(web: Web) -> None:
    status, headers, body = await get(web.url("/"))
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-security-policy"] == CSP
    assert headers["x-content-type-options"] == "nosniff"
    html = body.decode()
    assert 'src="static/page.js"' in html and 'href="static/page.css"' in html
    for path, ctype in (("/static/page.js", "text/javascript"), ("/static/page.css", "text/css")):
        status, headers, body = await get(web.url(path))
        assert status == 200 and headers["content-type"].startswith(ctype) and body
        assert int(headers["content-length"]) == len(body)


async def test_head_and_revalidation(web: Web) -> None:
    status, headers, body = await get(web.url("/static/page.js"))
    etag = headers["etag"]
    head_status, head_headers, head_body = await get(web.url("/static/page.js"), "HEAD")
    assert (head_status, head_body) == (200, b"")
    assert head_headers["content-length"] == str(len(body)) and head_headers["etag"] == etag

    def conditional(tag: str) -> tuple[int, bytes]:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(web.url("/static/page.js"),
                                         headers={"If-None-Match": tag})
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, err.read()

    assert await trio.to_thread.run_sync(conditional, etag) == (304, b"")
    assert await trio.to_thread.run_sync(conditional, f'W/"old", {etag}') == (304, b"")
    status, body = await trio.to_thread.run_sync(conditional, '"something-else"')
    assert status == 200 and len(body) > 0


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/static/", 404),
    ("GET", "/static/app.py", 404),
    ("GET", "/static/../app.py", 404),
    ("GET", "/index.html", 404),
    ("POST", "/", 405),
    ("DELETE", "/static/page.js", 405),
])
async def test_only_the_page_assets_are_served(web: Web, method: str, path: str, status: int
                                               ) -> None:
    assert (await get(web.url(path), method))[0] == status


async def test_page_loads_nothing_from_anywhere_else(web: Web) -> None:
    """Machines without internet must get the whole page from the agent."""
    for path in ASSETS:
        body = (await get(web.url(path)))[2].decode()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", body, re.I), path
        assert "@import" not in body and "fetch(\"http" not in body


async def test_info_tells_the_page_version_store_subscribers_and_epoch(web: Web) -> None:
    info = json.loads((await get(web.url("/info")))[2])
    assert info["store"] == "memory" and info["epoch"] == web.hub.epoch
    assert isinstance(info["version"], str) and info["version"]
    assert "commit" in info  # None when k3net runs from neither a git checkout nor a build
    assert info["subscribers"] == 0
    async with web.ws() as ws:
        with trio.fail_after(5):
            await ws.get_message()
        info = json.loads((await get(web.url("/info")))[2])
        assert info["subscribers"] == 1


async def test_events_snapshot_has_the_latest_last_seen(web: Web) -> None:
    """Heartbeats are not streamed on /events; the page polls this to keep `lastSeen` true."""
    stored = await web.store.create(make_node("node-b"))
    later = dt.datetime(2026, 11, 30, 9, 0, 1, tzinfo=dt.UTC)
    fresh = make_node("node-b", last_seen=later)

    async def snapshot() -> dict[str, Any]:
        status, headers, body = await get(web.url("/events/snapshot"))
        assert status == 200 and headers["content-type"] == "application/json"
        return json.loads(body)  # type: ignore[no-any-return]

    with trio.fail_after(5):
        await eventually(lambda: _has_nodes(snapshot()))
    seq = (await snapshot())["seq"]
    await web.store.update(fresh, stored.version)
    want = fresh.metadata.annotations[ANN_LAST_SEEN]

    async def refreshed() -> dict[str, Any] | None:
        snap = await snapshot()
        return snap if snap["nodes"][0]["lastSeen"] == want else None

    with trio.fail_after(5):
        snap = await eventually(refreshed)
    assert snap["type"] == "snapshot" and snap["epoch"] == web.hub.epoch
    assert snap["seq"] == seq  # a heartbeat is no event


# --- the page's logic in a real browser, against the in-process app ---------------------------


@pytest.fixture(scope="module")
def local_browser() -> Iterator[Browser]:
    require(browser_mod.available(), "needs Debian chromium and chromium-driver")
    with Browser() as b:
        yield b


async def page_until(b: Browser, check: Any, what: str, within: float = 10) -> dict[str, Any]:
    """Poll what the page shows until `check(page)` is true, for at most `within` seconds."""
    last: dict[str, Any] = {}

    async def shows() -> dict[str, Any] | None:
        nonlocal last
        last = await trio.to_thread.run_sync(b.page)
        return last if check(last) else None

    with trio.move_on_after(within):
        return await eventually(shows)
    raise AssertionError(f"page never showed {what}: {last}")


async def hub_reached(web: Web, seq: int) -> None:
    async def reached() -> bool:
        await trio.lowlevel.checkpoint()
        return web.hub.seq >= seq

    with trio.fail_after(5):
        await eventually(reached)


async def open_page(b: Browser, web: Web) -> None:
    await trio.to_thread.run_sync(b.get, web.url("/"))
    await trio.to_thread.run_sync(b.js, "window.__loaded = true")


async def no_reload(b: Browser) -> bool:
    return await trio.to_thread.run_sync(b.js, "return window.__loaded === true") is True


async def test_page_table_sort_filter_and_in_place_updates(web: Web, local_browser: Browser
                                                           ) -> None:
    b = local_browser
    stored = {}
    for node in (make_node("node-10", addresses=("10.77.0.10",)),
                 make_node("node-2", addresses=("10.77.0.2",), ready="False", reason="PeerLeft"),
                 make_node("k3-ctl", managed=False, addresses=("10.77.0.9",), port=None)):
        stored[node.name] = await web.store.create(node)
    web.health.up()
    await open_page(b, web)
    page = await page_until(b, lambda p: len(p["rows"]) == 3 and p["conn"] == "live", "3 rows")
    assert page["order"] == ["k3-ctl", "node-2", "node-10"]  # names sort as a person would
    assert page["rows"]["node-2"]["word"] == "NotReady"
    assert page["rows"]["node-2"]["reason"].startswith("PeerLeft")
    assert page["rows"]["node-10"]["word"] == "Ready"
    assert page["rows"]["k3-ctl"]["managed"] == "no" and page["rows"]["k3-ctl"]["port"] == "–"
    assert page["rows"]["node-10"]["addresses"] == "10.77.0.10"
    assert page["agent"]["a-store"] == "memory: answers"
    assert page["agent"]["a-ready"] == "ready (store, mdns, http, name)"
    assert page["agent"]["a-node"].startswith("node-a")

    # Sort by Ready (not Ready first), then reversed.
    await trio.to_thread.run_sync(b.js, "document.querySelector('th[data-key=ready] button').click()")
    page = await page_until(b, lambda p: p["order"][0] == "node-2", "not-Ready first")
    await trio.to_thread.run_sync(b.js, "document.querySelector('th[data-key=ready] button').click()")
    page = await page_until(b, lambda p: p["order"][-1] == "node-2", "not-Ready last")

    # Filter by name.
    await trio.to_thread.run_sync(b.js, """
        const f = document.getElementById('filter'); f.value = 'NODE';
        f.dispatchEvent(new Event('input'));""")
    page = await page_until(b, lambda p: p["rows"]["k3-ctl"]["hidden"], "k3-ctl filtered out")
    assert not page["rows"]["node-2"]["hidden"] and not page["rows"]["node-10"]["hidden"]
    await trio.to_thread.run_sync(b.js, """
        const f = document.getElementById('filter'); f.value = '';
        f.dispatchEvent(new Event('input'));""")

    # A change arrives: the same row element changes in place, with a highlight.
    await trio.to_thread.run_sync(b.js, """
        window.__row = document.querySelector('tr[data-node="node-2"]');""")
    await web.store.update(make_node("node-2", addresses=("10.77.0.2",)),
                           stored["node-2"].version)
    page = await page_until(b, lambda p: p["rows"]["node-2"]["ready"] == "True", "node-2 Ready")
    same, flashing = await trio.to_thread.run_sync(b.js, """
        const tr = document.querySelector('tr[data-node="node-2"]');
        return [tr === window.__row, tr.getAnimations().length > 0];""")
    assert same and flashing
    assert page["rows"]["node-2"]["word"] == "Ready"
    # Still sorted by Ready: all Ready now, so by name, node-2 moved with its new state.
    page = await page_until(b, lambda p: p["order"] == ["k3-ctl", "node-2", "node-10"],
                            "rows re-sorted")
    assert await no_reload(b)
    assert await trio.to_thread.run_sync(b.console_errors) == []


async def test_page_timeline_joins_leaves_expiries_returns(web: Web, local_browser: Browser
                                                           ) -> None:
    b = local_browser
    await open_page(b, web)
    await page_until(b, lambda p: p["conn"] == "live", "live")
    stored = await web.store.create(make_node("flappy"))
    for ready_, reason in (("False", "PeerLeft"), ("True", "PeerAlive"),
                           ("Unknown", "PeerExpired"), ("True", "PeerAlive")):
        stored = await web.store.update(make_node("flappy", ready=ready_, reason=reason),
                                        stored.version)
    steady = await web.store.create(make_node("steady"))
    await web.store.delete("steady")
    page = await page_until(b, lambda p: len(p["timeline"].get("flappy", [])) == 5,
                            "flappy's five events")
    assert page["timeline"]["flappy"] == ["join", "leave", "return", "expiry", "return"]
    page = await page_until(b, lambda p: p["timeline"].get("steady") == ["join", "removed"],
                            "steady joined and removed")
    assert "steady" not in page["rows"]
    # The busiest node comes first.
    first = await trio.to_thread.run_sync(
        b.js, "return document.querySelector('#tl-rows .tl-row').dataset.node")
    assert first == "flappy"
    assert steady.version


async def test_page_opened_late_still_shows_the_history(web: Web, local_browser: Browser) -> None:
    """The page asks for the agent's history from seq 0, so what happened before it was
    opened is on the timeline."""
    b = local_browser
    stored = await web.store.create(make_node("early"))
    await web.store.update(make_node("early", ready="False", reason="PeerLeft"), stored.version)
    await hub_reached(web, 2)
    await open_page(b, web)
    page = await page_until(b, lambda p: p["timeline"].get("early") == ["join", "leave"],
                            "early's history")
    assert page["rows"]["early"]["ready"] == "False"


async def test_page_found_by_column_and_rejected_entries(web: Web, local_browser: Browser
                                                         ) -> None:
    b = local_browser
    await write_nodes(web.store, make_node("node-b"))
    await open_page(b, web)
    await page_until(b, lambda p: "node-b" in p["rows"], "node-b")
    hidden = await trio.to_thread.run_sync(
        b.js, "return document.querySelector('th[data-key=foundBy]').hidden")
    assert hidden  # no agent reports how peers were found yet: no empty column
    web.hub.rejected("Bad_Name", "invalid-name", "not a DNS-1123 subdomain")
    page = await page_until(b, lambda p: p["agent"]["a-rejected"].startswith("1 "), "a rejection")
    assert "Bad_Name" in page["agent"]["a-rejected"]
    # A message that says how the peer was found (a later k3net) shows the column.
    await trio.to_thread.run_sync(b.js, """
        const m = {seq: window.k3page.seq + 1, type: 'updated', node: 'node-b', ready: 'True',
                   reason: 'PeerAlive', message: null, addresses: ['10.77.0.3'], port: 7946,
                   managed: true, lastSeen: null, foundBy: 'mdns', ts: new Date().toISOString()};
        window.k3page.ws.onmessage({data: JSON.stringify(m)});""")
    async def column_shown() -> bool:
        return await trio.to_thread.run_sync(b.js, """
            return [document.querySelector('th[data-key=foundBy]').hidden,
                    document.querySelector('tr[data-node="node-b"] .c-foundBy').textContent];
            """) == [False, "mdns"]

    with trio.fail_after(5):
        await eventually(column_shown)


async def test_page_shows_how_the_agent_found_each_peer(web: Web, local_browser: Browser
                                                        ) -> None:
    """The Found-by column from the agent's /peers (mdns, join, scan, store), kept when a
    Node's event comes without it."""
    from k3net.core.table import PeerView

    b = local_browser
    await write_nodes(web.store, make_node("node-b"), make_node("node-c"))
    web.state.peers = lambda: [
        PeerView("node-b", ("10.77.0.3",), 7946, "alive", "mdns", True),
        PeerView("node-c", ("10.79.2.2",), 7946, "alive", "store", True)]
    await open_page(b, web)

    async def found_by() -> dict[str, str] | None:
        cells = await trio.to_thread.run_sync(b.js, """
            if (document.querySelector('th[data-key=foundBy]').hidden) return null;
            const out = {};
            for (const tr of document.querySelectorAll('tr[data-node]'))
              out[tr.dataset.node] = tr.querySelector('.c-foundBy').textContent;
            return out;""")
        return cells if cells and cells.get("node-c") == "store" else None

    with trio.fail_after(10):
        assert (await eventually(found_by))["node-b"] == "mdns"
    stored = await web.store.get("node-c")
    await web.store.update(make_node("node-c", ready="False", reason="PeerRefused"),
                           stored.version)
    await page_until(b, lambda p: p["rows"].get("node-c", {}).get("ready") == "False", "node-c")
    assert (await found_by() or {}).get("node-c") == "store"


async def test_page_reconnects_and_resumes_after_a_drop(nursery: trio.Nursery,
                                                        local_browser: Browser) -> None:
    """The agent's listener goes away and comes back on the same port (same hub: a dropped
    connection, not a restart): the page says it is disconnected, then resumes with since/epoch
    and shows what changed meanwhile."""
    b = local_browser
    web = await start_web(nursery)
    stored = await web.store.create(make_node("node-b"))
    await open_page(b, web)
    page = await page_until(b, lambda p: "node-b" in p["rows"] and p["conn"] == "live", "live")
    epoch = page["epoch"]
    await web.stop()
    page = await page_until(b, lambda p: p["conn"] == "down" and p["banner"], "disconnected")
    assert "Disconnected" in page["banner"]
    await web.store.update(make_node("node-b", ready="False", reason="PeerLeft"), stored.version)
    await web.store.create(make_node("node-c"))
    await hub_reached(web, 3)
    from .helpers.web import start_server
    server = await start_server(nursery, web.state, web.port)
    page = await page_until(b, lambda p: p["conn"] == "live" and "node-c" in p["rows"],
                            "reconnected with node-c", within=15)
    assert page["rows"]["node-b"]["ready"] == "False" and page["epoch"] == epoch
    assert page["banner"] is None
    stats = await trio.to_thread.run_sync(b.js, "return window.k3page.stats")
    assert stats["snapshots"] == 0  # resumed from the history, not a new snapshot
    assert stats["reconnects"] >= 1
    await page_until(b, lambda p: p["timeline"].get("node-b", [""])[-1] == "leave",
                     "node-b's leave on the timeline")
    assert await no_reload(b)
    server.scope.cancel()
    await server.done.wait()


# --- end to end: real agents on a netns LAN ----------------------------------------------------


def _rows_match_store(page: dict[str, Any], agent: AgentProc) -> bool:
    nodes = agent.nodes()
    want = {name: (ready(node) or ("", ""))[0] for name, node in nodes.items()}
    got = {name: row["ready"] for name, row in page["rows"].items()}
    return page["conn"] == "live" and want == got


def script_errors(br: Browser) -> list[str]:
    """The console's errors but the browser's own note of a 503 from /readyz (an agent not
    ready yet answers so, and the page shows it)."""
    return [e for e in br.console_errors()
            if not ("/readyz" in e and "status of 503" in e)]


def lan_page_until(br: Browser, check: Callable[[dict[str, Any]], bool], within: float,
                   what: str) -> dict[str, Any]:
    """What the page shows once `check` holds (polled, for at most `within` seconds)."""
    def shows() -> dict[str, Any] | None:
        page = br.page()
        return page if check(page) else None

    page = wait_for(shows, within, what=what)
    assert page is not None
    return page


@pytest.mark.netns
@pytest.mark.usefixtures("netns_ok")
def test_page_on_a_lan_follows_the_cluster(agents: Any) -> None:  # noqa: PLR0915
    require(browser_mod.available(), "needs Debian chromium and chromium-driver")
    with Lan(4) as lan:
        names = ["node-a", "node-b", "node-c", "node-d"]
        a, b, c = (agents.start(lan[i], names[i], "--peer-ttl", "3s") for i in range(3))
        for agent in (a, b, c):
            agent.wait_ready()
        with Browser(lan[0].name) as br:
            br.get(a.url + "/")
            br.js("window.__loaded = true")

            # The page lists every Node, Ready, as the store has them.
            page = lan_page_until(br, lambda p: p["conn"] == "live" and len(p["rows"]) == 3
                                  and all(r["ready"] == "True" for r in p["rows"].values()),
                                  15, "three Ready rows")
            assert set(page["rows"]) == set(names[:3])
            assert page["rows"]["node-b"]["addresses"] == lan[1].address
            assert page["agent"]["a-store"] == "memory: answers"
            # The mDNS advertisement registers ~1.5 s after /healthz answers; the panel follows
            # at its next /readyz poll (every 5 s).
            lan_page_until(br, lambda p: p["agent"]["a-ready"] == "ready (store, mdns, http, name)",
                           15, "the agent ready with every check")

            # A SIGTERMed peer turns not-Ready on the page soon after the store.
            c.signal(signal.SIGTERM)
            t0 = time.monotonic()
            at_store = at_page = None
            deadline = t0 + 10
            while (at_store is None or at_page is None) and time.monotonic() < deadline:
                if at_store is None and ready(a.nodes().get("node-c")) == ("False", "PeerLeft"):
                    at_store = time.monotonic() - t0
                if at_page is None and br.page()["rows"]["node-c"]["ready"] == "False":
                    at_page = time.monotonic() - t0
                time.sleep(0.01)
            assert at_store is not None and at_page is not None, (at_store, at_page)
            page = br.page()
            assert page["rows"]["node-c"]["word"] == "NotReady"
            assert page["rows"]["node-c"]["reason"].startswith("PeerLeft")
            wait_for(lambda: br.page()["timeline"].get("node-c", [""])[-1] == "leave", 5,
                     what="node-c's leave on the timeline")
            assert c.proc.wait(5) == 0

            # A new peer appears without a reload.
            d = agents.start(lan[3], "node-d", "--peer-ttl", "3s")
            d.wait_ready()
            t1 = time.monotonic()
            wait_for(lambda: br.page()["rows"].get("node-d", {}).get("ready") == "True", 15,
                     what="node-d on the page")
            join = time.monotonic() - t1
            assert br.js("return window.__loaded === true") is True

            # The serving agent restarts: the page says it is disconnected, then reconnects
            # by itself and shows the new agent's state (a new epoch; memory store: node-c,
            # stopped before, is gone).
            assert script_errors(br) == []
            epoch = br.page()["epoch"]
            a.stop()
            page = lan_page_until(br, lambda p: p["conn"] == "down", 10,
                                  "the page saying it is disconnected")
            assert page["banner"] and "Disconnected" in page["banner"]
            a2 = agents.start(lan[0], "node-a", "--peer-ttl", "3s")
            a2.wait_ready()
            t2 = time.monotonic()
            lan_page_until(br, lambda p: p["epoch"] != epoch and _rows_match_store(p, a2)
                           and set(p["rows"]) == {"node-a", "node-b", "node-d"}, 20,
                           "the page showing the restarted agent's state")
            back = time.monotonic() - t2
            page = br.page()
            assert page["banner"] is None and "node-c" not in page["rows"]
            assert br.js("return window.__loaded === true") is True
            # While the agent was down, the browser logged its refused connections; nothing else.
            errors = [e for e in script_errors(br) if "ERR_CONNECTION_REFUSED" not in e]
            assert errors == []
            print(f"\nmeasured: SIGTERM -> False at the store {at_store:.3f}s, on the page "
                  f"{at_page:.3f}s (page - store {at_page - at_store:+.3f}s); new peer on the "
                  f"page {join:.2f}s after its /healthz; page current again {back:.2f}s after "
                  f"the restarted agent's /healthz")


async def test_screenshot_of_a_settled_page(web: Web, tmp_path: Path) -> None:
    """What the LAN simulation uses for the README's picture."""
    require(browser_mod.available(), "needs Debian chromium and chromium-driver")
    stored = await web.store.create(make_node("node-b"))
    await web.store.update(make_node("node-b", ready="Unknown", reason="PeerExpired"),
                           stored.version)
    web.health.up()
    path = tmp_path / "shots" / "page.png"
    page = await trio.to_thread.run_sync(
        lambda: screenshot_page(None, web.url("/"), path, width=800))
    assert page["rows"]["node-b"]["word"] == "Unknown"
    assert page["timeline"]["node-b"] == ["join", "expiry"]
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 800  # the width asked for


async def test_timeline_span_is_chosen_and_kept_in_the_address(nursery: trio.Nursery,
                                                               local_browser: Browser) -> None:
    """Events are placed at the agent's time (`ts`): one 10 minutes ago shows in the hour, not
    in the last 5 minutes, whose band still starts in the state it left."""
    b = local_browser
    now = [dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)]
    web = await start_web(nursery, clock=lambda: now[0])  # type: ignore[arg-type]
    stored = await web.store.create(make_node("node-b"))
    await hub_reached(web, 1)
    now[0] = dt.datetime.now(dt.UTC)
    await web.store.update(make_node("node-b", ready="False", reason="PeerLeft"), stored.version)
    await hub_reached(web, 2)
    await open_page(b, web)
    await page_until(b, lambda p: p["timeline"].get("node-b") == ["join", "leave"],
                     "both events in the last hour")
    await trio.to_thread.run_sync(b.js, "document.querySelector('#spans [data-span=\"5\"]').click()")
    await page_until(b, lambda p: p["timeline"].get("node-b") == ["leave"],
                     "only the leave in the last 5 minutes")
    heading, hash_, band = await trio.to_thread.run_sync(b.js, """
        return [document.getElementById('tl-h').textContent, location.hash,
                document.querySelector('#tl-rows .band').className];""")
    assert (heading, hash_) == ("Last 5 minutes", "#span=5m")
    assert band == "band s-True"  # Ready from before the span until the leave
    # The address keeps the span: a reload shows the same view.
    await trio.to_thread.run_sync(b.js, "location.reload()")

    async def reloaded() -> bool:
        return not await no_reload(b)

    with trio.fail_after(10):
        await eventually(reloaded)
    await page_until(b, lambda p: p["timeline"].get("node-b") == ["leave"], "span after reload")
    heading = await trio.to_thread.run_sync(b.js, "return document.getElementById('tl-h').textContent")
    assert heading == "Last 5 minutes"
    await web.stop()


async def test_text_from_the_store_is_never_markup(web: Web, local_browser: Browser) -> None:
    """Reasons and messages come from whatever wrote the store: shown as text, never run."""
    b = local_browser
    evil = '<img src=x onerror="window.__xss=1"><b>bold</b>'
    await web.store.create(make_node("node-b", reason="<i>Odd</i>", message=evil))
    await open_page(b, web)
    page = await page_until(b, lambda p: "node-b" in p["rows"], "node-b")
    assert page["rows"]["node-b"]["reason"] == "<i>Odd</i>" + evil
    injected = await trio.to_thread.run_sync(b.js, """
        return [window.__xss === undefined, document.querySelectorAll('#rows img, #rows i').length];""")
    assert injected == [True, 0]


async def test_a_page_that_fell_behind_resumes_without_losing_messages(
        nursery: trio.Nursery, local_browser: Browser) -> None:
    """A subscriber whose queue fills is dropped (4008); the page resumes with since/epoch and
    gets exactly what it missed from the agent's history, not a snapshot."""
    b = local_browser
    web = await start_web(nursery, queue_size=1)
    await open_page(b, web)
    await page_until(b, lambda p: p["conn"] == "live", "live")
    for i in range(40):  # no checkpoint in between: the page's queue of 1 overflows
        web.hub.rejected(f"Bad_{i}", "invalid-name", "not a DNS-1123 subdomain")
    page = await page_until(b, lambda p: p["agent"]["a-rejected"].startswith("40 "),
                            "all 40 rejections")
    assert "Bad_39" in page["agent"]["a-rejected"]
    stats = await trio.to_thread.run_sync(b.js, "return window.k3page.stats")
    assert stats["snapshots"] == 0 and stats["reconnects"] >= 1
    dropped = web.metrics.registry.get_sample_value("k3net_event_subscribers_dropped_total")
    assert dropped is not None and dropped >= 1
    await web.stop()


@pytest.mark.netns
@pytest.mark.usefixtures("netns_ok")
def test_page_says_so_when_the_agent_hangs(agents: Any) -> None:
    """An agent that stops answering (SIGSTOP: its connections stay open, nothing is sent)
    is shown as disconnected once two /info polls fail; after SIGCONT the page is live again."""
    require(browser_mod.available(), "needs Debian chromium and chromium-driver")
    with LoopbackHost() as host:
        a = agents.start(host, "node-a")
        a.wait_ready()
        with Browser(host.name) as br:
            br.get(a.url + "/")
            lan_page_until(br, lambda p: p["conn"] == "live" and "node-a" in p["rows"], 15,
                           "the page live")
            a.signal(signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                page = lan_page_until(br, lambda p: p["conn"] == "down", 30,
                                      "the page saying the agent does not answer")
                noticed = time.monotonic() - t0
                assert page["banner"] and "does not answer" in page["banner"]
                assert "not answering" in page["agent"]["a-store"]
            finally:
                a.signal(signal.SIGCONT)
            t1 = time.monotonic()
            lan_page_until(br, lambda p: p["conn"] == "live" and p["banner"] is None, 30,
                           "the page live again")
            print(f"\nmeasured: hung agent shown disconnected after {noticed:.1f}s, "
                  f"live again {time.monotonic() - t1:.1f}s after SIGCONT")


async def test_page_shows_last_seen_refreshes_that_are_not_streamed(
        web: Web, local_browser: Browser) -> None:
    """A heartbeat changes only lastSeen: no /events message. A page that replayed the history
    (the `joined` message has the old lastSeen) still shows the current one."""
    b = local_browser
    stored = await web.store.create(make_node("node-b"))
    fresh = make_node("node-b", last_seen=dt.datetime.now(dt.UTC))
    await web.store.update(fresh, stored.version)
    want = fresh.metadata.annotations[ANN_LAST_SEEN]
    await hub_reached(web, 1)
    await open_page(b, web)

    async def shown() -> bool:
        return await trio.to_thread.run_sync(b.js, """
            const td = document.querySelector('tr[data-node="node-b"] .c-lastSeen');
            return td ? td.title : null;""") == want

    with trio.fail_after(10):
        await eventually(shown)
    assert web.hub.seq == 1  # the refresh was no event


@pytest.mark.netns
@pytest.mark.usefixtures("netns_ok")
def test_page_fits_a_phone_screen(agents: Any) -> None:
    """At 360 pixels wide each Node is a card with labelled fields, and nothing scrolls
    sideways (served by a real agent inside a namespace, so no mDNS leaves it)."""
    require(browser_mod.available(), "needs Debian chromium and chromium-driver")
    with LoopbackHost() as host:
        a = agents.start(host, "a-rather-long-node-name-for-a-phone-screen.example")
        a.wait_ready()
        with Browser(host.name) as br:
            br.emulate(360, 760)
            br.get(a.url + "/")
            lan_page_until(br, lambda p: p["conn"] == "live" and len(p["rows"]) == 1, 15,
                           "the page live")
            layout = br.js("""
                const td = document.querySelector('#rows td.c-ready');
                const table = document.querySelector('.scroll');
                return {overflow: document.documentElement.scrollWidth
                                  - document.documentElement.clientWidth,
                        table_overflow: table.scrollWidth - table.clientWidth,
                        width: document.documentElement.clientWidth,
                        label: getComputedStyle(td, '::before').content,
                        display: getComputedStyle(td.parentElement).display};""")
    assert layout["width"] == 360
    assert layout["overflow"] <= 0 and layout["table_overflow"] <= 0
    assert layout["display"] == "block" and layout["label"] == '"Ready"'


async def test_page_shows_the_store_down_and_back(web: Web, local_browser: Browser) -> None:
    b = local_browser
    web.health.down("etcd at 127.0.0.1:2379: connection refused")
    await open_page(b, web)
    page = await page_until(b, lambda p: "connection refused" in p["agent"]["a-store"],
                            "the store down")
    assert page["agent"]["a-store"].startswith("memory: ")
    assert page["agent"]["a-ready"].startswith("not ready: store ")
    web.health.up()
    await page_until(b, lambda p: p["agent"]["a-store"] == "memory: answers",
                     "the store back (next /readyz poll)")

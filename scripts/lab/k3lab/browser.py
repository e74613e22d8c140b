"""A real headless browser for the cluster page's tests, its benchmark and the LAN simulation's
screenshot: Debian's chromium driven by selenium (a test dependency, imported only here) through
Debian's chromium-driver. Nothing is downloaded at run time.

The browser must reach agents on a test LAN, whose addresses exist only inside network
namespaces. A thread that calls setns(2) moves only itself, and processes it starts inherit its
namespace: so one thread, entered into the namespace, starts chromedriver (which starts
chromium) and makes every WebDriver call, whose HTTP connections to chromedriver's loopback port
must be made from that same namespace. `namespace=None` stays in this process's namespace (for
a server on 127.0.0.1).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from k3lab.nsclient import _enter as enter_namespace

T = TypeVar("T")

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

# What the page shows, read in one round trip: each row by name (its data attributes and the
# text a person reads), the connection state and the timeline's events.
_READ_PAGE = """
const rows = {};
for (const tr of document.querySelectorAll('#rows tr')) {
  const cell = (k) => tr.querySelector('.c-' + k).textContent;
  rows[tr.dataset.node] = {ready: tr.dataset.ready, word: cell('ready'), reason: cell('reason'),
    addresses: cell('addresses'), port: cell('port'), lastSeen: cell('lastSeen'),
    managed: cell('managed'), hidden: tr.hidden};
}
const timeline = {};
for (const row of document.querySelectorAll('#tl-rows .tl-row')) {
  timeline[row.dataset.node] = [...row.querySelectorAll('.tl-strip .ev')].map(e => e.dataset.kind);
}
return {conn: document.body.dataset.conn, banner: document.getElementById('banner').hidden ? null
        : document.getElementById('banner').textContent, rows, timeline,
        order: [...document.querySelectorAll('#rows tr')].map(tr => tr.dataset.node),
        agent: Object.fromEntries([...document.querySelectorAll('#agent dd')].map(d => [d.id, d.textContent])),
        epoch: window.k3page ? window.k3page.epoch : null};
"""


def available() -> bool:
    return shutil.which(CHROMIUM) is not None and shutil.which(CHROMEDRIVER) is not None


def _enter(namespace: str | None) -> None:
    if namespace is not None:
        enter_namespace(namespace)


class Browser:
    """One headless chromium. Every call runs on the browser's own thread."""

    def __init__(self, namespace: str | None = None, *, width: int = 1280, height: int = 900
                 ) -> None:
        self._pool = ThreadPoolExecutor(1, initializer=_enter, initargs=(namespace,))
        self._profile = tempfile.mkdtemp(prefix="k3net-chromium-")
        try:
            self.driver: Any = self.call(lambda: self._start(width, height))
        except BaseException:
            self._pool.shutdown(wait=True)
            shutil.rmtree(self._profile, ignore_errors=True)
            raise

    def _start(self, width: int, height: int) -> Any:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--no-first-run", "--disable-extensions", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--metrics-recording-only",
                    f"--user-data-dir={self._profile}", f"--window-size={width},{height}"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)

    def call(self, fn: Callable[[], T]) -> T:
        return self._pool.submit(fn).result()

    def get(self, url: str) -> None:
        self.call(lambda: self.driver.get(url))

    def js(self, script: str, *args: Any) -> Any:
        return self.call(lambda: self.driver.execute_script(script, *args))

    def page(self) -> dict[str, Any]:
        """What the page shows now (see _READ_PAGE)."""
        return self.js(_READ_PAGE)  # type: ignore[no-any-return]

    def emulate(self, width: int, height: int, *, mobile: bool = True) -> None:
        """Lay pages out as on a device of this size (a phone: `mobile`), whatever the
        window's size (headless chromium keeps windows at least 500 pixels wide)."""
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}
        self.call(lambda: self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                                      metrics))

    def console_errors(self) -> list[str]:
        """The browser console's error lines (a CSP refusal or a script error shows here)."""
        entries = self.call(lambda: self.driver.get_log("browser"))
        return [e["message"] for e in entries if e.get("level") == "SEVERE"]

    def screenshot(self, path: Path, width: int | None = None, height: int | None = None) -> None:
        def shoot() -> None:
            if width is not None and height is not None:
                self.driver.set_window_size(width, height)
            self.driver.save_screenshot(str(path))

        self.call(shoot)

    def close(self) -> None:
        try:
            self.call(lambda: self.driver.quit())
        finally:
            self._pool.shutdown(wait=True)
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# True once the page is live, has rows, and nothing is left to draw or animate.
_SETTLED = """
const s = window.k3page;
return !!s && document.body.dataset.conn === 'live' && s.nodes.size > 0 && !s.scheduled
    && !s.tlDirty && document.getAnimations().length === 0;
"""


def screenshot_page(namespace: str | None, url: str, path: Path, *, width: int = 1280,
                    max_height: int = 2400, span_minutes: int = 60, within: float = 30.0
                    ) -> dict[str, Any]:
    """Open the cluster page at `url` (from inside `namespace`) with its timeline showing the
    last `span_minutes` (60, 15, 5 or 1), wait until it is live with its table and timeline
    drawn (at most `within` seconds), and write a PNG of the whole page, up to `max_height`
    pixels tall, to `path`. Returns what the page showed (Browser.page)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with Browser(namespace, width=width, height=900) as browser:
        browser.get(f"{url}#span={span_minutes}m")
        deadline = time.monotonic() + within
        while not browser.js(_SETTLED):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page at {url} did not settle within {within:g}s")
            time.sleep(0.1)
        height = min(max(int(browser.js("return document.documentElement.scrollHeight")), 600),
                     max_height)
        # The window's size includes what the browser draws around the page: grow it by that.
        chrome = int(browser.js("return window.outerHeight - window.innerHeight"))
        browser.screenshot(path, width, height + chrome)
        return browser.page()

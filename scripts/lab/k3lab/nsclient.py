"""Reach into a test network namespace from the test process.

A thread that calls setns(2) moves only itself into the namespace; sockets it opens stay there.
`NetnsClient` owns one such thread per namespace and runs small blocking clients in it (HTTP
GETs to the agents), so the tests need no subprocess per request.
"""

from __future__ import annotations

import ctypes
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _enter(namespace: str) -> None:
    fd = os.open(f"/var/run/netns/{namespace}", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({namespace}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NetnsClient:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._pool = ThreadPoolExecutor(1, initializer=_enter, initargs=(namespace,))

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        return self._pool.submit(fn, *args).result()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Start `fn(*args)` in the namespace and return at once (calls run one at a time)."""
        return self._pool.submit(fn, *args)

    def get(self, url: str, timeout: float = 2.0) -> tuple[int, str]:
        def fetch() -> tuple[int, str]:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    return resp.status, resp.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        return self.call(fetch)

    def get_json(self, url: str, timeout: float = 2.0) -> Any:
        status, body = self.get(url, timeout)
        if status != 200:
            raise AssertionError(f"GET {url}: {status} {body}")
        return json.loads(body)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def wait_for(check: Callable[[], T], timeout: float, interval: float = 0.05, what: str = "") -> T:
    """Call `check` until it returns something true (returned) or `timeout` passes
    (AssertionError with the last value or error). For real processes only; bounded."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except (OSError, AssertionError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}: {last!r}")
        time.sleep(interval)

"""The cluster page at `/`: plain HTML, CSS and JavaScript shipped inside the package
(`k3net/web/static/`), read once when the app is built and served from memory.

Nothing is loaded from anywhere else: the machines k3net runs on often have no internet, so the
page uses no framework and no CDN, and its Content-Security-Policy says so (a browser refuses
any script, style or connection that is not this agent's own). The page itself is fed by the
`/events` websocket (see `k3net.events`) and polls `/info`, `/readyz/store` and `/events/snapshot`.

It needs no login: it shows only what mDNS already announces on the LAN (names, addresses,
ports) and what those agents wrote into the store.
"""

from __future__ import annotations

import hashlib
from importlib import resources

import attrs

# URL path -> (file in k3net/web/static, content type). Only these are served: there is no
# path-to-file mapping that a request could walk out of.
ASSETS: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/static/page.css": ("page.css", "text/css; charset=utf-8"),
}

# Only this agent's own scripts, styles and connections (the /events websocket and the JSON
# endpoints); `data:` images for the inline favicon. No inline script or style.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@attrs.frozen
class Asset:
    body: bytes
    content_type: str
    # A strong validator, so that a reload revalidates with If-None-Match and gets a 304.
    etag: str

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"content-type", self.content_type.encode()),
            (b"etag", self.etag.encode()),
            # Revalidate every time: a new k3net version must never run an old script.
            (b"cache-control", b"no-cache"),
            (b"content-security-policy", CSP.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
        ]


def load_assets() -> dict[str, Asset]:
    """Every page asset by URL path, read from the installed package."""
    static = resources.files("k3net.web") / "static"
    assets = {}
    for path, (name, content_type) in ASSETS.items():
        body = (static / name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        assets[path] = Asset(body, content_type, etag)
    return assets


def not_modified(asset: Asset, if_none_match: str | None) -> bool:
    """True when the browser's cached copy (its If-None-Match header) is this asset."""
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return asset.etag in tags or "*" in tags

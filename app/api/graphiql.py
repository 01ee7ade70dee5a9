"""GraphiQL served from package data, for development: no CDN, so it works offline.

The page is what a browser's plain GET of /graphql gets (Strawberry decides when); its scripts
and styles come from app/api/static/graphiql/ (see the README there for versions and refresh).
A Content-Security-Policy pins everything to this origin, so a page that still reached for a
CDN would fail loudly in the Chromium test rather than work only online."""

from __future__ import annotations

from pathlib import Path

from starlette.responses import HTMLResponse
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

ASSETS_DIR = Path(__file__).resolve().parent / "static" / "graphiql"
# Relative to /graphql, so the page keeps working behind a proxy that adds a path prefix.
ASSETS_URL = "static/graphiql"
ASSETS_MOUNT = "/static/graphiql"

# Inline styles: GraphiQL's React components set them; fonts are data: URLs in its CSS.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "font-src 'self' data:; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'"
)

_PAGE = """<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <title>Conversation Service · GraphiQL</title>
    <link rel="icon" href="data:,">
    <link rel="stylesheet" href="{assets}/graphiql.min.css">
    <style>body {{ margin: 0; overflow: hidden; }} #graphiql {{ height: 100vh; }}</style>
  </head>
  <body>
    <div id="graphiql">Loading GraphiQL…</div>
    <script src="{assets}/react.production.min.js"></script>
    <script src="{assets}/react-dom.production.min.js"></script>
    <script src="{assets}/graphql-ws.min.js"></script>
    <script src="{assets}/graphiql.min.js"></script>
    <script src="{assets}/boot.js"></script>
  </body>
</html>
"""


def page() -> HTMLResponse:
    return HTMLResponse(
        _PAGE.format(assets=ASSETS_URL),
        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"},
    )


def assets_mount() -> Mount:
    return Mount(ASSETS_MOUNT, app=StaticFiles(directory=ASSETS_DIR), name="graphiql-assets")

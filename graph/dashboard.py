"""The operators' dashboard at `/dashboard`, GraphiQL at `/graphql`, and their assets at `/static`.

Everything a page loads comes from recograph itself (the vendored libraries live in graph/static/assets/vendor), so both
work with no internet. Each page is sent with its own Content-Security-Policy: the dashboard's allows scripts,
styles and fonts from this origin only and connections to this origin over HTTP and WebSocket, with no inline
script or style and no eval; GraphiQL's differs only where GraphiQL needs it (see `GRAPHIQL_POLICY`).

The pages hold no data: they call `/graphql` with the admin key the operator signs in with, which the browser keeps
in sessionStorage (this tab, until it closes) and never puts in a URL.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from litestar import Request, Response, get
from litestar.datastructures import CacheControlHeader
from litestar.enums import MediaType
from litestar.static_files import create_static_files_router

STATIC = Path(__file__).parent / "static"
ASSETS = STATIC / "assets"  # served at /static; the pages are not (they must come with their policy)

# A Host header as a browser sends it: a name or IPv4 address, or a bracketed IPv6 address, and maybe a port.
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")

DASHBOARD_POLICY = {
    "default-src": "'none'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self'",
    "font-src": "'self'",
    "connect-src": "'self'",
    "manifest-src": "'self'",
    "base-uri": "'none'",
    "form-action": "'none'",
    "frame-ancestors": "'none'",
}
# GraphiQL's dialogs (Radix's scroll lock) add <style> elements whose text depends on the scrollbar's width, so no
# hash can allow them, and its stylesheet embeds its fonts and icons as data: URLs. Scripts stay this origin's files,
# with no eval, as on the dashboard.
GRAPHIQL_POLICY = {
    **DASHBOARD_POLICY,
    "style-src": "'self' 'unsafe-inline'",
    "img-src": "'self' data:",
    "font-src": "'self' data:",
}
HARDENING = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


def content_security_policy(policy: dict[str, str], host: str | None) -> str:
    """Return the header value of `policy`, letting pages open WebSockets back to `host` (the request's Host)."""
    directives = dict(policy)
    if host and _HOST.fullmatch(host):
        # 'self' covers ws: and wss: in CSP 3; browsers that predate it need the host spelt out.
        directives["connect-src"] = f"{directives['connect-src']} ws://{host} wss://{host}"
    return "; ".join(f"{name} {value}" for name, value in directives.items())


@cache
def _page(name: str) -> bytes:
    """Return one of the HTML pages (read once: they change only with a release)."""
    return (STATIC / "pages" / name).read_bytes()


def _html(request: Request, name: str, policy: dict[str, str]) -> Response[bytes]:
    headers = {**HARDENING, "Cache-Control": "no-cache",
               "Content-Security-Policy": content_security_policy(policy, request.headers.get("host"))}
    return Response(_page(name), media_type=MediaType.HTML, headers=headers)


@get(["/dashboard", "/dashboard/"], include_in_schema=False)
async def dashboard(request: Request) -> Response[bytes]:
    """Serve the dashboard's one page; it routes by the URL's fragment (`#/scenarios/<id>`)."""
    return _html(request, "dashboard.html", DASHBOARD_POLICY)


def graphiql_page(request: Request) -> Response[bytes]:
    """Return GraphiQL's page, which loads the vendored GraphiQL, React and React DOM from `/static`."""
    return _html(request, "graphiql.html", GRAPHIQL_POLICY)


async def _harden(response: Response) -> Response:
    response.headers.update(HARDENING)
    return response


def dashboard_routes() -> list:
    """Return the dashboard's page and the `/static` assets router (a new router per app)."""
    # no-cache: the browser revalidates each asset (a 304 on the loopback is cheap) and never runs a stale script.
    assets = create_static_files_router(
        path="/static", directories=[ASSETS], cache_control=CacheControlHeader(no_cache=True), after_request=_harden,
        include_in_schema=False,
    )
    return [dashboard, assets]

"""GraphiQL at /graphql from recograph's own assets, and the policies and assets of the dashboard's pages.

Over HTTP: each page's Content-Security-Policy (the dashboard's allows no inline script or style and no eval;
GraphiQL's allows inline styles only, which its dialogs need), the pages reference only this server's `/static`
assets and those answer, the pages themselves are not reachable under `/static` (where they would lack their
policy), and the dashboard's own scripts build no HTML from strings. In Chromium: GraphiQL renders its editor with
every request off the machine refused, takes the key the dashboard tab signed in with, and runs a query.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from playwright.async_api import expect

from graph.dashboard import STATIC
from tests.e2e.test_dashboard import browser, owner, sign_in, tab  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # a name, never fetched
ASSETS = STATIC / "assets"
OWN_SCRIPTS = sorted([*(ASSETS / "dashboard").rglob("*.js"), *(ASSETS / "graphiql").rglob("*.js")])


def policy(header: str) -> dict[str, list[str]]:
    directives = [part.strip().split() for part in header.split(";") if part.strip()]
    return {name: values for name, *values in directives}


class References(HTMLParser):
    """Collect a page's script and stylesheet URLs, and anything inline."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if "style" in named or any(name.startswith("on") for name in named):
            self.inline.append(f"<{tag}> with {sorted(named)}")
        if tag == "style":
            self.inline.append("<style>")
        if tag == "script":
            if named.get("src"):
                self.urls.append(named["src"])
            else:
                self._in_script = True
        if tag == "link" and named.get("href"):
            self.urls.append(named["href"])

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(f"<script>{data[:40]}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False


async def page(served, path: str) -> tuple[httpx.Response, References]:
    async with httpx.AsyncClient(base_url=served.url) as client:
        response = await client.get(path, headers={"Accept": "text/html"})
        assert response.status_code == 200, response.text
        found = References()
        found.feed(response.text)
        for url in found.urls:
            assert url.startswith("/static/"), f"{path} loads {url} from elsewhere"
            asset = await client.get(url)
            assert asset.status_code == 200, url
            assert asset.headers["x-content-type-options"] == "nosniff"
        return response, found


async def test_the_dashboard_page_has_a_strict_policy_and_only_local_assets(served):
    response, found = await page(served, "/dashboard")
    header = response.headers["content-security-policy"]
    rules = policy(header)
    assert "unsafe" not in header  # no 'unsafe-inline', no 'unsafe-eval'
    assert rules["default-src"] == ["'none'"] and rules["script-src"] == ["'self'"] and rules["style-src"] == ["'self'"]
    host = served.url.removeprefix("http://")
    assert rules["connect-src"] == ["'self'", f"ws://{host}", f"wss://{host}"]
    assert rules["frame-ancestors"] == ["'none'"] and rules["base-uri"] == ["'none'"]
    assert response.headers["x-frame-options"] == "DENY" and response.headers["referrer-policy"] == "no-referrer"
    assert found.inline == [] and "/static/vendor/uplot/uPlot.iife.min.js" in found.urls
    async with httpx.AsyncClient(base_url=served.url) as client:
        odd = await client.get("/dashboard", headers={"Host": "odd'host"})
        assert rules["connect-src"] == ["'self'", f"ws://{host}", f"wss://{host}"]
        assert policy(odd.headers["content-security-policy"])["connect-src"] == ["'self'"]  # not a host: left out
        for hidden in ("/static/../pages/dashboard.html", "/static/pages/dashboard.html",
                       "/static/%2e%2e/dashboard.py"):
            assert (await client.get(hidden)).status_code in (400, 404), hidden


async def test_graphiql_is_served_from_local_assets_under_its_own_policy(served):
    response, found = await page(served, "/graphql")
    header = response.headers["content-security-policy"]
    rules = policy(header)
    assert rules["script-src"] == ["'self'"] and "unsafe-eval" not in header
    assert rules["style-src"] == ["'self'", "'unsafe-inline'"]  # GraphiQL's dialogs write <style> elements
    assert found.inline == [] and "unpkg" not in response.text and "https://" not in response.text
    assert {"/static/vendor/graphiql/graphiql.min.js", "/static/vendor/react/react.production.min.js",
            "/static/vendor/react-dom/react-dom.production.min.js"} <= set(found.urls)


@pytest.mark.parametrize("script", OWN_SCRIPTS, ids=lambda p: str(p.relative_to(STATIC)))
def test_the_dashboards_own_scripts_build_no_html_from_strings(script: Path):
    source = script.read_text()
    for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                   'setAttribute("style"'):
        assert banned not in source, f"{script.name} uses {banned}"
    assert set(re.findall(r"https?://[^\s\"'`]+", source)) <= {SVG_NAMESPACE}, f"{script.name} names a remote URL"
    assert not re.search(r"localStorage\.setItem", source), f"{script.name} writes localStorage"


async def test_graphiql_renders_its_editor_offline_and_runs_a_query_with_the_tabs_key(
        browser, served, owner):  # noqa: F811 (the imported fixtures)
    async with tab(browser, served) as t:
        await sign_in(t, owner.admin)  # the dashboard's key, in this tab's sessionStorage
        await t.page.goto(f"{served.url}/graphql")
        editor = t.page.locator(".graphiql-query-editor .CodeMirror")
        await expect(editor).to_be_visible(timeout=15000)
        await expect(t.page.locator("#graphiql")).not_to_contain_text("Loading...")
        await t.page.get_by_role("button", name="Headers").click()
        await expect(t.page.locator(".graphiql-editor-tool")).to_contain_text("Bearer")
        await t.page.locator(".graphiql-execute-button").click()
        await expect(t.page.locator(".graphiql-response")).to_contain_text('"scenarios"', timeout=10000)
        assert "errors" not in await t.page.locator(".graphiql-response").inner_text()
        assert await t.page.evaluate("localStorage.getItem('graphiql:headers')") in (None, "")
        await t.shot("graphiql")
        t.assert_clean()

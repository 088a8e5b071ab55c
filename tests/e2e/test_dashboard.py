"""The operators' dashboard at /dashboard in a real browser: Playwright driving Debian's Chromium against the
session's served recograph.

Every tab records console errors, uncaught page errors, Content-Security-Policy violations and any request that
would leave the machine (a CDN), and each test asserts there were none. Covered: sign-in (a wrong key, a public
key, the key kept in sessionStorage only and never in a URL, another tenant's data never shown), every page
rendered (with a screenshot under tests/e2e/screenshots/) and the first paint under 1 s, the live chart showing a
new click within 2 s, promote and roll back from the models page changing the model that serves, a revoked key
signing the page out, keys created / rotated / revoked with the secret shown once, a job's live progress and its
cancel, an experiment's SRM warning, effect intervals and ship button, and a panel of a query the server lacks
shown as not available.

`make test` installs Chromium (`apt-get install -y chromium`) and the `playwright` package: these tests fail, not
skip, without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from domain.maintenance import MaintenanceService
from tests.conftest import Served, new_tenant
from tests.e2e.test_model_registry import served_version
from tests.e2e.test_training import shop, train

try:
    from playwright.async_api import Browser, Page, async_playwright, expect
except ImportError:  # reported by the `browser` fixture as a failure, not a skip
    async_playwright = None

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("RECOGRAPH_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).parent / "screenshots"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
KEY_STORAGE = "recograph.adminKey"
FIRST_PAINT_MS = 1000
LIVE_CLICK_S = 2.0

SERVE = """query($s: ID!, $u: ID!) { recommendations(scenarioId: $s, userId: $u, first: 5) {
  requestId variant items { item { id } } } }"""
RECORD = "mutation($e: [InteractionInput!]!) { recordInteractions(events: $e) { accepted } }"
CREATE_KEY = "mutation($s: ApiKeyScope!) { createApiKey(scope: $s) { secret key { id prefix } } }"
REVOKE_KEY = "mutation($id: ID!) { revokeApiKey(id: $id) }"
WHO = "{ apiKeys { id } }"
CREATE_EXPERIMENT = "mutation($input: CreateExperimentInput!) { createExperiment(input: $input) { id } }"
START = "mutation($id: ID!) { startExperiment(id: $id) { status } }"
EXPERIMENT = "query($id: ID!) { experiment(id: $id) { status shippedVariant } }"
SCENARIO_VERSION = "query($s: ID!) { scenario(id: $s) { configVersion } }"
SCENARIO_CONFIG = "query($s: ID!) { scenario(id: $s) { configVersion config } }"
JOBS = "query($k: JobKind) { jobs(kind: $k, first: 1) { edges { node { id status } } } }"

# Reported from the page: a violation event carries what was blocked and where.
REPORT_VIOLATIONS = """document.addEventListener("securitypolicyviolation", (e) => window.__reportViolation(
  `${e.violatedDirective} blocked ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber}`));"""


@dataclass
class Tab:
    """A browser tab on the served recograph and everything that went wrong in it."""

    page: Page
    base: str
    problems: list[str] = field(default_factory=list)

    async def open(self, fragment: str = "/") -> None:
        """Show a dashboard page (`/scenarios/<id>`) and wait until it has its data."""
        await self.page.goto(f"{self.base}/dashboard#{fragment}")
        await self.page.wait_for_selector("#app[data-ready]", timeout=15000)

    async def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path

    def assert_clean(self) -> None:
        assert self.problems == [], "\n".join(self.problems)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if async_playwright is None:
        pytest.fail("the `playwright` package is not installed: run `make test` (pip install -e '.[test]')")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium is not at {CHROMIUM}: run `make test` (apt-get install -y chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            await launched.close()


@contextlib.asynccontextmanager
async def tab(browser: Browser, served: Served, *, guard: bool = True) -> AsyncIterator[Tab]:
    """Open a tab in a fresh browser context (its own sessionStorage); `guard` refuses requests off this machine."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    found = Tab(page=await context.new_page(), base=served.url)

    async def refuse_remote(route) -> None:
        if urlsplit(route.request.url).hostname not in LOCAL_HOSTS:
            found.problems.append(f"request off the machine: {route.request.url}")
            await route.abort()
        else:
            await route.continue_()

    if guard:
        await context.route("**/*", refuse_remote)
    await context.expose_binding("__reportViolation", lambda source, text: found.problems.append(f"CSP: {text}"))
    await context.add_init_script(REPORT_VIOLATIONS)
    found.page.on("console", lambda m: m.type == "error" and found.problems.append(f"console error: {m.text}"))
    found.page.on("pageerror", lambda exc: found.problems.append(f"page error: {exc}"))
    try:
        yield found
    finally:
        await context.close()


async def sign_in(t: Tab, key: str) -> None:
    await t.page.goto(f"{t.base}/dashboard")
    await t.page.fill("#sign-in input[name=key]", key)
    await t.page.click("#sign-in button[type=submit]")
    await t.page.wait_for_selector("#app[data-ready]", timeout=15000)


async def confirm(button) -> None:
    """Click a two-step button twice (the dashboard asks no native dialogs); its label changes in between."""
    handle = await button.element_handle()
    await handle.click()
    assert (await handle.inner_text()).startswith("Confirm")
    await handle.click()


async def outcome(gql, key: str) -> str:
    """Return `ok`, or the error code an admin-only query gets with `key`."""
    body = await gql(WHO, key=key)
    return body["errors"][0]["extensions"]["code"] if body.get("errors") else "ok"


@pytest.fixture(scope="module")
async def owner(served):
    return await new_tenant(served, "dashboard")


@pytest.fixture(scope="module")
async def twice(gql, owner) -> str:
    """A scenario trained twice: version 2 serves, version 1 is retired with its artifact."""
    sid = await shop(gql, owner.admin, "dashboard-shop", users=30, items=40)
    for _ in range(2):
        assert (await train(gql, owner.admin, sid))["status"] == "SUCCEEDED"
    return sid


# --- sign-in ---------------------------------------------------------------------------------------------------


async def test_sign_in_takes_an_admin_key_and_keeps_it_in_this_tab_only(browser, served, gql, owner, twice):
    stranger = await new_tenant(served, "dashboard-stranger")
    async with tab(browser, served) as t:
        await t.page.goto(f"{served.url}/dashboard")
        for key, refusal in (("rg_admin_not-a-key", "not valid"), (owner.public, "not an admin key")):
            await t.page.fill("#sign-in input[name=key]", key)
            await t.page.click("#sign-in button[type=submit]")
            await expect(t.page.locator("#app .banner.error")).to_contain_text(refusal)
        assert await t.page.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") is None
        await sign_in(t, owner.admin)
        await expect(t.page.locator("#nav")).to_be_visible()
        await expect(t.page.locator(f"a[data-scenario='{twice}']")).to_have_text("dashboard-shop")
        assert await t.page.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") == owner.admin
        assert await t.page.evaluate("localStorage.length") == 0 and owner.admin not in t.page.url
        await t.page.reload()  # the same tab keeps its session
        await t.page.wait_for_selector("#app[data-ready]")
        await t.page.click("#sign-out")
        await expect(t.page.locator("#sign-in")).to_be_visible()
        assert await t.page.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") is None
        t.assert_clean()
    async with tab(browser, served) as t:  # another tab: signed out; another tenant: none of the owner's data
        await t.page.goto(f"{served.url}/dashboard#/scenarios/{twice}")
        await expect(t.page.locator("#sign-in")).to_be_visible()
        await sign_in(t, stranger.admin)
        await t.open(f"/scenarios/{twice}")
        await expect(t.page.locator("#app .banner.error")).to_contain_text("No such scenario")
        await t.open("/")
        assert await t.page.locator(f"a[data-scenario='{twice}']").count() == 0
        t.assert_clean()


# --- every page ------------------------------------------------------------------------------------------------


async def test_every_page_renders_without_console_errors_or_policy_violations(browser, served, gql, owner, twice):
    experiment = (await gql.data(CREATE_EXPERIMENT, {"input": {
        "scenarioId": twice, "name": "tour", "primaryMetric": "CTR",
        "variants": [{"name": "control"}, {"name": "treatment"}]}}, key=owner.admin))["createExperiment"]["id"]
    pages = {
        "overview": ("/", "#app table.data"),
        "scenario": (f"/scenarios/{twice}", "#live-chart[data-points]"),
        "experiments": ("/experiments", "#app table.data"),
        "experiment": (f"/experiments/{experiment}", "#experiment-actions"),
        "models": (f"/models/{twice}", "[data-serving=scenario]"),
        "jobs": ("/jobs", "#jobs tbody tr[data-job]"),
        "keys": ("/keys", "[data-key]"),
        "audit": ("/audit", "#audit tbody tr"),
    }
    async with tab(browser, served) as t:
        await sign_in(t, owner.admin)
        for name, (fragment, shown) in pages.items():
            await t.open(fragment)
            await t.page.wait_for_selector(shown, timeout=10000)
            await t.page.wait_for_timeout(300)  # charts lay out, live views get their first update
            print(f"screenshot: {await t.shot(name)}")
        await expect(t.page.locator("#audit")).to_contain_text("createExperiment")
        await t.open(f"/scenarios/{twice}")
        for panel in ("Trends", "Catalogue", "Audience", "Config"):
            await expect(t.page.locator("section.panel h2", has_text=panel)).to_be_visible()
        config = json.loads(await t.page.locator("#scenario-config").inner_text())
        assert config["recall"], config
        t.assert_clean()


async def test_the_first_paint_is_under_a_second(browser, served, owner):
    async with tab(browser, served, guard=False) as t:  # no interception: the browser's own loading is timed
        await sign_in(t, owner.admin)
        paints, ready = [], []
        for _ in range(3):
            await t.page.reload()  # a new document each time (a changed fragment alone would not load the page)
            await t.page.wait_for_selector("#app[data-ready]")
            ready.append(await t.page.evaluate("performance.now()"))
            paints.append(await t.page.evaluate(
                "performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null"))
        print(f"dashboard: first contentful paint {', '.join(f'{p:.0f}' for p in paints)} ms; "
              f"overview with its data {', '.join(f'{r:.0f}' for r in ready)} ms")
        assert None not in paints and max(paints) < FIRST_PAINT_MS, paints
        t.assert_clean()


async def test_a_panel_whose_query_the_server_lacks_shows_not_available(browser, served, owner):
    async def without_system_health(route) -> None:
        body = route.request.post_data or ""
        if "systemHealth" in body:
            missing = {"message": "Cannot query field 'systemHealth' on type 'Query'.",
                       "locations": [{"line": 1, "column": 3}]}
            await route.fulfill(status=200, content_type="application/json",
                                body=json.dumps({"data": None, "errors": [missing]}))
        else:
            await route.continue_()

    async with tab(browser, served) as t:
        await t.page.route("**/graphql", without_system_health)
        await sign_in(t, owner.admin)
        await expect(t.page.locator("[data-unavailable='System health']")).to_contain_text("not available")
        await expect(t.page.locator("#app table.data")).to_be_visible()  # the scenarios still listed
        t.assert_clean()


# --- live metrics ----------------------------------------------------------------------------------------------


async def test_the_live_chart_shows_a_new_click_within_2_s(browser, served, gql, owner, twice):
    async with tab(browser, served) as t:
        await sign_in(t, owner.admin)
        await t.open(f"/scenarios/{twice}")
        chart = t.page.locator("#live-chart")
        await expect(chart).to_have_attribute("data-clicks", re.compile(r"^\d+$"), timeout=10000)
        for attempt in range(2):
            before = int(await chart.get_attribute("data-clicks"))
            shown = (await gql.data(SERVE, {"s": twice, "u": f"live-{attempt}"}, key=owner.public))["recommendations"]
            assert shown["items"], "the scenario recommended nothing"
            event = {"scenarioId": twice, "userId": f"live-{attempt}", "itemId": shown["items"][0]["item"]["id"],
                     "type": "CLICK", "requestId": shown["requestId"]}
            sent = time.monotonic()
            assert (await gql.data(RECORD, {"e": [event]}, key=owner.public))["recordInteractions"]["accepted"] == 1
            await t.page.wait_for_function(
                "(before) => Number(document.getElementById('live-chart').dataset.clicks) > before", arg=before,
                timeout=10000)
            took = time.monotonic() - sent
            print(f"live chart: click {attempt + 1} drawn {took:.2f} s after it was recorded")
            assert took < LIVE_CLICK_S, took
            await expect(t.page.locator("[data-metric=clicks]")).to_have_text(str(before + 1))
        assert int(await chart.get_attribute("data-points")) >= 3  # the first snapshot and one per click at least
        await t.shot("scenario-live")
        t.assert_clean()


# --- models ----------------------------------------------------------------------------------------------------


async def test_promote_and_roll_back_from_the_models_page_change_the_serving_model(browser, served, gql, owner,
                                                                                  twice):
    assert await served_version(gql, owner.admin, twice) == 2
    async with tab(browser, served) as t:
        await sign_in(t, owner.admin)
        await t.open(f"/models/{twice}")
        serving = t.page.locator("[data-serving=scenario]")
        await expect(serving).to_have_text("v2")
        await confirm(t.page.get_by_role("button", name="Roll back scenario"))
        await expect(serving).to_have_text("v1")
        await expect(t.page.locator("#app .banner.info")).to_contain_text("v1 serves again")
        assert await served_version(gql, owner.admin, twice) == 1
        row = t.page.locator("tr", has=t.page.locator("[data-version='2']"))
        await confirm(row.get_by_role("button", name="Promote"))
        await expect(serving).to_have_text("v2")
        assert await served_version(gql, owner.admin, twice) == 2
        await t.shot("models-after-promote")
        t.assert_clean()


# --- config history --------------------------------------------------------------------------------------------

CREATE_SCENARIO = "mutation($input: CreateScenarioInput!) { createScenario(input: $input) { id } }"
UPDATE_SCENARIO = "mutation($id: ID!, $c: JSON!) { updateScenario(id: $id, input: {config: $c}) { configVersion } }"
CONFIG = "query($id: ID!) { scenario(id: $id) { configVersion config } }"


async def test_the_scenario_page_lists_config_versions_and_rolls_back_to_one(browser, served, gql, owner):
    sid = (await gql.data(CREATE_SCENARIO, {"input": {"name": "dashboard-history", "template": "NEWS"}},
                          key=owner.admin))["createScenario"]["id"]
    first = (await gql.data(CONFIG, {"id": sid}, key=owner.admin))["scenario"]["config"]
    await gql.data(UPDATE_SCENARIO, {"id": sid, "c": {"freshness": {"halfLifeHours": 2}}}, key=owner.admin)
    async with tab(browser, served) as t:
        await sign_in(t, owner.admin)
        await t.open(f"/scenarios/{sid}")
        versions = t.page.locator("#config-versions tbody tr")
        await expect(versions).to_have_count(2)
        newest = t.page.locator("#config-versions tr", has=t.page.locator("[data-version='2']"))
        await expect(newest).to_contain_text("current")
        await expect(newest.locator("[data-origin=UPDATED]")).to_be_visible()
        await expect(newest).to_contain_text("freshness.halfLifeHours")
        oldest = t.page.locator("#config-versions tr", has=t.page.locator("[data-version='1']"))
        await expect(oldest.locator("[data-origin=CREATED]")).to_be_visible()
        await confirm(oldest.get_by_role("button", name="Roll back"))
        await expect(t.page.locator("#app .banner.info")).to_contain_text("Config v1 serves again, as v3")
        await expect(versions).to_have_count(3)
        rolled = t.page.locator("#config-versions tr", has=t.page.locator("[data-version='3']"))
        await expect(rolled).to_contain_text("rolled back to v1")
        await expect(rolled).to_contain_text("current")
        now = (await gql.data(CONFIG, {"id": sid}, key=owner.admin))["scenario"]
        assert now["configVersion"] == 3 and now["config"] == first
        assert json.loads(await t.page.locator("#scenario-config").inner_text()) == first
        await t.shot("scenario-config-history")
        t.assert_clean()


# --- keys ------------------------------------------------------------------------------------------------------


async def test_a_revoked_key_signs_the_page_out(browser, served, gql, owner, twice):
    created = (await gql.data(CREATE_KEY, {"s": "ADMIN"}, key=owner.admin))["createApiKey"]
    async with tab(browser, served) as t:
        await sign_in(t, created["secret"])
        await t.open(f"/scenarios/{twice}")
        await expect(t.page.locator("#live-chart")).to_have_attribute("data-clicks", re.compile(r"\d"))
        assert await gql.data(REVOKE_KEY, {"id": created["key"]["id"]}, key=owner.admin)
        await expect(t.page.locator("#sign-in")).to_be_visible(timeout=5000)  # no click, no reload: pushed
        await expect(t.page.locator("#app .banner.warn")).to_contain_text("revoked")
        assert await t.page.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") is None
        assert await t.page.locator("#nav").is_hidden()
        t.assert_clean()


async def test_keys_are_created_rotated_and_revoked_with_each_secret_shown_once(browser, served, gql, owner):
    async with tab(browser, served) as t:
        await sign_in(t, owner.admin)
        await t.open("/keys")
        await t.page.select_option("select[name=scope]", "PUBLIC")
        await t.page.get_by_role("button", name="Create key").click()
        first = (await t.page.locator("#new-secret").inner_text()).strip()
        assert first.startswith("rg_public_")
        assert await outcome(gql, first) == "FORBIDDEN"  # a valid public key: known, but not allowed to list
        await t.open("/")
        await t.open("/keys")
        assert first not in await t.page.content()  # shown once, kept nowhere
        prefix = first[: len("rg_public_") + 6]
        row = t.page.locator("tr", has=t.page.get_by_text(f"{prefix}…", exact=True))
        await confirm(row.get_by_role("button", name="Rotate"))
        second = (await t.page.locator("#new-secret").inner_text()).strip()
        assert second.startswith("rg_public_") and second != first
        assert await outcome(gql, first) == "UNAUTHENTICATED" and await outcome(gql, second) == "FORBIDDEN"
        second_row = t.page.locator("tr", has=t.page.get_by_text(f"{second[: len('rg_public_') + 6]}…", exact=True))
        await confirm(second_row.get_by_role("button", name="Revoke"))
        await expect(t.page.locator("#app .banner.info")).to_contain_text("revoked")
        assert await outcome(gql, second) == "UNAUTHENTICATED"
        await expect(second_row).to_have_count(0)
        t.assert_clean()


async def test_rotating_the_sessions_own_key_keeps_the_page_signed_in(browser, served, gql, owner):
    created = (await gql.data(CREATE_KEY, {"s": "ADMIN"}, key=owner.admin))["createApiKey"]
    async with tab(browser, served) as t:
        await sign_in(t, created["secret"])
        await t.open("/keys")
        row = t.page.locator("tr", has=t.page.get_by_text("(this session)"))
        await confirm(row.get_by_role("button", name="Rotate"))
        replacement = (await t.page.locator("#new-secret").inner_text()).strip()
        assert await t.page.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") == replacement
        await t.open("/")  # still signed in, with the new key
        assert await t.page.locator("#sign-in").count() == 0
        assert await outcome(gql, created["secret"]) == "UNAUTHENTICATED" and await outcome(gql, replacement) == "ok"
        t.assert_clean()


# --- jobs ------------------------------------------------------------------------------------------------------


async def test_a_job_shows_live_progress_and_can_be_cancelled(browser, served, gql, owner, twice, monkeypatch):
    started = asyncio.Event()

    async def slow(self, *, tenant_id, scenario_id, report):
        await report(0.5, "halfway there")
        started.set()
        await asyncio.sleep(60)
        return {}

    monkeypatch.setattr(MaintenanceService, "cleanup", slow)
    async with tab(browser, served) as t:
        await sign_in(t, owner.admin)
        await t.open("/jobs")
        await t.page.select_option("select[aria-label=Scenario]", twice)
        await t.page.select_option("select[aria-label=Kind]", "CLEANUP")
        await t.page.get_by_role("button", name="Run job").click()
        await asyncio.wait_for(started.wait(), 15)
        job_id = (await gql.data(JOBS, {"k": "CLEANUP"}, key=owner.admin))["jobs"]["edges"][0]["node"]["id"]
        row = t.page.locator(f"tr[data-job='{job_id}']")
        await expect(row).to_have_attribute("data-status", "RUNNING", timeout=5000)
        await expect(row).to_contain_text("halfway there")
        await expect(row.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "50")
        await t.shot("jobs-running")
        await confirm(row.get_by_role("button", name="Cancel"))
        await expect(row).to_have_attribute("data-status", "CANCELLED", timeout=5000)
        job = (await gql.data("query($id: ID!) { job(id: $id) { status } }", {"id": job_id}, key=owner.admin))["job"]
        assert job["status"] == "CANCELLED"
        t.assert_clean()


# --- experiments -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def split(gql, owner) -> tuple[str, str]:
    """A running CTR experiment on an untrained scenario whose treatment lost half its exposures (an SRM)."""
    sid = await shop(gql, owner.admin, "dashboard-experiments", users=20, items=30)
    experiment = (await gql.data(CREATE_EXPERIMENT, {"input": {
        "scenarioId": sid, "name": "fresher lists", "primaryMetric": "CTR",
        "hypothesis": "Fresher items get more clicks",
        "variants": [{"name": "control"}, {"name": "treatment", "config": {"freshness": {"halfLifeHours": 6}}}]}},
        key=owner.admin))["createExperiment"]["id"]
    assert (await gql.data(START, {"id": experiment}, key=owner.admin))["startExperiment"]["status"] == "RUNNING"
    rng = np.random.default_rng(7)
    users = [f"exp-{u}" for u in range(300)]
    for start in range(0, len(users), 25):
        batch = users[start:start + 25]
        fields = " ".join(f'a{i}: experimentAssignment(experimentId: $x, userId: "{u}")' for i, u in enumerate(batch))
        assigned = await gql.data(f"query($x: ID!) {{ {fields} }}", {"x": experiment}, key=owner.admin)
        kept = [u for i, u in enumerate(batch) if assigned[f"a{i}"] == "control" or rng.random() < 0.5]
        events = []
        for user in kept:
            page = (await gql.data(SERVE, {"s": sid, "u": user}, key=owner.public))["recommendations"]
            rate = 0.3 if page["variant"] == "treatment" else 0.15
            events += [{"scenarioId": sid, "userId": user, "itemId": item["item"]["id"], "type": "CLICK",
                        "requestId": page["requestId"]} for item in page["items"] if rng.random() < rate]
        if events:
            await gql.data(RECORD, {"e": events}, key=owner.public)
    return sid, experiment


async def test_an_experiment_shows_its_srm_warning_and_effect_intervals_and_ships(browser, served, gql, owner,
                                                                                 split):
    sid, experiment = split
    version = (await gql.data(SCENARIO_VERSION, {"s": sid}, key=owner.admin))["scenario"]["configVersion"]
    async with tab(browser, served) as t:
        await sign_in(t, owner.admin)
        await t.open(f"/experiments?scenario={sid}")
        await t.page.get_by_role("link", name="fresher lists").click()
        await t.page.wait_for_selector("#app[data-ready]")
        results = t.page.locator("#experiment-results")
        await expect(results.locator(".banner.warn")).to_contain_text("Sample-ratio mismatch", timeout=15000)
        await expect(results.locator("#sequential-status")).to_contain_text("Sequential")
        ctr = results.locator(".metric-effect[data-metric=CTR]")
        await expect(ctr.locator("svg.forest circle.point")).to_have_count(1)
        await expect(ctr.locator("svg.forest line.ci")).to_have_count(1)  # the treatment's interval, drawn
        await expect(t.page.locator("[data-exposures=treatment]")).not_to_have_text("–")
        await t.shot("experiment-running")
        await confirm(t.page.get_by_role("button", name="Ship treatment"))
        await expect(t.page.locator(".experiment-status")).to_have_text("STOPPED", timeout=5000)
        await expect(t.page.locator("#experiment-actions")).to_have_count(0)
        await expect(results).to_contain_text("frozen")
        t.assert_clean()
    stopped = (await gql.data(EXPERIMENT, {"id": experiment}, key=owner.admin))["experiment"]
    assert (stopped["status"], stopped["shippedVariant"]) == ("STOPPED", "treatment")
    shipped = (await gql.data(SCENARIO_CONFIG, {"s": sid}, key=owner.admin))["scenario"]
    assert shipped["configVersion"] == version + 1 and shipped["config"]["freshness"]["halfLifeHours"] == 6

// A scenario's trends (`analytics`), catalogue statistics (`catalogueStats`) and audience statistics
// (`audienceStats`) over a chosen range. Each is its own request: a server without one of them shows that panel as
// not available and the others as usual.

import { gql } from "../api.js";
import { barChart, timeChart } from "../charts.js";
import { banner, h, notAvailable, num, panel, replace, table, tile } from "../dom.js";
import * as fmt from "../format.js";

const HOUR_MS = 3600 * 1000;
const RANGES = [
  ["48h", "last 48 hours, hourly", 48 * HOUR_MS, "HOUR"],
  ["7d", "last 7 days, daily", 7 * 24 * HOUR_MS, "DAY"],
  ["30d", "last 30 days, daily", 30 * 24 * HOUR_MS, "DAY"],
  ["90d", "last 90 days, daily", 90 * 24 * HOUR_MS, "DAY"],
];

const ANALYTICS = `query($s: ID!, $from: DateTime!, $to: DateTime!, $g: AnalyticsGranularity!) {
  analytics(scenarioId: $s, from: $from, to: $to, granularity: $g) { granularity
    points { start impressions clicks ctr conversions watchSeconds activeUsers newUsers } } }`;
const CATALOGUE = `query($s: ID!, $from: DateTime!, $to: DateTime!) {
  catalogueStats(scenarioId: $s, from: $from, to: $to, first: 10) {
    activeItems recommendedItems coverage gini longTailItems longTailShare
    topItemsByImpressions { itemId impressions clicks ctr } topItemsByCtr { itemId impressions clicks ctr }
    topCategoriesByImpressions { category impressions clicks ctr }
    topCategoriesByCtr { category impressions clicks ctr } } }`;
const AUDIENCE = `query($s: ID!, $from: DateTime!, $to: DateTime!) {
  audienceStats(scenarioId: $s, from: $from, to: $to) {
    users meanEventsPerUser medianEventsPerUser
    eventsPerUser { lower upper users } retention { week users retained }
    ctrByPosition { position impressions clicks ctr } ctrBySource { source impressions clicks ctr } } }`;

function failure(err, what) {
  return err.missing ? notAvailable(what) : banner("error", `${what}: ${err.message}`);
}

function trends(body, points, charts, step) {
  if (!points.length) {
    replace(body, h("p", { class: "muted" }, "No events in this range."));
    return;
  }
  const t = points.map((p) => new Date(p.start).getTime() / 1000);
  const traffic = h("div", { class: "chart", id: "trend-traffic" });
  const rate = h("div", { class: "chart", id: "trend-ctr" });
  const users = h("div", { class: "chart", id: "trend-users" });
  replace(
    body,
    h(
      "div",
      { class: "grid" },
      h("div", null, h("h3", null, "Impressions and clicks"), traffic),
      h("div", null, h("h3", null, "CTR"), rate),
      h("div", null, h("h3", null, "Active and new users"), users),
    ),
  );
  charts.push(
    timeChart(
      traffic,
      [
        { label: "Impressions", scale: "y" },
        { label: "Clicks", scale: "clicks" },
      ],
      [t, points.map((p) => p.impressions), points.map((p) => p.clicks)],
      { height: 200, minSpan: step, axes: [{}, { scale: "y" }, { scale: "clicks", side: 1, grid: { show: false } }] },
    ),
  );
  charts.push(
    timeChart(rate, [{ label: "CTR", value: (u, v) => fmt.percent(v, 2) }], [t, points.map((p) => p.ctr)], {
      height: 200,
      minSpan: step,
      axes: [{}, { scale: "y", values: (u, splits) => splits.map((v) => fmt.percent(v, 1)) }],
    }),
  );
  charts.push(
    timeChart(
      users,
      [{ label: "Active users" }, { label: "New users" }],
      [t, points.map((p) => p.activeUsers), points.map((p) => p.newUsers)],
      { height: 200, minSpan: step },
    ),
  );
}

function items(rows) {
  return table(
    ["Item", ["Impressions", "num"], ["Clicks", "num"], ["CTR", "num"]],
    rows.map((r) => [
      h("span", { class: "mono" }, r.itemId),
      num(fmt.count(r.impressions)),
      num(fmt.count(r.clicks)),
      num(fmt.percent(r.ctr, 2)),
    ]),
    { empty: "No impressions in this range." },
  );
}

function categories(rows) {
  return table(
    ["Category", ["Impressions", "num"], ["Clicks", "num"], ["CTR", "num"]],
    rows.map((r) => [r.category, num(fmt.count(r.impressions)), num(fmt.count(r.clicks)), num(fmt.percent(r.ctr, 2))]),
    { empty: "No impressions in this range." },
  );
}

function catalogue(body, stats) {
  replace(
    body,
    h(
      "div",
      { class: "tiles" },
      tile("Active items", fmt.count(stats.activeItems), "activeItems"),
      tile("Recommended", fmt.count(stats.recommendedItems), "recommendedItems"),
      tile("Coverage", fmt.percent(stats.coverage), "coverage"),
      tile("Gini of impressions", fmt.decimal(stats.gini, 3), "gini"),
      tile("Never shown", fmt.count(stats.longTailItems), "longTailItems"),
      tile("Never-shown share", fmt.percent(stats.longTailShare), "longTailShare"),
    ),
    h(
      "div",
      { class: "grid" },
      h("div", null, h("h3", null, "Top items by impressions"), items(stats.topItemsByImpressions)),
      h("div", null, h("h3", null, "Top items by CTR"), items(stats.topItemsByCtr)),
      h("div", null, h("h3", null, "Top categories by impressions"), categories(stats.topCategoriesByImpressions)),
      h("div", null, h("h3", null, "Top categories by CTR"), categories(stats.topCategoriesByCtr)),
    ),
  );
}

function heat(share) {
  const level = share === null || share === undefined ? 0 : Math.min(5, Math.ceil(share * 5));
  return { value: fmt.percent(share, 0), class: `heat h${level}` };
}

function retention(cohorts) {
  const weeks = Math.max(0, ...cohorts.map((c) => c.retained.length));
  const headers = [
    "Cohort (week of)",
    ["Users", "num"],
    ...Array.from({ length: weeks }, (_, k) => [`+${k} w`, "heat"]),
  ];
  return table(
    headers,
    cohorts.map((c) => [
      fmt.day(c.week),
      num(fmt.count(c.users)),
      ...Array.from({ length: weeks }, (_, k) => heat(c.retained[k])),
    ]),
    { empty: "No cohorts in this range." },
  );
}

function audience(body, stats, charts) {
  const perUser = h("div", { class: "chart", id: "events-per-user" });
  const byPosition = h("div", { class: "chart", id: "ctr-by-position" });
  replace(
    body,
    h(
      "div",
      { class: "tiles" },
      tile("Users", fmt.count(stats.users), "users"),
      tile("Mean events / user", fmt.decimal(stats.meanEventsPerUser), "meanEventsPerUser"),
      tile("Median events / user", fmt.decimal(stats.medianEventsPerUser), "medianEventsPerUser"),
    ),
    h(
      "div",
      { class: "grid" },
      h("div", null, h("h3", null, "Users by events"), perUser),
      h("div", null, h("h3", null, "CTR by position"), byPosition),
    ),
    h("h3", null, "CTR by recall source"),
    table(
      ["Source", ["Impressions", "num"], ["Clicks", "num"], ["CTR", "num"]],
      stats.ctrBySource.map((r) => [
        r.source,
        num(fmt.count(r.impressions)),
        num(fmt.count(r.clicks)),
        num(fmt.percent(r.ctr, 2)),
      ]),
      { empty: "No impressions in this range." },
    ),
    h("h3", null, "Weekly retention"),
    retention(stats.retention),
  );
  if (stats.eventsPerUser.length) {
    const labels = stats.eventsPerUser.map((b) =>
      b.upper === null ? `${b.lower}+` : b.lower === b.upper ? `${b.lower}` : `${b.lower}–${b.upper}`,
    );
    charts.push(
      barChart(
        perUser,
        labels,
        stats.eventsPerUser.map((b) => b.users),
        { label: "users" },
      ),
    );
  } else {
    replace(perUser, h("p", { class: "muted" }, "No users in this range."));
  }
  if (stats.ctrByPosition.length) {
    charts.push(
      barChart(
        byPosition,
        stats.ctrByPosition.map((p) => String(p.position)),
        stats.ctrByPosition.map((p) => p.ctr ?? 0),
        { label: "CTR", color: "#e07b39", format: (v) => fmt.percent(v, 1) },
      ),
    );
  } else {
    replace(byPosition, h("p", { class: "muted" }, "No impressions in this range."));
  }
}

/**
 * Render the three panels into `root` with a range picker, loading in the background.
 * Returns {stop, loaded}: a function that frees the charts, and a promise of the first load.
 */
export function renderStats(root, scenarioId) {
  const picker = h(
    "select",
    { "aria-label": "Range", id: "stats-range" },
    RANGES.map(([value, label]) => h("option", { value, selected: value === "30d" }, label)),
  );
  const trendsBody = h("div", null, h("p", { class: "muted" }, "Loading…"));
  const catalogueBody = h("div", null, h("p", { class: "muted" }, "Loading…"));
  const audienceBody = h("div", null, h("p", { class: "muted" }, "Loading…"));
  replace(
    root,
    panel(null, h("div", { class: "row" }, h("strong", null, "Trends and statistics over the"), picker)),
    panel("Trends", trendsBody),
    panel("Catalogue", catalogueBody),
    panel("Audience", audienceBody),
  );
  let charts = [];
  let stopped = false;
  let loads = 0;
  const free = () => {
    charts.forEach((chart) => chart.destroy());
    charts = [];
  };

  async function load() {
    const mine = ++loads;
    free();
    const [, , span, granularity] = RANGES.find(([value]) => value === picker.value);
    const to = new Date();
    const from = new Date(to.getTime() - span);
    const range = { s: scenarioId, from: from.toISOString(), to: to.toISOString() };
    const answers = await Promise.allSettled([
      gql(ANALYTICS, { ...range, g: granularity }),
      gql(CATALOGUE, range),
      gql(AUDIENCE, range),
    ]);
    if (stopped || mine !== loads) return; // left the page, or another range was picked meanwhile
    const [series, cat, aud] = answers;
    if (series.status === "fulfilled")
      trends(trendsBody, series.value.analytics.points, charts, granularity === "HOUR" ? 3600 : 86400);
    else replace(trendsBody, failure(series.reason, "Trends"));
    if (cat.status === "fulfilled") catalogue(catalogueBody, cat.value.catalogueStats);
    else replace(catalogueBody, failure(cat.reason, "Catalogue statistics"));
    if (aud.status === "fulfilled") audience(audienceBody, aud.value.audienceStats, charts);
    else replace(audienceBody, failure(aud.reason, "Audience statistics"));
  }

  picker.addEventListener("change", () => load());
  const loaded = load();
  const stop = () => {
    stopped = true;
    free();
  };
  return { stop, loaded };
}

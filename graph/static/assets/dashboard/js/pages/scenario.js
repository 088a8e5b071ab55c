// One scenario: live metrics from the `metrics` subscription (a snapshot at once, then on each change), its
// recall sources and variants, trends and catalogue/audience statistics (stats.js), and its config history: each
// version, how it came and what it changed, the models trained on it, and a roll back to it.

import { subscribe, gql } from "../api.js";
import { badge, banner, confirmButton, h, num, panel, replace, table, tile } from "../dom.js";
import { timeChart } from "../charts.js";
import * as fmt from "../format.js";
import { renderStats } from "./stats.js";

const SCENARIO = `query($id: ID!) { scenario(id: $id) { id name template config configVersion createdAt updatedAt
  models(first: 50) { id kind version status aliases trainedAt config }
  configVersions(first: 50) { version config createdAt origin originRef keyId changed } } }`;
const ROLL_BACK = "mutation($id: ID!, $v: Int!) { rollBackScenarioConfig(id: $id, version: $v) { id configVersion } }";
const COUNTS = "query($id: ID!) { scenario(id: $id) { stats { items interactions } } }";
const LIVE = `subscription($s: ID!, $w: MetricsWindow) { metrics(scenarioId: $s, window: $w) {
  windowStart windowEnd impressions clicks ctr interactions attributed interactionRate conversions conversionRate
  watches watchSeconds avgWatchSeconds completionRate
  bySource { name impressions clicks ctr interactions interactionRate conversions }
  byVariant { name impressions clicks ctr interactions conversions } } }`;
const WINDOWS = [
  ["MINUTE", "last minute"],
  ["FIVE_MINUTES", "last 5 minutes"],
  ["HOUR", "last hour"],
  ["DAY", "last day"],
];
const MAX_POINTS = 720;
const TICK_MS = 5000;

function breakdown(rows) {
  return table(
    [
      "Name",
      ["Impressions", "num"],
      ["Clicks", "num"],
      ["CTR", "num"],
      ["Interactions", "num"],
      ["Conversions", "num"],
    ],
    rows.map((r) => [
      r.name,
      num(fmt.count(r.impressions)),
      num(fmt.count(r.clicks)),
      num(fmt.percent(r.ctr, 2)),
      num(fmt.count(r.interactions)),
      num(fmt.count(r.conversions)),
    ]),
    { empty: "Nothing in this window." },
  );
}

/** The live panel: tiles, a chart of impressions and clicks, sources and variants; returns a stop function. */
function live(scenarioId, body) {
  const tiles = h("div", { class: "tiles" });
  const chartEl = h("div", { class: "chart", id: "live-chart", dataset: { points: "0" } });
  const sources = h("div");
  const variants = h("div");
  const status = h("div");
  const asOf = h("span", { class: "muted", id: "live-as-of" });
  const picker = h(
    "select",
    { "aria-label": "Window" },
    WINDOWS.map(([value, label]) => h("option", { value, selected: value === "HOUR" }, label)),
  );
  replace(
    body,
    h("div", { class: "row" }, h("span", { class: "muted" }, "Totals over the"), picker, asOf),
    status,
    tiles,
    chartEl,
    h(
      "p",
      { class: "legend-note" },
      "Each point is the window's totals when an update arrived (at most one a second while events come).",
    ),
    h(
      "div",
      { class: "grid" },
      h("div", null, h("h3", null, "Recall sources"), sources),
      h("div", null, h("h3", null, "Experiment variants"), variants),
    ),
  );

  const data = [[], [], []];
  const chart = timeChart(
    chartEl,
    [
      { label: "Impressions", scale: "y" },
      { label: "Clicks", scale: "clicks" },
    ],
    data,
    {
      height: 240,
      axes: [
        {},
        { scale: "y", label: "impressions" },
        { scale: "clicks", side: 1, label: "clicks", grid: { show: false } },
      ],
    },
  );
  let last = null;
  let lastAt = 0;

  function push(t, snapshot) {
    data[0].push(t);
    data[1].push(snapshot.impressions);
    data[2].push(snapshot.clicks);
    if (data[0].length > MAX_POINTS) data.forEach((column) => column.shift());
    chart.update(data);
    chartEl.dataset.points = String(data[0].length);
    chartEl.dataset.clicks = String(snapshot.clicks);
    chartEl.dataset.impressions = String(snapshot.impressions);
  }

  function show(snapshot) {
    last = snapshot;
    lastAt = Date.now();
    push(Date.now() / 1000, snapshot);
    replace(
      tiles,
      tile("Impressions", fmt.count(snapshot.impressions), "impressions"),
      tile("Clicks", fmt.count(snapshot.clicks), "clicks"),
      tile("CTR", fmt.percent(snapshot.ctr, 2), "ctr"),
      tile("Interactions", fmt.count(snapshot.interactions), "interactions"),
      tile("Attributed rate", fmt.percent(snapshot.interactionRate, 1), "interactionRate"),
      tile("Conversions", fmt.count(snapshot.conversions), "conversions"),
      tile("Watch time", fmt.seconds(snapshot.watchSeconds), "watchSeconds"),
      tile("Completion", fmt.percent(snapshot.completionRate, 0), "completionRate"),
    );
    replace(sources, breakdown(snapshot.bySource));
    replace(variants, breakdown(snapshot.byVariant));
    asOf.textContent = `as of ${fmt.when(snapshot.windowEnd)}`;
    replace(status);
  }

  let stopSubscription = null;
  function start(size) {
    if (stopSubscription) stopSubscription();
    data.forEach((column) => column.splice(0));
    last = null;
    stopSubscription = subscribe(
      LIVE,
      { s: scenarioId, w: size },
      {
        next: (result) => show(result.metrics),
        error: (err) => replace(status, banner("error", `Live metrics stopped: ${err.message}`)),
      },
    );
  }
  picker.addEventListener("change", () => start(picker.value));
  start("HOUR");
  // Between updates the totals hold: extend the line to now so the chart keeps time.
  const ticker = setInterval(() => {
    if (last && Date.now() - lastAt >= TICK_MS) push(Date.now() / 1000, last);
  }, TICK_MS);
  return () => {
    clearInterval(ticker);
    if (stopSubscription) stopSubscription();
    chart.destroy();
  };
}

function origin(v) {
  if (v.origin === "SHIPPED") return ["shipped from ", h("a", { href: `#/experiments/${encodeURIComponent(v.originRef)}` }, v.originRef)];
  if (v.origin === "ROLLED_BACK") return [`rolled back to v${v.originRef}`];
  return [v.origin.toLowerCase().replace("_", " ")];
}

function changedList(paths) {
  if (!paths.length) return h("span", { class: "muted" }, "—");
  const shown = paths.slice(0, 4).map((p) => h("code", null, p));
  const rest = paths.length > 4 ? [h("span", { class: "muted" }, ` +${paths.length - 4} more`)] : [];
  return h("span", { class: "changed" }, ...shown.flatMap((c, i) => (i ? [", ", c] : [c])), ...rest);
}

/** The config panel: the current config, then each version with how it came, what changed, the models trained on
 * it, its config on demand, and a roll-back button; `reload` re-reads the scenario after a roll back. */
function configPanel(scenario, reload, message) {
  const byVersion = new Map();
  for (const model of scenario.models) {
    const version = model.config && typeof model.config.configVersion === "number" ? model.config.configVersion : null;
    if (version === null) continue;
    if (!byVersion.has(version)) byVersion.set(version, []);
    byVersion.get(version).push(model);
  }
  const rollBack = (v) => async () => {
    try {
      const { rollBackScenarioConfig: done } = await gql(ROLL_BACK, { id: scenario.id, v: v.version });
      replace(message, banner("info", `Config v${v.version} serves again, as v${done.configVersion}.`));
    } catch (err) {
      replace(message, banner("error", `Roll back refused: ${err.message}`));
    }
    await reload();
  };
  const rows = scenario.configVersions.map((v) => [
    num(`v${v.version}`, { version: String(v.version) }),
    v.version === scenario.configVersion ? badge("current") : "",
    fmt.when(v.createdAt),
    h("span", { dataset: { origin: v.origin } }, ...origin(v)),
    changedList(v.changed),
    (byVersion.get(v.version) || []).map((m) =>
      h("span", { class: "row" }, `${m.kind} v${m.version} `, ...m.aliases.map((a) => badge(a))),
    ),
    h("details", null, h("summary", null, "config"), h("pre", null, fmt.json(v.config))),
    v.version === scenario.configVersion || JSON.stringify(v.config) === JSON.stringify(scenario.config)
      ? ""
      : confirmButton("Roll back", `Confirm: serve v${v.version}'s config`, rollBack(v)),
  ]);
  return [
    h(
      "p",
      null,
      "Config version ",
      h("strong", null, `v${scenario.configVersion}`),
      h(
        "span",
        { class: "muted" },
        ` (updated ${fmt.when(scenario.updatedAt)}); updateScenario, a shipped experiment and a roll back make a new one.`,
      ),
    ),
    h("h3", null, "Versions"),
    h(
      "div",
      { id: "config-versions" },
      table(
        [["Version", "num"], "", "Set", "How", "Changed", "Models trained on it", "", ""],
        rows,
        { empty: "No versions recorded." },
      ),
    ),
    h("h3", null, "Current config"),
    h("pre", { id: "scenario-config" }, fmt.json(scenario.config)),
  ];
}

export async function render(root, [scenarioId]) {
  const data = await gql(SCENARIO, { id: scenarioId });
  const scenario = data.scenario;
  if (!scenario) {
    replace(root, banner("error", "No such scenario in your tenant. ", h("a", { href: "#/" }, "Back to the overview")));
    return null;
  }
  const liveBody = h("div");
  const statsRoot = h("div");
  const configMessage = h("div");
  const configBody = h("div", null, ...configPanel(scenario, reloadConfig, configMessage));
  async function reloadConfig() {
    const { scenario: fresh } = await gql(SCENARIO, { id: scenarioId });
    if (fresh) replace(configBody, ...configPanel(fresh, reloadConfig, configMessage));
  }
  const counts = h("span", { id: "scenario-counts" }, "counting items and interactions…");
  replace(
    root,
    h("div", { class: "crumbs" }, h("a", { href: "#/" }, "Overview"), " / ", scenario.name),
    h("h1", null, scenario.name, " ", badge(scenario.template)),
    h(
      "p",
      { class: "muted" },
      h("span", { class: "mono" }, scenario.id),
      " · ",
      counts,
      " · ",
      h("a", { href: `#/experiments?scenario=${encodeURIComponent(scenario.id)}` }, "experiments"),
      " · ",
      h("a", { href: `#/models/${encodeURIComponent(scenario.id)}` }, "models"),
    ),
    panel("Live metrics", liveBody),
    statsRoot,
    panel("Config", configMessage, configBody),
  );
  const stopLive = live(scenario.id, liveBody);
  const stats = renderStats(statsRoot, scenario.id);
  // Counting a large scenario takes seconds and holds the database: it comes after the statistics, and the page
  // does not wait for it.
  stats.loaded
    .then(() => gql(COUNTS, { id: scenario.id }))
    .then(
      ({ scenario: counted }) => {
        if (!counted) return;
        const { items, interactions } = counted.stats;
        counts.textContent = `${fmt.count(items)} items · ${fmt.count(interactions)} interactions`;
      },
      () => {
        counts.textContent = "counts unavailable";
      },
    );
  return () => {
    stopLive();
    stats.stop();
  };
}

// Overview: the tenant's health (stores, the event consumer, jobs) and all of its scenarios, refreshed every 10 s.
// Each part shows as soon as it arrives. The scenarios' item and interaction counts are read once, after the rest:
// counting a large scenario takes seconds and holds the database meanwhile, which a page left open must not repeat.

import { gql } from "../api.js";
import { badge, banner, h, notAvailable, num, panel, replace, table, tile } from "../dom.js";
import * as fmt from "../format.js";

const REFRESH_MS = 10000;

const HEALTH = `{ systemHealth {
  status checkedAt consumerLag consumerStuck deadLetters queueDepth runningJobs failedJobs
  stores { name state latencyMs detail }
  scenarios { scenarioId name modelVersion modelTrainedAt modelAgeSeconds } } }`;
const SCENARIOS = `{ scenarios(first: 100) { totalCount
  edges { node { id name template configVersion updatedAt } } } }`;
const COUNTS = `{ scenarios(first: 100) { edges { node { id stats { items interactions } } } } }`;

function healthPanel(health) {
  const stores = table(
    ["Store", "State", ["Latency", "num"], "Detail"],
    health.stores.map((s) => [
      s.name,
      badge(s.state),
      num(s.latencyMs === null ? "–" : `${fmt.decimal(s.latencyMs)} ms`),
      s.detail || "",
    ]),
  );
  return [
    h(
      "div",
      { class: "row" },
      "Status ",
      badge(health.status),
      h("span", { class: "muted" }, `checked ${fmt.when(health.checkedAt)}`),
    ),
    h(
      "div",
      { class: "tiles" },
      tile("Consumer lag (events)", fmt.count(health.consumerLag), "consumerLag"),
      tile("Consumer", health.consumerStuck ? "stuck" : "keeping up", "consumerStuck"),
      tile("Dead letters", fmt.count(health.deadLetters), "deadLetters"),
      tile("Queued jobs", fmt.count(health.queueDepth), "queueDepth"),
      tile("Running jobs", fmt.count(health.runningJobs), "runningJobs"),
      tile("Failed jobs (24 h)", fmt.count(health.failedJobs), "failedJobs"),
    ),
    health.consumerStuck
      ? banner("warn", "The event consumer is not keeping up: events are accepted but not applied.")
      : null,
    health.deadLetters
      ? banner("warn", `${fmt.count(health.deadLetters)} events could not be applied (see deadLetters).`)
      : null,
    stores,
  ];
}

function servingText(model) {
  if (!model) return "–";
  if (model.modelVersion === null) return "untrained";
  return `v${model.modelVersion} (${fmt.seconds(model.modelAgeSeconds)} old)`;
}

function scenariosPanel(scenarios, serving, counts) {
  const rows = scenarios.edges.map(({ node }) => {
    const counted = counts.get(node.id);
    return [
      h("a", { href: `#/scenarios/${encodeURIComponent(node.id)}`, dataset: { scenario: node.id } }, node.name),
      node.template,
      num(counted ? fmt.count(counted.items) : "…", { items: node.id }),
      num(counted ? fmt.count(counted.interactions) : "…", { interactions: node.id }),
      num(`v${node.configVersion}`),
      servingText(serving.get(node.id)),
      fmt.when(node.updatedAt),
      h(
        "span",
        { class: "row" },
        h("a", { href: `#/models/${encodeURIComponent(node.id)}` }, "models"),
        h("a", { href: `#/experiments?scenario=${encodeURIComponent(node.id)}` }, "experiments"),
      ),
    ];
  });
  return table(
    [
      "Scenario",
      "Template",
      ["Items", "num"],
      ["Interactions", "num"],
      ["Config", "num"],
      "Serving model",
      "Updated",
      "",
    ],
    rows,
    { empty: "No scenarios yet: create one with createScenario." },
  );
}

export async function render(root) {
  const healthBody = h("div", { class: "stack" }, h("p", { class: "muted" }, "Loading…"));
  const scenariosBody = h("div", null, h("p", { class: "muted" }, "Loading…"));
  replace(root, h("h1", null, "Overview"), panel("Health", healthBody), panel("Scenarios", scenariosBody));
  let serving = new Map();
  let counts = new Map();
  let listed = null;

  const showList = () => {
    if (!listed) return;
    replace(
      scenariosBody,
      h("p", { class: "muted" }, `${fmt.count(listed.totalCount)} scenarios`),
      scenariosPanel(listed, serving, counts),
    );
  };
  const health = () =>
    gql(HEALTH).then(
      ({ systemHealth: found }) => {
        serving = new Map(found.scenarios.map((s) => [s.scenarioId, s]));
        replace(healthBody, healthPanel(found));
        showList();
      },
      (err) => replace(healthBody, err.missing ? notAvailable("System health") : banner("error", err.message)),
    );
  const list = () =>
    gql(SCENARIOS).then(
      ({ scenarios }) => {
        listed = scenarios;
        showList();
      },
      (err) => replace(scenariosBody, banner("error", err.message)),
    );
  await Promise.all([health(), list()]);
  gql(COUNTS).then(
    ({ scenarios }) => {
      counts = new Map(scenarios.edges.map(({ node }) => [node.id, node.stats]));
      showList();
    },
    () => {}, // the cells keep their "…"
  );
  const timer = setInterval(() => {
    health();
    list();
  }, REFRESH_MS);
  return () => clearInterval(timer);
}

// Experiments: the tenant's list, and one experiment's design, live results (the `experimentResults`
// subscription), and its start / pause / stop / ship buttons. Drawing the results is in results.js.

import { gql, subscribe } from "../api.js";
import { actionButton, badge, banner, confirmButton, h, num, panel, replace, table } from "../dom.js";
import * as fmt from "../format.js";
import { renderResults, RESULTS_FIELDS } from "./results.js";

const LIST = `query($s: ID, $status: ExperimentStatus) { experiments(scenarioId: $s, status: $status, first: 100) {
  totalCount edges { node { id name status allocation primaryMetric createdAt startedAt endedAt shippedVariant
  scenarioId scenario { name } } } } }`;
const DETAIL = `query($id: ID!) { experiment(id: $id) { id name hypothesis status scenarioId scenario { id name }
  variants { name weight config model { version alias } } trafficPercent trafficOffset layer allocation
  primaryMetric secondaryMetrics guardrails { metric margin } alpha power minimumDetectableEffect sequential cuped
  armWeights { variant weight } createdAt startedAt pausedAt endedAt shippedVariant
  results { ${RESULTS_FIELDS} } } }`;
const LIVE = `subscription($id: ID!) { experimentResults(id: $id) { ${RESULTS_FIELDS} } }`;
const START = "mutation($id: ID!) { startExperiment(id: $id) { id status } }";
const PAUSE = "mutation($id: ID!) { pauseExperiment(id: $id) { id status } }";
const STOP = "mutation($id: ID!, $ship: String) { stopExperiment(id: $id, ship: $ship) { id status shippedVariant } }";
const STATUSES = ["", "DRAFT", "RUNNING", "PAUSED", "STOPPED"];

async function renderList(root, query) {
  const scenarioId = query.get("scenario") || null;
  const status = query.get("status") || "";
  const picker = h(
    "select",
    { "aria-label": "Status" },
    STATUSES.map((s) => h("option", { value: s, selected: s === status }, s || "any status")),
  );
  picker.addEventListener("change", () => {
    const next = new URLSearchParams(query);
    if (picker.value) next.set("status", picker.value);
    else next.delete("status");
    window.location.hash = `#/experiments?${next}`;
  });
  const data = await gql(LIST, { s: scenarioId, status: status || null });
  const rows = data.experiments.edges.map(({ node }) => [
    h("a", { href: `#/experiments/${encodeURIComponent(node.id)}` }, node.name),
    node.scenario
      ? h("a", { href: `#/scenarios/${encodeURIComponent(node.scenarioId)}` }, node.scenario.name)
      : node.scenarioId,
    badge(node.status),
    node.allocation,
    node.primaryMetric,
    fmt.when(node.startedAt),
    fmt.when(node.endedAt),
    node.shippedVariant || "",
  ]);
  replace(
    root,
    h("h1", null, "Experiments"),
    panel(
      null,
      h(
        "div",
        { class: "row" },
        picker,
        scenarioId
          ? h("span", { class: "muted" }, "of one scenario · ", h("a", { href: "#/experiments" }, "all scenarios"))
          : null,
        h("span", { class: "muted" }, `${fmt.count(data.experiments.totalCount)} experiments`),
      ),
      table(["Experiment", "Scenario", "Status", "Allocation", "Primary metric", "Started", "Ended", "Shipped"], rows, {
        empty: "No experiments: create one with createExperiment.",
      }),
    ),
  );
  return null;
}

function design(experiment) {
  const pairs = [
    ["Allocation", experiment.allocation],
    ["Primary metric", experiment.primaryMetric],
    ["Secondary metrics", experiment.secondaryMetrics.join(", ") || "–"],
    ["Guardrails", experiment.guardrails.map((g) => `${g.metric} (margin ${fmt.percent(g.margin)})`).join(", ") || "–"],
    ["Alpha / power", `${experiment.alpha} / ${experiment.power}`],
    [
      "Minimum detectable effect",
      experiment.minimumDetectableEffect === null ? "–" : fmt.signedPercent(experiment.minimumDetectableEffect),
    ],
    ["Traffic", `${experiment.trafficPercent}% of layer “${experiment.layer}” from ${experiment.trafficOffset}%`],
    [
      "Method",
      `${experiment.sequential ? "sequential (always valid)" : "fixed horizon"}${experiment.cuped ? ", CUPED" : ""}`,
    ],
    ["Created / started", `${fmt.when(experiment.createdAt)} / ${fmt.when(experiment.startedAt)}`],
    ["Paused / ended", `${fmt.when(experiment.pausedAt)} / ${fmt.when(experiment.endedAt)}`],
  ];
  return table(
    ["", ""],
    pairs.map(([k, v]) => [h("strong", null, k), v]),
  );
}

function variants(experiment, exposures) {
  const total = experiment.variants.reduce((sum, v) => sum + v.weight, 0) || 1;
  const users = new Map((exposures || []).map((e) => [e.variant, e.users]));
  const weights = new Map(experiment.armWeights.map((a) => [a.variant, a.weight]));
  return table(
    ["Variant", ["Weight", "num"], ["Planned share", "num"], ["Exposed users", "num"], "Model", "Config overrides"],
    experiment.variants.map((v, i) => [
      h("span", null, v.name, i === 0 ? h("span", { class: "muted" }, " (control)") : null),
      num(weights.has(v.name) ? `${fmt.decimal(weights.get(v.name))} now` : fmt.decimal(v.weight)),
      num(fmt.percent(v.weight / total)),
      num(users.has(v.name) ? fmt.count(users.get(v.name)) : "–", { exposures: v.name }),
      v.model ? v.model.alias || `v${v.model.version}` : "champion",
      Object.keys(v.config || {}).length ? h("pre", null, fmt.json(v.config)) : h("span", { class: "muted" }, "none"),
    ]),
  );
}

function actions(experiment, reload, message) {
  const run = (mutation, variables, done) => async () => {
    try {
      await gql(mutation, variables);
      replace(message, banner("info", done));
      await reload();
    } catch (err) {
      replace(message, banner("error", err.message));
    }
  };
  const buttons = [];
  if (experiment.status === "DRAFT")
    buttons.push(actionButton("Start", run(START, { id: experiment.id }, "Started."), "btn primary"));
  if (experiment.status === "PAUSED")
    buttons.push(actionButton("Resume", run(START, { id: experiment.id }, "Resumed."), "btn primary"));
  if (experiment.status === "RUNNING")
    buttons.push(actionButton("Pause", run(PAUSE, { id: experiment.id }, "Paused."), "btn"));
  if (experiment.status !== "STOPPED") {
    buttons.push(
      confirmButton(
        "Stop",
        "Confirm stop",
        run(STOP, { id: experiment.id, ship: null }, "Stopped; the scenario keeps its config."),
      ),
    );
    for (const variant of experiment.variants) {
      buttons.push(
        confirmButton(
          `Ship ${variant.name}`,
          `Confirm: stop and ship ${variant.name}`,
          run(
            STOP,
            { id: experiment.id, ship: variant.name },
            `Stopped and shipped ${variant.name}: its config is the scenario's new config version.`,
          ),
        ),
      );
    }
  }
  if (!buttons.length) {
    return h(
      "p",
      { class: "muted" },
      experiment.shippedVariant ? `Stopped; shipped ${experiment.shippedVariant}.` : "Stopped; nothing shipped.",
    );
  }
  return h("div", { class: "row", id: "experiment-actions" }, ...buttons);
}

async function renderDetail(root, experimentId) {
  let stopLive = null;
  const message = h("div");

  async function load() {
    if (stopLive) stopLive();
    stopLive = null;
    const data = await gql(DETAIL, { id: experimentId });
    const experiment = data.experiment;
    if (!experiment) {
      replace(
        root,
        banner("error", "No such experiment in your tenant. ", h("a", { href: "#/experiments" }, "All experiments")),
      );
      return;
    }
    const variantsBody = h("div", null, variants(experiment, experiment.results?.exposures));
    const resultsBody = h("div", { id: "experiment-results" });
    replace(
      root,
      h("div", { class: "crumbs" }, h("a", { href: "#/experiments" }, "Experiments"), " / ", experiment.name),
      h("h1", null, experiment.name, " ", badge(experiment.status, "experiment-status")),
      experiment.hypothesis ? h("p", null, experiment.hypothesis) : null,
      h(
        "p",
        { class: "muted" },
        "Scenario ",
        experiment.scenario
          ? h("a", { href: `#/scenarios/${encodeURIComponent(experiment.scenarioId)}` }, experiment.scenario.name)
          : experiment.scenarioId,
      ),
      message,
      panel("Actions", actions(experiment, load, message)),
      panel("Variants", variantsBody),
      panel("Results", resultsBody),
      panel("Design", design(experiment)),
    );
    const show = (results) => {
      replace(variantsBody, variants(experiment, results?.exposures));
      renderResults(resultsBody, experiment, results);
    };
    show(experiment.results);
    if (experiment.status === "RUNNING" || experiment.status === "PAUSED") {
      stopLive = subscribe(
        LIVE,
        { id: experiment.id },
        {
          next: (result) => show(result.experimentResults),
          error: (err) => replace(message, banner("error", `Live results stopped: ${err.message}`)),
        },
      );
    }
  }

  await load();
  return () => {
    if (stopLive) stopLive();
  };
}

export async function render(root, [experimentId], query) {
  return experimentId ? renderDetail(root, experimentId) : renderList(root, query);
}

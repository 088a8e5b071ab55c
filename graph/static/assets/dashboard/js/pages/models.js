// Models: a scenario's model versions (status, aliases, what training measured), promote a version to champion
// or roll a kind back to the champion it replaced. Serving swaps before the mutation answers.

import { gql } from "../api.js";
import { badge, banner, confirmButton, h, num, panel, replace, table } from "../dom.js";
import * as fmt from "../format.js";

const SCENARIOS = "{ scenarios(first: 100) { edges { node { id name } } } }";
const MODELS = `query($s: ID!) { scenario(id: $s) { id name configVersion models(first: 50) {
  id kind version status aliases metrics trainedAt trainingSeconds device sizeBytes config } } }`;
const PROMOTE = "mutation($id: ID!) { promoteModel(id: $id) { id kind version aliases } }";
const ROLLBACK =
  "mutation($s: ID!, $k: String!) { rollbackModel(scenarioId: $s, kind: $k) { id kind version aliases } }";
const FIGURES = ["ndcg@10", "recall@20", "coverage", "interactions", "items", "users"];

function figures(metrics) {
  const shown = FIGURES.filter((name) => typeof metrics[name] === "number").map(
    (name) => `${name} ${Number.isInteger(metrics[name]) ? fmt.count(metrics[name]) : fmt.decimal(metrics[name], 4)}`,
  );
  return h(
    "div",
    null,
    shown.join(" · ") || h("span", { class: "muted" }, "–"),
    Object.keys(metrics).length
      ? h("details", null, h("summary", null, "all"), h("pre", null, fmt.json(metrics)))
      : null,
  );
}

function versionsTable(scenario, reload, message) {
  const promote = (model) => async () => {
    try {
      const { promoteModel: done } = await gql(PROMOTE, { id: model.id });
      replace(message, banner("info", `${done.kind} v${done.version} is the champion and serves now.`));
    } catch (err) {
      replace(message, banner("error", `Promote refused: ${err.message}`));
    }
    await reload();
  };
  const rows = scenario.models.map((m) => [
    num(`v${m.version}`, { version: String(m.version) }),
    m.kind,
    badge(m.status),
    h("span", { class: "row", dataset: { aliases: m.aliases.join(",") } }, ...m.aliases.map((a) => badge(a))),
    fmt.when(m.trainedAt),
    num(fmt.seconds(m.trainingSeconds)),
    m.device || "–",
    num(fmt.bytes(m.sizeBytes)),
    num(m.config && typeof m.config.configVersion === "number" ? `v${m.config.configVersion}` : "–"),
    figures(m.metrics || {}),
    (m.status === "READY" || m.status === "RETIRED") && !m.aliases.includes("champion")
      ? confirmButton("Promote", `Confirm: serve v${m.version}`, promote(m), { danger: false })
      : "",
  ]);
  return table(
    [
      ["Version", "num"],
      "Kind",
      "Status",
      "Aliases",
      "Trained",
      ["Took", "num"],
      "Device",
      ["Size", "num"],
      ["Config", "num"],
      "Measured",
      "",
    ],
    rows,
    { empty: "Not trained yet: run trainScenario or a TRAIN job." },
  );
}

function serving(scenario, reload, message) {
  const kinds = [...new Set(scenario.models.map((m) => m.kind))];
  if (!kinds.length) return h("p", { class: "muted" }, "Nothing serves a trained model yet.");
  return h(
    "div",
    { class: "stack" },
    kinds.map((kind) => {
      const champion = scenario.models.find((m) => m.kind === kind && m.aliases.includes("champion"));
      const rollback = async () => {
        try {
          const { rollbackModel: done } = await gql(ROLLBACK, { s: scenario.id, k: kind });
          replace(message, banner("info", `Rolled back: ${done.kind} v${done.version} serves again.`));
        } catch (err) {
          replace(message, banner("error", `Roll back refused: ${err.message}`));
        }
        await reload();
      };
      return h(
        "div",
        { class: "row" },
        h("strong", null, kind),
        "serving",
        h("span", { class: "badge champion", dataset: { serving: kind } }, champion ? `v${champion.version}` : "none"),
        confirmButton(`Roll back ${kind}`, "Confirm roll back", rollback),
      );
    }),
  );
}

export async function render(root, [scenarioId]) {
  const { scenarios } = await gql(SCENARIOS);
  const picker = h(
    "select",
    { "aria-label": "Scenario", id: "models-scenario" },
    h("option", { value: "" }, "choose a scenario"),
    scenarios.edges.map(({ node }) => h("option", { value: node.id, selected: node.id === scenarioId }, node.name)),
  );
  picker.addEventListener("change", () => {
    window.location.hash = picker.value ? `#/models/${encodeURIComponent(picker.value)}` : "#/models";
  });
  const message = h("div");
  const servingBody = h("div");
  const versionsBody = h("div");
  replace(root, h("h1", null, "Models"), panel(null, h("div", { class: "row" }, "Scenario", picker)), message);
  if (!scenarioId) {
    root.append(h("p", { class: "muted" }, "Choose a scenario to see its model versions."));
    return null;
  }
  root.append(panel("Serving", servingBody), panel("Versions", versionsBody));

  async function reload() {
    const { scenario } = await gql(MODELS, { s: scenarioId });
    if (!scenario) {
      replace(versionsBody, banner("error", "No such scenario in your tenant."));
      return;
    }
    replace(servingBody, serving(scenario, reload, message));
    replace(versionsBody, versionsTable(scenario, reload, message));
  }

  await reload();
  return null;
}

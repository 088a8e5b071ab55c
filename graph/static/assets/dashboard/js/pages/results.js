// An experiment's results: the split's health (SRM), whether it can be read yet (sequential or fixed horizon),
// each metric's effect with its interval drawn, guardrails, and the bandit's arms or the interleaving preference.

import { gql } from "../api.js";
import { intervalPlot } from "../charts.js";
import { badge, banner, h, num, replace, table } from "../dom.js";
import * as fmt from "../format.js";

export const RESULTS_FIELDS = `computedAt frozen exposures { variant users } srm { pValue mismatch expected }
  metrics { metric variant role users value controlValue difference differenceLower differenceUpper
    relativeDifference relativeLower relativeUpper pValue adjustedPValue significant method cuped varianceReduction }
  guardrails { metric variant margin pValue passed method }
  arms { variant mean lower upper probabilityBest weight }
  preference { controlWins treatmentWins ties share lower upper pValue method }`;
const PLAN = `query($m: ExperimentMetric!, $b: Float!, $mde: Float!, $a: Float, $p: Float, $v: Int, $s: ID) {
  experimentPlan(metric: $m, baseline: $b, minimumDetectableEffect: $mde, alpha: $a, power: $p, variants: $v,
    scenarioId: $s) {
    usersPerVariant totalUsers expectedDays } }`;
const RATES = new Set(["CTR", "USER_CONVERSION", "EMPTY_RATE"]);

function srm(results) {
  if (!results.srm)
    return h(
      "p",
      { class: "muted" },
      "No sample-ratio check for this allocation (users are not split by fixed weights).",
    );
  const expected = results.srm.expected.map((share) => fmt.percent(share)).join(" / ");
  if (results.srm.mismatch) {
    return banner(
      "warn",
      h("strong", null, "Sample-ratio mismatch: "),
      `exposures do not match the planned split (${expected}); p = ${fmt.pValue(results.srm.pValue)}. `,
      "The assignment or logging is broken: do not trust these results until it is fixed.",
    );
  }
  return h(
    "p",
    { class: "muted", dataset: { srm: "ok" } },
    `Split as planned (${expected}); SRM p = ${fmt.pValue(results.srm.pValue)}.`,
  );
}

function primaryDecision(experiment, results) {
  const primary = results.metrics.filter((m) => m.role === "PRIMARY" && m.difference !== null);
  const winners = primary.filter((m) => m.significant);
  if (!primary.length) return "No effect estimated yet: too few users.";
  if (!winners.length) return `No significant difference on ${experiment.primaryMetric} yet.`;
  return winners
    .map((m) => `${m.variant}: ${fmt.signedPercent(m.relativeDifference)} on ${m.metric} (significant)`)
    .join("; ");
}

/** Whether the results can be read now; fixed-horizon designs get the planned sample from experimentPlan. */
function sequentialStatus(experiment, results) {
  const body = h("div", { id: "sequential-status" });
  const decision = primaryDecision(experiment, results);
  if (results.frozen) {
    replace(
      body,
      banner("info", h("strong", null, "Final: "), `the experiment stopped and its results are frozen. ${decision}`),
    );
    return body;
  }
  if (experiment.sequential) {
    replace(
      body,
      banner(
        "info",
        h("strong", null, "Sequential: "),
        "always-valid intervals, so the results may be read and acted on at any time. ",
        decision,
      ),
    );
    return body;
  }
  replace(
    body,
    banner(
      "info",
      h("strong", null, "Fixed horizon: "),
      "read the results once the planned sample is reached. ",
      decision,
    ),
  );
  const control = results.metrics.find((m) => m.role === "PRIMARY" && m.controlValue !== null);
  const smallest = results.exposures.length ? Math.min(...results.exposures.map((e) => e.users)) : 0;
  if (
    experiment.minimumDetectableEffect &&
    control &&
    control.controlValue > 0 &&
    RATES.has(experiment.primaryMetric)
  ) {
    plan({
      m: experiment.primaryMetric,
      b: Number(control.controlValue.toPrecision(2)),
      mde: experiment.minimumDetectableEffect,
      a: experiment.alpha,
      p: experiment.power,
      v: experiment.variants.length,
      s: experiment.scenarioId,
    })
      .then((planned) => {
        const share = Math.min(1, smallest / planned.usersPerVariant);
        body.append(
          h(
            "div",
            { class: "row" },
            `${fmt.count(smallest)} of ${fmt.count(planned.usersPerVariant)} users per variant`,
            h("div", { class: "bar" }, progress(share)),
            share >= 1
              ? badge("ready", "ok")
              : h(
                  "span",
                  { class: "muted" },
                  planned.expectedDays === null ? "" : `~${fmt.decimal(planned.expectedDays, 1)} days in all`,
                ),
          ),
        );
      })
      .catch((err) => body.append(h("p", { class: "muted" }, `No plan: ${err.message}`)));
  }
  return body;
}

const plans = new Map();

/** experimentPlan, asked once per design and (two-digit) baseline: live results redraw every few seconds. */
function plan(variables) {
  const key = JSON.stringify(variables);
  if (!plans.has(key)) {
    plans.set(
      key,
      gql(PLAN, variables)
        .then((data) => data.experimentPlan)
        .catch((err) => {
          plans.delete(key);
          throw err;
        }),
    );
  }
  return plans.get(key);
}

function progress(share) {
  const fill = h("span");
  fill.style.width = `${Math.round(share * 100)}%`; // CSSOM, which the policy allows
  return fill;
}

function method(row) {
  const reduced = row.cuped && row.varianceReduction;
  return reduced ? `${row.method}, CUPED −${fmt.percent(row.varianceReduction, 0)} variance` : row.method;
}

function effects(experiment, results) {
  const control = experiment.variants[0]?.name;
  const byMetric = new Map();
  for (const m of results.metrics) {
    if (!byMetric.has(m.metric)) byMetric.set(m.metric, []);
    byMetric.get(m.metric).push(m);
  }
  const blocks = [];
  for (const [metric, rows] of byMetric) {
    const treatments = rows.filter((r) => r.variant !== control);
    blocks.push(
      h(
        "div",
        { class: "metric-effect", dataset: { metric } },
        h("h3", null, metric, " ", badge(rows[0].role.toLowerCase())),
        treatments.length
          ? intervalPlot(
              treatments.map((r) => ({
                label: r.variant,
                point: r.relativeDifference,
                lower: r.relativeLower,
                upper: r.relativeUpper,
                significant: r.significant,
              })),
            )
          : null,
        table(
          [
            "Variant",
            ["Users", "num"],
            ["Value", "num"],
            ["Control", "num"],
            ["Relative", "num"],
            ["Interval", "num"],
            ["p", "num"],
            ["Adjusted p", "num"],
            "Significant",
            "Method",
          ],
          rows.map((r) => [
            r.variant,
            num(fmt.count(r.users)),
            num(fmt.decimal(r.value, 4)),
            num(fmt.decimal(r.controlValue, 4)),
            num(fmt.signedPercent(r.relativeDifference)),
            num(
              r.relativeLower === null
                ? "–"
                : `${fmt.signedPercent(r.relativeLower)} … ${fmt.signedPercent(r.relativeUpper)}`,
            ),
            num(fmt.pValue(r.pValue)),
            num(fmt.pValue(r.adjustedPValue)),
            r.significant === null ? "–" : r.significant ? badge("yes", "ok") : "no",
            method(r),
          ]),
        ),
      ),
    );
  }
  return blocks.length ? blocks : [h("p", { class: "muted" }, "No metric results yet.")];
}

function guardrails(results) {
  if (!results.guardrails.length) return null;
  return [
    h("h3", null, "Guardrails"),
    table(
      ["Metric", "Variant", ["Margin", "num"], ["p", "num"], "Holds", "Method"],
      results.guardrails.map((g) => [
        g.metric,
        g.variant,
        num(fmt.percent(g.margin)),
        num(fmt.pValue(g.pValue)),
        g.passed === null ? "not enough data" : g.passed ? badge("ok") : badge("fails", "down"),
        g.method,
      ]),
    ),
  ];
}

function arms(results) {
  if (!results.arms.length) return null;
  return [
    h("h3", null, "Bandit arms"),
    table(
      ["Arm", ["Mean", "num"], ["Interval", "num"], ["P(best)", "num"], ["Weight", "num"]],
      results.arms.map((a) => [
        a.variant,
        num(fmt.decimal(a.mean, 4)),
        num(`${fmt.decimal(a.lower, 4)} … ${fmt.decimal(a.upper, 4)}`),
        num(fmt.percent(a.probabilityBest)),
        num(fmt.percent(a.weight)),
      ]),
    ),
  ];
}

function preference(results) {
  const p = results.preference;
  if (!p) return null;
  return [
    h("h3", null, "Interleaving preference"),
    h(
      "p",
      null,
      `Treatment preferred by ${fmt.percent(p.share)} of deciding users `,
      `(${fmt.percent(p.lower)} … ${fmt.percent(p.upper)}), `,
      `${fmt.count(p.treatmentWins)} vs ${fmt.count(p.controlWins)} with ${fmt.count(p.ties)} ties; `,
      `p = ${fmt.pValue(p.pValue)} (${p.method}).`,
    ),
  ];
}

/** Draw `results` (null for a DRAFT) into `body`. */
export function renderResults(body, experiment, results) {
  if (!results) {
    replace(body, h("p", { class: "muted" }, "A draft has no results: start it to expose users."));
    return;
  }
  replace(
    body,
    h("p", { class: "muted" }, `Computed ${fmt.when(results.computedAt)}`, results.frozen ? " · frozen" : " · live"),
    srm(results),
    sequentialStatus(experiment, results),
    ...effects(experiment, results),
    guardrails(results),
    arms(results),
    preference(results),
  );
}

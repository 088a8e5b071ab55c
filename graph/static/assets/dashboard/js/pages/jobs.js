// Jobs: the tenant's newest jobs with live progress (a `jobProgress` subscription per unfinished job), cancel, and
// a form to queue one. The list is re-read every 5 s to pick up jobs queued elsewhere (schedules, other operators).

import { gql, subscribe } from "../api.js";
import { actionButton, badge, banner, confirmButton, h, panel, replace } from "../dom.js";
import * as fmt from "../format.js";

const FIELDS = "id kind scenarioId status progress stage attempts error createdAt startedAt finishedAt durationSeconds";
const LIST = `{ jobs(first: 50) { totalCount edges { node { ${FIELDS} scenario { name } } } }
  scenarios(first: 100) { edges { node { id name } } } }`;
const PROGRESS = `subscription($id: ID!) { jobProgress(id: $id) { ${FIELDS} } }`;
const CANCEL = "mutation($id: ID!) { cancelJob(id: $id) { id status } }";
const RUN = "mutation($s: ID!, $k: JobKind!) { runJob(scenarioId: $s, kind: $k) { id status } }";
const KINDS = ["TRAIN", "SIMILARITY", "PROFILES", "CANDIDATES", "CLEANUP"];
const POLL_MS = 5000;
const ACTIVE = new Set(["QUEUED", "RUNNING"]);

function bar(share) {
  const fill = h("span");
  fill.style.width = `${Math.round(Math.max(0, Math.min(1, share)) * 100)}%`; // CSSOM, which the policy allows
  return h(
    "div",
    {
      class: "bar",
      role: "progressbar",
      "aria-valuenow": String(Math.round(share * 100)),
      "aria-valuemin": "0",
      "aria-valuemax": "100",
    },
    fill,
  );
}

export async function render(root) {
  const message = h("div");
  const tbody = h("tbody");
  const count = h("span", { class: "muted" });
  const scenarioPicker = h("select", { "aria-label": "Scenario" });
  const kindPicker = h(
    "select",
    { "aria-label": "Kind" },
    KINDS.map((k) => h("option", { value: k }, k)),
  );
  const rows = new Map(); // job id -> {row, job, status}
  const live = new Map(); // job id -> stop function
  let names = new Map();

  const run = actionButton(
    "Run job",
    async () => {
      if (!scenarioPicker.value) return;
      try {
        const { runJob: job } = await gql(RUN, { s: scenarioPicker.value, k: kindPicker.value });
        replace(message, banner("info", `Job ${job.id} is ${job.status.toLowerCase()}.`));
        await refresh();
      } catch (err) {
        replace(message, banner("error", err.message));
      }
    },
    "btn primary",
  );

  replace(
    root,
    h("h1", null, "Jobs"),
    panel("Queue a job", h("div", { class: "row" }, scenarioPicker, kindPicker, run)),
    message,
    panel(
      null,
      count,
      h(
        "div",
        { class: "scroll" },
        h(
          "table",
          { class: "data", id: "jobs" },
          h(
            "thead",
            null,
            h(
              "tr",
              null,
              ["Job", "Kind", "Scenario", "Status", "Progress", "Stage", "Attempts", "Created", "Took", ""].map((t) =>
                h("th", null, t),
              ),
            ),
          ),
          tbody,
        ),
      ),
    ),
  );

  function cells(job) {
    const cancel = ACTIVE.has(job.status)
      ? confirmButton("Cancel", "Confirm cancel", async () => {
          try {
            await gql(CANCEL, { id: job.id });
            replace(message, banner("info", `Job ${job.id} cancelled.`));
          } catch (err) {
            replace(message, banner("error", err.message));
          }
          await refresh();
        })
      : "";
    return [
      h("td", { class: "mono" }, job.id),
      h("td", null, job.kind),
      h("td", null, names.get(job.scenarioId) || job.scenarioId || "–"),
      h("td", null, badge(job.status)),
      h("td", null, h("div", { class: "row" }, bar(job.progress), fmt.percent(job.progress, 0))),
      h("td", null, job.error ? h("span", { class: "muted" }, `${job.stage || ""} ${job.error}`) : job.stage || ""),
      h("td", { class: "num" }, String(job.attempts)),
      h("td", null, fmt.when(job.createdAt)),
      h("td", { class: "num" }, fmt.seconds(job.durationSeconds)),
      h("td", null, cancel),
    ];
  }

  function show(job) {
    const known = rows.get(job.id);
    if (known && known.status === job.status && known.row.isConnected) {
      // Same status: refresh the figures but keep the cancel button (it may be armed).
      const fresh = cells(job);
      for (const i of [4, 5, 6, 8]) known.row.children[i].replaceWith(fresh[i]);
      known.job = job;
      return known.row;
    }
    const row = h("tr", { dataset: { job: job.id, status: job.status } }, ...cells(job));
    if (known && known.row.isConnected) known.row.replaceWith(row);
    rows.set(job.id, { row, job, status: job.status });
    return row;
  }

  function follow(job) {
    if (!ACTIVE.has(job.status) || live.has(job.id)) return;
    live.set(
      job.id,
      subscribe(
        PROGRESS,
        { id: job.id },
        {
          next: (data) => show(data.jobProgress),
          error: () => live.delete(job.id),
          complete: () => live.delete(job.id),
        },
      ),
    );
  }

  async function refresh() {
    const data = await gql(LIST);
    names = new Map(data.scenarios.edges.map(({ node }) => [node.id, node.name]));
    if (!scenarioPicker.options.length) {
      replace(
        scenarioPicker,
        data.scenarios.edges.map(({ node }) => h("option", { value: node.id }, node.name)),
      );
    }
    count.textContent = `${fmt.count(data.jobs.totalCount)} jobs; the newest 50:`;
    const ordered = data.jobs.edges.map(({ node }) => show(node));
    tbody.replaceChildren(...ordered);
    data.jobs.edges.forEach(({ node }) => follow(node));
    if (!ordered.length) tbody.append(h("tr", null, h("td", { colspan: "10", class: "muted" }, "No jobs yet.")));
  }

  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), POLL_MS);
  return () => {
    clearInterval(timer);
    for (const stop of live.values()) stop();
  };
}

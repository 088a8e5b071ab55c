// The audit log: the tenant's admin mutations, newest first (operation, key, outcome, time, and a digest of the
// arguments, never the arguments themselves), 50 at a time.

import { gql } from "../api.js";
import { actionButton, badge, h, panel, replace } from "../dom.js";
import * as fmt from "../format.js";

const PAGE = `query($after: String) { auditLog(first: 50, after: $after) { totalCount pageInfo { hasNextPage endCursor }
  edges { node { id keyId operation argumentsSha256 outcome at } } } }`;
const KEYS = "{ apiKeys { id prefix } }";

export async function render(root) {
  const [{ auditLog: first }, { apiKeys }] = await Promise.all([gql(PAGE, { after: null }), gql(KEYS)]);
  const prefixes = new Map(apiKeys.map((k) => [k.id, `${k.prefix}…`]));
  const tbody = h("tbody");
  const more = h("div", { class: "row" });
  const headers = ["When", "Operation", "Outcome", "Key", "Arguments (SHA-256)"];

  function append(page) {
    for (const { node } of page.edges) {
      tbody.append(
        h(
          "tr",
          { dataset: { operation: node.operation } },
          h("td", null, fmt.when(node.at)),
          h("td", { class: "mono" }, node.operation),
          h("td", null, node.outcome === "ok" ? badge("ok") : badge(node.outcome, "down")),
          h(
            "td",
            { class: "mono" },
            prefixes.get(node.keyId) || h("span", { class: "muted" }, `${node.keyId} (revoked)`),
          ),
          h("td", { class: "mono muted" }, `${node.argumentsSha256.slice(0, 16)}…`),
        ),
      );
    }
    replace(
      more,
      page.pageInfo.hasNextPage
        ? actionButton("Older entries", async () =>
            append((await gql(PAGE, { after: page.pageInfo.endCursor })).auditLog),
          )
        : h("span", { class: "muted" }, "The start of the log."),
    );
  }

  replace(
    root,
    h("h1", null, "Audit log"),
    panel(
      null,
      h("p", { class: "muted" }, `${fmt.count(first.totalCount)} admin mutations recorded.`),
      first.edges.length
        ? h(
            "div",
            { class: "scroll" },
            h(
              "table",
              { class: "data", id: "audit" },
              h(
                "thead",
                null,
                h(
                  "tr",
                  null,
                  headers.map((t) => h("th", null, t)),
                ),
              ),
              tbody,
            ),
          )
        : h("p", { class: "muted" }, "No admin mutations yet."),
      more,
    ),
  );
  append(first);
  return null;
}

// API keys: the tenant's live keys, create one, rotate one (a new secret, the old key revoked), revoke one. A new
// secret is shown once, here, and kept nowhere by the page. Rotating the key this session uses switches the session
// to the new key; revoking it signs the page out.

import { currentKey, gql, rotateSessionKey, signOut } from "../api.js";
import { actionButton, badge, banner, confirmButton, h, panel, replace, table } from "../dom.js";
import * as fmt from "../format.js";

const KEYS = "{ apiKeys { id scope prefix createdAt revokedAt expiresAt lastUsedAt requireUserToken } }";
const CREATE = `mutation($scope: ApiKeyScope!, $expiresAt: DateTime, $user: Boolean!) {
  createApiKey(scope: $scope, expiresAt: $expiresAt, requireUserToken: $user) { secret key { id scope prefix } } }`;
const ROTATE = "mutation($id: ID!) { rotateApiKey(id: $id) { secret key { id scope prefix } } }";
const REVOKE = "mutation($id: ID!) { revokeApiKey(id: $id) }";

function isSession(key) {
  const mine = currentKey();
  return Boolean(mine) && mine.startsWith(key.prefix);
}

/** The one showing of a new secret, with a copy button. */
function secretPanel(created, note) {
  const value = h("div", { class: "secret", id: "new-secret" }, created.secret);
  const copy = actionButton("Copy", async (button) => {
    try {
      await navigator.clipboard.writeText(created.secret);
      button.textContent = "Copied";
    } catch (_) {
      button.textContent = "Select and copy it";
    }
  });
  const box = h(
    "div",
    { class: "banner warn", role: "alert" },
    h(
      "p",
      null,
      h("strong", null, `New ${created.key.scope.toLowerCase()} key ${created.key.prefix}…`),
      ` ${note} Store the secret now: it is shown this once.`,
    ),
    value,
    h(
      "div",
      { class: "row" },
      copy,
      actionButton("Done", () => box.remove()),
    ),
  );
  return box;
}

export async function render(root) {
  const message = h("div");
  const listBody = h("div");
  const scope = h(
    "select",
    { "aria-label": "Scope", name: "scope" },
    ["PUBLIC", "ADMIN", "GATEWAY"].map((s) => h("option", { value: s }, s)),
  );
  const expires = h("input", { type: "datetime-local", "aria-label": "Expires at", name: "expiresAt" });
  const userToken = h("input", { type: "checkbox", name: "requireUserToken" });
  const create = actionButton(
    "Create key",
    async () => {
      try {
        const expiresAt = expires.value ? new Date(expires.value).toISOString() : null;
        const { createApiKey: created } = await gql(CREATE, { scope: scope.value, expiresAt, user: userToken.checked });
        replace(message, secretPanel(created, "created."));
        await reload();
      } catch (err) {
        replace(message, banner("error", err.field ? `${err.field}: ${err.message}` : err.message));
      }
    },
    "btn primary",
  );

  replace(
    root,
    h("h1", null, "API keys"),
    panel(
      "Create a key",
      h(
        "div",
        { class: "row" },
        scope,
        h("label", null, "expires", expires),
        h("label", null, userToken, "require X-User-Token (public keys)"),
        create,
      ),
    ),
    message,
    panel("Live keys", listBody),
  );

  const rotate = (key) => async () => {
    if (!currentKey()) return;
    try {
      let created = null;
      const change = async () => {
        created = (await gql(ROTATE, { id: key.id })).rotateApiKey;
        return created.secret;
      };
      if (isSession(key)) {
        await rotateSessionKey(change);
        sessionStorage.setItem("recograph.keyPrefix", created.key.prefix);
        document.getElementById("who").textContent = `key ${created.key.prefix}…`;
        replace(message, secretPanel(created, "replaces the key this session used; the session now uses it."));
      } else {
        await change();
        replace(message, secretPanel(created, `replaces ${key.prefix}…, which no longer works.`));
      }
      await reload();
    } catch (err) {
      replace(message, banner("error", err.message));
    }
  };
  const revoke = (key) => async () => {
    const own = isSession(key);
    try {
      await gql(REVOKE, { id: key.id });
      if (own) {
        signOut("You revoked the key this session used.");
        return;
      }
      replace(message, banner("info", `Key ${key.prefix}… revoked.`));
      await reload();
    } catch (err) {
      replace(message, banner("error", err.message));
    }
  };

  async function reload() {
    const { apiKeys } = await gql(KEYS);
    replace(
      listBody,
      table(
        ["Key", "Scope", "Created", "Expires", "Last used", "User token", ""],
        apiKeys.map((key) => [
          h(
            "span",
            { class: "mono", dataset: { key: key.id } },
            `${key.prefix}…`,
            isSession(key) ? h("span", { class: "muted" }, " (this session)") : null,
          ),
          badge(key.scope),
          fmt.when(key.createdAt),
          fmt.when(key.expiresAt),
          fmt.when(key.lastUsedAt),
          key.requireUserToken ? "required" : "",
          h(
            "span",
            { class: "row" },
            confirmButton("Rotate", "Confirm rotate", rotate(key)),
            confirmButton("Revoke", isSession(key) ? "Confirm: revoke and sign out" : "Confirm revoke", revoke(key)),
          ),
        ]),
        { empty: "No live keys." },
      ),
    );
  }

  await reload();
  return null;
}

// The dashboard's entry: sign-in, the navigation, and a router over the URL's fragment (#/scenarios/<id>).
// Each page module exports `render(root, params, query)`, which may return a function that stops its live views.

import { connect, currentKey, onSignOut, signIn, signOut } from "./api.js";
import { banner, h, replace } from "./dom.js";
import * as audit from "./pages/audit.js";
import * as experiments from "./pages/experiments.js";
import * as jobs from "./pages/jobs.js";
import * as keys from "./pages/keys.js";
import * as models from "./pages/models.js";
import * as overview from "./pages/overview.js";
import * as scenario from "./pages/scenario.js";

const ROUTES = [
  [/^\/?$/, overview, "overview"],
  [/^\/scenarios\/([^/]+)$/, scenario, "overview"],
  [/^\/experiments$/, experiments, "experiments"],
  [/^\/experiments\/([^/]+)$/, experiments, "experiments"],
  [/^\/models$/, models, "models"],
  [/^\/models\/([^/]+)$/, models, "models"],
  [/^\/jobs$/, jobs, "jobs"],
  [/^\/keys$/, keys, "keys"],
  [/^\/audit$/, audit, "audit"],
];

const app = document.getElementById("app");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const signOutButton = document.getElementById("sign-out");
let stopPage = null;
let rendering = 0;

function route() {
  const [path, search] = window.location.hash.replace(/^#/, "").split("?");
  const query = new URLSearchParams(search || "");
  for (const [pattern, page, section] of ROUTES) {
    const found = pattern.exec(path);
    if (found) return { page, section, params: found.slice(1).map(decodeURIComponent), query };
  }
  return null;
}

function stop() {
  if (stopPage) {
    try {
      stopPage();
    } finally {
      stopPage = null;
    }
  }
}

async function show() {
  stop();
  delete app.dataset.ready; // set again once the page has its data: what tests and scripts wait for
  if (!currentKey()) {
    showSignIn();
    return;
  }
  const found = route();
  for (const link of nav.querySelectorAll("a[data-page]")) {
    link.classList.toggle("active", Boolean(found) && link.dataset.page === found.section);
  }
  const root = h("div", { class: "page" });
  replace(app, root);
  if (!found) {
    replace(root, banner("error", "No such page. ", h("a", { href: "#/" }, "Back to the overview")));
    return;
  }
  const token = ++rendering;
  let stopper = null;
  try {
    stopper = await found.page.render(root, found.params, found.query);
  } catch (err) {
    if (token === rendering && currentKey()) replace(root, banner("error", err.message));
  }
  if (token !== rendering || !currentKey()) {
    if (typeof stopper === "function") stopper(); // left the page while it loaded
    return;
  }
  stopPage = typeof stopper === "function" ? stopper : null;
  app.dataset.page = found.section;
  app.dataset.ready = String(token);
}

function signedIn(prefix) {
  nav.hidden = false;
  signOutButton.hidden = false;
  who.textContent = prefix ? `key ${prefix}…` : "";
  connect();
}

function showSignIn(reason = null) {
  stop();
  nav.hidden = true;
  signOutButton.hidden = true;
  who.textContent = "";
  delete app.dataset.ready;
  app.dataset.page = "sign-in";
  const input = h("input", {
    type: "password",
    name: "key",
    autocomplete: "off",
    spellcheck: "false",
    placeholder: "rg_admin_…",
    "aria-label": "Admin key",
    required: true,
  });
  const problem = h("div", { class: "stack" }, reason ? banner("warn", reason) : null);
  const submit = h("button", { class: "btn primary", type: "submit" }, "Sign in");
  const form = h("form", { id: "sign-in", novalidate: true }, input, submit);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    try {
      const listed = await signIn(input.value);
      const mine = listed.find((key) => input.value.trim().startsWith(key.prefix));
      sessionStorage.setItem("recograph.keyPrefix", mine ? mine.prefix : "");
      input.value = "";
      signedIn(mine ? mine.prefix : "");
      await show();
    } catch (err) {
      replace(problem, banner("error", err.message));
    } finally {
      submit.disabled = false;
    }
  });
  replace(
    app,
    h(
      "section",
      { class: "panel signin" },
      h("h1", null, "Sign in"),
      h(
        "p",
        { class: "muted" },
        "Paste an admin key of your tenant. It is kept for this browser tab only and sent to this server alone.",
      ),
      problem,
      form,
    ),
  );
  input.focus();
}

onSignOut((reason) => {
  try {
    sessionStorage.removeItem("recograph.keyPrefix");
  } catch (_) {
    // storage disabled: nothing kept
  }
  showSignIn(reason);
});
signOutButton.addEventListener("click", () => signOut("Signed out."));
window.addEventListener("hashchange", () => {
  if (currentKey()) show();
});

if (currentKey()) {
  let prefix = "";
  try {
    prefix = sessionStorage.getItem("recograph.keyPrefix") || "";
  } catch (_) {
    prefix = "";
  }
  signedIn(prefix);
}
show();

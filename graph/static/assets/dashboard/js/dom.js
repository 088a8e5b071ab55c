// Building DOM without HTML strings: every value a tenant controls (names, ids, configs) becomes a text node, so
// nothing it holds can run as markup. No `style` attributes either: the page's CSP forbids them.

const SVG_NS = "http://www.w3.org/2000/svg";

function append(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

function apply(el, props) {
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    else if (name === "text") el.textContent = String(value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "on") for (const [event, handler] of Object.entries(value)) el.addEventListener(event, handler);
    else if (name === "style") throw new Error("style attributes are not allowed by the page's policy");
    else if (name in el && typeof value !== "string")
      el[name] = value; // value, checked, disabled, hidden
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  return el;
}

/** Create an HTML element: `h("td", {class: "num"}, "12")`. */
export function h(tag, props, ...children) {
  return append(apply(document.createElement(tag), props), children);
}

/** Create an SVG element with attributes. */
export function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) el.setAttribute(name, String(value));
  }
  return append(el, children);
}

/** Replace an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** A panel with a title and content. */
export function panel(title, ...children) {
  return h("section", { class: "panel" }, title ? h("h2", null, title) : null, ...children);
}

/** A table from column headers and rows of cells; a cell may be a node, a string, or {value, class}. */
export function table(headers, rows, { empty = "Nothing yet." } = {}) {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  const head = h(
    "tr",
    null,
    headers.map((title) => {
      const [text, cls] = Array.isArray(title) ? title : [title, null];
      return h("th", { class: cls }, text);
    }),
  );
  const body = rows.map((cells) =>
    h(
      "tr",
      null,
      cells.map((cell) => {
        if (cell && typeof cell === "object" && !(cell instanceof Node) && "value" in cell) {
          return h("td", { class: cell.class, dataset: cell.dataset }, cell.value);
        }
        return h("td", null, cell);
      }),
    ),
  );
  return h("div", { class: "scroll" }, h("table", { class: "data" }, h("thead", null, head), h("tbody", null, body)));
}

/** A number cell, right-aligned. */
export function num(value, dataset) {
  return { value, class: "num", dataset };
}

/** A labelled figure. */
export function tile(label, value, name) {
  return h(
    "div",
    { class: "tile" },
    h("div", { class: "label" }, label),
    h("div", { class: "value", dataset: name ? { metric: name } : undefined }, value),
  );
}

/** A badge whose class is its text (statuses colour themselves). */
export function badge(text, extra) {
  return h("span", { class: ["badge", String(text), extra] }, String(text));
}

/** A banner: kind is info, warn or error. */
export function banner(kind, ...children) {
  return h("div", { class: ["banner", kind], role: kind === "info" ? "status" : "alert" }, ...children);
}

/** The panel body shown when the server has no such query (an older recograph). */
export function notAvailable(what) {
  return h("p", { class: "na", dataset: { unavailable: what } }, `${what}: not available on this server.`);
}

/** A button that needs a second click to act (no native dialogs); `action` gets the button. */
export function confirmButton(label, confirmLabel, action, { danger = true } = {}) {
  const button = h("button", { class: ["btn", danger && "danger"], type: "button" }, label);
  let timer = null;
  button.addEventListener("click", async () => {
    if (!button.classList.contains("armed")) {
      button.classList.add("armed");
      button.textContent = confirmLabel;
      timer = setTimeout(() => {
        button.classList.remove("armed");
        button.textContent = label;
      }, 4000);
      return;
    }
    clearTimeout(timer);
    button.classList.remove("armed");
    button.textContent = label;
    await run(button, action);
  });
  return button;
}

/** Run a button's action with the button disabled; a failure is shown beside the button, not thrown. */
async function run(button, action) {
  button.disabled = true;
  const shown = button.nextElementSibling;
  if (shown && shown.classList.contains("failed")) shown.remove();
  try {
    await action(button);
  } catch (err) {
    button.after(h("span", { class: "failed", role: "alert" }, err.message || String(err)));
  } finally {
    button.disabled = false;
  }
}

/** A button that runs an async action, disabled while it runs. */
export function actionButton(label, action, cls = "btn") {
  const button = h("button", { class: cls, type: "button" }, label);
  button.addEventListener("click", () => run(button, action));
  return button;
}

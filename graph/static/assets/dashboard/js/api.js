// The signed-in session and the GraphQL calls made with it.
//
// The admin key is kept in sessionStorage (this tab only, gone when it closes), sent in the Authorization header
// over HTTP and in connection_init over the WebSocket, and never put in a URL. One graphql-transport-ws connection
// stays open while signed in: every live view subscribes through it, and the server closes it with 4403 the moment
// the key is revoked or expires, which signs the page out.

const STORAGE_KEY = "recograph.adminKey";
const FORBIDDEN = 4403;

export class ApiError extends Error {
  constructor(message, { code = null, field = null, missing = false } = {}) {
    super(message);
    this.name = "ApiError";
    this.code = code;
    this.field = field;
    this.missing = missing; // the server's schema has no such field: an older recograph
  }
}

let client = null;
let adopting = false; // the session's own key is being rotated: its socket's 4403 is expected
const signOutListeners = new Set();

function storage() {
  try {
    return window.sessionStorage;
  } catch (_) {
    return null; // storage disabled: the session lasts as long as the page
  }
}

let memoryKey = null;

export function currentKey() {
  const store = storage();
  return store ? store.getItem(STORAGE_KEY) : memoryKey;
}

function keep(key) {
  const store = storage();
  if (store) {
    if (key) store.setItem(STORAGE_KEY, key);
    else store.removeItem(STORAGE_KEY);
  } else {
    memoryKey = key;
  }
}

/** Call `listener(reason)` whenever the session ends. */
export function onSignOut(listener) {
  signOutListeners.add(listener);
}

async function post(key, query, variables) {
  let response;
  try {
    response = await fetch("/graphql", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json", Authorization: `Bearer ${key}` },
      body: JSON.stringify({ query, variables }),
      credentials: "omit",
      cache: "no-store",
    });
  } catch (err) {
    throw new ApiError(`recograph did not answer (${err.message})`, { code: "NETWORK" });
  }
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    throw new ApiError(`recograph answered HTTP ${response.status}`, { code: `HTTP_${response.status}` });
  }
  const errors = body.errors || [];
  if (errors.length) {
    const first = errors[0];
    const ext = first.extensions || {};
    throw new ApiError(first.message, {
      code: ext.code || null,
      field: ext.field || null,
      missing: errors.some((e) => /^(Cannot query field|Unknown type)/.test(e.message || "")),
    });
  }
  if (!response.ok)
    throw new ApiError(`recograph answered HTTP ${response.status}`, { code: `HTTP_${response.status}` });
  return body.data;
}

/** Run a query or mutation with the session's key; an invalid key ends the session. */
export async function gql(query, variables = {}) {
  const key = currentKey();
  if (!key) throw new ApiError("Not signed in", { code: "UNAUTHENTICATED" });
  try {
    return await post(key, query, variables);
  } catch (err) {
    if (err.code === "UNAUTHENTICATED") signOut("The key is no longer valid: sign in again.");
    throw err;
  }
}

/** Check that `key` is an admin key, then keep it for this tab. */
export async function signIn(key) {
  const trimmed = key.trim();
  if (!trimmed) throw new ApiError("Enter an admin key.");
  let data;
  try {
    data = await post(trimmed, "{ apiKeys { id prefix scope } }", {});
  } catch (err) {
    if (err.code === "UNAUTHENTICATED") throw new ApiError("That key is not valid.", { code: err.code });
    if (err.code === "FORBIDDEN") throw new ApiError("That key is not an admin key.", { code: err.code });
    throw err;
  }
  keep(trimmed);
  return data.apiKeys;
}

/** Open the session's WebSocket (call once signed in). */
export function connect() {
  if (client) return client;
  const key = currentKey();
  const url = `${window.location.protocol === "https:" ? "wss" : "ws"}://${window.location.host}/graphql`;
  const created = window.graphqlWs.createClient({
    url,
    connectionParams: { Authorization: `Bearer ${key}` },
    lazy: false, // stay connected: the server's 4403 close is how a revoked key reaches the page
    keepAlive: 20000,
    retryAttempts: 20,
    shouldRetry: (event) => !(event && event.code === FORBIDDEN),
    onNonLazyError: () => {}, // reported through `closed` below, not the console
    on: {
      closed: (event) => {
        if (created !== client || adopting) return; // a replaced connection, or the rotation under way
        if (event && event.code === FORBIDDEN) signOut("The key was revoked or has expired: sign in again.");
      },
    },
  });
  client = created;
  return client;
}

/** Rotate the session's own key: `rotate()` returns the new key's secret, which the session then uses. */
export async function rotateSessionKey(rotate) {
  adopting = true;
  try {
    const secret = await rotate();
    keep(secret);
    const old = client;
    client = null;
    if (old) old.dispose();
    connect();
    return secret;
  } finally {
    adopting = false;
  }
}

/** Subscribe over the session's WebSocket; returns a function that ends the subscription. */
export function subscribe(query, variables, { next, error, complete } = {}) {
  const ws = connect();
  return ws.subscribe(
    { query, variables },
    {
      next: (result) => {
        if (result.errors && result.errors.length) {
          const first = result.errors[0];
          if (error) error(new ApiError(first.message, { code: (first.extensions || {}).code || null }));
        } else if (next) {
          next(result.data);
        }
      },
      error: (err) => {
        if (!error) return;
        if (Array.isArray(err)) error(new ApiError(err[0]?.message || "subscription failed"));
        else if (err && typeof err.code === "number")
          error(new ApiError(`connection closed (${err.code})`, { code: err.code }));
        else error(new ApiError(err?.message || "subscription failed"));
      },
      complete: () => complete && complete(),
    },
  );
}

/** End the session: forget the key, close the WebSocket, tell the page why. */
export function signOut(reason = null) {
  const wasSignedIn = Boolean(currentKey()) || client !== null;
  keep(null);
  const open = client;
  client = null;
  if (open) open.dispose();
  if (wasSignedIn) for (const listener of signOutListeners) listener(reason);
}

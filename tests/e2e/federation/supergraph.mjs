// Compose recograph and the users subgraph into a Federation v2 supergraph with @apollo/composition, the library
// behind `rover supergraph compose`. Imported by gateway.mjs; run on its own it writes the supergraph SDL that
// Hive Gateway (or Apollo Router) serves:
//   RECOGRAPH_URL=http://127.0.0.1:8000/graphql USERS_URL=http://127.0.0.1:4001/ OUT=supergraph.graphql \
//     node supergraph.mjs
// RECOGRAPH_KEY is optional: recograph answers `_service { sdl }` without a key. Exits 1 if composition fails.
import { composeServices } from "@apollo/composition";
import { writeFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { parse } from "graphql";

// The subgraphs may still be starting: retry refused connections for a few seconds.
async function post(url, headers, body) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fetch(url, { method: "POST", headers: { "content-type": "application/json", ...headers }, body });
    } catch (error) {
      if (attempt >= 100) throw error;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

/** Return a subgraph's SDL from its `_service { sdl }` field. */
export async function fetchSdl(url, headers = {}) {
  const response = await post(url, headers, JSON.stringify({ query: "{ _service { sdl } }" }));
  const body = await response.json();
  if (!response.ok || body.errors) {
    throw new Error(`_service from ${url} failed: ${response.status} ${JSON.stringify(body.errors ?? body)}`);
  }
  return body.data._service.sdl;
}

/** Return the composed supergraph SDL of recograph and the users subgraph; exit 1 on composition errors. */
export async function composeSupergraph({ recographUrl, recographKey, usersUrl }) {
  const recographHeaders = recographKey ? { authorization: `Bearer ${recographKey}` } : {};
  const subgraphs = [
    { name: "recograph", url: recographUrl, typeDefs: parse(await fetchSdl(recographUrl, recographHeaders)) },
    { name: "users", url: usersUrl, typeDefs: parse(await fetchSdl(usersUrl)) },
  ];
  const composition = composeServices(subgraphs);
  if (composition.errors) {
    for (const error of composition.errors) console.error(`composition error: ${error.message}`);
    process.exit(1);
  }
  return composition.supergraphSdl;
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { RECOGRAPH_URL, RECOGRAPH_KEY, USERS_URL, OUT = "supergraph.graphql" } = process.env;
  const options = { recographUrl: RECOGRAPH_URL, recographKey: RECOGRAPH_KEY, usersUrl: USERS_URL };
  writeFileSync(OUT, await composeSupergraph(options));
  console.log(`wrote ${OUT}`);
}

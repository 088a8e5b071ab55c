// Test fixture: compose recograph with the users subgraph and serve the supergraph through Apollo Gateway.
// Environment: RECOGRAPH_URL, RECOGRAPH_KEY (a gateway key, used only to fetch recograph's SDL),
// USERS_URL, PORT. Prints "ready <url>" once listening on 127.0.0.1; exits 1 if composition fails.
import { composeServices } from "@apollo/composition";
import { ApolloGateway, RemoteGraphQLDataSource } from "@apollo/gateway";
import { ApolloServer } from "@apollo/server";
import { startStandaloneServer } from "@apollo/server/standalone";
import { parse } from "graphql";

const { RECOGRAPH_URL, RECOGRAPH_KEY, USERS_URL, PORT = "0" } = process.env;

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

async function fetchSdl(url, headers = {}) {
  const response = await post(url, headers, JSON.stringify({ query: "{ _service { sdl } }" }));
  const body = await response.json();
  if (!response.ok || body.errors) {
    throw new Error(`_service from ${url} failed: ${response.status} ${JSON.stringify(body.errors ?? body)}`);
  }
  return body.data._service.sdl;
}

const subgraphs = [
  { name: "recograph", url: RECOGRAPH_URL, typeDefs: parse(await fetchSdl(RECOGRAPH_URL, { authorization: `Bearer ${RECOGRAPH_KEY}` })) },
  { name: "users", url: USERS_URL, typeDefs: parse(await fetchSdl(USERS_URL)) },
];

const composition = composeServices(subgraphs);
if (composition.errors) {
  for (const error of composition.errors) console.error(`composition error: ${error.message}`);
  process.exit(1);
}

// The caller's key (and signed-in user) go to recograph only; the users subgraph needs neither.
class RecographDataSource extends RemoteGraphQLDataSource {
  willSendRequest({ request, context }) {
    if (context.authorization) request.http.headers.set("authorization", context.authorization);
    if (context.userId) request.http.headers.set("x-user-id", context.userId);
  }
}

const gateway = new ApolloGateway({
  supergraphSdl: composition.supergraphSdl,
  buildService: ({ name, url }) => (name === "recograph" ? new RecographDataSource({ url }) : new RemoteGraphQLDataSource({ url })),
});

const server = new ApolloServer({ gateway, includeStacktraceInErrorResponses: false });
const { url } = await startStandaloneServer(server, {
  listen: { host: "127.0.0.1", port: Number(PORT) },
  context: async ({ req }) => ({ authorization: req.headers.authorization, userId: req.headers["x-user-id"] }),
});
console.log(`ready ${url}`);

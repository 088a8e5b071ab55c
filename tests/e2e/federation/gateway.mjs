// Test fixture: compose recograph with the users subgraph and serve the supergraph through Apollo Gateway.
// Environment: RECOGRAPH_URL, RECOGRAPH_KEY (a gateway key, used only to fetch recograph's SDL),
// USERS_URL, PORT. Prints "ready <url>" once listening on 127.0.0.1; exits 1 if composition fails.
import { ApolloGateway, RemoteGraphQLDataSource } from "@apollo/gateway";
import { ApolloServer } from "@apollo/server";
import { startStandaloneServer } from "@apollo/server/standalone";
import { composeSupergraph } from "./supergraph.mjs";

const { RECOGRAPH_URL, RECOGRAPH_KEY, USERS_URL, PORT = "0" } = process.env;

const supergraphSdl = await composeSupergraph({ recographUrl: RECOGRAPH_URL, recographKey: RECOGRAPH_KEY, usersUrl: USERS_URL });

// The caller's key (and signed-in user) go to recograph only; the users subgraph needs neither.
class RecographDataSource extends RemoteGraphQLDataSource {
  willSendRequest({ request, context }) {
    if (context.authorization) request.http.headers.set("authorization", context.authorization);
    if (context.userId) request.http.headers.set("x-user-id", context.userId);
  }
}

const gateway = new ApolloGateway({
  supergraphSdl,
  buildService: ({ name, url }) => (name === "recograph" ? new RecographDataSource({ url }) : new RemoteGraphQLDataSource({ url })),
});

const server = new ApolloServer({ gateway, includeStacktraceInErrorResponses: false });
const { url } = await startStandaloneServer(server, {
  listen: { host: "127.0.0.1", port: Number(PORT) },
  context: async ({ req }) => ({ authorization: req.headers.authorization, userId: req.headers["x-user-id"] }),
});
console.log(`ready ${url}`);

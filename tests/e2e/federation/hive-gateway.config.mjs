// Hive Gateway configuration for serving the supergraph that supergraph.mjs composes (docs/federation.md shows
// the same file as gateway.config.ts). Run with:
//   hive-gateway supergraph supergraph.graphql --config-path hive-gateway.config.mjs --host 127.0.0.1 --port 4000
// The caller's recograph key and acting user go to recograph, and to no other subgraph, as HTTP headers; for a
// subscription the caller's key goes in the `connection_init` payload of the gateway's graphql-ws connection to
// recograph (no subscription field reads for a user, so X-User-Id is not needed there).
import { defineConfig } from "@graphql-hive/gateway";

const FORWARDED = ["authorization", "x-user-id", "x-user-token"];

export const gatewayConfig = defineConfig({
  propagateHeaders: {
    fromClientToSubgraphs({ request, subgraphName }) {
      if (subgraphName !== "recograph") return {};
      return Object.fromEntries(FORWARDED.map((name) => [name, request.headers.get(name)]));
    },
  },
  transportEntries: {
    recograph: {
      options: {
        // recograph serves subscriptions over graphql-transport-ws on its GraphQL path.
        subscriptions: {
          kind: "ws",
          location: "/graphql",
          options: {
            // A graphql-ws client of the gateway sends `{"Authorization": "Bearer KEY"}` in its connection_init,
            // as it would to recograph; the gateway opens one connection to recograph per distinct payload.
            connectionParams: { Authorization: "{context.connectionParams.Authorization}" },
          },
        },
      },
    },
  },
});

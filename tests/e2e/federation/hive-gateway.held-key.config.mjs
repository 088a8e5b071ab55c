// Hive Gateway configuration for a gateway that browsers call directly (docs/federation.md, "The gateway holds the
// key"): clients sign in to the product and send its session JWT; the gateway verifies it, then calls recograph with
// the tenant's gateway key, which only the gateway holds, and the user the verified token names as X-User-Id.
// Nothing a client sends reaches recograph as a key or a user. Environment: RECOGRAPH_GATEWAY_KEY, SESSION_SECRET
// (the HS256 secret the product signs sessions with; use createRemoteJwksSigningKeyProvider for an identity provider).
import { createInlineSigningKeyProvider, defineConfig, extractFromHeader } from "@graphql-hive/gateway";
import { GraphQLError } from "graphql";

const { RECOGRAPH_GATEWAY_KEY, SESSION_SECRET } = process.env;
if (!RECOGRAPH_GATEWAY_KEY || !SESSION_SECRET) throw new Error("set RECOGRAPH_GATEWAY_KEY and SESSION_SECRET");

export const gatewayConfig = defineConfig({
  jwt: {
    signingKeyProviders: [createInlineSigningKeyProvider(SESSION_SECRET)],
    tokenLookupLocations: [extractFromHeader({ name: "authorization", prefix: "Bearer" })],
    tokenVerification: { algorithms: ["HS256"] },
    reject: { missingToken: true, invalidToken: true },
  },
  propagateHeaders: {
    fromClientToSubgraphs({ context, subgraphName }) {
      if (subgraphName !== "recograph") return {};
      // Without X-User-Id a gateway key reads for any user: a session that names no user must not get that far.
      const userId = context.jwt?.payload?.sub;
      if (typeof userId !== "string" || userId === "") {
        throw new GraphQLError("the session names no user", { extensions: { code: "UNAUTHENTICATED" } });
      }
      return { authorization: `Bearer ${RECOGRAPH_GATEWAY_KEY}`, "x-user-id": userId };
    },
  },
});

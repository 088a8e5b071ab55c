// Test fixture: a tiny "users" subgraph owning `User { id name }`, standing in for a product's own subgraph.
// Usage: PORT=4001 node users-subgraph.mjs   (prints "ready <url>" once listening on 127.0.0.1)
import { ApolloServer } from "@apollo/server";
import { ApolloServerPluginInlineTraceDisabled } from "@apollo/server/plugin/disabled";
import { startStandaloneServer } from "@apollo/server/standalone";
import { buildSubgraphSchema } from "@apollo/subgraph";
import { parse } from "graphql";

const typeDefs = parse(`
  extend schema @link(url: "https://specs.apollo.dev/federation/v2.7", import: ["@key"])

  type User @key(fields: "id") {
    id: ID!
    name: String!
  }

  type Query {
    user(id: ID!): User
  }
`);

const users = new Map([
  ["u1", { id: "u1", name: "Ada Lovelace" }],
  ["u2", { id: "u2", name: "Alan Turing" }],
]);

const resolvers = {
  Query: { user: (_, { id }) => users.get(id) ?? null },
  User: { __resolveReference: ({ id }) => users.get(id) ?? null },
};

const server = new ApolloServer({
  schema: buildSubgraphSchema({ typeDefs, resolvers }),
  plugins: [ApolloServerPluginInlineTraceDisabled()],
});
const { url } = await startStandaloneServer(server, {
  listen: { host: "127.0.0.1", port: Number(process.env.PORT ?? 0) },
});
console.log(`ready ${url}`);

// A graphql-ws (graphql-transport-ws) client for the subscription e2e test: subscribes once and prints each event
// as one JSON line on stdout. Environment: URL, QUERY, VARIABLES (JSON), KEY (sent in connection_init; omit to
// send none), COUNT (stop after this many `next` results).
import { createClient } from "graphql-ws";
import WebSocket from "ws";

const { URL, QUERY, VARIABLES = "{}", KEY, COUNT = "1" } = process.env;
const print = (event) => process.stdout.write(`${JSON.stringify(event)}\n`);

function describe(error) {
  if (Array.isArray(error)) return { errors: error };  // an `error` message: the operation's GraphQL errors
  if (error && typeof error.code === "number") return { code: error.code, reason: error.reason };  // a close
  return { message: String(error?.message ?? error) };
}

const client = createClient({
  url: URL,
  webSocketImpl: WebSocket,
  retryAttempts: 0,
  connectionParams: KEY ? { Authorization: `Bearer ${KEY}` } : undefined,
  on: { connected: () => print({ event: "connected" }) },
});

await new Promise((resolve) => {
  let received = 0;
  const unsubscribe = client.subscribe(
    { query: QUERY, variables: JSON.parse(VARIABLES) },
    {
      next: (result) => {
        print({ event: "next", result });
        if (++received >= Number(COUNT)) {
          unsubscribe();
          resolve();
        }
      },
      error: (error) => {
        print({ event: "error", ...describe(error) });
        resolve();
      },
      complete: () => {
        print({ event: "complete" });
        resolve();
      },
    },
  );
});
await client.dispose();
print({ event: "done" });

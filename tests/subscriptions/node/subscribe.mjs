// node subscribe.mjs URL KEY QUERY VARIABLES_JSON COUNT
// Subscribes with the npm graphql-ws client and prints each result as one JSON line, then exits.
import { createClient } from "graphql-ws";
import WebSocket from "ws";

const [url, key, query, variables, count] = process.argv.slice(2);
const client = createClient({
  url,
  webSocketImpl: WebSocket,
  connectionParams: { Authorization: `Bearer ${key}` },
  retryAttempts: 0,
});
let seen = 0;
const timer = setTimeout(() => { console.error("timeout"); process.exit(2); }, 30000);
client.subscribe(
  { query, variables: JSON.parse(variables) },
  {
    next: (result) => {
      process.stdout.write(JSON.stringify(result) + "\n");
      seen += 1;
      if (seen >= Number(count)) { clearTimeout(timer); client.dispose(); process.exit(0); }
    },
    error: (err) => { console.error(JSON.stringify(err)); process.exit(1); },
    complete: () => { clearTimeout(timer); process.exit(seen >= Number(count) ? 0 : 3); },
  },
);

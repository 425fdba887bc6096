// Compile-only check of the hand-written types (npm run typecheck).
import { PgwsClient, PgwsError, type Message, type Gap } from "../src/index.js";

const client = new PgwsClient({ url: "ws://localhost/", token: async () => "t" }).connect();
const sub = client.subscribe("chat", { since: "x" });
const off = sub.on("message", (m: Message) => m.json<{ a: number }>().a + m.data.length);
sub.on("gap", (g: Gap) => g.reason);
off();
client.on("state", (s) => s === "open");
client.publish("chat", "hi").then((ack) => ack.position, (e: PgwsError) => e.code);
client.close();

// Compile-only check of the hand-written types (npm run typecheck).
import { PgwsClient, PgwsError, RowMap, toChange, type Change, type Message, type Gap } from "../src/index.js";

const client = new PgwsClient({ url: "ws://localhost/", token: async () => "t" }).connect();
const sub = client.subscribe("chat", { since: "x" });
const off = sub.on("message", (m: Message) => m.json<{ a: number }>().a + m.data.length);
sub.on("gap", (g: Gap) => g.reason);
off();
client.on("state", (s) => s === "open");
client.publish("chat", "hi").then((ack) => ack.position, (e: PgwsError) => e.code);
interface Note { text: string; at?: number }
const note: Note = { text: "hi" };
client.publish("chat", note);
client.publish("chat", [1, "two", null]);
client.publish("chat", 42);
sub.on("message", (m) => m.payload<Note>().text.length);
client.on("error", (e) => (e.fatal ? e.code === "refused" || e.code === "forbidden" : e.status));
client.on("close", (c) => c.code + c.reason.length);
new PgwsClient({ url: "ws://x/", token: "t", maxMessageSize: 1024, fetch: null, checkTimeout: 1000 });
new PgwsClient({ url: "ws://x/", token: "t", fetch: (url, init) => fetch(url, init) });
// @ts-expect-error: undefined is not JSON
client.publish("chat", undefined);


const room = client.subscribe("room", { presence: true });
room.on("presence", (p) => p.count + p.anonymous + (p.members["alice"] ?? 0));
room.on("join", (j) => (j.member ?? "anonymous") + j.connections + j.count);
room.on("leave", (l) => l.reason === "node_lost");
const state = room.presence();
if (state !== null) Object.entries(state.members).map(([name, n]) => name.length + n);
if (state !== null) Object.keys(state.states).length;
room.on("presence_state", (s) => s.member + JSON.stringify(s.state));
room.setState({ typing: true }).then((a) => a.channel, (e: PgwsError) => e.code === "anonymous");
room.setState(null);
// @ts-expect-error: undefined is not JSON
room.setState(undefined);

interface Todo { id: number; title: string; done: boolean }
const todos = client.subscribe<Todo>("table:public.todos", { filter: "done=eq.false&select=id,title" });
const rows = new RowMap<Todo>(["id"]);
todos.on("change", (c: Change<Todo>) => {
  rows.apply(c);
  if (c.op === "UPDATE" && c.move === "out") c.old?.id;
  return (c.new?.title.length ?? 0) + c.unchangedToast.length + c.commitTime.length + c.position.length;
});
// @ts-expect-error: not an operation
todos.on("change", (c) => c.op === "MERGE");
[...rows.values()].map((t) => t.title.toUpperCase());
const loose = new RowMap();
client.subscribe("table:public.notes").on("change", (c) => loose.apply(c).size);
toChange({ channel: "table:public.notes", position: "p", data: "{}" })?.op;
client.on("error", (e) => e.code === "bad_change" && e.position);
// @ts-expect-error: a filter is a string
client.subscribe("table:public.todos", { filter: { done: false } });
client.close();

const live = new PgwsClient({ url: "ws://x/", token: "t" }).rows<Todo>("public.todos", { filter: "done=eq.false", select: ["id", "title"], key: ["id"] });
live.on("insert", (t) => t.title.length);
live.on("update", (t, prev) => t.id === prev.id);
live.on("delete", (t) => t.id);
live.on("reset", (rows) => [...rows.values()].map((t) => t.title));
live.on("snapshot_failed", (f) => f.code === "too_large");
live.ready().then((rows) => rows.size + live.toArray().length + live.snapshots);
if (live.state === "live") live.rows.get("[1]")?.done;
live.close();
client.rows("todos", { select: "id,title" });
const snap = client.subscribe<Todo>("table:public.todos", { snapshot: true });
snap.on("snapshot", (p) => p.rows.map((t) => t.id));
snap.on("snapshot_end", (e) => e.position + e.rows);
snap.on("subscribed", (s) => s.snapshot === true);
// @ts-expect-error: select is a list or a string
client.rows("todos", { select: 1 });

// Row subscriptions against a real pgws (--embedded, PGWS_SOURCE=wal: the embedded cluster runs
// with wal_level=logical) and a real table in pgws's publication, edited through psql: typed
// `change` events for INSERT, UPDATE (a key change, an unchanged TOASTed value), DELETE and
// TRUNCATE; a RowMap kept from them equal to the table as SQL reads it; a message on the table's
// channel that is no change (skipped by the server); filtered subscriptions (rows and columns,
// rows moving in and out, a resume through a cut connection replaying only what the filter lets
// through, the refusals bad_filter, unknown_table, bad_request); and RowMap's rules on their own.
//
//   PGWS_BIN=/path/to/pgws npm test

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";

import { PgwsClient, RowMap, toChange } from "../src/index.js";
import { WAIT_MS, next, proxy, psql, publicationReady, startServer, token, withTimeout } from "./harness.mjs";

const hour = () => Math.floor(Date.now() / 1000) + 3600;
const LISTEN_CHANNEL = "postgres-websockets-listener";

function client(url, tok) {
  return new PgwsClient({ url, token: tok, WebSocket, minDelay: 100, maxDelay: 1000 }).connect();
}

const ready = (sub) => withTimeout(sub.ready(), WAIT_MS, `the subscription to ${sub.channel}`);

/** Waits until `cond()` holds, within WAIT_MS. */
async function waitFor(cond, what) {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > WAIT_MS) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The rows of `table` as to_jsonb gives them, ordered by id (`where`: SQL of the test's own). */
async function sqlRows(conninfo, table, where = "true") {
  const out = await psql(conninfo, `SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY id), '[]') FROM ${table} t WHERE ${where};`);
  return JSON.parse(out);
}

const byId = (rows) => [...rows.values()].sort((a, b) => a.id - b.id);

describe("row subscriptions (WAL source)", () => {
  let server;
  before(async () => {
    server = await startServer(0, "rows-test", { PGWS_SOURCE: "wal" });
    assert.ok(server.conninfo, "the embedded PostgreSQL's conninfo line");
    await publicationReady(server.conninfo);
    await psql(server.conninfo, `
      CREATE TABLE todos (id int PRIMARY KEY, title text NOT NULL, done bool NOT NULL DEFAULT false,
                          tags text[], meta jsonb, body text);
      ALTER TABLE todos ALTER COLUMN body SET STORAGE EXTERNAL;
      ALTER PUBLICATION pgws ADD TABLE todos;`);
  });
  after(async () => {
    await server?.stop();
  });

  it("gives typed changes for INSERT, UPDATE, DELETE and TRUNCATE, and a RowMap equal to the table", async () => {
    const channel = "table:public.todos";
    const c = client(server.url, token({ mode: "r", sub: "reader", channels: [channel], exp: hour() }));
    try {
      const sub = c.subscribe(channel);
      const changes = [];
      const rows = new RowMap(["id"]);
      sub.on("change", (ch) => {
        changes.push(ch);
        rows.apply(ch);
      });
      const messages = [];
      sub.on("message", (m) => messages.push(m));
      await ready(sub);
      const until = (n, what) => waitFor(() => changes.length >= n, `${what} (have ${changes.length}/${n} changes)`);

      await psql(server.conninfo, `
        INSERT INTO todos VALUES (1, 'write docs', false, '{a,"b c"}', '{"p": [1, null]}', NULL);
        INSERT INTO todos (id, title, body) VALUES (2, 'big', (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 400) i));`);
      await until(2, "two inserts");
      assert.deepEqual(changes.map((x) => [x.op, x.schema, x.table, x.channel, x.old, x.move]), [
        ["INSERT", "public", "todos", channel, null, null],
        ["INSERT", "public", "todos", channel, null, null],
      ]);
      assert.deepEqual(changes.map((x) => x.new), await sqlRows(server.conninfo, "todos"), "values as to_jsonb gives them");
      assert.deepEqual(changes[0].new.tags, ["a", "b c"]);
      assert.deepEqual(changes[0].new.meta, { p: [1, null] });
      for (const [i, x] of changes.entries()) {
        assert.match(x.commitTime, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
        assert.equal(x.position, messages[i].position, "the change's position is its message's");
        assert.deepEqual(x.unchangedToast, []);
      }

      await psql(server.conninfo, `
        UPDATE todos SET done = true WHERE id = 1;
        UPDATE todos SET title = 'still big' WHERE id = 2;
        UPDATE todos SET id = 10 WHERE id = 1;`);
      await until(5, "three updates");
      const [done, toast, rekey] = changes.slice(2);
      assert.deepEqual([done.op, done.new.done, done.old], ["UPDATE", true, null]);
      assert.deepEqual([toast.op, toast.unchangedToast, Object.hasOwn(toast.new, "body")], ["UPDATE", ["body"], false],
        "the unchanged TOASTed value is named, not sent");
      assert.deepEqual([rekey.op, rekey.old, rekey.new.id], ["UPDATE", { id: 1 }, 10], "a key change carries the old key");
      assert.deepEqual(byId(rows), await sqlRows(server.conninfo, "todos"),
        "the RowMap is the table (the TOASTed value kept from the insert, the row moved to its new key)");
      assert.equal(sub.position, rekey.position);

      await psql(server.conninfo, "DELETE FROM todos WHERE id = 2;");
      await until(6, "a delete");
      assert.deepEqual([changes[5].op, changes[5].new, changes[5].old], ["DELETE", null, { id: 2 }]);
      assert.deepEqual(byId(rows), await sqlRows(server.conninfo, "todos"));
      assert.equal(rows.size, 1);

      await psql(server.conninfo, "TRUNCATE todos;");
      await until(7, "a truncate");
      assert.deepEqual([changes[6].op, changes[6].new, changes[6].old], ["TRUNCATE", null, null]);
      assert.equal(rows.size, 0);
    } finally {
      c.close();
    }
  });

  it("goes on past a message on the table's channel that is no change (the server skips it), with no error", async () => {
    const channel = "table:public.todos";
    const c = client(server.url, token({ mode: "r", channels: [channel], exp: hour() }));
    try {
      const sub = c.subscribe(channel);
      const changes = [];
      const errors = [];
      sub.on("change", (ch) => changes.push(ch));
      c.on("error", (e) => errors.push(e));
      await ready(sub);
      // Anyone allowed to write the listen channel can put a message on the table's channel.
      await psql(server.conninfo, `SELECT pg_logical_emit_message(true, '${LISTEN_CHANNEL}', json_build_object('channel', :'channel', 'payload', 'not a change')::text);`, { channel });
      await psql(server.conninfo, "INSERT INTO todos (id, title) VALUES (3, 'after');");
      await waitFor(() => changes.length === 1, "the next change");
      assert.deepEqual([changes[0].op, changes[0].new.id], ["INSERT", 3]);
      assert.deepEqual(errors, [], "nothing to report: the client got changes only");
      assert.equal(sub.state, "subscribed");
    } finally {
      c.close();
    }
  });
});

describe("filtered row subscriptions (WAL source)", () => {
  let server;
  before(async () => {
    server = await startServer(0, "rows-filter-test", { PGWS_SOURCE: "wal" });
    await publicationReady(server.conninfo);
    await psql(server.conninfo, `
      CREATE TABLE tasks (id int PRIMARY KEY, title text NOT NULL, done bool NOT NULL DEFAULT false, owner text);
      -- Whole old rows: the server tells a row leaving the filter only when it sees the old values.
      ALTER TABLE tasks REPLICA IDENTITY FULL;
      ALTER PUBLICATION pgws ADD TABLE tasks;
      CREATE TABLE unpublished (id int PRIMARY KEY);`);
  });
  after(async () => {
    await server?.stop();
  });

  const channel = "table:public.tasks";
  const open = "done=eq.false&select=id,title";
  const openRows = () => sqlRows(server.conninfo, "(SELECT id, title FROM tasks WHERE NOT done)");

  it("delivers the rows a filter lets through, projected, with rows moving in and out; a resume replays only those", async () => {
    await psql(server.conninfo, "TRUNCATE tasks;");
    const p = await proxy(server.port);
    const c = client(p.url, token({ mode: "r", channels: [channel], exp: hour() }));
    try {
      const sub = c.subscribe(channel, { filter: open });
      assert.equal(sub.filter, open);
      const changes = [];
      const rows = new RowMap(["id"]);
      sub.on("change", (ch) => {
        changes.push(ch);
        rows.apply(ch);
      });
      await ready(sub);
      await psql(server.conninfo, `
        INSERT INTO tasks VALUES (1, 'one', false, 'ann'), (2, 'two', true, 'bob'), (3, 'three', false, 'cy');
        UPDATE tasks SET done = true WHERE id = 1;
        UPDATE tasks SET done = false, title = 'two again' WHERE id = 2;
        UPDATE tasks SET owner = 'dee' WHERE id = 3;
        UPDATE tasks SET done = true WHERE id = 1;`);
      await waitFor(() => changes.length >= 5, `five changes (have ${changes.length})`);
      assert.deepEqual(changes.map((x) => [x.op, x.new?.id, x.move]), [
        ["INSERT", 1, null],
        ["INSERT", 3, null],
        ["UPDATE", 1, "out"],
        ["UPDATE", 2, "in"],
        ["UPDATE", 3, null],
      ], "the done row's insert and the update of a row outside the filter are not sent");
      for (const x of changes) assert.deepEqual(Object.keys(x.new).sort(), ["id", "title"], "select= projects new (the key always there)");
      assert.deepEqual(byId(rows), await openRows(), "the RowMap is the filtered table");

      // Cut the connection, change the table meanwhile: the resumption, with the filter again,
      // replays exactly the changes it lets through.
      const reconnected = next(sub, "subscribed", "the resubscription");
      p.up = false;
      p.cut();
      await waitFor(() => c.state !== "open", "the client to notice the cut");
      await psql(server.conninfo, `
        INSERT INTO tasks VALUES (4, 'four', false, 'eve'), (5, 'five', true, 'fay');
        UPDATE tasks SET done = true WHERE id = 3;
        DELETE FROM tasks WHERE id = 2;`);
      p.up = true;
      await reconnected;
      await waitFor(() => changes.length >= 8, `three more changes (have ${changes.length})`);
      assert.deepEqual(changes.slice(5).map((x) => [x.op, x.new?.id ?? x.old?.id, x.move]), [
        ["INSERT", 4, null],
        ["UPDATE", 3, "out"],
        ["DELETE", 2, null],
      ]);
      assert.deepEqual(byId(rows), await openRows(), "still the filtered table after the resume");
      assert.ok(c.connections >= 2, "a new connection resumed it");
    } finally {
      c.close();
      await p.close();
    }
  });

  it("rejects a bad filter and an unpublished table with the server's code and message", async () => {
    const c = client(server.url, token({ mode: "r", channels: [channel, "table:public.unpublished", "chat"], exp: hour() }));
    try {
      const bad = c.subscribe(channel, { filter: "titel=eq.x" });
      const errored = next(bad, "error", "the error event");
      errored.catch(() => {}); // awaited below, once the refusal is in
      await assert.rejects(withTimeout(bad.ready(), WAIT_MS, "the refusal"), (e) => e.code === "bad_filter" && /titel/.test(e.message));
      assert.equal((await errored).code, "bad_filter");
      assert.equal(bad.state, "closed");
      const unknown = c.subscribe("table:public.unpublished");
      await assert.rejects(withTimeout(unknown.ready(), WAIT_MS, "the refusal"), (e) => e.code === "unknown_table");
      const notTable = c.subscribe("chat", { filter: "id=eq.1" });
      await assert.rejects(withTimeout(notTable.ready(), WAIT_MS, "the refusal"), (e) => e.code === "bad_request");
      assert.throws(() => c.subscribe(channel, { filter: { id: 1 } }), TypeError);
      // The channel can be followed once the filter is right.
      await ready(c.subscribe(channel, { filter: "title=eq.a%20b" }));
    } finally {
      c.close();
    }
  });
});

describe("RowMap", () => {
  const change = (op, fields = {}) => ({ op, new: null, old: null, move: null, unchangedToast: [], ...fields });

  it("upserts, moves out, deletes by old's key and clears", () => {
    const rows = new RowMap(["id"]);
    rows.apply(change("INSERT", { new: { id: 1, t: "a", big: "x" } }));
    rows.apply(change("INSERT", { new: { id: 2, t: "b" } }));
    rows.apply(change("UPDATE", { new: { id: 1, t: "a2" }, unchangedToast: ["big"] }));
    assert.deepEqual([...rows.values()], [{ id: 1, t: "a2", big: "x" }, { id: 2, t: "b" }], "updated in place, TOASTed value kept");
    rows.apply(change("UPDATE", { new: { id: 3, t: "a3" }, old: { id: 1 } }));
    assert.deepEqual([...rows.keys()], ["[2]", "[3]"], "a key change replaces the old key");
    rows.apply(change("UPDATE", { new: { id: 2, t: "b2" }, move: "out" }));
    assert.deepEqual([...rows.keys()], ["[3]"], "move out removes the row");
    rows.apply(change("UPDATE", { new: { id: 4, t: "d" }, move: "in" }));
    rows.apply(change("DELETE", { old: { id: 3 } }));
    assert.deepEqual([...rows.values()], [{ id: 4, t: "d" }]);
    rows.apply(change("TRUNCATE"));
    assert.equal(rows.size, 0);
  });

  it("takes the key columns from the first old row when not given", () => {
    const rows = new RowMap();
    rows.apply(change("INSERT", { new: { a: 1, b: 1, v: "x" } }));
    rows.apply(change("INSERT", { new: { a: 1, b: 2, v: "y" } }));
    assert.equal(rows.keyColumns, null);
    rows.apply(change("DELETE", { old: { a: 1, b: 1 } }));
    assert.deepEqual(rows.keyColumns, ["a", "b"]);
    assert.deepEqual([...rows.entries()], [["[1,2]", { a: 1, b: 2, v: "y" }]], "re-keyed, then the delete applied");
    rows.apply(change("UPDATE", { new: { a: 1, b: 2, v: "z" } }));
    assert.deepEqual([...rows.values()], [{ a: 1, b: 2, v: "z" }]);
    assert.equal(rows.keyOf({ __proto__: null }), "[null,null]");
  });

  it("parses a message into a change, or null", () => {
    const m = (data) => ({ channel: "table:public.t", position: "p1", data });
    assert.deepEqual(toChange(m('{"schema":"public","table":"t","op":"UPDATE","commit_time":"2026-12-08T01:00:00Z","new":{"id":1},"old":null,"unchanged_toast":["b"],"move":"in"}')), {
      channel: "table:public.t", op: "UPDATE", schema: "public", table: "t", new: { id: 1 }, old: null, move: "in",
      unchangedToast: ["b"], commitTime: "2026-12-08T01:00:00Z", position: "p1",
    });
    for (const data of ["not json", "[1]", "null", '{"op":1}', '"text"']) assert.equal(toChange(m(data)), null, data);
  });
});

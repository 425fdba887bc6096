// Row subscriptions against a real pgws (--embedded, PGWS_SOURCE=wal: the embedded cluster runs
// with wal_level=logical) and a real table in pgws's publication, edited through psql: typed
// `change` events for INSERT, UPDATE (a key change, an unchanged TOASTed value), DELETE and
// TRUNCATE; a RowMap kept from them equal to the table as SQL reads it; a message on the table's
// channel that is no change reported as an `error`, not thrown; and RowMap's rules on their own.
//
//   PGWS_BIN=/path/to/pgws npm test

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";

import { PgwsClient, RowMap, toChange } from "../src/index.js";
import { WAIT_MS, next, psql, publicationReady, startServer, token, withTimeout } from "./harness.mjs";

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

  it("reports a message on a table's channel that is no change as an error, and goes on", async () => {
    const channel = "table:public.todos";
    const c = client(server.url, token({ mode: "r", channels: [channel], exp: hour() }));
    try {
      const sub = c.subscribe(channel);
      const changes = [];
      sub.on("change", (ch) => changes.push(ch));
      await ready(sub);
      const bad = next(c, "error", "a bad_change error", (e) => e.code === "bad_change");
      // Anyone allowed to write the listen channel can put a message on the table's channel.
      await psql(server.conninfo, `SELECT pg_logical_emit_message(true, '${LISTEN_CHANNEL}', json_build_object('channel', :'channel', 'payload', 'not a change')::text);`, { channel });
      const err = await bad;
      assert.equal(err.channel, channel);
      assert.match(err.message, /not a table change/);
      assert.equal(typeof err.position, "string");
      await psql(server.conninfo, "INSERT INTO todos (id, title) VALUES (3, 'after');");
      await waitFor(() => changes.length === 1, "the next change");
      assert.deepEqual([changes[0].op, changes[0].new.id], ["INSERT", 3]);
      assert.equal(sub.state, "subscribed");
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

// Live collections (`client.rows`) against a real pgws with the WAL source and a real
// PostgreSQL, with writers running in SQL (≥ 100 committed writes a second) during and after
// each snapshot: the collection ends equal to the table as filtered, row by row, (a) over
// several fresh snapshots, (b) across a restart of pgws onto a new replication slot (the
// client's position is another stream's: a gap, healed by a fresh snapshot), and (c) after a
// snapshot that failed (its reading connection killed while it waited for a lock, or over the
// server's row cap), taken again,
// and (d) under per-row authorization (RLS), a policy that raises during live delivery: the
// withheld changes are a gap, the fresh snapshots fail while the policy raises, and once it is
// fixed the collection is the rows the subscriber's role may see.
//
//   PGWS_BIN=/path/to/pgws npm test

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import WebSocket from "ws";

import { PgwsClient } from "../src/index.js";
import { WAIT_MS, next, psql, publicationReady, startServer, token, withTimeout } from "./harness.mjs";

const hour = () => Math.floor(Date.now() / 1000) + 3600;
const CHANNEL = "table:public.todos";
const FILTER = "done=eq.false";
const SELECT = ["id", "title"];
/** What the collection must equal: the filtered, projected table. */
const EXPECTED = "SELECT id, title FROM todos WHERE NOT done";
/** Rounds of (a): 5 by default (COLLECTION_ROUNDS=20 for the issue's count). */
const ROUNDS = Number(process.env.COLLECTION_ROUNDS) || 5;

function client(url) {
  const tok = token({ mode: "r", channels: [CHANNEL], exp: hour() });
  return new PgwsClient({ url, token: tok, WebSocket, minDelay: 100, maxDelay: 1000 }).connect();
}

/** Waits until `cond()` holds, within `ms`. */
async function waitFor(cond, what, ms = WAIT_MS) {
  const start = Date.now();
  while (!(await cond())) {
    if (Date.now() - start > ms) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function sqlRows(conninfo) {
  return JSON.parse(await psql(conninfo, `SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY id), '[]') FROM (${EXPECTED}) t;`));
}

/**
 * A row's JSON with its members in name order: snapshot rows come with their members in name
 * order, changes in to_jsonb's (shortest name first); the values are what is compared.
 */
const canon = (row) => JSON.stringify(Object.fromEntries(Object.entries(row ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))));

const writes = async (conninfo) => Number(await psql(conninfo, "SELECT writes FROM ctl;"));

/**
 * Writes from SQL until stopped: random inserts, deletes and updates (`done` flips, so rows move
 * in and out of the filter) on ids 1..3000, each committed on its own, a few hundred a second.
 * The count is in `ctl.writes`. A bound of 120 s keeps a forgotten writer from running on.
 */
function writer(conninfo) {
  const sql = `
    UPDATE ctl SET stop = false, writes = 0;
    DO $$
    DECLARE k int; n int := 0; t0 timestamptz := clock_timestamp();
    BEGIN
      LOOP
        k := 1 + floor(random() * 3000)::int;
        CASE floor(random() * 4)::int
          WHEN 0 THEN INSERT INTO todos VALUES (k, 'new', random() < 0.5) ON CONFLICT (id) DO NOTHING;
          WHEN 1 THEN DELETE FROM todos WHERE id = k;
          ELSE UPDATE todos SET done = NOT done, title = md5(random()::text) WHERE id = k;
        END CASE;
        n := n + 1;
        IF n % 20 = 0 THEN UPDATE ctl SET writes = n; END IF;
        COMMIT;
        EXIT WHEN (SELECT stop FROM ctl) OR clock_timestamp() - t0 > interval '120 s';
        PERFORM pg_sleep(0.001);
      END LOOP;
      UPDATE ctl SET writes = n;
      COMMIT;
    END $$;`;
  const child = spawn(process.env.PSQL || "psql", [conninfo, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"], { stdio: ["pipe", "ignore", "pipe"] });
  let err = "";
  child.stderr.on("data", (d) => (err += d));
  const exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
  child.stdin.end(sql);
  return {
    started: Date.now(),
    async stop() {
      await psql(conninfo, "UPDATE ctl SET stop = true;");
      const code = await withTimeout(exited, WAIT_MS, "the writer to stop");
      assert.equal(code, 0, `the writer failed: ${err}`);
      return { writes: await writes(conninfo), seconds: (Date.now() - this.started) / 1000 };
    },
    kill: () => child.kill(),
  };
}

/** Resets the table to 2,000 rows (a third done) and a sentinel row 0. */
async function seed(conninfo) {
  await psql(conninfo, `
    TRUNCATE todos;
    INSERT INTO todos SELECT i, 'seed', i % 3 = 0 FROM generate_series(1, 2000) i;
    INSERT INTO todos VALUES (0, 'sentinel', false);`);
}

/**
 * Stops the writer, marks the end of the stream with an update of the sentinel row, waits for
 * it in the collection, and checks the collection against the table row by row.
 */
async function settle(conninfo, w, coll, label) {
  const { writes: n, seconds } = await w.stop();
  const mark = `end-${label}-${Date.now()}`;
  await psql(conninfo, "UPDATE todos SET title = :'mark' WHERE id = 0;", { mark });
  await waitFor(() => coll.rows.get("[0]")?.title === mark, `${label}: the sentinel in the collection`);
  const want = await sqlRows(conninfo);
  const have = coll.toArray().sort((a, b) => a.id - b.id);
  assert.equal(have.length, want.length, `${label}: as many rows as the table`);
  const differ = want.filter((r, i) => canon(r) !== canon(have[i])).slice(0, 3);
  assert.deepEqual(differ, [], `${label}: rows differ from the table`);
  return { writes: n, rate: n / seconds };
}

describe("live collections (client.rows) under concurrent writers", () => {
  let db; // the embedded PostgreSQL's pgws
  let rlsLeftovers = null; // (d)'s collection, followed on by (e)
  let rlsServer = null;
  before(async () => {
    db = await startServer(0, "collection-db", { PGWS_SOURCE: "wal" });
    await publicationReady(db.conninfo);
    await psql(db.conninfo, `
      CREATE TABLE todos (id int PRIMARY KEY, title text NOT NULL, done bool NOT NULL DEFAULT false);
      -- Whole old rows: a row leaving the filter (done flipped) is seen leaving.
      ALTER TABLE todos REPLICA IDENTITY FULL;
      ALTER PUBLICATION pgws ADD TABLE todos;
      CREATE TABLE ctl (stop bool NOT NULL, writes int NOT NULL);
      INSERT INTO ctl VALUES (true, 0);`);
  });
  after(async () => {
    rlsServer?.c.close();
    await rlsServer?.server.stop();
    await db?.stop();
  });

  it(`(a) a snapshot taken while writers run meets the stream: the collection equals the table, ${ROUNDS} times`, async () => {
    const rates = [];
    for (let round = 0; round < ROUNDS; round++) {
      await seed(db.conninfo);
      const w = writer(db.conninfo);
      const c = client(db.url);
      try {
        await waitFor(async () => (await writes(db.conninfo)) >= 20, "the writer's first writes");
        const coll = c.rows("public.todos", { filter: FILTER, select: SELECT });
        let changes = 0;
        let resets = 0;
        for (const e of ["insert", "update", "delete"]) coll.on(e, () => changes++);
        coll.on("reset", () => resets++);
        const rows = await withTimeout(coll.ready(), WAIT_MS, "the first snapshot");
        assert.equal(rows, coll.rows);
        assert.deepEqual(coll.rows.keyColumns, ["id"]);
        assert.ok(coll.rows.size > 1000, `a snapshot of the open rows (${coll.rows.size})`);
        // Writers go on for at least 100 changes the collection applies after the snapshot.
        await waitFor(() => changes >= 100, `100 live changes (have ${changes})`);
        const r = await settle(db.conninfo, w, coll, `round ${round}`);
        assert.ok(r.rate >= 100, `≥ 100 writes a second (${r.rate.toFixed(0)})`);
        rates.push(Math.round(r.rate));
        assert.equal(resets, 1, "one snapshot, no re-snapshot");
        assert.equal(coll.snapshots, 1);
        coll.close();
        assert.equal(coll.state, "closed");
      } finally {
        w.kill();
        c.close();
      }
    }
    console.log(`writes a second per round: ${rates.join(", ")}`);
  });

  it("(b) heals a gap: pgws restarted onto a new slot while writers run, the collection is replaced and equals the table", async () => {
    await seed(db.conninfo);
    const env = (n) => ({ PGWS_SOURCE: "wal", PGWS_DB_URI: db.conninfo, PGWS_WAL_SLOT: `coll_slot_${n}`, PGWS_NODE_ID: `coll-node-${n}` });
    let server = await startServer(0, "collection-b1", env(1));
    const port = server.port;
    const w = writer(db.conninfo);
    const c = client(server.url);
    try {
      const coll = c.rows("todos", { filter: FILTER, select: "id,title" });
      const gaps = [];
      c.subscribe(CHANNEL).on("gap", (g) => gaps.push(g.reason));
      let changes = 0;
      for (const e of ["insert", "update", "delete"]) coll.on(e, () => changes++);
      await withTimeout(coll.ready(), WAIT_MS, "the first snapshot");
      await waitFor(() => changes >= 100, `100 live changes (have ${changes})`);
      const sub = c.subscribe(CHANNEL);
      assert.equal(sub.resumable, true, "a position to resume from");

      await server.stop();
      const down = await writes(db.conninfo);
      await waitFor(async () => (await writes(db.conninfo)) >= down + 100, "100 writes while pgws is down");
      const reset = next(coll, "reset", "the collection replaced by a fresh snapshot", () => true, 30_000);
      server = await startServer(port, "collection-b2", env(2));
      await reset;
      assert.ok(gaps.length >= 1, "the resume was refused with a gap");
      assert.equal(coll.snapshots, 2);
      const after = changes;
      await waitFor(() => changes >= after + 100, "100 live changes after the fresh snapshot");
      const r = await settle(db.conninfo, w, coll, "after the restart");
      console.log(`gap reasons: ${gaps.join(", ")}; ${r.writes} writes, ${r.rate.toFixed(0)} a second`);
    } finally {
      w.kill();
      c.close();
      await server.stop();
      await psql(db.conninfo, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'coll_slot_%' AND NOT active;");
    }
  });

  it("(c) a failed snapshot (its connection killed) is taken again: the collection equals the table", async () => {
    await seed(db.conninfo);
    // Hold the table locked, so the snapshot's read waits; then kill the waiting reader.
    const holder = spawn(process.env.PSQL || "psql", [db.conninfo, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"], { stdio: ["pipe", "pipe", "pipe"] });
    const holderExit = new Promise((resolve) => holder.once("exit", resolve));
    const locked = new Promise((resolve) => holder.stdout.on("data", (d) => String(d).includes("locked") && resolve()));
    holder.stdin.write("BEGIN; LOCK TABLE todos IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n");
    const c = client(db.url);
    try {
      await withTimeout(locked, WAIT_MS, "the lock");
      const coll = c.rows("public.todos", { filter: FILTER, select: SELECT });
      const failed = next(coll, "snapshot_failed", "snapshot_failed");
      const waiting = "FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%todos%' AND pid <> pg_backend_pid()";
      await waitFor(async () => Number(await psql(db.conninfo, `SELECT count(*) ${waiting};`)) > 0, "the snapshot waiting for the lock");
      await psql(db.conninfo, `SELECT pg_terminate_backend(pid) ${waiting};`);
      const f = await failed;
      assert.equal(f.code, "database_unavailable", f.message);
      assert.equal(coll.state, "loading");
      // Changes while the lock is held wait too; the snapshot is asked again (backing off).
      holder.stdin.end("UPDATE todos SET done = true WHERE id = 1; INSERT INTO todos VALUES (5000, 'late', false); COMMIT;\n");
      await withTimeout(holderExit, WAIT_MS, "the lock holder to finish");
      await withTimeout(coll.ready(), WAIT_MS, "the snapshot taken again");
      assert.equal(coll.snapshots, 1);
      const w = writer(db.conninfo);
      try {
        await waitFor(async () => (await writes(db.conninfo)) >= 100, "100 writes after the snapshot");
        await settle(db.conninfo, w, coll, "after the failed snapshot");
      } finally {
        w.kill();
      }
    } finally {
      holder.kill();
      c.close();
    }
  });

  it("(c2) a snapshot over PGWS_SNAPSHOT_MAX_ROWS fails (too_large) and is asked again, backing off, until it fits", async () => {
    await seed(db.conninfo); // 1,334 open rows
    const server = await startServer(0, "collection-cap", {
      PGWS_SOURCE: "wal", PGWS_DB_URI: db.conninfo, PGWS_WAL_SLOT: "coll_slot_cap", PGWS_SNAPSHOT_MAX_ROWS: "1000",
    });
    const c = client(server.url);
    try {
      const coll = c.rows("public.todos", { filter: FILTER, select: SELECT });
      const failures = [];
      coll.on("snapshot_failed", (f) => failures.push([f.code, Date.now()]));
      await waitFor(() => failures.length >= 3, "three refused snapshots");
      assert.deepEqual([...new Set(failures.map(([code]) => code))], ["too_large"]);
      assert.equal(coll.state, "loading");
      assert.equal(coll.rows.size, 0, "no partial rows shown");
      await psql(db.conninfo, "DELETE FROM todos WHERE id > 1000;");
      await withTimeout(coll.ready(), WAIT_MS, "a snapshot that fits");
      const w = writer(db.conninfo);
      try {
        await waitFor(async () => (await writes(db.conninfo)) >= 100, "100 writes after the snapshot");
        await settle(db.conninfo, w, coll, "after the refused snapshots");
      } finally {
        w.kill();
      }
      console.log(`refused snapshots: ${failures.length}, apart ${failures.slice(1).map(([, t], i) => t - failures[i][1]).join(", ")} ms`);
    } finally {
      c.close();
      await server.stop();
      await psql(db.conninfo, "SELECT pg_drop_replication_slot('coll_slot_cap');").catch(() => {});
    }
  });

  it("(d) under RLS, a policy that raises while live: gap, failed snapshots, then the rows the role may see", async () => {
    await psql(db.conninfo, `
      CREATE ROLE coll_web NOLOGIN; CREATE ROLE coll_anon NOLOGIN;
      CREATE SCHEMA api; GRANT USAGE ON SCHEMA api TO PUBLIC;
      CREATE FUNCTION api.allow() RETURNS boolean LANGUAGE sql AS 'SELECT true';
      CREATE FUNCTION api.boom() RETURNS boolean LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'policy exploded'; END$$;
      CREATE TABLE docs (id int PRIMARY KEY, owner text NOT NULL, public bool NOT NULL, body text);
      ALTER TABLE docs REPLICA IDENTITY FULL;
      ALTER TABLE docs ENABLE ROW LEVEL SECURITY;
      GRANT SELECT ON docs TO coll_web, coll_anon;
      GRANT EXECUTE ON FUNCTION api.boom() TO coll_web;
      CREATE POLICY mine ON docs FOR SELECT TO coll_web
        USING (owner = current_setting('request.jwt.claims', true)::json->>'sub' OR public);
      ALTER PUBLICATION pgws ADD TABLE docs;
      INSERT INTO docs SELECT i, (ARRAY['alice', 'bob', 'carol'])[1 + i % 3], i % 5 = 0, 'seed' FROM generate_series(1, 300) i;`);
    const server = await startServer(0, "collection-rls", {
      PGWS_SOURCE: "wal", PGWS_DB_URI: db.conninfo, PGWS_WAL_SLOT: "coll_slot_rls",
      PGWS_AUTHZ_FUNCTION: "api.allow", PGWS_AUTHZ_ANON_ROLE: "coll_anon",
    });
    const channel = "table:public.docs";
    const tok = token({ mode: "r", role: "coll_web", sub: "alice", channels: [channel], exp: hour() });
    const c = new PgwsClient({ url: server.url, token: tok, WebSocket, minDelay: 100, maxDelay: 1000 }).connect();
    // What alice may see (no deletes, no row leaving her sight: pgws sends neither under RLS).
    const visible = async () => JSON.parse(await psql(db.conninfo,
      "SELECT coalesce(jsonb_agg(to_jsonb(d) ORDER BY id), '[]') FROM docs d WHERE owner = 'alice' OR public;"));
    const equal = async (what, ms = WAIT_MS) => {
      let want = [];
      let have = [];
      try {
        await waitFor(async () => {
          want = await visible();
          have = coll.toArray().sort((a, b) => a.id - b.id);
          return have.length === want.length && have.every((r, i) => canon(r) === canon(want[i]));
        }, `${what}: the collection is what alice may see`, ms);
      } catch (e) {
        const differ = want.filter((r, i) => canon(r) !== canon(have[i])).slice(0, 2);
        throw new Error(`${e.message}: ${have.length} rows, want ${want.length}; first differing: ${JSON.stringify(differ)} vs ${JSON.stringify(differ.map((r) => coll.rows.get(`[${r.id}]`)))}`);
      }
    };
    const coll = c.rows("public.docs");
    try {
      const gaps = [];
      c.subscribe(channel).on("gap", (g) => gaps.push(g.reason));
      await withTimeout(coll.ready(), WAIT_MS, "the first snapshot");
      await equal("the snapshot");
      await psql(db.conninfo, `
        INSERT INTO docs VALUES (1001, 'alice', false, 'new'), (1002, 'bob', true, 'new'), (1003, 'bob', false, 'hidden');
        UPDATE docs SET body = 'edited' WHERE id IN (1, 3, 5);`);
      await equal("live changes");
      assert.equal(coll.snapshots, 1);

      const failed = next(coll, "snapshot_failed", "a fresh snapshot failing while the policy raises");
      await psql(db.conninfo, `
        ALTER POLICY mine ON docs USING (api.boom());
        INSERT INTO docs VALUES (1004, 'alice', false, 'while broken');`);
      const f = await failed;
      assert.ok(gaps.includes("authorization_failed"), `the withheld change is a gap (${gaps})`);
      assert.match(f.message, /policy exploded/);
      await psql(db.conninfo, `
        ALTER POLICY mine ON docs USING (owner = current_setting('request.jwt.claims', true)::json->>'sub' OR public);
        INSERT INTO docs VALUES (1005, 'alice', false, 'fixed');`);
      await waitFor(() => coll.snapshots >= 2, "a fresh snapshot once the policy is fixed");
      await equal("after the fresh snapshot");
      assert.ok(coll.rows.has("[1004]"), "the row withheld while the policy raised is in the fresh snapshot");
      rlsLeftovers = { coll, equal };
      // Left open for the next test (a known gap of the server, marked todo).
      rlsServer = { c, server };
    } catch (e) {
      c.close();
      await server.stop();
      throw e;
    }
  });

  // Under RLS the server sends no DELETE and no UPDATE that takes a row out of the role's sight
  // (it cannot tell whether the role saw the old row): a live collection keeps such a row, a
  // silent difference from what the role may see, until its next snapshot. A todo until the
  // server says something (a DELETE by key, or a gap that makes the client take a snapshot).
  it("(e) under RLS, a deleted row and a row leaving the role's sight leave the collection", async () => {
    assert.ok(rlsLeftovers, "test (d) ran");
    const { coll, equal } = rlsLeftovers;
    try {
      await psql(db.conninfo, "DELETE FROM docs WHERE id = 3; UPDATE docs SET owner = 'bob' WHERE id = 6;");
      // Both changes go through the slot before the sentinel insert; a short wait suffices.
      await psql(db.conninfo, "INSERT INTO docs VALUES (2000, 'alice', false, 'sentinel');");
      await waitFor(() => coll.rows.has("[2000]"), "the sentinel");
      await equal("a delete and a row given away", 1000);
    } finally {
      rlsServer.c.close();
      await rlsServer.server.stop();
      await psql(db.conninfo, "SELECT pg_drop_replication_slot('coll_slot_rls');").catch(() => {});
    }
  });
});

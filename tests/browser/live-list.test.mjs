// The example page's live todo list (the "Live table" panel on `client.rows`) in two tabs of a
// real headless Chromium, while psql edits the table (the page has no write path for tables):
// both tabs start from the rows already there (the snapshot), follow every edit, and stay equal
// to the table through one tab going offline and online and through a restart of pgws (with
// edits made while it is down). The database is another pgws's embedded PostgreSQL, so that the
// pgws serving the page can be restarted while the database and its edits go on.
//
//   cd tests/browser && npm ci && npm test      (PGWS_BIN: the pgws binary; CHROMIUM_PATH; PSQL)

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

import { SECRET, psql, publicationReady, startServer, withTimeout } from "../../clients/js/test/harness.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "../..");
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const ARTIFACTS = path.join(HERE, "artifacts");
const WAIT_MS = 15_000; // every wait
const RESTART_WAIT_MS = 40_000; // the client's reconnection backs off (up to 30 s between tries)
const FILTER = "done=eq.false&select=id,title";
const OPEN = "SELECT id, title FROM todos WHERE NOT done";

/** The rows of a tab's live table (each cell's data-json), ordered by id. */
async function domRows(page) {
  const rows = await page.evaluate(() =>
    Array.from(document.querySelectorAll("#rows-body > tr"), (tr) => {
      const row = {};
      for (const td of tr.children) if (td.dataset.present === "true") row[td.dataset.column] = JSON.parse(td.dataset.json);
      return row;
    }));
  return rows.sort((a, b) => a.id - b.id);
}

describe("example page: a live todo list in two tabs", () => {
  let root;
  let db; // the pgws whose embedded PostgreSQL holds the table
  let server; // the pgws serving the page, restarted by the test
  let port;
  let browser;
  const tabs = []; // {context, page}
  const pageErrors = [];
  const env = (slot = "pgws_page") => ({ PGWS_ROOT_PATH: root, PGWS_SOURCE: "wal", PGWS_DB_URI: db.conninfo, PGWS_WAL_SLOT: slot });

  async function sqlRows() {
    return JSON.parse(await psql(db.conninfo, `SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY id), '[]') FROM (${OPEN}) t;`));
  }

  /** Waits until every tab's list equals the table; says what differs on time-out. */
  async function listsEqualSql(what, ms = WAIT_MS) {
    const start = Date.now();
    for (;;) {
      const sql = await sqlRows();
      const doms = await Promise.all(tabs.map((t) => domRows(t.page)));
      if (doms.every((d) => JSON.stringify(d) === JSON.stringify(sql))) return sql;
      if (Date.now() - start > ms) {
        const status = await Promise.all(tabs.map((t) => t.page.textContent("#rows-status").catch(() => "?")));
        throw new Error(`${what}: a tab's list is not the table after ${ms} ms\nsql: ${JSON.stringify(sql)}\n` +
          doms.map((d, i) => `tab ${i}: ${JSON.stringify(d)} (${status[i]})`).join("\n"));
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async function openTab() {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    context.setDefaultTimeout(WAIT_MS);
    const page = await context.newPage();
    page.on("pageerror", (err) => pageErrors.push(err.message));
    const res = await page.goto(`http://127.0.0.1:${port}/`, { timeout: WAIT_MS });
    assert.equal(res.status(), 200);
    await page.waitForSelector("html[data-ready=true]", { timeout: WAIT_MS });
    await page.fill("#secret", SECRET);
    await page.fill("#rows-channel", "table:public.todos");
    await page.fill("#rows-filter", FILTER);
    await page.click("#rows-follow");
    tabs.push({ context, page });
    return page;
  }

  before(async () => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), "pgws-live-list-"));
    for (const f of fs.readdirSync(path.join(REPO, "web"))) fs.copyFileSync(path.join(REPO, "web", f), path.join(root, f));
    fs.copyFileSync(path.join(REPO, "clients/js/src/index.js"), path.join(root, "pgws-client.js"));
    const launching = chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      timeout: 30_000,
      args: [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
        "--no-first-run", "--disable-component-update", "--disable-sync",
      ],
    });
    const [s, b] = await Promise.allSettled([startServer(0, "browser-live-list-db", { PGWS_SOURCE: "wal" }), launching]);
    if (b.status === "fulfilled") browser = b.value;
    if (s.status === "rejected") throw s.reason;
    if (b.status === "rejected") throw b.reason;
    db = s.value;
    await publicationReady(db.conninfo);
    await psql(db.conninfo, `
      CREATE TABLE todos (id int PRIMARY KEY, title text NOT NULL, done bool NOT NULL DEFAULT false);
      ALTER TABLE todos REPLICA IDENTITY FULL;
      ALTER PUBLICATION pgws ADD TABLE todos;
      INSERT INTO todos SELECT i, 'todo ' || i, i % 4 = 0 FROM generate_series(1, 60) i;`);
    server = await startServer(0, "browser-live-list", env());
    port = server.port;
  });

  after(async () => {
    for (const [i, t] of tabs.entries()) await t.page.screenshot({ path: path.join(ARTIFACTS, `live-list-tab${i}.png`), fullPage: true }).catch(() => {});
    if (browser) await withTimeout(browser.close(), 10_000, "the browser to close").catch((e) => console.log(`# ${e.message}`));
    await server?.stop();
    await db?.stop();
    if (root) fs.rmSync(root, { recursive: true, force: true });
    assert.deepEqual(pageErrors, [], "no uncaught errors in the pages");
  });

  it("two tabs show the rows already there (the snapshot), then every edit", async () => {
    const [a, b] = [await openTab(), await openTab()];
    for (const p of [a, b]) await p.waitForSelector('#rows-status[data-state="open"]', { timeout: WAIT_MS });
    const rows = await listsEqualSql("the snapshot");
    assert.equal(rows.length, 45, "the open todos that were there before the tabs opened");
    assert.match(await a.textContent("#rows-status-text"), /45 rows, 0 changes/);
    await psql(db.conninfo, `
      INSERT INTO todos VALUES (100, 'new', false), (101, 'new, done', true);
      UPDATE todos SET done = true WHERE id IN (1, 2);
      UPDATE todos SET done = false, title = 'reopened' WHERE id = 4;
      UPDATE todos SET title = 'renamed' WHERE id = 3;
      DELETE FROM todos WHERE id IN (5, 8);`);
    await listsEqualSql("the edits");
  });

  it("the list survives the browser going offline and online, with edits meanwhile", async () => {
    const { context, page } = tabs[0];
    await context.setOffline(true);
    await page.waitForSelector('#rows-status[data-state="reconnecting"]', { timeout: WAIT_MS });
    await psql(db.conninfo, `
      INSERT INTO todos SELECT i, 'offline ' || i, false FROM generate_series(200, 219) i;
      UPDATE todos SET done = NOT done WHERE id BETWEEN 10 AND 20;
      DELETE FROM todos WHERE id = 100;`);
    await context.setOffline(false);
    await listsEqualSql("after offline/online");
    await page.waitForSelector('#rows-status[data-state="open"]', { timeout: WAIT_MS });
  });

  it("the list survives a restart of pgws, with edits while it is down", async () => {
    await server.stop();
    for (const t of tabs) await t.page.waitForSelector('#rows-status[data-state="reconnecting"]', { timeout: WAIT_MS });
    await psql(db.conninfo, `
      INSERT INTO todos SELECT i, 'while down ' || i, i % 2 = 0 FROM generate_series(300, 329) i;
      UPDATE todos SET title = 'changed while down' WHERE id BETWEEN 30 AND 40;
      DELETE FROM todos WHERE id BETWEEN 41 AND 45;`);
    server = await startServer(port, "browser-live-list", env());
    await listsEqualSql("after the restart", RESTART_WAIT_MS);
    for (const t of tabs) await t.page.waitForSelector('#rows-status[data-state="open"]', { timeout: RESTART_WAIT_MS });
    await psql(db.conninfo, "UPDATE todos SET done = true WHERE id = 300; INSERT INTO todos VALUES (400, 'after', false);");
    const rows = await listsEqualSql("edits after the restart");
    assert.ok(rows.some((r) => r.id === 400));
    for (const t of tabs) assert.equal(await t.page.getAttribute("#rows-status", "data-snapshots"), "1", "resumed exactly: no new snapshot");
  });

  it("a restart onto another replication slot (the missed changes cannot be replayed) replaces the list by a fresh snapshot", async () => {
    await server.stop();
    await psql(db.conninfo, `
      INSERT INTO todos SELECT i, 'lost to the old slot ' || i, false FROM generate_series(500, 509) i;
      UPDATE todos SET done = true WHERE id BETWEEN 200 AND 205;`);
    server = await startServer(port, "browser-live-list", env("pgws_page_2"));
    await listsEqualSql("after the restart onto a new slot", RESTART_WAIT_MS);
    for (const t of tabs) {
      await t.page.waitForSelector('#rows-status[data-state="open"][data-snapshots="2"]', { timeout: RESTART_WAIT_MS });
      assert.match(await t.page.textContent("#rows-status-text"), /replaced by a fresh snapshot 1 time \(after [a-z_]+\)/);
    }
    await psql(db.conninfo, "DELETE FROM todos WHERE id = 500;");
    await listsEqualSql("an edit after the fresh snapshot");
    await psql(db.conninfo, "SELECT pg_drop_replication_slot('pgws_page');");
  });
});

// The example page's "Live table" panel in a real headless Chromium: a list that follows edits
// made from psql. pgws runs with the WAL source (`--embedded`, whose cluster has
// wal_level=logical) and serves the page from a temporary copy of web/ with the client's source
// (PGWS_ROOT_PATH), so the files tested are the repository's, whatever the binary embeds. The
// test edits the table through psql (a real PostgreSQL connection, as from another tab) and waits,
// bounded, until the page's table holds exactly what SQL reads.
//
//   cd tests/browser && npm ci && npm test      (PGWS_BIN: the pgws binary; CHROMIUM_PATH; PSQL)

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

import { PGWS_BIN, SECRET, psql, publicationReady, startServer, withTimeout } from "../../clients/js/test/harness.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "../..");
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const ARTIFACTS = path.join(HERE, "artifacts");
const WAIT_MS = 15_000; // every wait

/** The rows of the page's live table: column → value (from each cell's data-json), in page order. */
function domRows(page) {
  return page.evaluate(() =>
    Array.from(document.querySelectorAll("#rows-body > tr"), (tr) => {
      const row = {};
      for (const td of tr.children) if (td.dataset.present === "true") row[td.dataset.column] = JSON.parse(td.dataset.json);
      return row;
    }));
}

describe("example page: live table", () => {
  let root;
  let server;
  let browser;
  let context;
  let page;
  const pageErrors = [];

  /** SQL's rows (`select`: the list of columns; `where`: the test's own SQL), ordered by id. */
  async function sqlRows(select, where = "true") {
    const out = await psql(server.conninfo,
      `SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY id), '[]') FROM (SELECT ${select} FROM todos WHERE ${where}) t;`);
    return JSON.parse(out);
  }

  /** Waits until the page's table equals SQL's rows (order aside); says what differs on time-out. */
  async function tableEqualsSql(select, where, what) {
    const start = Date.now();
    let dom;
    let sql;
    for (;;) {
      [dom, sql] = await Promise.all([domRows(page), sqlRows(select, where)]);
      dom.sort((a, b) => a.id - b.id);
      try {
        assert.deepEqual(dom, sql);
        return dom;
      } catch {
        // not yet
      }
      if (Date.now() - start > WAIT_MS) {
        const status = await page.textContent("#rows-status").catch(() => "?");
        throw new Error(`${what}: the page's table is not SQL's after ${WAIT_MS} ms\npage: ${JSON.stringify(dom)}\nsql:  ${JSON.stringify(sql)}\nstatus: ${status}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async function follow(channel, filter) {
    await page.fill("#rows-channel", channel);
    await page.fill("#rows-filter", filter);
    await page.click("#rows-follow");
  }

  before(async () => {
    console.log(`# pgws binary: ${PGWS_BIN}`);
    root = fs.mkdtempSync(path.join(os.tmpdir(), "pgws-live-table-"));
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
    const [s, b] = await Promise.allSettled([
      startServer(0, "browser-live-table", { PGWS_ROOT_PATH: root, PGWS_SOURCE: "wal" }),
      launching,
    ]);
    if (b.status === "fulfilled") browser = b.value;
    if (s.status === "rejected") throw s.reason;
    if (b.status === "rejected") throw b.reason;
    server = s.value;
    await publicationReady(server.conninfo);
    await psql(server.conninfo, `
      CREATE TABLE todos (id int PRIMARY KEY, title text NOT NULL, done bool NOT NULL DEFAULT false, tags text[], meta jsonb);
      -- Whole old rows: the server tells a row leaving a filter only when it sees the old values.
      ALTER TABLE todos REPLICA IDENTITY FULL;
      ALTER PUBLICATION pgws ADD TABLE todos;`);
    context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    context.setDefaultTimeout(WAIT_MS);
    page = await context.newPage();
    page.on("pageerror", (err) => pageErrors.push(err.message));
    const res = await page.goto(`http://127.0.0.1:${server.port}/`, { timeout: WAIT_MS });
    assert.equal(res.status(), 200);
    await page.waitForSelector("html[data-ready=true]", { timeout: WAIT_MS });
    await page.fill("#secret", SECRET); // the page signs the panel's token with the server's secret
  });

  after(async () => {
    if (page) await page.screenshot({ path: path.join(ARTIFACTS, "live-table.png"), fullPage: true }).catch(() => {});
    if (browser) await withTimeout(browser.close(), 10_000, "the browser to close").catch((e) => console.log(`# ${e.message}`));
    await server?.stop();
    if (root) fs.rmSync(root, { recursive: true, force: true });
    assert.deepEqual(pageErrors, [], "no uncaught errors in the page");
  });

  it("follows a table edited from psql: inserts, updates (a key change), a delete, a truncate", async () => {
    await follow("table:public.todos", "");
    await page.waitForSelector('#rows-status[data-state="open"]', { timeout: WAIT_MS });
    assert.match(await page.textContent("#rows-status-text"), /Following table:public\.todos: 0 rows/);

    await psql(server.conninfo, `
      INSERT INTO todos VALUES (1, 'write docs', false, '{a,"b c"}', '{"n": 1}'), (2, 'review', false, NULL, NULL);
      INSERT INTO todos (id, title, done) VALUES (3, 'ship <b>it</b>', true);`);
    await tableEqualsSql("*", "true", "three inserts");
    assert.deepEqual(await page.$$eval("#rows-head > th", (ths) => ths.map((t) => t.textContent)), ["id", "done", "meta", "tags", "title"],
      "the key first, then the columns in the order the changes give them (jsonb's)");
    assert.equal(await page.$$eval("#rows-body b", (b) => b.length), 0, "values are text, never markup");

    const firstRow = await page.$('#rows-body > tr[data-key="[1]"]');
    await psql(server.conninfo, `
      UPDATE todos SET title = 'write the docs', tags = tags || '{d}' WHERE id = 1;
      UPDATE todos SET id = 20 WHERE id = 2;
      DELETE FROM todos WHERE id = 3;`);
    await tableEqualsSql("*", "true", "two updates and a delete");
    assert.equal(await firstRow.evaluate((tr) => tr.isConnected && tr.dataset.op), "UPDATE", "the updated row is the same element, updated in place");
    assert.equal(await page.getAttribute("#rows-last", "data-op"), "DELETE");
    assert.match(await page.textContent("#rows-status-text"), /2 rows, 6 changes/);

    await psql(server.conninfo, "TRUNCATE todos;");
    await tableEqualsSql("*", "true", "a truncate");
    assert.equal(await page.getAttribute("#rows-table", "data-rows"), "0");
  });

  it("follows a filtered table: rows moving out of the filter leave the list, rows moving in join it", async () => {
    await psql(server.conninfo, "TRUNCATE todos;");
    await follow("table:public.todos", "done=eq.false&select=id,title");
    await page.waitForSelector('#rows-status[data-state="open"]', { timeout: WAIT_MS });
    assert.match(await page.textContent("#rows-status-text"), /where done=eq\.false&select=id,title: 0 rows/);
    const open = ["id, title", "NOT done"];

    await psql(server.conninfo, `
      INSERT INTO todos (id, title, done) VALUES (1, 'one', false), (2, 'two', true), (3, 'three', false), (4, 'four', false);`);
    await tableEqualsSql(...open, "inserts, one of them done");
    await psql(server.conninfo, `
      UPDATE todos SET done = true WHERE id = 1;
      UPDATE todos SET done = false, title = 'two, reopened' WHERE id = 2;
      UPDATE todos SET title = 'three, renamed' WHERE id = 3;
      DELETE FROM todos WHERE id = 4;`);
    const rows = await tableEqualsSql(...open, "a row moved out, one moved in, an update, a delete");
    assert.deepEqual(rows.map((r) => r.id), [2, 3]);
    assert.deepEqual(await page.$$eval("#rows-head > th", (ths) => ths.map((t) => t.textContent)), ["id", "title"], "select= columns only");
    await page.locator("#rows-card").screenshot({ path: path.join(ARTIFACTS, "live-table-filtered.png"), timeout: WAIT_MS });
  });

  it("catches up exactly after the browser was offline while the table changed", async () => {
    // Still following the filtered table of the test before.
    await page.waitForSelector('#rows-status[data-state="open"]', { timeout: WAIT_MS });
    await context.setOffline(true);
    await page.waitForSelector('#rows-status[data-state="reconnecting"]', { timeout: WAIT_MS });
    const before = Number(await page.getAttribute("#rows-status", "data-connections"));
    await psql(server.conninfo, `
      INSERT INTO todos (id, title, done) VALUES (5, 'five', false), (6, 'six', true);
      UPDATE todos SET done = true WHERE id = 3;
      UPDATE todos SET done = false WHERE id = 6;`);
    await context.setOffline(false);
    const rows = await tableEqualsSql("id, title", "NOT done", "the changes made while offline, replayed through the filter");
    assert.deepEqual(rows.map((r) => r.id), [2, 5, 6]);
    await page.waitForSelector('#rows-status[data-state="open"]', { timeout: WAIT_MS });
    assert.doesNotMatch(await page.textContent("#rows-status-text"), /missing/, "no gap: the resume was exact");
    assert.ok(Number(await page.getAttribute("#rows-status", "data-connections")) > before, "a new connection resumed it");
  });

  it("shows the server's refusal of a bad filter and of a table outside the publication", async () => {
    await follow("table:public.todos", "titel=eq.x");
    const bad = await page.waitForSelector('#rows-status[data-state="refused"][data-code="bad_filter"]', { timeout: WAIT_MS });
    assert.match(await bad.textContent(), /titel/, "the server's message names the column");
    await psql(server.conninfo, "CREATE TABLE IF NOT EXISTS unpublished (id int PRIMARY KEY);");
    await follow("table:public.unpublished", "");
    await page.waitForSelector('#rows-status[data-state="refused"][data-code="unknown_table"]', { timeout: WAIT_MS });
  });

  it("says what a table channel is when given another", async () => {
    await follow("chat", "");
    await page.waitForSelector('#rows-status[data-state="refused"][data-code="local"]', { timeout: WAIT_MS });
    assert.match(await page.textContent("#rows-status-text"), /table:<schema>\.<table>/);
  });
});

// Real-browser test of the example page (web/) served by `pgws --embedded`.
//
// Starts the pgws binary with a throwaway PostgreSQL, drives Debian's Chromium
// through playwright-core (no downloaded browsers) and checks what a user sees.
//
//   cd tests/browser && npm ci && npm test
//
// Environment:
//   PGWS_BIN                path of the binary (default: debug/pgws in the target directory
//                           `cargo metadata` names, so CARGO_TARGET_DIR and cargo configs work)
//   CHROMIUM_PATH           browser (default /usr/bin/chromium)
//   PSQL                    psql client (default psql from PATH)
//   PGWS_UPDATE_SCREENSHOT  =1 to also copy the screenshots (always written to artifacts/) to
//                           docs/screenshot.png (1280 px wide), docs/screenshot-narrow.png (390 px)
//                           and docs/screenshot-resume.png

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "../..");
const ARTIFACTS = path.join(HERE, "artifacts");
const PGWS_BIN = process.env.PGWS_BIN ? path.resolve(process.env.PGWS_BIN) : defaultPgwsBin();
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const PSQL = process.env.PSQL || "psql";
const DEV_SECRET = "auwhfdnskjhewfi34uwehdlaehsfkuaeiskjnfduierhfsiweskjcnzeiluwhskdewishdnpwe";
const LISTEN_CHANNEL = "postgres-websockets-listener";

const SERVER_START_MS = 60_000; // includes initdb of the embedded cluster
const SERVER_STOP_MS = 15_000;
const UI_MS = 10_000; // default for every page wait
const RUN = crypto.randomBytes(3).toString("hex"); // makes texts unique per run
const WIDE = { width: 1280, height: 900 }; // docs/screenshot.png
const NARROW = { width: 390, height: 844 }; // a phone; docs/screenshot-narrow.png

/** Texts that are labels: none of their words may break across lines at any width. */
const LABELS = ".status-name, .field > span, .choice, legend, button, h1, h2, .event, .on, .problem-title, .time, summary, .chip-state, .badge, .member-count";

fs.mkdirSync(ARTIFACTS, { recursive: true });

// ------------------------------------------------------------------ helpers

/** Where `cargo build` puts the debug binary: ask cargo (CARGO_TARGET_DIR, .cargo/config.toml). */
function defaultPgwsBin() {
  try {
    const out = execFileSync(process.env.CARGO || "cargo", ["metadata", "--format-version", "1", "--no-deps"], {
      cwd: REPO,
      encoding: "utf8",
      timeout: 30_000,
      stdio: ["ignore", "pipe", "pipe"],
    });
    return path.join(JSON.parse(out).target_directory, "debug", "pgws");
  } catch (err) {
    console.log(`# cargo metadata failed (${err.message.split("\n")[0]}); assuming target/debug/pgws`);
    return path.join(REPO, "target", "debug", "pgws");
  }
}

/** Sign an HS256 JWT like a backend would. */
function signJwt(claims, secret = DEV_SECRET) {
  const enc = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const input = enc({ alg: "HS256", typ: "JWT" }) + "." + enc(claims);
  return input + "." + crypto.createHmac("sha256", secret).update(input).digest("base64url");
}

/** Reject after ms unless the promise settles first. */
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Start `pgws --embedded --port 0` and wait for the lines that give its port,
 * the embedded PostgreSQL and the development token.
 */
function startServer() {
  if (!fs.existsSync(PGWS_BIN)) {
    throw new Error(`pgws binary not found at ${PGWS_BIN}; build it (cargo build) or set PGWS_BIN`);
  }
  const env = { ...process.env };
  // The page's defaults (secret, meta channel) must match the server's.
  for (const k of ["PGWS_JWT_SECRET", "PGWS_JWT_SECRET_BASE64", "PGWS_META_CHANNEL", "PGWS_LISTEN_CHANNEL", "PGWS_PORT"]) {
    delete env[k];
  }
  const log = fs.createWriteStream(path.join(ARTIFACTS, "server.log"));
  // Event streams end after a second, so the EventSource test sees the browser resume by itself.
  env.PGWS_SSE_MAX_AGE = "1";
  const child = spawn(PGWS_BIN, ["--embedded", "--port", "0"], { env, stdio: ["ignore", "pipe", "pipe"] });
  child.stderr.pipe(log, { end: false });
  const server = { child, log, port: null, conninfo: null, devToken: null, exited: null };
  server.exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  // Last resort if the runner dies before the after() hook: never leave pgws (and its cluster) behind.
  process.once("exit", () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
  });

  const ready = new Promise((resolve, reject) => {
    child.once("error", reject);
    server.exited.then(({ code, signal }) => reject(new Error(`pgws exited early (code ${code}, signal ${signal}); see artifacts/server.log`)));
    readline.createInterface({ input: child.stdout }).on("line", (line) => {
      log.write(line + "\n");
      let m;
      if ((m = /Listening on port (\d+)/.exec(line))) server.port = Number(m[1]);
      if ((m = /Embedded PostgreSQL: (.*\S)/.exec(line))) server.conninfo = m[1];
      if ((m = /Development token: (\S+)/.exec(line))) server.devToken = m[1];
      if (server.port && server.conninfo && server.devToken) resolve(server);
    });
  });
  return { server, ready: withTimeout(ready, SERVER_START_MS, "pgws to print its port, PostgreSQL and token lines") };
}

async function stopServer(server) {
  if (!server || server.child.exitCode !== null || server.child.signalCode !== null) return null;
  server.child.kill("SIGTERM");
  try {
    return await withTimeout(server.exited, SERVER_STOP_MS, "pgws to exit after SIGTERM");
  } catch (err) {
    server.child.kill("SIGKILL");
    throw err;
  }
}

/** Run one SQL statement with psql; `vars` become psql variables (quoted with :'name'). */
function psql(conninfo, sql, vars = {}) {
  const args = [conninfo, "-X", "-q", "-v", "ON_ERROR_STOP=1"];
  for (const [k, v] of Object.entries(vars)) args.push("-v", `${k}=${v}`);
  args.push("-f", "-");
  const run = new Promise((resolve, reject) => {
    const child = spawn(PSQL, args, { stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (out += d));
    child.once("error", reject);
    child.once("exit", (code) => (code === 0 ? resolve(out) : reject(new Error(`psql exited with ${code}: ${out}`))));
    child.stdin.end(sql + "\n");
  });
  return withTimeout(run, 15_000, "psql");
}

/** What the page currently says, for failure messages. */
async function pageSummary(page) {
  try {
    return await page.evaluate(() => {
      const text = (sel) => Array.from(document.querySelectorAll(sel), (n) => n.textContent.replace(/\s+/g, " ").trim());
      return JSON.stringify({
        status: text("#status"),
        meta: text("#meta-status"),
        token: text("#token-status"),
        channels: text("#channels > li"),
        problems: text("#errors > li"),
        outbox: text("#outbox > li"),
        messages: text("#messages > li").slice(-5),
        presence: text("#presence > section"),
        presenceEvents: text("#presence-events > li").slice(-5),
        metaEvents: text("#meta-messages > li").slice(-5),
      }, null, 1);
    });
  } catch (err) {
    return `(page unavailable: ${err.message})`;
  }
}

/** Wait for a locator to be visible; on timeout say what the page showed. */
async function see(page, locator, what, timeout = UI_MS) {
  try {
    await locator.first().waitFor({ state: "visible", timeout });
  } catch (err) {
    throw new Error(`${what}: not shown within ${timeout} ms.\nPage: ${await pageSummary(page)}\n${err.message}`);
  }
  return locator.first();
}

/** Wait for a locator to be gone (detached or hidden). */
async function gone(page, locator, what, timeout = UI_MS) {
  try {
    await locator.first().waitFor({ state: "hidden", timeout });
  } catch (err) {
    throw new Error(`${what}: still shown after ${timeout} ms.\nPage: ${await pageSummary(page)}\n${err.message}`);
  }
}

const status = (page, state, line = "status") => page.locator(`#${line}[data-state="${state}"]`);
const statusWith = (page, state, text, line = "status") => page.locator(`#${line}[data-state="${state}"]`, { hasText: text });
const message = (page, text, channel) =>
  page.locator(`#messages > li[data-testid=message]${channel ? `[data-channel="${channel}"]` : ""}`, { hasText: text });
const metaEvent = (page, event, text) => page.locator(`#meta-messages > li[data-testid=meta-event][data-event="${event}"]`, { hasText: text });
const problem = (page, kind, text) => page.locator(`#errors > li[data-testid=error][data-kind="${kind}"]`, text ? { hasText: text } : {});
/** The outbox line of a publish (its data-state: pending, sent, refused, unknown). */
const publishLine = (page, text, state) => page.locator(`#outbox > li[data-testid=publish]${state ? `[data-state="${state}"]` : ""}`, { hasText: text });
const chip = (page, channel, state) => page.locator(`#channels > li[data-testid=channel][data-channel="${channel}"]${state ? `[data-state="${state}"]` : ""}`);
/** A member in the presence panel of a channel (with that many connections, if given). */
const member = (page, channel, name, connections) =>
  page.locator(`#presence > section[data-channel="${channel}"] li[data-testid=member][data-member="${name}"]${connections ? `[data-connections="${connections}"]` : ""}`);
const presenceLine = (page, event, name) => page.locator(`#presence-events > li[data-testid=presence-event][data-event="${event}"][data-member="${name}"]`);
/** The note that ends a catch-up (of `count` messages, if given). */
const catchUpNote = (page, count) => page.locator(`#messages > li[data-testid=catch-up]${count === undefined ? "" : `[data-count="${count}"]`}`);
const lastPosition = (page, channel = "chat") => page.textContent(`#resume-hint [data-field=position][data-channel="${channel}"]`);
/** The payloads of the chat list's messages, in list order (notes left out). */
const payloads = (page, selector = "") => page.locator(`#messages > li[data-testid=message]${selector} [data-field=payload]`).allTextContents();
const POSITION = /^[0-9a-f]{16}-\d+$/;
const FLOOD_MS = 60_000; // for the page to take a thousand messages on two shared cores
const refusal = (page, text) => page.locator(`#errors > li[data-testid=error][data-kind=handshake]`, { hasText: text });

/** Empty the Problems list (hidden when empty). */
async function clearProblems(page) {
  if (await page.isVisible("#clear-errors")) await page.click("#clear-errors");
}

/** Type a message into a tab and send it (to `channel`, if given). */
async function send(page, text, channel) {
  if (channel) await page.selectOption("#send-channel", channel);
  await page.fill("#message-text", text);
  await page.press("#message-text", "Enter");
}

/** Connect with a pasted token and wait until the server refused it (the Problems list must be empty before). */
async function connectRefused(page, reason) {
  await page.click("#connect");
  await see(page, refusal(page, reason), `the refusal '${reason}'`);
  await see(page, statusWith(page, "refused", reason), `status 'Refused: ${reason}'`);
  assert.equal(await page.textContent("#connect"), "Connect", "after a refusal the button says Connect");
  assert.equal(await page.isDisabled("#disconnect"), true, "nothing to disconnect after a refusal");
}

/** Connect a tab with a token signed in the page for `name` and wait until it follows chat. */
async function connectAs(page, name, { expiresIn = "" } = {}) {
  await page.check("#token-source-secret");
  await page.fill("#name", name);
  await page.fill("#expires-in", expiresIn);
  await page.click("#connect");
  await see(page, status(page, "open"), `${name}'s connection open`);
  await see(page, chip(page, "chat", "subscribed"), `${name} following chat`);
}

/** Words of the labels in the page that are broken across lines, e.g. "Met" + "a". */
function brokenLabelWords(page) {
  return page.evaluate((selector) => {
    const broken = [];
    for (const label of document.querySelectorAll(selector)) {
      if (label.getClientRects().length === 0) continue; // not rendered
      const walker = document.createTreeWalker(label, NodeFilter.SHOW_TEXT);
      for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        for (const m of node.data.matchAll(/\S+/g)) {
          const range = document.createRange();
          range.setStart(node, m.index);
          range.setEnd(node, m.index + m[0].length);
          const lines = new Set(Array.from(range.getClientRects(), (r) => Math.round(r.top))).size;
          if (lines > 1) broken.push(`"${m[0]}" in "${label.textContent.replace(/\s+/g, " ").trim()}" spans ${lines} lines`);
        }
      }
    }
    return broken;
  }, LABELS);
}

/** Check the layout at the page's current width: labels whole, nothing wider than the window. */
async function assertLayout(page, where) {
  assert.deepEqual(await brokenLabelWords(page), [], `${where}: labels must not break inside a word`);
  const { scrollWidth, innerWidth } = await page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
  }));
  assert.ok(scrollWidth <= innerWidth, `${where}: the page is ${scrollWidth} px wide in a ${innerWidth} px window`);
}

/** The positions of a channel's messages in a tab, in list order. */
function listPositions(page, channel) {
  return page.locator(`#messages > li[data-testid=message][data-channel="${channel}"] [data-field=position]`).allTextContents();
}

function assertIncreasing(positions, what) {
  const seq = (p) => BigInt(p.split("-")[1]);
  for (let i = 1; i < positions.length; i++) {
    assert.equal(positions[i].split("-")[0], positions[0].split("-")[0], `${what}: one server process`);
    assert.ok(seq(positions[i - 1]) < seq(positions[i]), `${what}: ${positions[i - 1]} is listed before ${positions[i]}`);
  }
}

/** Screenshot from the top of the page down to the bottom of `selector` (into artifacts/, optionally docs/). */
async function screenshotDownTo(page, selector, name, docsName) {
  // In page coordinates: the page may be scrolled (boundingBox() is relative to the viewport).
  const bottom = await page.locator(selector).evaluate((node) => node.getBoundingClientRect().bottom + window.scrollY);
  assert.ok(bottom > 0, `${selector} is laid out`);
  const width = page.viewportSize().width;
  const file = path.join(ARTIFACTS, name);
  await page.screenshot({ path: file, fullPage: true, clip: { x: 0, y: 0, width, height: Math.ceil(bottom + 20) } });
  if (docsName && process.env.PGWS_UPDATE_SCREENSHOT === "1") {
    fs.copyFileSync(file, path.join(REPO, "docs", docsName));
  }
}

// -------------------------------------------------------------------- test

// -------------------------------------------------------------------- test

describe("example page in a real browser", { timeout: 300_000 }, () => {
  let server;
  let browser;
  let context;
  let pageA;
  let pageB;
  const pageErrors = [];
  const foreignRequests = [];
  const ALICE = `alice-${RUN}`;
  const BOB = `bob-${RUN}`;

  /** A new tab in the shared context, watched for errors and requests leaving the server. */
  async function newTab(name) {
    const page = await context.newPage();
    page.on("pageerror", (err) => pageErrors.push(`tab ${name}: ${err.message}`));
    page.on("request", (req) => {
      const url = new URL(req.url());
      if (!["data:", "about:"].includes(url.protocol) && url.host !== `127.0.0.1:${server.port}`) foreignRequests.push(req.url());
    });
    return page;
  }

  before(async () => {
    console.log(`# pgws binary: ${PGWS_BIN}`);
    const started = startServer();
    server = started.server;
    const browserReady = chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      timeout: 30_000,
      args: [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
        "--no-first-run", "--disable-component-update", "--disable-sync",
      ],
    });
    // Start both at once; if one fails, still keep the other's handle for cleanup.
    const [s, b] = await Promise.allSettled([started.ready, browserReady]);
    if (b.status === "fulfilled") browser = b.value;
    if (s.status === "rejected") throw s.reason;
    if (b.status === "rejected") throw b.reason;

    context = await browser.newContext({ viewport: WIDE });
    context.setDefaultTimeout(UI_MS);
    pageA = await newTab("A");
    pageB = await newTab("B");
  });

  after(async () => {
    if (browser) {
      for (const [name, page] of [["a", pageA], ["b", pageB]]) {
        if (page) await page.screenshot({ path: path.join(ARTIFACTS, `final-tab-${name}.png`), fullPage: true }).catch(() => {});
      }
      await withTimeout(browser.close(), 10_000, "the browser to close").catch((err) => console.log(`# ${err.message}`));
    }
    try {
      await stopServer(server);
    } finally {
      if (server) server.log.end();
    }
  });

  it("serves the page and the client library, with defaults taken from its own origin", async () => {
    const url = `http://127.0.0.1:${server.port}/`;
    for (const page of [pageA, pageB]) {
      const response = await page.goto(url, { timeout: UI_MS });
      assert.equal(response.status(), 200);
      await page.waitForSelector("html[data-ready=true]", { timeout: UI_MS });
      assert.equal(await page.title(), "pgws example");
      assert.equal(await page.inputValue("#base-url"), `ws://127.0.0.1:${server.port}`);
      assert.equal(await page.inputValue("#channel"), "chat");
      assert.equal(await page.inputValue("#meta-channel"), "server-info");
      assert.equal(await page.inputValue("#mode"), "rw");
      assert.equal(await page.inputValue("#secret"), DEV_SECRET);
      assert.match(await page.inputValue("#name"), /^guest-[0-9a-f]{4}$/, "a random name for presence");
      assert.match(await page.inputValue("#token"), /^[\w-]+\.[\w-]+\.[\w-]+$/, "a development token is signed on load");
      const claims = JSON.parse(Buffer.from((await page.inputValue("#token")).split(".")[1], "base64url").toString());
      assert.deepEqual(claims, { mode: "rw", sub: await page.inputValue("#name") }, "the token names the page's user");
    }
    // The library is served by pgws itself, from the one source file.
    const lib = await fetch(url + "pgws-client.js", { signal: AbortSignal.timeout(UI_MS) });
    assert.equal(lib.status, 200);
    assert.match(lib.headers.get("content-type"), /javascript/);
    const libText = await lib.text();
    assert.match(libText, /export class PgwsClient/);
    // The binary embeds web/ and the library at build time; say so if the files differ (stale binary).
    for (const [file, source] of [["index.html", "web/index.html"], ["app.js", "web/app.js"], ["live-table.js", "web/live-table.js"], ["style.css", "web/style.css"],
      ["pgws-client.js", "clients/js/src/index.js"]]) {
      const served = file === "pgws-client.js" ? libText : await (await fetch(url + file, { signal: AbortSignal.timeout(UI_MS) })).text();
      if (served !== fs.readFileSync(path.join(REPO, source), "utf8")) {
        console.log(`# note: served ${file} differs from ${source} (binary built from older files?)`);
      }
    }
    // The strict policy stays: scripts from the page's own origin only.
    const csp = await pageA.getAttribute("meta[http-equiv=Content-Security-Policy]", "content");
    assert.match(csp, /script-src 'self';/);
  });

  it("connects two tabs: each follows chat and the meta channel through one v2 socket", async () => {
    await connectAs(pageA, ALICE);
    await see(pageA, status(pageA, "open", "meta-status"), "tab A following the meta channel");
    assert.match(await pageA.textContent("#status-text"), new RegExp(`Connected as ${ALICE} \\(mode rw\\)`));
    await connectAs(pageB, BOB);
    await see(pageB, status(pageB, "open", "meta-status"), "tab B following the meta channel");

    // A's meta subscription sees B's socket opening (a v2 socket opens with no channel).
    const open = await see(pageA, metaEvent(pageA, "ConnectionOpen", `sub=${BOB}`), "ConnectionOpen of tab B in tab A's meta panel");
    assert.match(await open.locator("[data-field=claims]").textContent(), /mode=rw/);
    assert.equal(await pageA.isEnabled("#send"), true, "send is enabled on an rw connection");
    // Issue 25 item 14: while connected the button applies changed settings with a new connection; it is
    // not the primary action (Send is), and it does not say "Reconnect" (the library does that by itself).
    assert.equal(await pageA.textContent("#connect"), "Apply changes", "the button applies the settings to a live connection");
    assert.equal(await pageA.locator("#connect.primary").count(), 0, "Connect is not the primary action while connected");
    // A wide screen keeps the settings in view.
    assert.equal(await pageA.isVisible("#connection-settings"), true, "1280 px: the settings stay unfolded");
    assert.equal(await pageA.textContent("#toggle-settings"), "Hide settings");
    assert.equal(await chip(pageA, "chat").locator("[data-field=state]").textContent(), "following");
    // The page's script is a module importing the library; nothing came from anywhere else.
    assert.deepEqual(foreignRequests, [], "no request leaves the pgws server");
  });

  it("shows who is here: each tab sees the other by name, with a join line", async () => {
    await see(pageA, member(pageA, "chat", BOB, "1"), "bob in tab A's presence panel");
    await see(pageA, member(pageA, "chat", ALICE, "1"), "alice (you) in tab A's presence panel");
    await see(pageB, member(pageB, "chat", ALICE, "1"), "alice in tab B's presence panel");
    assert.equal(await member(pageA, "chat", ALICE).locator(".badge-you").textContent(), "you");
    await see(pageA, presenceLine(pageA, "join", BOB), "bob's join line in tab A");
    assert.equal(await pageA.getAttribute("#presence > section[data-channel=chat]", "data-count"), "2", "two connections on chat");
  });

  it("delivers a message sent in one tab to both tabs, acknowledged", async () => {
    const text = `hello from tab A ${RUN}`;
    await send(pageA, text);
    const line = await see(pageA, publishLine(pageA, text, "sent"), "tab A's outbox line marked sent");
    assert.equal(await line.locator("[data-field=state]").textContent(), "sent");
    for (const [name, page] of [["A", pageA], ["B", pageB]]) {
      const item = await see(page, message(page, text), `tab A's message in tab ${name}`);
      assert.equal(await item.locator("[data-field=payload]").textContent(), text);
      assert.equal(await item.locator("[data-field=channel]").textContent(), "chat");
      assert.equal(await item.getAttribute("data-event"), "WebsocketMessage");
      assert.match(await item.locator("[data-field=claims]").textContent(), new RegExp(`mode=rw, sub=${ALICE}`));
      const raw = JSON.parse(await item.locator("[data-field=raw]").textContent());
      assert.equal(raw.payload, text);
      assert.equal(typeof raw.claims.message_delivered_at, "number");
      assert.match(await item.locator("[data-field=position]").textContent(), POSITION);
    }
    assert.equal(await pageA.inputValue("#message-text"), "", "the input is cleared after sending");

    // Markup in a payload is shown as text, never interpreted.
    const markup = `tab B: <b>bold</b> & <img src=x onerror="window.pwned=1"> ${RUN}`;
    await pageB.fill("#message-text", markup);
    await pageB.click("#send");
    for (const [name, page] of [["A", pageA], ["B", pageB]]) {
      const item = await see(page, message(page, `tab B: <b>bold</b> &`), `tab B's markup message in tab ${name}`);
      assert.equal(await item.locator("[data-field=payload]").textContent(), markup);
      assert.equal(await page.locator("#messages img, #messages b, #outbox img, #outbox b").count(), 0, "no element was created from the payload");
      assert.equal(await page.evaluate(() => window.pwned), undefined);
    }
  });

  it("shows a notification sent by the database with pg_notify", async () => {
    const payload = JSON.stringify({ channel: "chat", event: "WebsocketMessage", payload: `from the database ${RUN} 'quoted'` });
    await psql(server.conninfo, `SELECT pg_notify('${LISTEN_CHANNEL}', :'payload');`, { payload });
    for (const [name, page] of [["A", pageA], ["B", pageB]]) {
      const item = await see(page, message(page, `from the database ${RUN}`), `the pg_notify message in tab ${name}`);
      assert.equal(await item.locator("[data-field=payload]").textContent(), `from the database ${RUN} 'quoted'`);
      assert.equal(await item.locator("[data-field=claims]").textContent(), "sent by the database");
      assert.equal(await item.locator("[data-field=raw]").textContent(), JSON.stringify(JSON.parse(payload), null, 2));
    }
  });

  it("says in words why a message too large for a NOTIFY was not sent (nack too_large)", async () => {
    await pageB.fill("#message-text", `too large ${RUN} ` + "x".repeat(10_000));
    await pageB.click("#send");
    const line = await see(pageB, publishLine(pageB, `too large ${RUN}`, "refused"), "tab B's outbox line marked not sent");
    assert.equal(await line.locator("[data-field=state]").textContent(), "not sent");
    assert.match(await line.locator("[data-field=detail]").textContent(), /^Not sent: too large for a NOTIFY: PostgreSQL takes at most 8000 bytes.*\(too_large\)$/);
    assert.match(await line.locator("[data-field=text]").textContent(), /… \(10,0\d\d characters\)$/, "the outbox shows the start of a long text");
    assert.equal(await status(pageB, "open").count(), 1, "the connection stays open after a nack");
    assert.equal(await message(pageB, `too large ${RUN}`).count(), 0, "nothing was published");
  });

  it("joins and leaves channels at run time, on the same connection", async () => {
    const room = `room-${RUN}`;
    for (const page of [pageA, pageB]) {
      await page.fill("#join-channel", room);
      await page.click("#join");
      await see(page, chip(page, room, "subscribed"), `${room} followed`);
    }
    assert.equal(await pageA.inputValue("#channel"), `chat, ${room}`, "the Channels field follows what is joined");
    await see(pageA, member(pageA, room, BOB), "bob in tab A's presence of the room");
    // B sends to the room: A gets it, marked with the room's name.
    const inRoom = `in the room ${RUN}`;
    await send(pageB, inRoom, room);
    const item = await see(pageA, message(pageA, inRoom, room), "the room's message in tab A");
    assert.equal(await item.locator("[data-field=channel]").textContent(), room);

    // A leaves the room: nothing of it arrives any more; chat goes on.
    await chip(pageA, room).locator("button[data-testid=leave]").click();
    await gone(pageA, chip(pageA, room), "the room's chip in tab A");
    await see(pageA, pageA.locator(`#messages > li[data-testid=channel-note][data-event=leave][data-channel="${room}"]`), "'Left' note in tab A");
    await see(pageB, presenceLine(pageB, "leave", ALICE), "alice's leave line in tab B");
    assert.equal(await pageA.inputValue("#channel"), "chat");
    const after = `in the room after A left ${RUN}`;
    await send(pageB, after, room);
    await see(pageB, message(pageB, after, room), "the room's second message in tab B");
    const marker = `on chat after A left the room ${RUN}`;
    await send(pageB, marker, "chat");
    await see(pageA, message(pageA, marker), "tab B's chat message in tab A");
    assert.equal(await message(pageA, after).count(), 0, "a channel left delivers nothing");
    for (const page of [pageA, pageB]) {
      assert.equal(await page.getAttribute("#status", "data-connections"), "1", "no reconnection for joining and leaving");
    }
    await chip(pageB, room).locator("button[data-testid=leave]").click();
    await gone(pageB, chip(pageB, room), "the room's chip in tab B");
  });

  it("shows ConnectionClose and a leave line when the other tab disconnects", async () => {
    await pageB.click("#disconnect");
    await see(pageB, status(pageB, "idle"), "tab B disconnected");
    await see(pageA, metaEvent(pageA, "ConnectionClose", `sub=${BOB}`), "ConnectionClose in tab A's meta panel");
    await see(pageA, presenceLine(pageA, "leave", BOB), "bob's leave line in tab A");
    await gone(pageA, member(pageA, "chat", BOB), "bob in tab A's presence panel");
  });

  it("a tab that closes leaves the presence of the others", async () => {
    const carol = `carol-${RUN}`;
    const pageC = await newTab("C");
    await pageC.goto(`http://127.0.0.1:${server.port}/`);
    await pageC.waitForSelector("html[data-ready=true]", { timeout: UI_MS });
    await connectAs(pageC, carol);
    await see(pageA, member(pageA, "chat", carol, "1"), "carol in tab A's presence panel");
    await see(pageA, presenceLine(pageA, "join", carol), "carol's join line in tab A");
    await see(pageC, member(pageC, "chat", ALICE), "alice in carol's presence panel");
    await withTimeout(pageC.close(), UI_MS, "tab C to close");
    const line = await see(pageA, presenceLine(pageA, "leave", carol), "carol's leave line in tab A");
    assert.equal(await line.locator(".event").textContent(), "left");
    await gone(pageA, member(pageA, "chat", carol), "carol in tab A's presence panel");
    assert.equal(await pageA.getAttribute("#presence > section[data-channel=chat]", "data-count"), "1", "alice alone again");
  });

  it("explains a refused token in words", async () => {
    await clearProblems(pageB);
    await pageB.check("#token-source-paste");
    await pageB.fill("#token", signJwt({ user: "mallory" }));
    await connectRefused(pageB, "Missing mode");
    const refused = refusal(pageB, "Missing mode").first();
    assert.equal(await refused.locator("[data-field=detail]").textContent(), "Missing mode");
    assert.match(await refused.locator("[data-field=hint]").textContent(), /needs a "mode" claim/);
    assert.match(await pageB.textContent("#status-text"), /Missing mode/);
    await see(pageB, status(pageB, "refused", "meta-status"), "tab B meta status refused");

    await clearProblems(pageB);
    await pageB.fill("#token", "this.is-not.a-valid-token");
    await connectRefused(pageB, "Error");
    const bad = refusal(pageB, "Error").first();
    assert.match(await bad.locator("[data-field=detail]").textContent(), /^Error/);
    assert.equal(await pageB.isDisabled("#send"), true);
  });

  it("on a phone: refused tokens, a channel not granted, then a good token connects and a message arrives", async () => {
    await pageB.setViewportSize(NARROW);
    try {
      await clearProblems(pageB);
      await pageB.check("#token-source-paste");

      // A token signed with another secret: the longest reason, next to the status labels.
      await pageB.fill("#token", signJwt({ mode: "rw" }, "not the server's secret, but long enough for HS256"));
      await connectRefused(pageB, "JWSInvalidSignature");
      await pageB.screenshot({ path: path.join(ARTIFACTS, "narrow-refused-signature.png"), fullPage: true });
      await assertLayout(pageB, "390 px, refused (bad signature)");

      // An expired token: the server's reason.
      await clearProblems(pageB);
      await pageB.fill("#token", signJwt({ mode: "rw", exp: Math.floor(Date.now() / 1000) - 60 }));
      await connectRefused(pageB, "Token expired");

      // A token for another channel: the connection opens, but chat and the meta channel are not granted.
      await clearProblems(pageB);
      const elsewhere = `elsewhere-${RUN}`;
      await pageB.fill("#token", signJwt({ mode: "rw", channels: [elsewhere] }));
      await pageB.click("#connect");
      await see(pageB, status(pageB, "open"), "tab B connected with a token for another channel");
      for (const channel of ["chat", "server-info"]) {
        const p = await see(pageB, pageB.locator(`#errors > li[data-kind=subscribe][data-channel="${channel}"]`), `${channel} refused in tab B`);
        assert.equal(await p.locator("[data-field=title]").textContent(), `Cannot follow ${channel}: the token does not name ${channel}`);
        assert.match(await p.locator("[data-field=detail]").textContent(), /\(not_granted\)$/);
      }
      await see(pageB, chip(pageB, "chat", "refused"), "the chat chip says refused");
      assert.equal(await chip(pageB, "chat").locator("[data-field=state]").textContent(), "refused: not_granted");
      await see(pageB, statusWith(pageB, "refused", "does not name", "meta-status"), "meta status refused");
      // Joining the channel the token names works on the same connection.
      await pageB.fill("#join-channel", elsewhere);
      await pageB.click("#join");
      await see(pageB, chip(pageB, elsewhere, "subscribed"), `${elsewhere} followed in tab B`);
      assert.equal(await pageB.isEnabled("#send"), true, "sending to the granted channel");
      await pageB.screenshot({ path: path.join(ARTIFACTS, "narrow-refused.png"), fullPage: true });
      await assertLayout(pageB, "390 px, channel not granted");

      // Issue 25 item 14: connected on a phone, the settings fold away so that the messages come first.
      await see(pageB, pageB.locator("#toggle-settings", { hasText: "Show settings" }), "the settings folded once connected");
      assert.equal(await pageB.isVisible("#connection-settings"), false, "390 px: the settings fold once connected");
      assert.equal(await pageB.isVisible("#connect"), false, "folded: nothing to apply");
      assert.equal(await pageB.isVisible("#disconnect"), true, "folded: Disconnect stays");
      assert.equal(await pageB.isVisible("#status-text"), true, "folded: the status stays");
      assert.equal(await pageB.getAttribute("#toggle-settings", "aria-expanded"), "false");
      // The settings show again to change the token (a user would do the same).
      await clearProblems(pageB);
      await pageB.click("#toggle-settings");
      assert.equal(await pageB.isVisible("#connection-settings"), true, "the toggle unfolds the settings");
      assert.equal(await pageB.textContent("#toggle-settings"), "Hide settings");
      assert.equal(await pageB.getAttribute("#toggle-settings", "aria-expanded"), "true");
      assert.equal(await pageB.textContent("#connect"), "Apply changes");

      // The server's development token (no sub claim: anonymous in presence): it connects, a message goes round.
      await pageB.fill("#channel", "chat");
      await pageB.fill("#token", server.devToken);
      await pageB.click("#connect");
      await see(pageB, status(pageB, "open"), "tab B connected with the development token");
      await see(pageB, chip(pageB, "chat", "subscribed"), "tab B following chat");
      await see(pageB, status(pageB, "open", "meta-status"), "tab B following the meta channel");
      assert.match(await pageB.textContent("#status-text"), /anonymous/);
      await see(pageA, pageA.locator("#presence > section[data-channel=chat] [data-testid=anonymous][data-count='1']"), "one anonymous connection in tab A's presence");
      assert.equal(await pageB.textContent("#connect"), "Apply changes");
      assert.equal(await pageB.isEnabled("#disconnect"), true);
      // The new connection folded the settings again: the messages start within the first screen.
      await see(pageB, pageB.locator("#toggle-settings", { hasText: "Show settings" }), "folded again after applying");
      const chatTop = await pageB.locator("#chat-card").evaluate((n) => n.getBoundingClientRect().top + window.scrollY);
      assert.ok(chatTop < NARROW.height / 2, `390 px, connected: the messages start at ${chatTop} px, within half a screen`);
      const text = `back after the refusals ${RUN}`;
      await send(pageB, text);
      const own = await see(pageB, message(pageB, text), "tab B's message after reconnecting");
      assert.equal(await own.getAttribute("data-replayed"), null, "sent after connecting: not part of a catch-up");
      await see(pageB, publishLine(pageB, text, "sent"), "tab B's message acknowledged");
      await see(pageA, message(pageA, text), "tab B's message in tab A");
      await pageB.evaluate(() => document.activeElement.blur());
      await screenshotDownTo(pageB, "#chat-card", "narrow.png", "screenshot-narrow.png");
      await assertLayout(pageB, "390 px, connected");
      await pageB.setViewportSize(WIDE);
      await see(pageB, pageB.locator("#toggle-settings", { hasText: "Hide settings" }), "a wider window unfolds the settings");
      assert.equal(await pageB.isVisible("#connection-settings"), true);
    } finally {
      await pageB.setViewportSize(WIDE);
    }
  });

  it("re-signs a token that expires and refreshes it in band: the connection stays open", async () => {
    await clearProblems(pageB);
    await connectAs(pageB, BOB, { expiresIn: "3" });
    const first = await pageB.inputValue("#token");
    await see(pageB, pageB.locator("#token-status[data-state=open]"), "the token line");
    assert.match(await pageB.textContent("#token-status-text"), /Expires at \d\d:\d\d:\d\d: the page re-signs it/);
    // Three seconds each: after two refreshes the first token has expired.
    await see(pageB, pageB.locator("#token-status[data-refreshes='2']"), "two in-band refreshes in tab B", 15_000);
    assert.match(await pageB.textContent("#token-status-text"), /^Re-signed and refreshed in band 2 times \(last at \d\d:\d\d:\d\d, no reconnect\); expires at/);
    assert.notEqual(await pageB.inputValue("#token"), first, "the page shows the new token");
    assert.equal(await pageB.getAttribute("#status", "data-state"), "open");
    assert.equal(await pageB.getAttribute("#status", "data-connections"), "1", "no reconnection");
    assert.equal(await problem(pageB, "expired").count(), 0, "no 3001");
    const text = `after the refreshes ${RUN}`;
    await send(pageA, text);
    await see(pageB, message(pageB, text), "a message on the refreshed connection");
  });

  it("tells the user when a pasted token expires (close 3001)", async () => {
    await clearProblems(pageB);
    await pageB.check("#token-source-paste");
    await pageB.fill("#token", signJwt({ mode: "rw", sub: BOB, exp: Math.floor(Date.now() / 1000) + 3 }));
    await pageB.click("#connect");
    await see(pageB, status(pageB, "open"), "tab B connected with a short-lived pasted token");
    assert.match(await pageB.textContent("#token-status-text"), /a pasted token cannot be renewed here/);
    const expired = await see(pageB, problem(pageB, "expired"), "the expiry notice in tab B");
    assert.match(await expired.textContent(), /3001/);
    assert.match(await expired.textContent(), /JWT expired/);
    await see(pageB, statusWith(pageB, "closed", "Token expired"), "tab B status 'Token expired'");
    await see(pageB, statusWith(pageB, "closed", "Expired at", "token-status"), "tab B token line 'Expired at'");
    assert.equal(await pageB.textContent("#connect"), "Connect", "nothing is live after the expiry");
  });

  it("looks right (screenshots)", async () => {
    await pageB.screenshot({ path: path.join(ARTIFACTS, "problems.png"), fullPage: true });
    await assertLayout(pageB, "1280 px, problems");
    // Bob back (a token without exp), so that the picture shows two people.
    await connectAs(pageB, BOB);
    await see(pageA, member(pageA, "chat", BOB, "1"), "bob in tab A's presence panel");
    await pageA.evaluate(() => {
      // Open one raw-JSON view so the screenshot shows it.
      const d = document.querySelector("#messages details");
      if (d) d.open = true;
      document.activeElement.blur();
    });
    await pageA.screenshot({ path: path.join(ARTIFACTS, "example-page.png"), fullPage: true });
    // The docs picture: everything down to the message lists (the snippet is in the README as text).
    await screenshotDownTo(pageA, ".columns", "overview.png", "screenshot.png");
    await assertLayout(pageA, "1280 px");
  });

  it("lists each channel's messages in the server's order (positions increase)", async () => {
    const positions = await listPositions(pageA, "chat");
    assert.ok(positions.length >= 5, `tab A shows chat messages (${positions.length})`);
    assertIncreasing(positions, "tab A's chat messages");
  });

  it("resumes after a disconnect: what was sent meanwhile is caught up, in order, once, marked replayed", async () => {
    // Tab B sends while tab A is away.
    await clearProblems(pageB);
    // The user looks at tab A (a background tab's frames are throttled, which slows every click).
    await pageA.bringToFront();

    assert.equal(await pageA.isChecked("#resume"), true, "resuming is the default");
    const from = await lastPosition(pageA);
    assert.match(from, POSITION, "tab A shows the last position of chat");
    const before = await payloads(pageA);
    await pageA.click("#disconnect");
    await see(pageA, status(pageA, "idle"), "tab A disconnected");
    await see(pageA, chip(pageA, "chat", "closed"), "tab A's chat chip says not connected");

    // Sent meanwhile: two messages from tab B, one NOTIFY from SQL. Tab B seeing each one back
    // means the server has routed it (so it is in the window when tab A resumes).
    const missed = [`while A was away 1 ${RUN}`, `while A was away 2 ${RUN}`];
    for (const text of missed) {
      await send(pageB, text);
      await see(pageB, message(pageB, text), `'${text}' back in tab B`);
    }
    const fromSql = `from SQL while A was away ${RUN}`;
    await psql(server.conninfo, `SELECT pg_notify('${LISTEN_CHANNEL}', json_build_object('channel', 'chat', 'payload', :'p')::text);`, { p: fromSql });
    await see(pageB, message(pageB, fromSql), "the SQL message in tab B");
    missed.push(fromSql);

    await pageA.click("#connect");
    // Tab A sends at once (queued until the connection is open): its own message comes back
    // after the replay, and is not part of it.
    const own = `sent by A right after resuming ${RUN}`;
    await send(pageA, own);
    await see(pageA, status(pageA, "open"), "tab A connected again");
    const note = await see(pageA, catchUpNote(pageA, 3), "tab A's catch-up note");
    assert.equal(await catchUpNote(pageA).count(), 1, "one catch-up");
    assert.equal(await note.textContent(), `Caught up on 3 messages sent while disconnected (after ${from})`);
    await see(pageA, message(pageA, own), "tab A's own message");
    assert.deepEqual(await payloads(pageA), [...before, ...missed, own], "exactly the missed messages, in order, none twice, then live ones");
    assert.deepEqual(await payloads(pageA, "[data-replayed=true]"), missed, "those, and only those, are marked replayed");
    const items = pageA.locator("#messages > li[data-testid=message][data-replayed=true]");
    assert.deepEqual(await items.locator("[data-field=replayed]").allTextContents(), ["replayed", "replayed", "replayed"]);
    // Their positions (in the raw JSON view) follow the one tab A resumed after.
    const positions = await items.locator("[data-field=position]").allTextContents();
    assertIncreasing([from, ...positions], "the replayed messages");
    assert.equal(await problem(pageA, "gap").count(), 0, "an exact resume has no gap");
    const rawSql = JSON.parse(await items.last().locator("[data-field=raw]").textContent());
    assert.deepEqual(rawSql, { channel: "chat", payload: fromSql }, "the raw view shows the notification as sent");
    assert.match(await pageA.textContent("#resume-hint"), /Last resume: chat caught up on 3 messages/);

    // What comes after the catch-up is live again.
    const live = `live after the catch-up ${RUN}`;
    await send(pageB, live);
    const liveItem = await see(pageA, message(pageA, live), "tab B's live message in tab A");
    assert.equal(await liveItem.getAttribute("data-replayed"), null, "a live message is not marked replayed");
    assert.equal(await liveItem.locator("[data-field=replayed]").count(), 0);
    assert.equal(await lastPosition(pageA), await liveItem.locator("[data-field=position]").textContent(),
      "tab A remembers the position of the last message it received");

    await pageA.evaluate(() => {
      const replayed = document.querySelectorAll("#messages > li[data-replayed=true] details");
      if (replayed.length) replayed[replayed.length - 1].open = true; // shows the position
      const list = document.getElementById("messages");
      list.scrollTop = list.scrollHeight; // the caught-up end of the list
      document.activeElement.blur();
    });
    await screenshotDownTo(pageA, ".columns", "resume.png", "screenshot-resume.png");
    await assertLayout(pageA, "1280 px, caught up");
  });

  it("resumes by itself when the network drops: offline, a queued message, then online and caught up", async () => {
    const cdp = await withTimeout(context.newCDPSession(pageA), UI_MS, "a DevTools session for tab A");
    await withTimeout(cdp.send("Network.enable"), UI_MS, "Network.enable");
    // The browser's own offline mode (as DevTools sets it): navigator.onLine and the online/offline events.
    const network = (offline) => withTimeout(
      cdp.send("Network.emulateNetworkConditions", { offline, latency: 0, downloadThroughput: -1, uploadThroughput: -1 }),
      UI_MS, `tab A ${offline ? "offline" : "online"}`);
    const notes = await catchUpNote(pageA).count();
    const connections = Number(await pageA.getAttribute("#status", "data-connections"));
    await network(true);
    try {
      await see(pageA, status(pageA, "offline"), "tab A offline");
      // A message typed while offline waits for the connection.
      const queued = `typed by A while offline ${RUN}`;
      await send(pageA, queued);
      const line = await see(pageA, publishLine(pageA, queued, "pending"), "tab A's message waiting");
      assert.equal(await line.locator("[data-field=state]").textContent(), "waiting for the connection");
      const missed = [`while A was offline 1 ${RUN}`, `while A was offline 2 ${RUN}`];
      for (const text of missed) {
        await send(pageB, text);
        await see(pageB, message(pageB, text), `'${text}' back in tab B`);
      }
      await network(false);
      await see(pageA, status(pageA, "open"), "tab A online and connected again", 15_000);
      assert.equal(await pageA.getAttribute("#status", "data-connections"), String(connections + 1), "one reconnection, by the library");
      const note = await see(pageA, catchUpNote(pageA).nth(notes), "tab A's catch-up note after going online");
      assert.equal(await note.getAttribute("data-count"), "2");
      assert.deepEqual((await payloads(pageA, "[data-replayed=true]")).slice(-2), missed, "the two messages, replayed");
      await see(pageA, publishLine(pageA, queued, "sent"), "tab A's queued message sent once online");
      await see(pageB, message(pageB, queued), "tab A's queued message in tab B");
      assert.equal(await problem(pageA, "gap").count(), 0, "an exact resume has no gap");
      assert.equal(await problem(pageA, "lost").count(), 0, "going offline is not a lost connection");
    } finally {
      await network(false).catch(() => {});
      await withTimeout(cdp.detach(), UI_MS, "detaching DevTools").catch(() => {});
    }
  });

  it("says in words what could not be replayed when the window was exceeded", async () => {
    const from = await lastPosition(pageA);
    await pageA.click("#disconnect");
    await see(pageA, status(pageA, "idle"), "tab A disconnected");

    // More than the window (PGWS_REPLAY_MESSAGES, 1000 by default) while tab A is away.
    const total = 1100;
    const window = 1000;
    await psql(server.conninfo,
      `SELECT pg_notify('${LISTEN_CHANNEL}', json_build_object('channel', 'chat', 'payload', 'flood ' || i || ' ' || :'run')::text)
         FROM generate_series(1, ${total}) AS i;`, { run: RUN });
    await see(pageB, message(pageB, `flood ${total} ${RUN}`), "the last flood message in tab B", FLOOD_MS);

    await pageA.click("#connect");
    await see(pageA, status(pageA, "open"), "tab A connected again");
    const gap = await see(pageA, problem(pageA, "gap"), "the gap notice in tab A's Problems");
    assert.equal(await gap.getAttribute("data-channel"), "chat");
    const title = await gap.locator("[data-field=title]").textContent();
    const m = /^Up to (\d+) messages could not be replayed$/.exec(title);
    assert.ok(m, `the notice says how many: ${title}`);
    assert.ok(Number(m[1]) >= total - window, `at least the ${total - window} that left the window: ${title}`);
    const detail = await gap.locator("[data-field=detail]").textContent();
    assert.match(detail, new RegExp(`^The server no longer has the messages on chat after ${from} through [0-9a-f]{16}-\\d+: they left its replay window\\.`));
    assert.match(detail, /window_exceeded/);

    // The window's thousand messages are replayed.
    const note = await see(pageA, catchUpNote(pageA, window), "tab A's catch-up note after the flood", FLOOD_MS);
    assert.match(await note.textContent(), /^Caught up on 1000 messages sent while disconnected .*could not be replayed, see Problems$/);
    // The list keeps its last 200 entries: the newest flood messages, in order, none twice, all replayed.
    const shown = await payloads(pageA);
    const expected = Array.from({ length: shown.length }, (_, i) => `flood ${total - shown.length + 1 + i} ${RUN}`);
    assert.ok(shown.length >= 100, `the list shows the last messages (${shown.length})`);
    assert.deepEqual(shown, expected, "the last messages, in order, none twice");
    assert.deepEqual(await payloads(pageA, "[data-replayed=true]"), shown, "all of them replayed");
    // And the list, which followed its newest entry before, still shows the newest one.
    await pageA.waitForFunction(() => {
      const list = document.getElementById("messages");
      return list.scrollHeight - list.scrollTop - list.clientHeight < 24;
    }, null, { timeout: UI_MS });
    await pageA.screenshot({ path: path.join(ARTIFACTS, "window-exceeded.png"), fullPage: true });
    await assertLayout(pageA, "1280 px, window exceeded");
  });

  it("starts fresh when 'Resume from the last position' is unchecked", async () => {
    await clearProblems(pageA);
    await pageA.uncheck("#resume");
    assert.match(await pageA.textContent("#resume-hint"), /Connect starts fresh/);
    await pageA.click("#disconnect");
    await see(pageA, status(pageA, "idle"), "tab A disconnected");
    const skipped = `sent while A was away, not replayed ${RUN}`;
    await psql(server.conninfo, `SELECT pg_notify('${LISTEN_CHANNEL}', json_build_object('channel', 'chat', 'payload', :'p')::text);`, { p: skipped });
    await see(pageB, message(pageB, skipped), "the SQL message in tab B");
    const notes = await catchUpNote(pageA).count();

    await pageA.click("#connect");
    await see(pageA, status(pageA, "open"), "tab A connected, fresh");
    await see(pageA, chip(pageA, "chat", "subscribed"), "tab A following chat");
    // The server delivers in order: once a later message is shown, an earlier one would have been.
    const live = `live after a fresh start ${RUN}`;
    await send(pageB, live);
    const item = await see(pageA, message(pageA, live), "tab B's message in tab A");
    assert.equal(await item.getAttribute("data-replayed"), null);
    assert.equal(await message(pageA, skipped).count(), 0, "nothing sent meanwhile is replayed");
    assert.equal(await catchUpNote(pageA).count(), notes, "no catch-up");
    assert.equal(await problem(pageA, "gap").count(), 0, "no gap either: a fresh start asks for none");
    await pageA.check("#resume");
  });

  it("EventSource: the server ends the stream, the browser resumes with Last-Event-ID, nothing is lost", async () => {
    const page = await browser.newPage();
    page.on("pageerror", (err) => pageErrors.push(`EventSource tab: ${err.message}`));
    await page.goto(`http://127.0.0.1:${server.port}/`);
    const token = signJwt({ mode: "rw" });
    const total = 80;
    const channel = `sse-${RUN}`;
    // In the page: an EventSource reads the channel while a websocket publishes 0..total-1 on it,
    // one every 40 ms, across several stream ends (PGWS_SSE_MAX_AGE=1).
    const run = page.evaluate(({ token, total, channel }) => new Promise((resolve) => {
      const got = [];
      const gaps = [];
      const closes = [];
      let opens = 0;
      const es = new EventSource(`/${channel}/${token}`);
      es.onopen = () => {
        opens += 1;
        // The stream follows the channel once it is open (a fresh stream gets what is sent after
        // it joined): publish only from then on, or a loaded machine loses the race.
        if (opens === 1) publish();
      };
      es.addEventListener("close", (e) => closes.push(JSON.parse(e.data).code));
      // Gaps are named events (`event: gap`); one in onmessage would be mixed with data.
      es.addEventListener("gap", (e) => gaps.push(JSON.parse(e.data)));
      es.onmessage = (e) => {
        const v = JSON.parse(e.data);
        if (v.event === "Gap") { gaps.push({ misplaced: v }); return; }
        got.push(Number(v.payload));
        if (got.length >= total) {
          es.close();
          resolve({ got, gaps, closes, opens });
        }
      };
      const publish = () => {
        const ws = new WebSocket(`ws://${location.host}/${channel}/${token}`);
        ws.onopen = async () => {
          for (let i = 0; i < total; i += 1) {
            ws.send(String(i));
            await new Promise((r) => setTimeout(r, 40));
          }
        };
      };
    }), { token, total, channel });
    const result = await withTimeout(run, 30_000, "the EventSource to receive every message");
    assert.deepEqual(result.got, Array.from({ length: total }, (_, i) => i), "every message once, in order");
    assert.deepEqual(result.gaps, [], "no gap: the replay window covered every reconnection");
    assert.ok(result.opens >= 2, `the browser reconnected by itself (${result.opens} opens)`);
    assert.ok(result.closes.length >= 1 && result.closes.every((c) => c === 4002), `streams ended by lifetime: ${result.closes}`);
    await page.close();
  });


  it("says the server is going away when it shuts down (close 1001), and keeps trying", async () => {
    const exit = await stopServer(server);
    await see(pageA, problem(pageA, "going-away"), "the 1001 notice in tab A");
    assert.match(await pageA.textContent("#errors"), /1001/);
    await see(pageA, status(pageA, "reconnecting"), "tab A reconnecting");
    await see(pageA, problem(pageA, "unreachable"), "tab A cannot reach the server");
    await see(pageA, statusWith(pageA, "reconnecting", "cannot reach the server"), "tab A 'Reconnecting (cannot reach the server)'");
    assert.equal(await problem(pageA, "unreachable").count(), 1, "said once, not at every attempt");
    assert.equal(await pageA.textContent("#connect"), "Apply changes", "the library keeps trying");
    await pageA.screenshot({ path: path.join(ARTIFACTS, "shutdown.png"), fullPage: true });
    await pageA.click("#disconnect");
    await see(pageA, status(pageA, "idle"), "tab A stopped trying");
    assert.equal(await pageA.textContent("#connect"), "Connect");
    assert.deepEqual(exit, { code: 0, signal: null }, "pgws exits cleanly on SIGTERM");
  });

  it("raised no JavaScript errors and loaded nothing from elsewhere", () => {
    assert.deepEqual(pageErrors, []);
    assert.deepEqual(foreignRequests, []);
  });
});

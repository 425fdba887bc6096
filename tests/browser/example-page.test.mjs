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
//                           docs/screenshot.png (1280 px wide) and docs/screenshot-narrow.png (390 px)

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
const LABELS = ".status-name, .field > span, .choice, legend, button, h1, h2, .event, .on, .problem-title, .time, summary";

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
        problems: text("#errors > li"),
        messages: text("#messages > li").slice(-5),
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

const status = (page, state, socket = "status") => page.locator(`#${socket}[data-state="${state}"]`);
const message = (page, text) => page.locator("#messages > li[data-testid=message]", { hasText: text });
const metaEvent = (page, event, text) => page.locator(`#meta-messages > li[data-testid=meta-event][data-event="${event}"]`, { hasText: text });
const problem = (page, kind, text) => page.locator(`#errors > li[data-testid=error][data-kind="${kind}"]`, text ? { hasText: text } : {});
const statusWith = (page, state, text, socket = "status") => page.locator(`#${socket}[data-state="${state}"]`, { hasText: text });
/** The note that ends a catch-up (of `count` messages, if given). */
const catchUpNote = (page, count) => page.locator(`#messages > li[data-testid=catch-up]${count === undefined ? "" : `[data-count="${count}"]`}`);
const lastPosition = (page) => page.textContent("#resume-hint [data-field=position]");
/** The payloads of the chat list's messages, in list order (notes left out). */
const payloads = (page, selector = "") => page.locator(`#messages > li[data-testid=message]${selector} [data-field=payload]`).allTextContents();
const POSITION = /^[0-9a-f]{16}-\d+$/;
const FLOOD_MS = 60_000; // for the page to take a thousand messages on two shared cores
const refusal = (page, socket, text) => page.locator(`#errors > li[data-testid=error][data-kind=handshake][data-socket=${socket}]`, { hasText: text });

/** Connect and wait until both sockets are refused (the Problems list must be empty before). */
async function connectRefused(page, reason) {
  await page.click("#connect");
  for (const socket of ["chat", "meta"]) {
    await see(page, refusal(page, socket, reason), `the ${socket} socket's refusal '${reason}'`);
  }
  await see(page, statusWith(page, "refused", reason), `chat status 'Refused: ${reason}'`);
  await see(page, statusWith(page, "refused", reason, "meta-status"), `meta status 'Refused: ${reason}'`);
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

/** The times shown in a list, in list order (ISO strings of the <time> elements). */
function listTimes(page, list) {
  return page.locator(`#${list} > li [data-field=time]`).evaluateAll((nodes) => nodes.map((n) => n.dateTime));
}

function assertSorted(times, what) {
  const ms = times.map((t) => Date.parse(t));
  for (let i = 1; i < ms.length; i++) {
    assert.ok(ms[i - 1] <= ms[i], `${what}: ${times[i - 1]} is listed before ${times[i]}:\n${times.join("\n")}`);
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

describe("example page in a real browser", { timeout: 120_000 }, () => {
  let server;
  let browser;
  let pageA;
  let pageB;
  const pageErrors = [];

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

    const context = await browser.newContext({ viewport: WIDE });
    context.setDefaultTimeout(UI_MS);
    pageA = await context.newPage();
    pageB = await context.newPage();
    for (const [name, page] of [["A", pageA], ["B", pageB]]) {
      page.on("pageerror", (err) => pageErrors.push(`tab ${name}: ${err.message}`));
    }
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

  it("serves the page with defaults taken from its own origin", async () => {
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
      assert.match(await page.inputValue("#token"), /^[\w-]+\.[\w-]+\.[\w-]+$/, "a development token is signed on load");
    }
    // The binary embeds web/ at build time; say so if the files differ (stale binary).
    for (const file of ["index.html", "app.js", "style.css"]) {
      const served = await (await fetch(url + file, { signal: AbortSignal.timeout(UI_MS) })).text();
      if (served !== fs.readFileSync(path.join(REPO, "web", file), "utf8")) {
        console.log(`# note: served ${file} differs from web/${file} (binary built from older files?)`);
      }
    }
  });

  it("connects two tabs and shows ConnectionOpen on the meta channel", async () => {
    // Tab A signs a development token with the secret field (the default).
    await pageA.click("#connect");
    await see(pageA, status(pageA, "open"), "tab A chat socket open");
    await see(pageA, status(pageA, "open", "meta-status"), "tab A meta socket open");

    // Tab B pastes the server's development token instead.
    await pageB.check("#token-source-paste");
    await pageB.fill("#token", server.devToken);
    await pageB.click("#connect");
    await see(pageB, status(pageB, "open"), "tab B chat socket open");
    await see(pageB, status(pageB, "open", "meta-status"), "tab B meta socket open");

    // A's meta socket sees the chat sockets opening (payload = the channel list).
    const open = await see(pageA, metaEvent(pageA, "ConnectionOpen", "chat"), "ConnectionOpen for a chat socket in tab A's meta panel");
    assert.equal(await open.locator("[data-field=payload]").textContent(), "chat");
    assert.match(await open.locator("[data-field=claims]").textContent(), /mode=rw/);
    assert.equal(await pageA.isEnabled("#send"), true, "send is enabled on an rw socket");
    assert.equal(await pageA.textContent("#connect"), "Reconnect", "the button re-opens live sockets");
  });

  it("delivers a message sent in one tab to both tabs", async () => {
    const text = `hello from tab A ${RUN}`;
    await pageA.fill("#message-text", text);
    await pageA.press("#message-text", "Enter");
    for (const [name, page] of [["A", pageA], ["B", pageB]]) {
      const item = await see(page, message(page, text), `tab A's message in tab ${name}`);
      assert.equal(await item.locator("[data-field=payload]").textContent(), text);
      assert.equal(await item.locator("[data-field=channel]").textContent(), "chat");
      assert.equal(await item.getAttribute("data-event"), "WebsocketMessage");
      assert.match(await item.locator("[data-field=claims]").textContent(), /mode=rw/);
      const raw = JSON.parse(await item.locator("[data-field=raw]").textContent());
      assert.equal(raw.payload, text);
      assert.equal(typeof raw.claims.message_delivered_at, "number");
    }
    assert.equal(await pageA.inputValue("#message-text"), "", "the input is cleared after sending");

    // Markup in a payload is shown as text, never interpreted.
    const markup = `tab B: <b>bold</b> & <img src=x onerror="window.pwned=1"> ${RUN}`;
    await pageB.fill("#message-text", markup);
    await pageB.click("#send");
    for (const [name, page] of [["A", pageA], ["B", pageB]]) {
      const item = await see(page, message(page, `tab B: <b>bold</b> &`), `tab B's markup message in tab ${name}`);
      assert.equal(await item.locator("[data-field=payload]").textContent(), markup);
      assert.equal(await page.locator("#messages img, #messages b").count(), 0, "no element was created from the payload");
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

  it("shows the server's error event for a message that is too large", async () => {
    await pageB.fill("#message-text", `${RUN} ` + "x".repeat(10_000));
    await pageB.click("#send");
    const item = await see(pageB, problem(pageB, "server-error"), "the server's Error event in tab B");
    assert.match(await item.textContent(), /error/i);
    assert.equal(await status(pageB, "open").count(), 1, "the socket stays open after an error event");
  });

  it("shows ConnectionClose when the other tab disconnects", async () => {
    await pageB.click("#disconnect");
    await see(pageB, status(pageB, "idle"), "tab B disconnected");
    await see(pageA, metaEvent(pageA, "ConnectionClose", "chat"), "ConnectionClose in tab A's meta panel");
  });

  it("explains a refused token in words", async () => {
    await pageB.click("#clear-errors");
    await pageB.check("#token-source-paste");
    await pageB.fill("#token", signJwt({ user: "mallory" }));
    await pageB.click("#connect");
    const refused = await see(pageB, problem(pageB, "handshake", "Missing mode"), "the 'Missing mode' refusal in tab B");
    assert.equal(await refused.locator("[data-field=detail]").textContent(), "Missing mode");
    await see(pageB, status(pageB, "refused"), "tab B status 'refused'");
    assert.match(await pageB.textContent("#status-text"), /Missing mode/);

    await pageB.click("#clear-errors");
    await pageB.fill("#token", "this.is-not.a-valid-token");
    await pageB.click("#connect");
    const bad = await see(pageB, problem(pageB, "handshake", "Error"), "the refusal of a garbage token in tab B");
    assert.match(await bad.locator("[data-field=detail]").textContent(), /^Error/);
    await see(pageB, statusWith(pageB, "refused", "Error", "meta-status"), "tab B meta status refused");
    await see(pageB, statusWith(pageB, "refused", "Error"), "tab B chat status refused");
    assert.equal(await pageB.textContent("#connect"), "Connect", "nothing is live after a refusal");
    assert.equal(await pageB.isDisabled("#disconnect"), true);
  });

  it("on a phone: refused tokens, then a good one connects and a message arrives", async () => {
    await pageB.setViewportSize(NARROW);
    try {
      await pageB.click("#clear-errors");
      await pageB.check("#token-source-paste");

      // A token signed with another secret: the longest reason, next to the "Chat"/"Meta" labels.
      await pageB.fill("#token", signJwt({ mode: "rw" }, "not the server's secret, but long enough for HS256"));
      await connectRefused(pageB, "JWSInvalidSignature");
      assert.equal(await pageB.textContent("#connect"), "Connect", "after a refusal the button says Connect");
      await pageB.screenshot({ path: path.join(ARTIFACTS, "narrow-refused-signature.png"), fullPage: true });
      await assertLayout(pageB, "390 px, refused (bad signature)");

      // An expired token: both sockets are refused with the server's reason.
      await pageB.click("#clear-errors");
      await pageB.fill("#token", signJwt({ mode: "rw", exp: Math.floor(Date.now() / 1000) - 60 }));
      await connectRefused(pageB, "Token expired");
      assert.equal(await pageB.textContent("#connect"), "Connect", "after a refusal the button says Connect");

      // A token for another channel: chat and the meta channel are not granted.
      await pageB.click("#clear-errors");
      await pageB.fill("#token", signJwt({ mode: "rw", channels: [`elsewhere-${RUN}`] }));
      await connectRefused(pageB, "No allowed channels");
      assert.equal(await pageB.textContent("#connect"), "Connect", "after a refusal the button says Connect");
      assert.equal(await pageB.isDisabled("#disconnect"), true);
      assert.equal(await pageB.isDisabled("#send"), true);
      await pageB.screenshot({ path: path.join(ARTIFACTS, "narrow-refused.png"), fullPage: true });
      await assertLayout(pageB, "390 px, refused (no allowed channels)");

      // A good token (signed with the secret): both open, and a message goes round.
      await pageB.check("#token-source-secret");
      await pageB.click("#connect");
      await see(pageB, status(pageB, "open"), "tab B chat open after the refusals");
      await see(pageB, status(pageB, "open", "meta-status"), "tab B meta open after the refusals");
      assert.equal(await pageB.textContent("#connect"), "Reconnect");
      assert.equal(await pageB.isEnabled("#disconnect"), true);
      const text = `back after the refusals ${RUN}`;
      await pageB.fill("#message-text", text);
      await pageB.press("#message-text", "Enter");
      const own = await see(pageB, message(pageB, text), "tab B's message after reconnecting");
      assert.equal(await own.getAttribute("data-replayed"), null, "sent after reconnecting: not part of the catch-up");
      await see(pageA, message(pageA, text), "tab B's message in tab A");
      await pageB.evaluate(() => document.activeElement.blur());
      await screenshotDownTo(pageB, "#chat-card", "narrow.png", "screenshot-narrow.png");
      await assertLayout(pageB, "390 px, connected");
    } finally {
      await pageB.setViewportSize(WIDE);
    }
  });

  it("tells the user when the token expires (close 3001)", async () => {
    await pageB.click("#clear-errors");
    await pageB.check("#token-source-secret");
    await pageB.fill("#meta-channel", "");
    await pageB.fill("#expires-in", "3");
    await pageB.click("#connect");
    await see(pageB, status(pageB, "open"), "tab B connected with a short-lived token");
    const expired = await see(pageB, problem(pageB, "expired"), "the expiry notice in tab B");
    assert.match(await expired.textContent(), /3001/);
    assert.match(await expired.textContent(), /JWT expired/);
    await see(pageB, statusWith(pageB, "closed", "Token expired"), "tab B chat status 'Token expired'");
    assert.equal(await pageB.textContent("#connect"), "Connect", "nothing is live after the expiry");
  });

  it("looks right (screenshots)", async () => {
    await pageA.evaluate(() => {
      // Open one raw-JSON view so the screenshot shows it.
      const d = document.querySelector("#messages details");
      if (d) d.open = true;
      document.activeElement.blur();
    });
    await pageA.screenshot({ path: path.join(ARTIFACTS, "example-page.png"), fullPage: true });
    await pageB.screenshot({ path: path.join(ARTIFACTS, "problems.png"), fullPage: true });
    // The docs picture: everything down to the message lists (the snippet is in the README as text).
    await screenshotDownTo(pageA, ".columns", "overview.png", "screenshot.png");
    await assertLayout(pageA, "1280 px");
    await assertLayout(pageB, "1280 px, problems");
  });

  it("lists messages and connection events by the server's time stamp", async () => {
    // Real events: ConnectionOpen/Close of several sockets, published by different sessions.
    assertSorted(await listTimes(pageA, "meta-messages"), "tab A's Connections");
    assertSorted(await listTimes(pageA, "messages"), "tab A's Messages");

    // Two notifications that arrive in the opposite order of their stamps.
    const now = Date.now() / 1000;
    const stamped = (payload, at) => JSON.stringify({
      channel: "chat", event: "WebsocketMessage", payload, claims: { mode: "rw", message_delivered_at: at },
    });
    await psql(server.conninfo, `SELECT pg_notify('${LISTEN_CHANNEL}', :'later'); SELECT pg_notify('${LISTEN_CHANNEL}', :'earlier');`, {
      later: stamped(`stamped later ${RUN}`, now - 0.1),
      earlier: stamped(`stamped earlier ${RUN}`, now - 0.2),
    });
    await see(pageA, message(pageA, `stamped later ${RUN}`), "the later-stamped message in tab A");
    await see(pageA, message(pageA, `stamped earlier ${RUN}`), "the earlier-stamped message in tab A");
    const payloads = await pageA.locator("#messages > li [data-field=payload]").allTextContents();
    assert.deepEqual(payloads.slice(-2), [`stamped earlier ${RUN}`, `stamped later ${RUN}`], "the earlier stamp is listed first");
    assertSorted(await listTimes(pageA, "messages"), "tab A's Messages");
  });

  it("resumes after a disconnect: what was sent meanwhile is caught up, in order, once, marked replayed", async () => {
    // Tab B (closed by its expiry) comes back without one, to send while tab A is away.
    await pageB.fill("#expires-in", "");
    await pageB.click("#connect");
    await see(pageB, status(pageB, "open"), "tab B connected again");
    // The user looks at tab A (a background tab's frames are throttled, which slows every click).
    await pageA.bringToFront();

    assert.equal(await pageA.isChecked("#resume"), true, "resuming is the default");
    const from = await lastPosition(pageA);
    assert.match(from, POSITION, "tab A shows the last position it received");
    const before = await payloads(pageA);
    await pageA.click("#disconnect");
    await see(pageA, status(pageA, "idle"), "tab A disconnected");
    await see(pageA, status(pageA, "idle", "meta-status"), "tab A meta socket disconnected");

    // Sent meanwhile: two messages from tab B, one NOTIFY from SQL. Tab B seeing each one back
    // means the server has routed it (so it is in the window when tab A resumes).
    const missed = [`while A was away 1 ${RUN}`, `while A was away 2 ${RUN}`];
    for (const text of missed) {
      await pageB.fill("#message-text", text);
      await pageB.press("#message-text", "Enter");
      await see(pageB, message(pageB, text), `'${text}' back in tab B`);
    }
    const fromSql = `from SQL while A was away ${RUN}`;
    await psql(server.conninfo, `SELECT pg_notify('${LISTEN_CHANNEL}', json_build_object('channel', 'chat', 'payload', :'p')::text);`, { p: fromSql });
    await see(pageB, message(pageB, fromSql), "the SQL message in tab B");
    missed.push(fromSql);

    await pageA.click("#connect");
    await see(pageA, status(pageA, "open"), "tab A connected again");
    // Tab A sends at once: its own message comes back after the replay, and is not part of it.
    const own = `sent by A right after resuming ${RUN}`;
    await pageA.fill("#message-text", own);
    await pageA.press("#message-text", "Enter");
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
    const seq = (p) => BigInt(p.split("-")[1]);
    for (const [i, p] of positions.entries()) {
      assert.match(p, POSITION);
      assert.equal(p.split("-")[0], from.split("-")[0], "same server process");
      assert.ok(seq(p) > (i === 0 ? seq(from) : seq(positions[i - 1])), `positions increase: ${from} ${positions}`);
    }
    assert.equal(await problem(pageA, "gap").count(), 0, "an exact resume has no gap");
    const rawSql = JSON.parse(await items.last().locator("[data-field=raw]").textContent());
    assert.deepEqual(rawSql, { channel: "chat", payload: fromSql }, "the raw view shows the notification, unwrapped");

    // What comes after the catch-up is live again.
    const live = `live after the catch-up ${RUN}`;
    await pageB.fill("#message-text", live);
    await pageB.press("#message-text", "Enter");
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
    const gap = await see(pageA, problem(pageA, "gap"), "the Gap notice in tab A's Problems");
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
    await pageA.click("#clear-errors");
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
    // The server delivers in order: once a later message is shown, an earlier one would have been.
    const live = `live after a fresh start ${RUN}`;
    await pageB.fill("#message-text", live);
    await pageB.press("#message-text", "Enter");
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
      es.onmessage = (e) => {
        const v = JSON.parse(e.data);
        if (v.event === "Gap") { gaps.push(v); return; }
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

  it("says the server is going away when it shuts down (close 1001)", async () => {
    const exit = await stopServer(server);
    await see(pageA, problem(pageA, "going-away"), "the 1001 notice in tab A");
    assert.match(await pageA.textContent("#errors"), /1001/);
    await see(pageA, statusWith(pageA, "closed", "going away"), "tab A chat status 'Server going away'");
    await see(pageA, statusWith(pageA, "closed", "going away", "meta-status"), "tab A meta status 'Server going away'");
    assert.equal(await pageA.textContent("#connect"), "Connect", "nothing is live after the shutdown");
    await pageA.screenshot({ path: path.join(ARTIFACTS, "shutdown.png"), fullPage: true });
    assert.deepEqual(exit, { code: 0, signal: null }, "pgws exits cleanly on SIGTERM");
  });

  it("raised no JavaScript errors", () => {
    assert.deepEqual(pageErrors, []);
  });
});

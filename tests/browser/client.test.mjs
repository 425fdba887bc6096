// pgws-client (clients/js) in a real headless Chromium against a real `pgws --embedded`.
//
// pgws itself serves the page and the client's ESM source (PGWS_ROOT_PATH: a temporary directory
// with a copy of clients/js/src/index.js), so nothing external is loaded. A reader page and a
// writer page (separate browser contexts, so one can go offline alone) each run PgwsClient; every
// message is numbered and what the reader got is checked for loss, duplicates and order:
//   - publishes acknowledged (and nacked: read_only, not_granted, too_large), received in order;
//   - the connection cut under the client (a TCP proxy destroys it): exact resume, no gap;
//   - the browser offline then online (context.setOffline): the client goes "offline", closes,
//     reconnects at "online" and resumes exactly;
//   - the token expiring mid-session with a token callback: refreshed in band, one connection, no
//     3001;
//   - presence: another tab joins and leaves, and a new snapshot after offline/online replaces
//     the state (needs the server side of presence);
//   - the server restarted on the same port (NOTIFY mode): an `other_epoch` gap is surfaced, the
//     publish queued while it was down is acknowledged, nothing before or after is lost, and the
//     new server's presence snapshot replaces the state.
//
//   cd tests/browser && npm ci && npm test      (PGWS_BIN: the pgws binary; CHROMIUM_PATH)

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

import { PGWS_BIN, proxy, startServer, token, withTimeout } from "../../clients/js/test/harness.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CLIENT_SRC = path.resolve(HERE, "../../clients/js/src/index.js");
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const WAIT_MS = 15_000; // every wait in the page
const hour = () => Math.floor(Date.now() / 1000) + 3600;
const range = (a, b) => Array.from({ length: b - a }, (_, i) => a + i);

// The page: loads the client from pgws and keeps, per named client, what it saw.
const PAGE = `<!doctype html>
<html lang="en"><meta charset="utf-8"><title>pgws-client browser test</title>
<script type="module">
import { PgwsClient, PgwsError } from "./pgws-client.js";
const clients = new Map();
const later = new Map();
/** Every wait in the page has a time-out (the test's own waits are bounded too). */
const within = (promise, what) => {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error("timed out in the page: " + what)), ${WAIT_MS});
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
};
window.T = {
  /** Opens a client; token: a string, or {kind} to ask window.issueToken(kind) each time. */
  open(name, url, tok, opts = {}) {
    const rec = { states: [], closes: [], errors: [], refreshed: 0, subs: {} };
    const token = typeof tok === "string" ? tok : () => window.issueToken(tok.kind);
    const c = new PgwsClient({ url, token, minDelay: 100, maxDelay: 1000, ...opts });
    c.on("state", (s) => rec.states.push(s));
    c.on("close", (e) => rec.closes.push({ code: e.code, reason: e.reason }));
    c.on("error", (e) => rec.errors.push(e.code));
    c.on("refreshed", () => (rec.refreshed += 1));
    clients.set(name, { c, rec });
    c.connect();
  },
  /** Subscribes and records numbered payloads, gaps and confirmations; resolves when confirmed. */
  async subscribe(name, channel) {
    const { c, rec } = clients.get(name);
    const sub = c.subscribe(channel);
    const got = (rec.subs[channel] = { numbers: [], gaps: [], subscribed: 0 });
    sub.on("message", (m) => got.numbers.push(Number(m.json().payload)));
    sub.on("gap", (g) => got.gaps.push({ reason: g.reason, message: g.message }));
    sub.on("subscribed", () => (got.subscribed += 1));
    await within(sub.ready(), "the subscription to " + channel);
  },
  /** Publishes from..to-1 one after the other, each awaiting its ack; returns the acks' channels. */
  async publishRange(name, channel, from, to) {
    const { c } = clients.get(name);
    const acks = [];
    for (let n = from; n < to; n++) acks.push((await within(c.publish(channel, String(n)), "an ack")).channel);
    return acks;
  },
  /** Publishes all at once and awaits every ack (in the order they settle). */
  async publishBurst(name, channel, from, to) {
    const { c } = clients.get(name);
    const order = [];
    await within(
      Promise.all(Array.from({ length: to - from }, (_, i) => c.publish(channel, String(from + i)).then(() => order.push(from + i)))),
      "the acks of a burst",
    );
    return order;
  },
  /** One publish: {ack} or {nack: code, isPgwsError}. */
  async publishOne(name, channel, data) {
    try {
      return { ack: await within(clients.get(name).c.publish(channel, data), "an answer to a publish") };
    } catch (e) {
      return { nack: e.code, isPgwsError: e instanceof PgwsError };
    }
  },
  /** Starts a publish and keeps its promise under key (see settled). */
  publishLater(name, key, channel, data) {
    const p = clients.get(name).c.publish(channel, data);
    later.set(key, p.then((ack) => ({ ack }), (e) => ({ nack: e.code })));
  },
  settled(key) {
    return within(later.get(key), "the answer to " + key);
  },
  /** A subscription's confirmation error code (refused subscribe), or null. */
  async subscribeError(name, channel) {
    try {
      await within(clients.get(name).c.subscribe(channel).ready(), "the answer to a subscription");
      return null;
    } catch (e) {
      return e.code;
    }
  },
  /** Subscribes with presence and records every state, join and leave. */
  async watch(name, channel) {
    const { c, rec } = clients.get(name);
    const sub = c.subscribe(channel, { presence: true });
    const got = (rec.subs[channel] = { numbers: [], gaps: [], subscribed: 0, states: [], joins: [], leaves: [], now: null });
    sub.on("subscribed", () => (got.subscribed += 1));
    sub.on("presence", (p) => {
      got.states.push(p);
      got.now = sub.presence();
    });
    sub.on("join", (j) => got.joins.push({ member: j.member, connections: j.connections, count: j.count }));
    sub.on("leave", (l) => got.leaves.push({ member: l.member, connections: l.connections, count: l.count, reason: l.reason }));
    await within(sub.ready(), "the subscription to " + channel);
  },
  info(name) {
    const { c, rec } = clients.get(name);
    return { ...rec, state: c.state, connections: c.connections, exp: c.welcome?.exp ?? null, mode: c.welcome?.mode ?? null };
  },
  close(name) {
    clients.get(name)?.c.close();
    clients.delete(name);
  },
};
window.ready = true;
</script>
</html>
`;

describe("pgws-client in Chromium", () => {
  let root;
  let server;
  let browser;
  let writer; // {context, page}
  const pageErrors = [];

  const start = (port = 0) => startServer(port, "browser-client", { PGWS_ROOT_PATH: root });

  async function openPage(setup) {
    const context = await browser.newContext();
    context.setDefaultTimeout(WAIT_MS);
    if (setup) await setup(context);
    const page = await context.newPage();
    page.on("pageerror", (err) => pageErrors.push(err.message));
    const res = await page.goto(`http://127.0.0.1:${server.port}/`, { timeout: WAIT_MS });
    assert.equal(res.status(), 200, "pgws serves the test page");
    await page.waitForFunction(() => window.ready === true, null, { timeout: WAIT_MS });
    return { context, page };
  }

  /** Waits until the reader's subscription to `channel` holds `n` numbers (or more). */
  async function receive(page, name, channel, n, what) {
    try {
      await page.waitForFunction(
        ([name, channel, n]) => (window.T.info(name).subs[channel]?.numbers.length ?? 0) >= n,
        [name, channel, n],
        { timeout: WAIT_MS, polling: 50 },
      );
    } catch (err) {
      const info = await page.evaluate((name) => window.T.info(name), name).catch(() => null);
      throw new Error(`${what}: ${err.message}\nclient: ${JSON.stringify(info)}`);
    }
  }

  /** Waits until `pred(info)` holds in the page (pred is run in the page). */
  async function until(page, name, pred, what, timeout = WAIT_MS) {
    try {
      await page.waitForFunction(([name, src]) => new Function("i", `return (${src})(i)`)(window.T.info(name)), [name, pred.toString()], {
        timeout,
        polling: 50,
      });
    } catch (err) {
      const info = await page.evaluate((name) => window.T.info(name), name).catch(() => null);
      throw new Error(`${what}: ${err.message}\nclient: ${JSON.stringify(info)}`);
    }
  }

  const info = (page, name) => page.evaluate((name) => window.T.info(name), name);
  const publish = (from, to, channel) =>
    writer.page.evaluate(([c, a, b]) => window.T.publishRange("w", c, a, b), [channel, from, to]);

  before(async () => {
    console.log(`# pgws binary: ${PGWS_BIN}`);
    root = fs.mkdtempSync(path.join(os.tmpdir(), "pgws-client-browser-"));
    fs.writeFileSync(path.join(root, "index.html"), PAGE);
    fs.copyFileSync(CLIENT_SRC, path.join(root, "pgws-client.js"));
    const launching = chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      timeout: 30_000,
      args: [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
        "--no-first-run", "--disable-component-update", "--disable-sync",
      ],
    });
    const [s, b] = await Promise.allSettled([start(), launching]);
    if (b.status === "fulfilled") browser = b.value;
    if (s.status === "rejected") throw s.reason;
    if (b.status === "rejected") throw b.reason;
    server = s.value;
    writer = await openPage();
    await writer.page.evaluate(([url, tok]) => window.T.open("w", url, tok), [server.url, token({ mode: "rw", sub: "writer", exp: hour() })]);
    await until(writer.page, "w", (i) => i.state === "open", "the writer to connect");
  });

  after(async () => {
    if (browser) await withTimeout(browser.close(), 10_000, "the browser to close").catch((e) => console.log(`# ${e.message}`));
    await server?.stop();
    if (root) fs.rmSync(root, { recursive: true, force: true });
    assert.deepEqual(pageErrors, [], "no uncaught errors in the pages");
  });

  it("publishes with acks and nacks, and receives in order", async () => {
    const reader = await openPage();
    try {
      const { page } = reader;
      await page.evaluate(([url, tok]) => window.T.open("r", url, tok), [server.url, token({ mode: "r", sub: "reader", exp: hour() })]);
      await page.evaluate(() => window.T.subscribe("r", "b-chat"));
      assert.equal((await info(page, "r")).mode, "r");
      assert.deepEqual(await publish(0, 20, "b-chat"), Array(20).fill("b-chat"), "20 acks, one after the other");
      const burst = await writer.page.evaluate(() => window.T.publishBurst("w", "b-chat", 20, 60));
      assert.deepEqual(burst, range(20, 60), "acks of a burst settle in publish order");
      await receive(page, "r", "b-chat", 60, "60 messages");
      const got = (await info(page, "r")).subs["b-chat"];
      assert.deepEqual(got.numbers, range(0, 60), "none lost, none twice, in order");
      assert.deepEqual(got.gaps, []);

      // Nacks: a read-only token, a channel not granted, a notification over PostgreSQL's limit.
      assert.deepEqual(await page.evaluate(() => window.T.publishOne("r", "b-chat", "x")), { nack: "read_only", isPgwsError: true });
      await page.evaluate(([url, tok]) => window.T.open("narrow", url, tok), [server.url, token({ mode: "rw", channels: ["a"], exp: hour() })]);
      assert.deepEqual(await page.evaluate(() => window.T.publishOne("narrow", "b", "x")), { nack: "not_granted", isPgwsError: true });
      assert.equal(await page.evaluate(() => window.T.subscribeError("narrow", "b")), "not_granted");
      const big = await writer.page.evaluate(() => window.T.publishOne("w", "b-chat", "x".repeat(9000)));
      assert.deepEqual(big, { nack: "too_large", isPgwsError: true });
      const ok = await page.evaluate(() => window.T.publishOne("narrow", "a", "fine"));
      assert.equal(ok.ack?.channel, "a");
    } finally {
      await reader.context.close();
    }
  });

  it("resumes exactly after the connection is cut", async () => {
    const p = await proxy(server.port);
    const reader = await openPage();
    try {
      const { page } = reader;
      await page.evaluate(([url, tok]) => window.T.open("r", url, tok), [p.url, token({ mode: "r", sub: "reader", exp: hour() })]);
      await page.evaluate(() => window.T.subscribe("r", "b-cut"));
      await publish(0, 10, "b-cut");
      await receive(page, "r", "b-cut", 10, "before the cut");
      p.up = false; // refuse reconnections until the writer published while the reader is away
      p.cut();
      await until(page, "r", (i) => i.closes.length >= 1 && i.state !== "open", "the reader to see the cut");
      await publish(10, 30, "b-cut");
      p.up = true;
      await until(page, "r", (i) => i.subs["b-cut"].subscribed === 2 && i.state === "open", "the resubscription");
      await publish(30, 40, "b-cut");
      await receive(page, "r", "b-cut", 40, "replayed and live");
      const i = await info(page, "r");
      assert.deepEqual(i.subs["b-cut"].numbers, range(0, 40), "none lost, none twice, in order");
      assert.deepEqual(i.subs["b-cut"].gaps, [], "an exact resume has no gap");
      assert.equal(i.closes[0].code, 1006, "an abnormal closure");
      assert.ok(i.connections >= 2);
    } finally {
      await reader.context.close();
      await p.close();
    }
  });

  it("goes offline with the browser and resumes exactly when it is back online", async () => {
    const reader = await openPage();
    try {
      const { page, context } = reader;
      await page.evaluate(([url, tok]) => window.T.open("r", url, tok), [server.url, token({ mode: "r", sub: "reader", exp: hour() })]);
      await page.evaluate(() => window.T.subscribe("r", "b-offline"));
      await publish(0, 10, "b-offline");
      await receive(page, "r", "b-offline", 10, "before going offline");
      await context.setOffline(true);
      await until(page, "r", (i) => i.state === "offline" && i.closes.length === 1, "the client to go offline and close its socket");
      assert.equal(await page.evaluate(() => navigator.onLine), false);
      await publish(10, 30, "b-offline"); // from the writer's context, which is online
      const offline = await info(page, "r");
      assert.equal(offline.connections, 1, "no reconnection attempt while offline");
      assert.equal(offline.subs["b-offline"].numbers.length, 10);
      await context.setOffline(false);
      await until(page, "r", (i) => i.subs["b-offline"].subscribed === 2 && i.state === "open", "the resubscription once online");
      await publish(30, 40, "b-offline");
      await receive(page, "r", "b-offline", 40, "replayed and live");
      const i = await info(page, "r");
      assert.deepEqual(i.subs["b-offline"].numbers, range(0, 40), "none lost, none twice, in order");
      assert.deepEqual(i.subs["b-offline"].gaps, []);
      assert.equal(i.connections, 2, "one reconnection, at once when online");
      assert.deepEqual(i.states, ["connecting", "open", "offline", "reconnecting", "open"]);
    } finally {
      await reader.context.close();
    }
  });

  it("started while the browser is offline, connects when it comes online", async () => {
    const reader = await openPage();
    try {
      const { page, context } = reader;
      await context.setOffline(true);
      await page.evaluate(([url, tok]) => window.T.open("r", url, tok), [server.url, token({ mode: "r", sub: "reader", exp: hour() })]);
      await until(page, "r", (i) => i.state === "offline", "the client to wait offline");
      const waiting = page.evaluate(() => window.T.subscribe("r", "b-late"));
      assert.equal((await info(page, "r")).connections, 0, "no attempt while offline");
      await context.setOffline(false);
      await withTimeout(waiting, WAIT_MS, "the subscription once online");
      await publish(0, 3, "b-late");
      await receive(page, "r", "b-late", 3, "messages once online");
      const i = await info(page, "r");
      assert.deepEqual(i.subs["b-late"].numbers, range(0, 3));
      assert.equal(i.connections, 1);
      assert.deepEqual(i.states, ["offline", "connecting", "open"]);
    } finally {
      await reader.context.close();
    }
  });

  it("refreshes a token expiring mid-session in band: one connection, no 3001", async () => {
    let issued = 0;
    const reader = await openPage((context) =>
      context.exposeFunction("issueToken", () => {
        issued += 1;
        return token({ mode: "r", sub: "short", exp: Math.floor(Date.now() / 1000) + 3 });
      }),
    );
    try {
      const { page } = reader;
      await page.evaluate((url) => window.T.open("r", url, { kind: "short" }, { refreshRatio: 0.5, refreshMinLead: 1000 }), server.url);
      await page.evaluate(() => window.T.subscribe("r", "b-fresh"));
      const firstExp = (await info(page, "r")).exp;
      assert.ok(firstExp * 1000 - Date.now() <= 3000, "a short-lived token");
      await publish(0, 5, "b-fresh");
      // Two refreshes, and past the first token's exp.
      await until(page, "r", (i) => i.refreshed >= 2, "two refreshes", 12_000);
      await page.waitForFunction((exp) => Date.now() / 1000 > exp + 0.5, firstExp, { timeout: 10_000, polling: 100 });
      await publish(5, 10, "b-fresh");
      await receive(page, "r", "b-fresh", 10, "messages before and after the first exp");
      const i = await info(page, "r");
      assert.deepEqual(i.subs["b-fresh"].numbers, range(0, 10));
      assert.deepEqual(i.closes, [], "never closed (no 3001)");
      assert.equal(i.connections, 1, "one connection");
      assert.deepEqual(i.errors, []);
      assert.ok(i.exp > firstExp, "the server holds the refreshed exp");
      assert.ok(issued >= 3, `the callback was called at connection and per refresh (${issued})`);
    } finally {
      await reader.context.close();
    }
  });

  it("shows presence: another tab joins and leaves; after offline/online a new snapshot replaces the state", async () => {
    const a = await openPage();
    const b = await openPage();
    try {
      const open = (page, sub) =>
        page.evaluate(([url, tok]) => window.T.open("r", url, tok), [server.url, token({ mode: "r", sub, exp: hour() })]);
      await open(a.page, "alice");
      await a.page.evaluate(() => window.T.watch("r", "b-room"));
      await until(a.page, "r", (i) => i.subs["b-room"].now !== null, "alice's first snapshot");
      assert.deepEqual((await info(a.page, "r")).subs["b-room"].now, { members: { alice: 1 }, states: {}, anonymous: 0, count: 1 });

      await open(b.page, "bob");
      await b.page.evaluate(() => window.T.watch("r", "b-room"));
      await until(a.page, "r", (i) => i.subs["b-room"].now.members.bob === 1, "bob to join in alice's tab");
      await until(b.page, "r", (i) => i.subs["b-room"].now?.count === 2, "bob's snapshot with both");
      assert.deepEqual((await info(b.page, "r")).subs["b-room"].now, { members: { alice: 1, bob: 1 }, states: {}, anonymous: 0, count: 2 });
      let room = (await info(a.page, "r")).subs["b-room"];
      assert.deepEqual(room.joins, [{ member: "bob", connections: 1, count: 2 }]);

      // Bob's tab goes away: alice sees him leave.
      await b.context.close();
      await until(a.page, "r", (i) => i.subs["b-room"].leaves.length === 1, "bob to leave in alice's tab");
      room = (await info(a.page, "r")).subs["b-room"];
      assert.deepEqual(room.leaves, [{ member: "bob", connections: 1, count: 1, reason: "left" }]);
      assert.deepEqual(room.now, { members: { alice: 1 }, states: {}, anonymous: 0, count: 1 });

      // Alice goes offline; carol joins meanwhile; back online, the new snapshot has her.
      await a.context.setOffline(true);
      await until(a.page, "r", (i) => i.state === "offline", "alice offline");
      const c = await openPage();
      try {
        await open(c.page, "carol");
        await c.page.evaluate(() => window.T.watch("r", "b-room"));
        await until(c.page, "r", (i) => i.subs["b-room"].now?.members.carol === 1 && !i.subs["b-room"].now.members.alice, "carol alone");
        await a.context.setOffline(false);
        await until(a.page, "r", (i) => i.subs["b-room"].subscribed === 2 && i.subs["b-room"].now.members.carol === 1, "alice's new snapshot");
        room = (await info(a.page, "r")).subs["b-room"];
        assert.deepEqual(room.now, { members: { alice: 1, carol: 1 }, states: {}, anonymous: 0, count: 2 });
        assert.equal(room.joins.length, 1, "carol came in a snapshot, not a join alice missed");
      } finally {
        await c.context.close();
      }
    } finally {
      await a.context.close();
      await b.context.close().catch(() => {});
    }
  });

  // Last: it replaces the server.
  it("survives a server restart: surfaces the other_epoch gap, sends the queued publish, loses nothing", async () => {
    const reader = await openPage();
    try {
      const { page } = reader;
      await page.evaluate(([url, tok]) => window.T.open("r", url, tok), [server.url, token({ mode: "r", sub: "reader", exp: hour() })]);
      await page.evaluate(() => window.T.subscribe("r", "b-restart"));
      // Presence too: a "ghost" in the writer's page is in the room, and is closed for good while
      // the server is down, so only the new server's snapshot can tell the reader it is gone.
      await page.evaluate(() => window.T.watch("r", "b-restart-room"));
      await writer.page.evaluate(([url, tok]) => window.T.open("ghost", url, tok), [server.url, token({ mode: "r", sub: "ghost", exp: hour() })]);
      await writer.page.evaluate(() => window.T.watch("ghost", "b-restart-room"));
      await until(page, "r", (i) => i.subs["b-restart-room"].now.members.ghost === 1, "the ghost in the reader's presence");
      await publish(0, 5, "b-restart");
      await receive(page, "r", "b-restart", 5, "before the restart");
      const port = server.port;
      await server.stop();
      await until(page, "r", (i) => i.closes.length >= 1 && i.state !== "open", "the reader to see the server go");
      await until(writer.page, "w", (i) => i.state !== "open", "the writer to see the server go");
      await writer.page.evaluate(() => window.T.close("ghost"));
      // Made while the server is down: waits in the client for the connection. (Another channel:
      // it may reach the new server before the reader resubscribed, when the window of the
      // channel may not exist yet.)
      await writer.page.evaluate(() => window.T.publishLater("w", "queued", "b-restart-queue", "x"));
      server = await start(port);
      const queued = await writer.page.evaluate(() => window.T.settled("queued"));
      assert.equal(queued.ack?.channel, "b-restart-queue", `the queued publish is acknowledged (${JSON.stringify(queued)})`);
      await until(page, "r", (i) => i.subs["b-restart"].subscribed === 2, "the resubscription");
      // The snapshot follows `subscribed` at once; the state must become exactly the new one.
      await until(
        page,
        "r",
        (i) => {
          const room = i.subs["b-restart-room"];
          return room.subscribed === 2 && JSON.stringify(room.now) === JSON.stringify({ members: { reader: 1 }, states: {}, anonymous: 0, count: 1 });
        },
        "the new server's snapshot to replace the presence state (no ghost)",
      );
      await publish(5, 10, "b-restart");
      await receive(page, "r", "b-restart", 10, "after the restart");
      const i = await info(page, "r");
      const got = i.subs["b-restart"];
      assert.deepEqual(
        got.gaps.map((g) => g.reason),
        ["other_epoch"],
        "the restart is surfaced as one other_epoch gap",
      );
      assert.deepEqual(got.numbers, range(0, 10), "nothing lost before, across or after the restart");
      assert.equal(i.closes[0].code, 1001, "the server said it was shutting down");
    } finally {
      await reader.context.close();
    }
  });
});

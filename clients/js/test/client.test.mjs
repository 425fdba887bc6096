// pgws-client against a real pgws (--embedded): publish and receive, a cut connection resumed
// exactly, a server restart (gap, resubscribe, queued publish), and a token expiring mid-session
// (refreshed in band; and, when the refresh fails, a 3001 close, a reconnection and an exact
// resume). Every message is numbered and what each subscriber got is checked for loss,
// duplicates and order.
//
//   PGWS_BIN=/path/to/pgws npm test

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";

import { PgwsClient, PgwsError } from "../src/index.js";
import { WAIT_MS, next, proxy, startServer, token, withTimeout } from "./harness.mjs";

const hour = () => Math.floor(Date.now() / 1000) + 3600;
const writerToken = () => token({ mode: "rw", sub: "writer", exp: hour() });
const readerToken = () => token({ mode: "r", sub: "reader", exp: hour() });

function client(url, tok, extra = {}) {
  return new PgwsClient({ url, token: tok, WebSocket, minDelay: 100, maxDelay: 1000, ...extra }).connect();
}

/** Collects the numbered payloads a subscription receives, and its gaps. */
function collect(sub) {
  const got = { numbers: [], gaps: [] };
  sub.on("message", (m) => got.numbers.push(Number(m.json().payload)));
  sub.on("gap", (g) => got.gaps.push(g));
  return got;
}

/** Waits until `got.numbers` holds `n` numbers. */
async function until(got, n, what) {
  const start = Date.now();
  while (got.numbers.length < n) {
    if (Date.now() - start > WAIT_MS) throw new Error(`timed out: ${what} (have ${got.numbers.length}/${n})`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Waits until `cond()` holds, within WAIT_MS. */
async function waitFor(cond, what) {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > WAIT_MS) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The subscription's confirmation, within WAIT_MS. */
const ready = (sub) => withTimeout(sub.ready(), WAIT_MS, `the subscription to ${sub.channel}`);

const range = (a, b) => Array.from({ length: b - a }, (_, i) => a + i);

async function publishAll(writer, channel, from, to) {
  for (const n of range(from, to)) {
    const ack = await writer.publish(channel, String(n));
    assert.equal(ack.channel, channel);
  }
}

describe("pgws-client", () => {
  let server;
  before(async () => {
    server = await startServer(0, "client-test");
  });
  after(async () => {
    await server?.stop();
  });

  it("publishes with acks and nacks, and receives in order", async () => {
    const writer = client(server.url, writerToken);
    const reader = client(server.url, readerToken());
    try {
      const sub = reader.subscribe("chat");
      const got = collect(sub);
      await ready(sub);
      assert.equal(reader.welcome.mode, "r");
      await publishAll(writer, "chat", 0, 20);
      await until(got, 20, "20 messages");
      assert.deepEqual(got.numbers, range(0, 20));
      await assert.rejects(reader.publish("chat", "x"), (e) => e instanceof PgwsError && e.code === "read_only");
      const narrow = client(server.url, token({ mode: "rw", channels: ["a"], exp: hour() }));
      await assert.rejects(narrow.publish("b", "x"), (e) => e.code === "not_granted");
      const refused = narrow.subscribe("b");
      await assert.rejects(ready(refused), (e) => e.code === "not_granted");
      narrow.close();
    } finally {
      writer.close();
      reader.close();
    }
  });

  it("resumes exactly after the connection is cut", async () => {
    const p = await proxy(server.port);
    const writer = client(server.url, writerToken);
    const reader = client(p.url, readerToken);
    try {
      const sub = reader.subscribe("cut");
      const got = collect(sub);
      await ready(sub);
      await publishAll(writer, "cut", 0, 10);
      await until(got, 10, "before the cut");
      p.up = false;
      const closed = next(reader, "close", "the reader's socket to close");
      p.cut();
      const c = await closed;
      assert.deepEqual(c, { code: 1006, reason: "connection lost without a close frame" }, "a close without a frame is described");
      assert.notEqual(reader.state, "open");
      await publishAll(writer, "cut", 10, 30); // while the reader is away
      p.up = true;
      await next(sub, "subscribed", "the resubscription");
      await publishAll(writer, "cut", 30, 40);
      await until(got, 40, "replayed and live");
      assert.deepEqual(got.numbers, range(0, 40), "none lost, none twice, in order");
      assert.deepEqual(got.gaps, [], "an exact resume has no gap");
      assert.ok(reader.connections >= 2);
    } finally {
      writer.close();
      reader.close();
      await p.close();
    }
  });

  it("survives a server restart: reconnects, reports the gap, sends queued publishes", async () => {
    const port = server.port;
    const writer = client(server.url, writerToken);
    const reader = client(server.url, readerToken);
    try {
      const sub = reader.subscribe("restart");
      const got = collect(sub);
      await ready(sub);
      await publishAll(writer, "restart", 0, 3);
      await until(got, 3, "before the restart");
      const down = next(writer, "close", "the writer's socket to close");
      await server.stop();
      const c = await down;
      assert.equal(c.code, 1001);
      assert.ok(c.reason.length > 0, "the close has a text");
      const queued = writer.publish("restart-queue", "x"); // waits for the connection
      server = await startServer(port, "client-test");
      const gap = await next(sub, "gap", "a gap after the restart");
      assert.equal(gap.reason, "other_epoch", "positions of the old process are another epoch");
      await ready(sub);
      const ack = await withTimeout(queued, WAIT_MS, "the queued publish");
      assert.equal(ack.channel, "restart-queue");
      await publishAll(writer, "restart", 3, 6);
      await until(got, 6, "after the restart");
      assert.deepEqual(got.numbers, range(0, 6));
    } finally {
      writer.close();
      reader.close();
    }
  });

  it("refreshes an expiring token in band: one connection, no 3001", async () => {
    let issued = 0;
    const shortToken = () => {
      issued += 1;
      return token({ mode: "r", sub: "short", exp: Math.floor(Date.now() / 1000) + 3 });
    };
    const writer = client(server.url, writerToken);
    const reader = client(server.url, shortToken, { refreshRatio: 0.5, refreshMinLead: 1000 });
    const closes = [];
    reader.on("close", (c) => closes.push(c));
    try {
      const sub = reader.subscribe("fresh");
      const got = collect(sub);
      await ready(sub);
      const firstExp = reader.welcome.exp;
      let refreshed = 0;
      reader.on("refreshed", () => (refreshed += 1));
      // Past the first token's exp, and two refreshes.
      await next(reader, "refreshed", "a first refresh", () => true, 10_000);
      await next(reader, "refreshed", "a second refresh", (r) => r.exp > firstExp, 10_000);
      while (Date.now() / 1000 < firstExp + 0.5) await new Promise((r) => setTimeout(r, 100));
      await publishAll(writer, "fresh", 0, 5);
      await until(got, 5, "messages after the first exp");
      assert.deepEqual(got.numbers, range(0, 5));
      assert.deepEqual(closes, [], "never closed");
      assert.equal(reader.connections, 1);
      assert.ok(refreshed >= 2 && issued >= 3);
    } finally {
      writer.close();
      reader.close();
    }
  });

  it("does not refresh in a loop when every token lives less than refreshMinLead", async () => {
    let issued = 0;
    // 3 s tokens against the default 5 s lead: without a floor the client would refresh back to
    // back, as fast as the round trip.
    const shortToken = () => {
      issued += 1;
      return token({ mode: "r", sub: "short", exp: Math.floor(Date.now() / 1000) + 3 });
    };
    const reader = client(server.url, shortToken);
    try {
      const sub = reader.subscribe("loop");
      await ready(sub);
      await next(reader, "refreshed", "a first refresh", () => true, 10_000);
      const from = issued;
      const started = Date.now();
      await new Promise((r) => setTimeout(r, 2000));
      const rate = (issued - from) / ((Date.now() - started) / 1000);
      assert.ok(rate <= 2, `at most about one refresh a second, got ${issued - from} in 2 s`);
      assert.equal(reader.connections, 1);
    } finally {
      reader.close();
    }
  });

  it("when a refresh fails, the server closes at exp and the client resumes on a new connection", async () => {
    let calls = 0;
    let closedOnce = false;
    const flaky = () => {
      calls += 1;
      // Refreshes on the first connection get a bad token; the reconnection gets a good one.
      if (calls > 1 && !closedOnce) return "not-a-token";
      return token({ mode: "r", sub: "flaky", exp: Math.floor(Date.now() / 1000) + (calls === 1 ? 3 : 3600) });
    };
    const writer = client(server.url, writerToken);
    const reader = client(server.url, flaky, { refreshRatio: 0.3, refreshMinLead: 1000 });
    reader.on("close", () => (closedOnce = true));
    try {
      const sub = reader.subscribe("flaky");
      const got = collect(sub);
      await ready(sub);
      await publishAll(writer, "flaky", 0, 3);
      await until(got, 3, "before the expiry");
      const err = await next(reader, "error", "the refused refresh", (e) => e.code === "bad_token", 10_000);
      assert.equal(err.code, "bad_token");
      const closed = await next(reader, "close", "the 3001 close", () => true, 10_000);
      assert.equal(closed.code, 3001);
      await publishAll(writer, "flaky", 3, 8); // while it reconnects, or just after
      await ready(sub);
      await publishAll(writer, "flaky", 8, 10);
      await until(got, 10, "all ten");
      assert.deepEqual(got.numbers, range(0, 10), "exact across the reconnection");
      assert.deepEqual(got.gaps, []);
      assert.equal(reader.connections, 2);
    } finally {
      writer.close();
      reader.close();
    }
  });
  it("follows presence: snapshot, named and anonymous joins and leaves, a new snapshot after a reconnection", async () => {
    const p = await proxy(server.port);
    const named = (sub) => client(server.url, token({ mode: "r", sub, exp: hour() }));
    const watcher = client(p.url, token({ mode: "r", sub: "watcher", exp: hour() }));
    const others = [];
    try {
      const room = watcher.subscribe("room", { presence: true });
      assert.equal(room.presence(), null, "no state before the snapshot");
      const first = await next(room, "presence", "the first snapshot");
      await ready(room);
      assert.deepEqual(first, room.presence());
      assert.deepEqual(first.members, { watcher: 1 }, "the watcher sees itself");
      assert.equal(first.anonymous, 0);
      assert.equal(first.count, 1);
      const joins = [];
      const leaves = [];
      room.on("join", (j) => joins.push(j));
      room.on("leave", (l) => leaves.push(l));
      const states = [];
      room.on("presence", (s) => states.push(s));

      /** Opens a client that joins the room, and waits until the watcher saw it. */
      const join = async (c, member) => {
        others.push(c);
        const seen = next(room, "join", `${member ?? "anonymous"} to join`, (j) => j.member === member);
        await ready(c.subscribe("room", { presence: true }));
        return seen;
      };
      const alice1 = named("alice");
      let j = await join(alice1, "alice");
      assert.deepEqual([j.type, j.channel, j.connections, j.count], ["join", "room", 1, 2]);
      assert.deepEqual(room.presence(), { members: { watcher: 1, alice: 1 }, states: {}, anonymous: 0, count: 2 });
      const alice2 = named("alice");
      await join(alice2, "alice");
      assert.deepEqual(room.presence().members, { watcher: 1, alice: 2 });
      const anon = client(server.url, token({ mode: "r", exp: hour() }));
      j = await join(anon, null);
      assert.equal(j.member, null);
      assert.deepEqual(room.presence(), { members: { watcher: 1, alice: 2 }, states: {}, anonymous: 1, count: 4 });

      // A leave by unsubscribing, and one by closing the socket.
      let seen = next(room, "leave", "alice's first connection to leave", (l) => l.member === "alice");
      alice1.subscribe("room").unsubscribe();
      let l = await seen;
      assert.deepEqual([l.type, l.connections, l.count, l.reason], ["leave", 1, 3, "left"]);
      assert.deepEqual(room.presence().members, { watcher: 1, alice: 1 });
      seen = next(room, "leave", "the anonymous connection to leave", (l) => l.member === null);
      anon.close();
      l = await seen;
      assert.equal(l.reason, "left");
      const before = room.presence();
      assert.deepEqual(before, { members: { watcher: 1, alice: 1 }, states: {}, anonymous: 0, count: 2 });
      // Every change gave a new object; older ones were never modified.
      assert.equal(new Set(states).size, states.length);
      assert.deepEqual(states[0], { members: { watcher: 1, alice: 1 }, states: {}, anonymous: 0, count: 2 });
      assert.deepEqual(joins.map((x) => x.member), ["alice", "alice", null]);
      assert.deepEqual(leaves.map((x) => x.member), ["alice", null]);

      // Cut the watcher; bob joins while it is away: the new snapshot replaces the state.
      p.up = false;
      const closed = next(watcher, "close", "the watcher's socket to close");
      p.cut();
      await closed;
      assert.deepEqual(room.presence(), before, "the last known state stays until the snapshot");
      const bob = named("bob");
      others.push(bob);
      await ready(bob.subscribe("room", { presence: true }));
      const snapshot = next(room, "presence", "the snapshot after the reconnection", (s) => s.members.bob === 1);
      p.up = true;
      const after = await snapshot;
      assert.deepEqual(after, { members: { watcher: 1, alice: 1, bob: 1 }, states: {}, anonymous: 0, count: 3 });
      assert.equal(room.presence(), after);
      assert.ok(watcher.connections >= 2);
    } finally {
      for (const c of others) c.close();
      watcher.close();
      await p.close();
    }
  });
  it("member states: set and seen, replaced, cleared, refused, set again after a reconnection", async () => {
    const p = await proxy(server.port);
    const watcher = client(server.url, token({ mode: "r", sub: "watcher", exp: hour() }));
    const alice = client(p.url, token({ mode: "r", sub: "alice", exp: hour() }));
    const anon = client(server.url, token({ mode: "r", exp: hour() }));
    try {
      const room = watcher.subscribe("state-room", { presence: true });
      await next(room, "presence", "the first snapshot");
      const mine = alice.subscribe("state-room");
      // Called before the subscription is confirmed: sent once it is.
      const early = mine.setState({ typing: true });
      const seen = next(room, "presence_state", "alice's state", (e) => e.member === "alice");
      const answer = await early;
      assert.equal(answer.type, "presence_set");
      assert.deepEqual((await seen).state, { typing: true });
      assert.deepEqual(room.presence().states, { alice: { typing: true } });
      assert.deepEqual(room.presence().members, { watcher: 1, alice: 1 });

      let changed = next(room, "presence_state", "the new state", (e) => e.member === "alice");
      await mine.setState({ cursor: [3, 4] });
      assert.deepEqual((await changed).state, { cursor: [3, 4] });
      assert.deepEqual(room.presence().states, { alice: { cursor: [3, 4] } });

      await assert.rejects(mine.setState("x".repeat(2000)), (e) => e instanceof PgwsError && e.code === "too_large");
      await assert.rejects(mine.setState(10n), TypeError);
      const anonRoom = anon.subscribe("state-room");
      await ready(anonRoom);
      await assert.rejects(anonRoom.setState(1), (e) => e instanceof PgwsError && e.code === "anonymous");

      // Alice's connection is cut: her state goes with her, and comes back with her.
      const gone = next(room, "leave", "alice to leave", (l) => l.member === "alice");
      p.up = false;
      p.cut();
      await gone;
      assert.deepEqual(room.presence().states, {}, "a member gone has no state");
      const back = next(room, "presence_state", "alice's state again", (e) => e.member === "alice");
      p.up = true;
      assert.deepEqual((await back).state, { cursor: [3, 4] });
      assert.ok(alice.connections >= 2);

      changed = next(room, "presence_state", "the state cleared", (e) => e.member === "alice");
      await mine.setState(null);
      assert.equal((await changed).state, null);
      assert.deepEqual(room.presence().states, {});
    } finally {
      alice.close();
      anon.close();
      watcher.close();
      await p.close();
    }
  });
  it("keeps presence members with any name, __proto__ included", async () => {
    const named = (sub) => client(server.url, token({ mode: "r", sub, exp: hour() }));
    const watcher = named("constructor");
    const odd = named("__proto__");
    try {
      const room = watcher.subscribe("odd-room", { presence: true });
      await next(room, "presence", "the first snapshot");
      const joined = next(room, "join", "__proto__ to join");
      await ready(odd.subscribe("odd-room", { presence: true }));
      await joined;
      const state = room.presence();
      assert.deepEqual(Object.entries(state.members).sort(), [["__proto__", 1], ["constructor", 1]]);
      assert.equal(Object.getPrototypeOf(state.members), Object.prototype, "the prototype is untouched");
      const left = next(room, "leave", "__proto__ to leave");
      odd.close();
      await left;
      assert.deepEqual(Object.entries(room.presence().members), [["constructor", 1]]);
    } finally {
      odd.close();
      watcher.close();
    }
  });
  it("a server with presence off refuses a presence subscription with presence_disabled", async () => {
    const off = await startServer(0, "client-test-presence-off", { PGWS_PRESENCE: "false" });
    const c = client(off.url, readerToken);
    try {
      const room = c.subscribe("room", { presence: true });
      const errors = [];
      room.on("error", (e) => errors.push(e.code));
      await assert.rejects(ready(room), (e) => e instanceof PgwsError && e.code === "presence_disabled");
      assert.deepEqual(errors, ["presence_disabled"]);
      assert.equal(room.state, "closed");
      assert.equal(room.presence(), null);
      const plain = c.subscribe("room");
      assert.notEqual(plain, room, "a refused subscription is forgotten: subscribing again makes a new one");
      await ready(plain);
    } finally {
      c.close();
      await off.stop();
    }
  });
  it("refuses a publish over the server's max_message_size locally, keeping the socket open", async () => {
    const writer = client(server.url, writerToken);
    const closes = [];
    writer.on("close", (c) => closes.push(c));
    try {
      // Queued before the welcome, and sent once open: both are checked against its limit.
      const early = writer.publish("big", "x".repeat(70_000));
      await next(writer, "welcome", "the welcome");
      const max = writer.welcome.max_message_size;
      assert.equal(max, 65536);
      await assert.rejects(early, (e) => e instanceof PgwsError && e.code === "too_large");
      await assert.rejects(writer.publish("big", "y".repeat(max)), (e) => e.code === "too_large" && /not sent/.test(e.message));
      await assert.rejects(writer.publish("big", { text: "é".repeat(max / 2) }), (e) => e.code === "too_large", "bytes, not characters");
      const ack = await writer.publish("big", "small");
      assert.equal(ack.channel, "big");
      assert.deepEqual(closes, [], "the socket stayed open");
      assert.equal(writer.connections, 1);
    } finally {
      writer.close();
    }
  });

  it("publishes any JSON value; m.payload() gives it back parsed, strings as before", async () => {
    const writer = client(server.url, writerToken);
    const reader = client(server.url, readerToken);
    try {
      const sub = reader.subscribe("json");
      const got = [];
      sub.on("message", (m) => got.push(m));
      await ready(sub);
      const values = [{ text: "hi", n: [1, 2.5, null], nested: { ok: true } }, [1, "two"], 42, true, null, "plain text", '{"a":1}'];
      for (const v of values) await writer.publish("json", v);
      await waitFor(() => got.length >= values.length, "every value");
      assert.deepEqual(got.map((m) => m.payload()), [values[0], values[1], 42, true, null, "plain text", { a: 1 }]);
      // Strings are sent as they are: the envelope's payload is the text, as before.
      assert.equal(got[5].json().payload, "plain text");
      assert.equal(got[6].json().payload, '{"a":1}');
      assert.equal(got[0].json().payload, JSON.stringify(values[0]));
      await assert.rejects(writer.publish("json", undefined), TypeError);
      await assert.rejects(writer.publish("json", 10n), TypeError);
    } finally {
      writer.close();
      reader.close();
    }
  });

  /** Waits `ms` (to show that nothing more happens). */
  const quiet = (ms) => new Promise((r) => setTimeout(r, ms));

  it("stops on a refused token: a fatal `refused` error, failed publishes and subscriptions, no retry", async () => {
    const bad = token({ mode: "rw", exp: hour() }, "another-secret-0123456789abcdef-0123456789");
    const c = client(server.url, bad);
    const errors = [];
    const closes = [];
    c.on("error", (e) => errors.push(e));
    c.on("close", (x) => closes.push(x));
    const queued = c.publish("chat", "x");
    const sub = c.subscribe("chat");
    const subReady = sub.ready();
    try {
      const err = await next(c, "error", "the refusal", (e) => e.fatal);
      assert.equal(err.code, "refused");
      assert.equal(err.status, 400);
      assert.match(err.message, /Error: /, "the server's reason");
      await assert.rejects(queued, (e) => e.code === "refused");
      await assert.rejects(subReady, (e) => e.code === "refused");
      assert.equal(c.state, "closed");
      await quiet(800); // minDelay is 100 ms: a retry would have happened by now
      assert.equal(c.connections, 1, "not retried");
      assert.deepEqual(errors.map((e) => e.code), ["refused"]);
      assert.equal(closes.length, 1);
      assert.equal(closes[0].code, 1006);
      assert.equal(closes[0].reason, "the websocket handshake failed");
    } finally {
      c.close();
    }
  });

  it("an expired token: fatal `expired` when given as a string, retried with a new one from a token function", async () => {
    const old = token({ mode: "rw", exp: Math.floor(Date.now() / 1000) - 10 });
    const fixed = client(server.url, old);
    fixed.on("error", () => fixed.close()); // an application giving up at the first error
    const queued = fixed.publish("chat", "x");
    try {
      const err = await next(fixed, "error", "the refusal");
      assert.deepEqual([err.code, err.fatal, err.message], ["expired", true, "Token expired"]);
      assert.equal(fixed.state, "closed");
      await assert.rejects(queued, (e) => e.code === "expired", "the publish fails with the refusal's reason");
    } finally {
      fixed.close();
    }
    let calls = 0;
    const renewing = client(server.url, () => (++calls === 1 ? old : writerToken()));
    const errors = [];
    renewing.on("error", (e) => errors.push(e));
    try {
      await next(renewing, "welcome", "the welcome with the new token");
      assert.deepEqual(errors.map((e) => [e.code, e.fatal]), [["expired", false]]);
      assert.equal(renewing.connections, 2);
      assert.equal((await renewing.publish("chat", "after renewal")).channel, "chat");
    } finally {
      renewing.close();
    }
  });

  it("a refused origin is a fatal `forbidden`", async () => {
    const strict = await startServer(0, "client-test-origins", { PGWS_ALLOWED_ORIGINS: "https://good.example" });
    const origin = "https://evil.example";
    // A browser sends its Origin with the handshake and with a cross-origin check; so do these.
    class BrowserLike extends WebSocket {
      constructor(url, protocols) {
        super(url, protocols, { origin });
      }
    }
    const fetchWithOrigin = (url, init) => fetch(url, { ...init, headers: { ...init.headers, origin } });
    const c = client(strict.url, writerToken, { WebSocket: BrowserLike, fetch: fetchWithOrigin });
    try {
      const err = await next(c, "error", "the refusal");
      assert.deepEqual([err.code, err.status, err.fatal], ["forbidden", 403, true]);
      assert.match(err.message, /Origin not allowed/);
      assert.equal(c.state, "closed");
    } finally {
      c.close();
      await strict.stop();
    }
  });

  it("keeps retrying while the server cannot be reached, reporting it once", async () => {
    const p = await proxy(server.port);
    p.up = false;
    const c = client(p.url, writerToken, { maxDelay: 200 });
    const errors = [];
    c.on("error", (e) => errors.push(e));
    try {
      while (c.connections < 4) await next(c, "close", "a failed attempt");
      assert.deepEqual(errors.map((e) => [e.code, e.fatal]), [["unreachable", false]], "one report for the outage");
      const queued = c.publish("chat", "queued while unreachable");
      p.up = true;
      await next(c, "welcome", "the connection once reachable");
      assert.equal((await withTimeout(queued, WAIT_MS, "the queued publish")).channel, "chat");
    } finally {
      c.close();
      await p.close();
    }
  });

  it("keeps retrying a full server (503): `unavailable`, reported once", async () => {
    const small = await startServer(0, "client-test-full", { PGWS_MAX_CONNECTIONS: "1" });
    const first = client(small.url, writerToken);
    let second;
    try {
      await next(first, "welcome", "the first connection");
      second = client(small.url, writerToken, { maxDelay: 200 });
      const errors = [];
      second.on("error", (e) => errors.push(e));
      while (second.connections < 3) await next(second, "close", "a refused attempt");
      assert.deepEqual(errors.map((e) => [e.code, e.fatal]), [["unavailable", false]]);
      first.close();
      await next(second, "welcome", "the connection once a slot is free");
    } finally {
      first.close();
      second?.close();
      await small.stop();
    }
  });

  it("a token endpoint that is down is reported once, then the client connects quietly", async () => {
    let calls = 0;
    let down = true;
    const endpoint = async () => {
      calls += 1;
      if (down) throw new Error("token endpoint: 502");
      return writerToken();
    };
    const c = client(server.url, endpoint, { maxDelay: 200 });
    const errors = [];
    c.on("error", (e) => errors.push(e));
    try {
      await waitFor(() => calls >= 5, "five calls of the token endpoint");
      assert.deepEqual(errors.map((e) => e.code), ["token_unavailable"], "one report, not one per attempt");
      down = false;
      await next(c, "welcome", "the welcome once the endpoint answers");
      assert.equal(errors.length, 1);
    } finally {
      c.close();
    }
  });
  it("a token endpoint down during in-band refreshes is reported once; the refresh succeeds when it is back", async () => {
    let calls = 0;
    // The first token lives 3-4 s; refreshes start after 25 % of it; calls 2 and 3 fail.
    const endpoint = async () => {
      calls += 1;
      if (calls === 2 || calls === 3) throw new Error("token endpoint: 503");
      return token({ mode: "r", sub: "endpoint", exp: Math.floor(Date.now() / 1000) + (calls === 1 ? 4 : 3600) });
    };
    const c = client(server.url, endpoint, { refreshRatio: 0.25, refreshMinLead: 1000 });
    const errors = [];
    const closes = [];
    c.on("error", (e) => errors.push(e.code));
    c.on("close", (x) => closes.push(x));
    try {
      await next(c, "refreshed", "the refresh once the endpoint is back", () => true, 10_000);
      assert.ok(calls >= 4, `two failed calls, then a good one (${calls} calls)`);
      assert.deepEqual(errors, ["refresh_failed"], "one report for the endpoint's outage");
      assert.deepEqual(closes, []);
      assert.equal(c.connections, 1);
    } finally {
      c.close();
    }
  });
  it("uses the welcome's max_message_size, or the maxMessageSize option when a server does not send it", async () => {
    const small = await startServer(0, "client-test-small-frames", { PGWS_MAX_MESSAGE_SIZE: "2048" });
    // An older server: the same pgws, its welcome without max_message_size.
    class NoLimitInWelcome extends WebSocket {
      set onmessage(fn) {
        super.onmessage = (ev) => {
          const f = JSON.parse(String(ev.data));
          if (f.type === "welcome") delete f.max_message_size;
          fn({ data: JSON.stringify(f) });
        };
      }
    }
    const told = client(small.url, writerToken);
    const option = client(small.url, writerToken, { WebSocket: NoLimitInWelcome, maxMessageSize: 2048 });
    const unknown = client(small.url, writerToken, { WebSocket: NoLimitInWelcome });
    const closes = { told: [], option: [], unknown: [] };
    for (const [k, c] of Object.entries({ told, option, unknown })) c.on("close", (x) => closes[k].push(x.code));
    try {
      const text = "z".repeat(3000);
      await waitFor(() => [told, option, unknown].every((c) => c.welcome !== null), "three welcomes");
      assert.equal(told.welcome.max_message_size, 2048);
      assert.equal(option.welcome.max_message_size, undefined);
      await assert.rejects(told.publish("small", text), (e) => e.code === "too_large");
      await assert.rejects(option.publish("small", text), (e) => e.code === "too_large");
      assert.equal((await told.publish("small", "fits")).channel, "small");
      assert.equal((await option.publish("small", "fits")).channel, "small");
      assert.deepEqual([closes.told, closes.option], [[], []], "both stay open");
      // Without either, the frame is sent and the server closes the socket.
      await assert.rejects(unknown.publish("small", text), (e) => e.code === "connection_lost");
      assert.ok([1009, 1006].includes(closes.unknown[0]), `closed by the server (${closes.unknown})`);
    } finally {
      for (const c of [told, option, unknown]) c.close();
      await small.stop();
    }
  });
});

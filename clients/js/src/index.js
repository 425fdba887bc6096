// pgws-client: the client of pgws protocol v2 (docs/PROTOCOL.md in the pgws repository).
//
// One PgwsClient keeps one websocket open for as long as it is not closed: it reconnects with
// exponential back-off and jitter, resumes every subscription from its last position, refreshes
// the token in band before it expires (when given a token callback), turns every possible loss
// into a `gap` event, and keeps each presence subscription's state (who is on the channel).
// Table channels (`table:<schema>.<table>`, a filter per subscription) also give typed `change`
// events, and `RowMap` keeps a table's rows by key from them; `client.rows(table)` is a live
// collection: the table's rows (snapshot, then live), kept equal to what the server lets the
// subscriber see through reconnections, resumes and gaps (healed by a fresh snapshot).
// Zero dependencies: the global WebSocket (browsers, Node >= 22) or the constructor given as the
// `WebSocket` option (Node 20: the `ws` package).

export const PROTOCOL = "pgws.v2";

/** A failed request: `code` is the server's (docs/PROTOCOL.md §3) or one of the client's. */
export class PgwsError extends Error {
  constructor(code, message, details = {}) {
    super(message || code);
    this.name = "PgwsError";
    this.code = code;
    Object.assign(this, details);
  }
}

/** A minimal event emitter: `on` returns a function that removes the listener. */
class Emitter {
  #listeners = new Map();

  on(event, fn) {
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this.#listeners.get(event)?.delete(fn);
  }

  once(event, fn) {
    const off = this.on(event, (...args) => {
      off();
      fn(...args);
    });
    return off;
  }

  emit(event, ...args) {
    for (const fn of [...(this.#listeners.get(event) ?? [])]) {
      try {
        fn(...args);
      } catch (err) {
        // A listener's exception must not break the client's state machine.
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}

/** `JSON.parse(text)`, or the text itself when it is not JSON. */
function parsed(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** What a close without a reason of its own means (docs/PROTOCOL.md §3.3). */
const CLOSE_TEXT = {
  1000: "closed normally",
  1001: "server shutting down",
  1006: "connection lost without a close frame",
  1009: "message too big",
  3001: "JWT expired",
  4000: "slow consumer",
  4001: "no answer to pings",
};

/** Sets an own property, even one named "__proto__" (member names are the server's). */
function setOwn(obj, key, value) {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

/** One channel the client follows, across reconnections. */
export class Subscription extends Emitter {
  #client;

  #presence = null;

  /** The last member state the server accepted (set again after each re-subscription); `null`: none. */
  #mine = null;

  /** `setState` calls made while not subscribed: settled once the state is sent after it. */
  #waiting = [];

  constructor(client, channel, since, presence, filter, snapshot) {
    super();
    this.#client = client;
    /** The channel's name. */
    this.channel = channel;
    /** The last position received (a message's, or the `subscribed` answer's); `null` before. */
    this.position = since ?? null;
    /** "pending" (not yet confirmed on the current connection), "subscribed", "left" or "closed". */
    this.state = "pending";
    /** Whether the subscription asks the server for the channel's presence. */
    this.wantsPresence = presence === true;
    /** The row filter sent with each subscribe (PostgREST syntax, table channels); `null`: none. */
    this.filter = filter || null;
    /** Whether each subscribe asks for the table's rows first (`snapshot` events, then `snapshot_end`). */
    this.snapshot = snapshot === true;
    /**
     * With `snapshot`: whether `position` may be resumed from (a `snapshot_end` came since the
     * last snapshot began); otherwise the next subscribe takes a fresh snapshot.
     */
    this.resumable = since != null;
  }

  /**
   * Who is on the channel: `{members: {name: connections}, states: {name: state}, anonymous,
   * count}`, from the last snapshot and the joins, leaves and state changes since; `null` before
   * the first snapshot (or without `presence: true`). Each change makes a new object: the
   * returned one is never modified.
   */
  presence() {
    return this.#presence;
  }

  /**
   * Sets this member's state on the channel (any JSON value, at most 1 KiB as JSON; `null`
   * clears it): others watching the channel's presence see it in `presence().states` and as a
   * `presence_state` event. The state belongs to the member (the token's `sub`): the last one
   * set by any of its connections wins. It is remembered and set again after a reconnection
   * (the server forgets it when the member's last connection leaves). Resolves once the server
   * set it (called before the subscription is confirmed: once it is, and the state sent);
   * rejects with a PgwsError: "too_large", "rate_limited" (10 a second), "anonymous" (the token
   * names no member), "presence_disabled", "not_subscribed", "connection_lost", "timeout",
   * "closed".
   */
  setState(state) {
    if (state === undefined) state = null;
    let json;
    try {
      json = JSON.stringify(state);
    } catch {
      json = undefined;
    }
    if (typeof json !== "string") return Promise.reject(new TypeError("setState: state must be a JSON value"));
    if (this.state === "closed" || this.state === "left") {
      return Promise.reject(new PgwsError("closed", "subscription closed"));
    }
    const value = JSON.parse(json);
    if (this.state === "subscribed") return this.#send(value);
    return new Promise((resolve, reject) => this.#waiting.push({ value, resolve, reject }));
  }

  /** Sends `value`; remembers it once accepted (answers come in order: the last accepted stays). */
  #send(value) {
    return this.#client._setState(this, value).then((answer) => {
      this.#mine = value;
      return answer;
    });
  }

  /** After each confirmed subscription: sends the remembered state (called by the client). */
  _resendState() {
    const waiting = this.#waiting.splice(0);
    if (this.#mine === null && waiting.length === 0) return;
    const value = waiting.length > 0 ? waiting[waiting.length - 1].value : this.#mine;
    this.#send(value).then(
      (a) => waiting.forEach((w) => w.resolve(a)),
      (e) => {
        if (waiting.length === 0) this.#client.emit("error", e);
        waiting.forEach((w) => w.reject(e));
      },
    );
  }

  /** Fails the `setState` calls waiting for a subscription (called by the client). */
  _failStates(err) {
    for (const w of this.#waiting.splice(0)) w.reject(err);
  }

  /** Applies a `presence`, `join`, `leave` or `presence_state` frame of this channel (called by the client). */
  _presenceFrame(f) {
    if (f.type === "presence") {
      const members = {};
      for (const [name, n] of Object.entries(f.members ?? {})) if (n > 0) setOwn(members, name, n);
      const states = {};
      for (const [name, v] of Object.entries(f.states ?? {})) if (Object.hasOwn(members, name)) setOwn(states, name, v);
      this.#presence = { members, states, anonymous: f.anonymous ?? 0, count: f.count ?? 0 };
      this.emit("presence", this.#presence);
      return;
    }
    const prev = this.#presence;
    if (f.type === "presence_state") {
      if (!prev) {
        this.emit(f.type, f);
        return;
      }
      const states = { ...prev.states };
      if (f.state === null || f.state === undefined) delete states[f.member];
      else setOwn(states, f.member, f.state);
      this.#presence = { ...prev, states };
      this.emit(f.type, f);
      this.emit("presence", this.#presence);
      return;
    }
    if (!prev) {
      this.emit(f.type, f); // no snapshot yet: the next snapshot holds this change
      return;
    }
    const members = { ...prev.members };
    let anonymous = prev.anonymous;
    const n = f.connections ?? 1;
    const sign = f.type === "join" ? 1 : -1;
    if (f.member === null || f.member === undefined) anonymous = Math.max(0, anonymous + sign * n);
    else {
      const left = (Object.hasOwn(members, f.member) ? members[f.member] : 0) + sign * n;
      if (left > 0) setOwn(members, f.member, left);
      else delete members[f.member];
    }
    // A member gone has no state.
    let states = prev.states;
    if (f.member != null && !Object.hasOwn(members, f.member) && Object.hasOwn(states, f.member)) {
      states = { ...states };
      delete states[f.member];
    }
    this.#presence = { members, states, anonymous, count: typeof f.count === "number" ? f.count : prev.count + sign * n };
    this.emit(f.type, f);
    this.emit("presence", this.#presence);
  }

  /** Resolves once the server confirmed the subscription (on the current connection). */
  ready() {
    if (this.state === "subscribed") return Promise.resolve(this);
    if (this.state !== "pending") return Promise.reject(new PgwsError("closed", "subscription closed"));
    return new Promise((resolve, reject) => {
      const offs = [
        this.once("subscribed", () => (offs.forEach((f) => f()), resolve(this))),
        this.once("error", (e) => (offs.forEach((f) => f()), reject(e))),
        this.once("left", (e) => (offs.forEach((f) => f()), reject(new PgwsError(e.reason, e.message)))),
      ];
    });
  }

  /** Stops following the channel (`setState` calls waiting for it are rejected with "closed"). */
  unsubscribe() {
    this.#client._unsubscribe(this);
  }
}

const DEFAULTS = {
  minDelay: 500,
  maxDelay: 30_000,
  heartbeat: 25_000,
  refreshRatio: 0.8,
  refreshMinLead: 5_000,
  publishTimeout: 15_000,
  checkTimeout: 5_000,
};

/**
 * A pgws protocol v2 connection.
 *
 * Events: `state` (one of "connecting", "open", "reconnecting", "offline", "closed"), `welcome`,
 * `refreshed`, `error` (a PgwsError the application may want to show; `fatal` when the client
 * stopped because of it), `close` ({code, reason} of each closed socket: the server's reason, or
 * the client's description when the close carried none).
 */
export class PgwsClient extends Emitter {
  #opts;
  #WebSocket;
  #ws = null;
  #subs = new Map(); // channel -> Subscription
  #pending = new Map(); // id -> {resolve, reject, kind, timer}
  #queue = []; // publishes waiting for a connection
  #nextId = 1;
  #attempt = 0;
  #timers = new Set();
  #reconnectTimer = null;
  #refreshTimer = null;
  #heartbeatTimer = null;
  #lastFrame = 0;
  #closed = false;
  #started = false;
  #offline = false;
  #online = null;
  #offlineFn = null;
  #reported = new Set(); // codes of temporary problems reported since the last welcome

  /**
   * @param {object} opts
   * @param {string} opts.url  the server's websocket URL (e.g. "wss://host/")
   * @param {string | (() => string | Promise<string>)} opts.token  a token, or a function that
   *   fetches one (called at every connection and before each `exp` for an in-band refresh)
   */
  constructor(opts) {
    super();
    if (!opts || typeof opts.url !== "string") throw new TypeError("PgwsClient: opts.url is required");
    if (typeof opts.token !== "string" && typeof opts.token !== "function") {
      throw new TypeError("PgwsClient: opts.token must be a string or a function");
    }
    this.#opts = { ...DEFAULTS, ...opts };
    this.#WebSocket = opts.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") {
      throw new TypeError("PgwsClient: no global WebSocket; pass the WebSocket option (e.g. the 'ws' package on Node 20)");
    }
    /** The current state (see the `state` event). */
    this.state = "idle";
    /** The last `welcome` frame (mode, channels, exp, limits), `null` before the first. */
    this.welcome = null;
    /** Connections opened so far (1 + reconnections). */
    this.connections = 0;
  }

  /** Opens the connection (and keeps it open until `close()`). Idempotent. */
  connect() {
    if (this.#started || this.#closed) return this;
    this.#started = true;
    this.#watchNetwork();
    this.#open();
    return this;
  }

  /**
   * Follows `channel`; the returned subscription emits `message` ({channel, position, data,
   * json(), payload()}), `gap`, `subscribed`, `left` and `error`; with `presence: true` also `presence`
   * (the whole state, see `Subscription.presence()`), `join` and `leave`; on a table channel
   * (`table:<schema>.<table>`) also `change` (see `toChange`). `since`: a position to resume
   * after; `filter`: a table channel's row filter (PostgREST syntax: "done=eq.false&select=id,title");
   * `snapshot`: a table channel starts with its current rows (`snapshot` events, then
   * `snapshot_end` or `snapshot_failed`; `client.rows` does the bookkeeping).
   */
  subscribe(channel, { since, presence, filter, snapshot } = {}) {
    if (this.#closed) throw new PgwsError("closed", "client closed");
    if (filter != null && typeof filter !== "string") throw new TypeError("subscribe: filter must be a string");
    if (this.#subs.has(channel)) return this.#subs.get(channel);
    const sub = new Subscription(this, channel, since, presence, filter, snapshot);
    this.#subs.set(channel, sub);
    if (this.#isOpen()) this.#sendSubscribe(sub);
    return sub;
  }

  /**
   * Publishes `data` to `channel`: a string is sent as it is, any other JSON value as its JSON
   * text. Resolves with the ack ({channel, position}) once PostgreSQL accepted it; rejects with
   * a PgwsError: the nack's code, "too_large" (over the server's frame limit: not sent),
   * "connection_lost" (sent, but the connection ended before the answer: it may or may not have
   * been published), "timeout", "closed", or the code of a refusal that stopped the client.
   */
  publish(channel, data) {
    if (this.#closed) return Promise.reject(new PgwsError("closed", "client closed"));
    if (typeof data !== "string") {
      try {
        data = JSON.stringify(data);
      } catch {
        data = undefined;
      }
      if (typeof data !== "string") return Promise.reject(new TypeError("publish: data must be a JSON value"));
    }
    return new Promise((resolve, reject) => {
      const job = { channel, data, resolve, reject };
      if (this.#isOpen()) this.#sendPublish(job);
      else this.#queue.push(job);
    });
  }

  /**
   * A live collection of `table`'s rows ("public.todos"; "todos" is in "public"): snapshot, then
   * live, healed by a fresh snapshot after any gap. `filter`: PostgREST syntax; `select`: the
   * columns (array or "a,b"); `key`: the key columns (default: the row's columns outside
   * `select`, else `["id"]`). Throws `already_subscribed` when the channel is followed.
   */
  rows(table, { filter, select, key } = {}) {
    const channel = `table:${table.startsWith("table:") ? table.slice(6) : table.includes(".") ? table : `public.${table}`}`;
    if (this.#subs.has(channel)) throw new PgwsError("already_subscribed", `${channel} is already followed`);
    if (Array.isArray(select)) select = select.join(",");
    const f = [filter, select && `select=${select}`].filter(Boolean).join("&");
    const sel = select ? select.split(",").map((c) => decodeURIComponent(c.trim())) : null;
    return new Collection(this, this.subscribe(channel, { filter: f, snapshot: true }), key, sel, this.#opts);
  }

  /** Closes the connection for good; pending publishes are rejected with "closed". */
  close() {
    this.#shut(new PgwsError("closed", "client closed"));
  }

  // ------------------------------------------------------------------ internals

  /**
   * Stops for good: pending and queued publishes are rejected with `err`; a fatal `err` (a
   * refusal) is also each subscription's `error`, so that waiting `ready()`s end.
   */
  #shut(err) {
    if (this.#closed) return;
    this.#closed = true;
    this.#unwatchNetwork();
    this.#clearTimers();
    for (const job of this.#queue.splice(0)) job.reject(err);
    this.#failPending(err.code, err.message);
    for (const sub of this.#subs.values()) {
      sub.state = "closed";
      sub._failStates(err);
      if (err.fatal) sub.emit("error", err);
    }
    this.#subs.clear();
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      try {
        ws.close(1000, "client closed");
      } catch {
        // already closed
      }
    }
    this.#setState("closed");
  }

  /** Emits a temporary problem once until the next welcome (an outage is one report, not one per attempt). */
  #report(err) {
    if (this.#reported.has(err.code)) return;
    this.#reported.add(err.code);
    this.emit("error", err);
  }

  _unsubscribe(sub) {
    if (this.#subs.get(sub.channel) !== sub) return;
    this.#subs.delete(sub.channel);
    const wasConfirmed = sub.state === "subscribed" || sub.state === "pending";
    sub.state = "closed";
    sub._failStates(new PgwsError("closed", "subscription closed"));
    if (wasConfirmed && this.#isOpen()) {
      this.#request({ type: "unsubscribe", channel: sub.channel }, "unsubscribe").catch(() => {});
    }
  }

  /**
   * Takes a fresh snapshot for `sub` (a gap, a failed snapshot): unsubscribe and subscribe again
   * without `since`; when not subscribed, the next subscribe does it.
   */
  _resnapshot(sub) {
    sub.resumable = false;
    if (this.#subs.get(sub.channel) !== sub || sub.state !== "subscribed" || !this.#isOpen()) return;
    this.#request({ type: "unsubscribe", channel: sub.channel }, "unsubscribe").catch(() => {});
    this.#sendSubscribe(sub);
  }

  /** Sends `presence_set` for `sub` (its state when answered). */
  _setState(sub, state) {
    if (this.#closed) return Promise.reject(new PgwsError("closed", "client closed"));
    if (!this.#isOpen()) return Promise.reject(new PgwsError("connection_lost", "not connected"));
    return this.#request({ type: "presence_set", channel: sub.channel, state }, "presence_set");
  }

  #isOpen() {
    return this.#ws !== null && this.welcome !== null && this.state === "open";
  }

  #setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", state);
  }

  #timer(fn, ms) {
    const t = setTimeout(() => {
      this.#timers.delete(t);
      fn();
    }, ms);
    this.#timers.add(t);
    return t;
  }

  #clearTimer(t) {
    if (t) {
      clearTimeout(t);
      this.#timers.delete(t);
    }
  }

  #clearTimers() {
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    this.#reconnectTimer = this.#refreshTimer = this.#heartbeatTimer = null;
  }

  async #token() {
    const t = this.#opts.token;
    return typeof t === "function" ? await t() : t;
  }

  async #open() {
    if (this.#closed) return;
    if (this.#offline) {
      this.#setState("offline"); // e.g. connect() while the browser is offline: wait for "online"
      return;
    }
    this.#setState(this.connections === 0 ? "connecting" : "reconnecting");
    let token;
    try {
      token = await this.#token();
    } catch (err) {
      this.#report(new PgwsError("token_unavailable", `the token callback failed: ${err?.message ?? err}`));
      this.#scheduleReconnect();
      return;
    }
    if (this.#closed || this.#offline) return;
    let ws;
    try {
      ws = new this.#WebSocket(this.#opts.url, [PROTOCOL, `bearer.${token}`]);
    } catch (err) {
      this.emit("error", new PgwsError("connect_failed", String(err?.message ?? err)));
      this.#scheduleReconnect();
      return;
    }
    this.connections += 1;
    this.#ws = ws;
    this.welcome = null;
    let opened = false;
    ws.onopen = () => {
      if (ws !== this.#ws) return;
      opened = true;
      if (ws.protocol !== PROTOCOL) {
        this.emit("error", new PgwsError("protocol", `the server did not accept ${PROTOCOL} (got '${ws.protocol}')`));
        ws.close(1000, "protocol not supported");
      }
      this.#lastFrame = Date.now();
      this.#armHeartbeat();
    };
    ws.onmessage = (ev) => {
      if (ws !== this.#ws) return;
      this.#lastFrame = Date.now();
      let frame;
      try {
        frame = JSON.parse(typeof ev.data === "string" ? ev.data : String(ev.data));
      } catch {
        this.emit("error", new PgwsError("bad_frame", "the server sent a frame that is not JSON"));
        return;
      }
      this.#onFrame(frame);
    };
    ws.onerror = () => {
      // Always followed by `close`, which reconnects.
    };
    ws.onclose = (ev) => {
      if (ws !== this.#ws) return;
      this.#ws = null;
      this.welcome = null;
      this.#clearTimer(this.#refreshTimer);
      this.#clearTimer(this.#heartbeatTimer);
      this.#refreshTimer = this.#heartbeatTimer = null;
      this.#failPending("connection_lost", `the connection closed (${ev.code}) before the answer`);
      for (const sub of this.#subs.values()) sub.state = "pending";
      const reason = ev.reason || (opened ? CLOSE_TEXT[ev.code] ?? `closed (${ev.code})` : "the websocket handshake failed");
      this.emit("close", { code: ev.code, reason });
      if (this.#closed) return;
      if (opened || this.#offline) this.#scheduleReconnect();
      else this.#explain(token);
    };
  }

  /**
   * A handshake failed (browsers do not show why): asks the server about the token over HTTP
   * (`pgws-check: v2`, judged as the handshake is). A refused token without a token function to
   * get another, or a refused origin, stops the client with a fatal `error` (`refused`,
   * `expired`, `forbidden`); anything else (the server full or rate limiting, the database down,
   * no answer) is reported once and retried with back-off.
   */
  async #explain(token) {
    this.#setState("reconnecting");
    const fetch = this.#opts.fetch === undefined ? globalThis.fetch : this.#opts.fetch;
    let code = "unreachable";
    let text = "no answer from the server";
    let status;
    if (typeof fetch === "function") {
      try {
        const r = await fetch(this.#opts.url.replace(/^ws/i, "http"), {
          headers: { "pgws-check": "v2", authorization: `Bearer ${token}` },
          cache: "no-store",
          credentials: "omit",
          signal: AbortSignal.timeout?.(this.#opts.checkTimeout),
        });
        status = r.status;
        const body = (await r.text()).trim();
        code = status === 403 ? "forbidden" : status !== 400 ? "unavailable" : /expired/i.test(body) ? "expired" : "refused";
        text = r.ok
          ? "the token is valid, but the websocket did not open (server full or busy, or a proxy)"
          : body || `HTTP ${status}`;
      } catch {
        // no answer: unreachable
      }
    }
    if (this.#closed || this.#ws) return; // closed, or reconnected meanwhile (back online)
    const fatal = code === "forbidden" || (typeof this.#opts.token !== "function" && (code === "refused" || code === "expired"));
    const err = new PgwsError(code, text, { status, fatal });
    if (fatal) {
      this.#shut(err); // first: what waits is failed with this reason even if a listener closes
      this.emit("error", err);
    } else {
      this.#report(err);
      this.#scheduleReconnect();
    }
  }

  #scheduleReconnect() {
    if (this.#closed || this.#offline) return;
    this.#setState("reconnecting");
    const { minDelay, maxDelay } = this.#opts;
    const base = Math.min(maxDelay, minDelay * 2 ** this.#attempt);
    this.#attempt += 1;
    // "Equal jitter": half fixed, half random, so reconnections of many clients spread out.
    const delay = base / 2 + Math.random() * (base / 2);
    this.#clearTimer(this.#reconnectTimer);
    this.#reconnectTimer = this.#timer(() => {
      this.#reconnectTimer = null;
      this.#open();
    }, delay);
  }

  #armHeartbeat() {
    const every = this.#opts.heartbeat;
    if (!every) return;
    this.#clearTimer(this.#heartbeatTimer);
    this.#heartbeatTimer = this.#timer(() => {
      this.#heartbeatTimer = null;
      const ws = this.#ws;
      if (!ws) return;
      if (Date.now() - this.#lastFrame > 2 * every) {
        // Nothing heard, not even our pongs: the connection is dead without a close.
        this.emit("error", new PgwsError("heartbeat", "no answer from the server; reconnecting"));
        this.#drop(ws);
        return;
      }
      if (this.#isOpen()) this.#request({ type: "ping" }, "ping").catch(() => {});
      this.#armHeartbeat();
    }, every);
  }

  /** Abandons a socket at once (its close event may take long on a dead network). */
  #drop(ws) {
    try {
      ws.close(4002, "client heartbeat");
    } catch {
      // ignore
    }
    if (ws === this.#ws) ws.onclose?.({ code: 1006, reason: "abandoned" });
  }

  #onFrame(f) {
    switch (f.type) {
      case "welcome":
        this.welcome = f;
        this.#attempt = 0;
        this.#reported.clear();
        this.#setState("open");
        this.emit("welcome", f);
        this.#scheduleRefresh(f.exp);
        for (const sub of this.#subs.values()) this.#sendSubscribe(sub);
        for (const job of this.#queue.splice(0)) this.#sendPublish(job);
        return;
      case "message": {
        const sub = this.#subs.get(f.channel);
        if (!sub) return; // unsubscribed meanwhile
        sub.position = f.position;
        sub.emit("message", {
          channel: f.channel,
          position: f.position,
          data: f.data,
          json: () => JSON.parse(f.data),
          payload: () => {
            const env = parsed(f.data);
            const p = env !== null && typeof env === "object" && Object.hasOwn(env, "payload") ? env.payload : env;
            return typeof p === "string" ? parsed(p) : p;
          },
        });
        if (f.channel.startsWith("table:")) {
          // A message that is no change (someone published to the table's channel) is reported,
          // never thrown: the subscription goes on.
          const c = toChange(f);
          if (c) sub.emit("change", c);
          else this.emit("error", new PgwsError("bad_change", `a message on ${f.channel} is not a table change`, { channel: f.channel, position: f.position }));
        }
        return;
      }
      case "gap":
      case "snapshot":
      case "snapshot_end":
      case "snapshot_failed": {
        const sub = this.#subs.get(f.channel);
        if (!sub) return;
        if (f.type === "snapshot_end") {
          sub.position = f.position;
          sub.resumable = true;
        }
        sub.emit(f.type, f);
        return;
      }
      case "left": {
        const sub = this.#subs.get(f.channel);
        if (!sub) return;
        this.#subs.delete(f.channel);
        sub.state = "left";
        sub._failStates(new PgwsError(f.reason, f.message));
        sub.emit("left", f);
        return;
      }
      case "presence":
      case "join":
      case "leave":
      case "presence_state": {
        const sub = this.#subs.get(f.channel);
        if (sub?.wantsPresence) sub._presenceFrame(f);
        return;
      }
      default:
        break;
    }
    const waiter = f.id === undefined || f.id === null ? undefined : this.#pending.get(f.id);
    if (!waiter) {
      if (f.type === "error") this.emit("error", new PgwsError(f.code, f.message));
      return;
    }
    this.#pending.delete(f.id);
    this.#clearTimer(waiter.timer);
    if (f.type === "error" || f.type === "nack") {
      waiter.reject(new PgwsError(f.code, f.message, { channel: f.channel }));
    } else {
      // At once, not in a later microtask: the frames after it (a snapshot's pages) may be
      // handled in this same task.
      waiter.onAnswer?.(f);
      waiter.resolve(f);
    }
  }

  #request(body, kind, timeout = this.#opts.publishTimeout, onAnswer) {
    const id = this.#nextId++;
    const frame = JSON.stringify({ ...body, id });
    // A frame over the server's limit would close the socket (1009), failing every request on it.
    const max = this.welcome?.max_message_size ?? this.#opts.maxMessageSize;
    const size = max ? new TextEncoder().encode(frame).length : 0;
    if (size > max) {
      return Promise.reject(new PgwsError("too_large", `the ${kind} is ${size} bytes; the server accepts at most ${max} (not sent)`));
    }
    return new Promise((resolve, reject) => {
      const timer = this.#timer(() => {
        if (this.#pending.delete(id)) reject(new PgwsError("timeout", `no answer to ${kind} within ${timeout} ms`));
      }, timeout);
      this.#pending.set(id, { resolve, reject, kind, timer, onAnswer });
      try {
        this.#ws.send(frame);
      } catch (err) {
        this.#pending.delete(id);
        this.#clearTimer(timer);
        reject(new PgwsError("connection_lost", String(err?.message ?? err)));
      }
    });
  }

  #failPending(code, message) {
    for (const [id, w] of this.#pending) {
      this.#pending.delete(id);
      this.#clearTimer(w.timer);
      w.reject(new PgwsError(code, message));
    }
  }

  #sendSubscribe(sub) {
    sub.state = "pending";
    const body = { type: "subscribe", channel: sub.channel };
    // A snapshot's position is resumable only once the snapshot ended.
    if (sub.position && (!sub.snapshot || sub.resumable)) body.since = sub.position;
    if (sub.wantsPresence) body.presence = true;
    if (sub.filter) body.filter = sub.filter;
    if (sub.snapshot) body.snapshot = true;
    const ws = this.#ws;
    const answered = (answer) => {
      if (this.#subs.get(sub.channel) !== sub || ws !== this.#ws) return;
      sub.position = answer.position;
      if (answer.snapshot) sub.resumable = false;
      sub.state = "subscribed";
      sub.emit("subscribed", answer);
      sub._resendState();
    };
    this.#request(body, "subscribe", undefined, answered).then(
      () => {},
      (err) => {
        if (err.code === "connection_lost" || err.code === "closed") return; // resubscribed later
        if (this.#subs.get(sub.channel) === sub) this.#subs.delete(sub.channel);
        sub.state = "closed";
        sub._failStates(err);
        sub.emit("error", err);
      },
    );
  }

  #sendPublish(job) {
    this.#request({ type: "publish", channel: job.channel, data: job.data }, "publish").then(
      (ack) => job.resolve({ channel: ack.channel, position: ack.position ?? null }),
      job.reject,
    );
  }

  /** Fetches a new token before `exp` and sends it in band (only with a token callback). */
  #scheduleRefresh(exp) {
    this.#clearTimer(this.#refreshTimer);
    this.#refreshTimer = null;
    if (typeof this.#opts.token !== "function" || typeof exp !== "number") return;
    const left = exp * 1000 - Date.now();
    const lead = Math.max(this.#opts.refreshMinLead, left * (1 - this.#opts.refreshRatio));
    // A token that lives less than the lead would otherwise be refreshed at once, again and
    // again: wait at least a second (half the life of a shorter token) between refreshes.
    const wait = Math.max(Math.min(1000, left / 2), left - lead);
    this.#refreshTimer = this.#timer(() => this.#refresh(exp), wait);
  }

  async #refresh(exp, tries = 0) {
    this.#refreshTimer = null;
    if (!this.#isOpen()) return;
    try {
      const token = await this.#token();
      if (!this.#isOpen()) return;
      const answer = await this.#request({ type: "refresh", token }, "refresh");
      if (this.welcome) this.welcome = { ...this.welcome, mode: answer.mode, channels: answer.channels, exp: answer.exp };
      this.#reported.delete("refresh_failed");
      this.emit("refreshed", answer);
      this.#scheduleRefresh(answer.exp);
    } catch (err) {
      if (err.code === "connection_lost" || err.code === "closed") return;
      // The server's refusal (bad_token, …) each time; a token function that throws (its
      // endpoint down) once until a refresh succeeds.
      if (err instanceof PgwsError) this.emit("error", err);
      else this.#report(new PgwsError("refresh_failed", String(err?.message ?? err)));
      // Try again, backing off, while the old token lasts; past it the server closes with 3001
      // and the reconnection fetches a new token anyway.
      const left = exp * 1000 - Date.now();
      const wait = Math.min(left / 2, 1000 * 2 ** tries, this.#opts.maxDelay);
      if (left > 1000) this.#refreshTimer = this.#timer(() => this.#refresh(exp, tries + 1), wait);
    }
  }

  #watchNetwork() {
    const w = globalThis.window ?? globalThis;
    if (typeof w.addEventListener !== "function" || typeof globalThis.navigator?.onLine !== "boolean") return;
    this.#online = () => {
      if (!this.#offline) return;
      this.#offline = false;
      this.#attempt = 0;
      this.#clearTimer(this.#reconnectTimer);
      this.#reconnectTimer = null;
      if (!this.#ws) this.#open();
    };
    this.#offlineFn = () => {
      this.#offline = true;
      this.#clearTimer(this.#reconnectTimer);
      this.#reconnectTimer = null;
      this.#setState("offline");
      if (this.#ws) this.#drop(this.#ws);
    };
    w.addEventListener("online", this.#online);
    w.addEventListener("offline", this.#offlineFn);
    if (globalThis.navigator.onLine === false) this.#offline = true;
  }

  #unwatchNetwork() {
    const w = globalThis.window ?? globalThis;
    if (this.#online && typeof w.removeEventListener === "function") {
      w.removeEventListener("online", this.#online);
      w.removeEventListener("offline", this.#offlineFn);
    }
  }
}

/**
 * A table channel's message as a change: {channel, op, schema, table, new, old, move,
 * unchangedToast, commitTime, position}; `null` when its data is not a change object.
 */
export function toChange(m) {
  const c = typeof m.data === "string" ? parsed(m.data) : null;
  if (c === null || typeof c !== "object" || typeof c.op !== "string") return null;
  return {
    channel: m.channel,
    op: c.op,
    schema: c.schema ?? null,
    table: c.table ?? null,
    new: c.new ?? null,
    old: c.old ?? null,
    move: c.move ?? null,
    unchangedToast: Array.isArray(c.unchanged_toast) ? c.unchanged_toast : [],
    commitTime: c.commit_time ?? null,
    position: m.position,
  };
}

/**
 * A table's rows by key, kept from its changes (`rows.apply(change)`): INSERT and UPDATE upsert
 * `new` (keeping the values of `unchangedToast` columns), an UPDATE with `move: "out"` removes
 * the row, DELETE removes `old`'s key, TRUNCATE clears. Keys are the JSON text of the key
 * columns' values: `keys` given, else the names in the first `old` seen (the replica identity),
 * `["id"]` until then. Rows arrive as they change: the map holds no snapshot of older rows.
 */
export class RowMap extends Map {
  constructor(keys) {
    super();
    /** The key columns; `null`: not known yet. */
    this.keyColumns = keys?.length ? [...keys] : null;
  }

  /** The map key of a row (or of a change's `old`). */
  keyOf(row) {
    return JSON.stringify((this.keyColumns ?? ["id"]).map((k) => (row && Object.hasOwn(row, k) ? row[k] : null)));
  }

  /** Applies one change; returns the map. */
  apply(c) {
    if (c.op === "TRUNCATE") {
      this.clear();
      return this;
    }
    if (!this.keyColumns && c.old && typeof c.old === "object") {
      this.keyColumns = Object.keys(c.old);
      const rows = [...this.values()];
      this.clear();
      for (const r of rows) this.set(this.keyOf(r), r);
    }
    const oldKey = c.old ? this.keyOf(c.old) : null;
    if (c.op === "DELETE" || !c.new) {
      if (oldKey !== null) this.delete(oldKey);
      return this;
    }
    const key = this.keyOf(c.new);
    const prev = this.get(oldKey ?? key);
    if (oldKey !== null && oldKey !== key) this.delete(oldKey);
    if (c.move === "out") {
      this.delete(key);
      return this;
    }
    let row = c.new;
    if (prev && c.unchangedToast?.length) {
      row = { ...row };
      for (const col of c.unchangedToast) if (Object.hasOwn(prev, col)) setOwn(row, col, prev[col]);
    }
    this.set(key, row);
    return this;
  }
}

/**
 * A table's rows, kept live (`client.rows`): the server's snapshot, then its changes, equal to
 * what the server lets the subscriber see. A new snapshot is built aside and replaces `rows` at
 * its `snapshot_end` (`reset`); a gap or a failed snapshot stops applying changes and takes a
 * fresh snapshot (unsubscribe and subscribe again, backing off), never leaving a silent hole.
 * Events: `insert` (row), `update` (row, previous row), `delete` (row), `reset` (rows: a new
 * snapshot, or TRUNCATE), `ready` (the first snapshot is in), `error` (the subscription was
 * refused or left: the collection stops).
 */
export class Collection extends Emitter {
  #client;
  #sub;
  #select;
  #building = null; // the snapshot being read, a RowMap
  #stale = false; // changes are not applied: a fresh snapshot comes
  #asked = false; // a fresh snapshot was asked for, not yet answered
  #timer = null;
  #attempt = 0;
  #opts;

  constructor(client, sub, key, select, opts) {
    super();
    this.#client = client;
    this.#sub = sub;
    this.#select = select;
    this.#opts = opts;
    this.channel = sub.channel;
    /** The rows now: a RowMap (JSON text of the key's values → row). The same object throughout. */
    this.rows = new RowMap(key?.length ? key : select ? null : ["id"]);
    /** "loading" (before the first snapshot_end), "live", "closed". */
    this.state = "loading";
    /** Snapshots completed (the first, and each after a gap, a failure or a reconnection that could not resume). */
    this.snapshots = 0;
    sub.on("subscribed", (a) => {
      this.#asked = false;
      clearTimeout(this.#timer);
      this.#timer = null;
      if (a.snapshot) {
        this.#stale = false;
        this.#building = new RowMap(this.rows.keyColumns);
      } else if (this.#stale) this.#again();
    });
    sub.on("snapshot", (f) => {
      const b = this.#building;
      if (!b || this.#stale) return;
      for (const row of f.rows) b.set(this.#keyOf(row), row);
    });
    sub.on("change", (c) => {
      if (this.#stale) return;
      if (c.new || c.old) this.#keyOf(c.new ?? c.old);
      if (this.#building) this.#building.apply(c);
      else this.#apply(c);
    });
    sub.on("snapshot_end", () => {
      const b = this.#building;
      this.#building = null;
      if (!b) return;
      if (this.#stale) return this.#again();
      this.#attempt = 0;
      this.snapshots += 1;
      this.rows.clear();
      for (const [k, v] of b) this.rows.set(k, v);
      const first = this.state === "loading";
      this.state = "live";
      this.emit("reset", this.rows);
      if (first) this.emit("ready", this.rows);
    });
    sub.on("snapshot_failed", (f) => {
      this.#building = null;
      this.emit("snapshot_failed", f);
      this.#stale = true;
      this.#again();
    });
    sub.on("gap", () => {
      this.#stale = true;
      // During a resume the answer's snapshot heals it; during a snapshot, its end does.
      if (sub.state === "subscribed" && !this.#building) this.#again();
    });
    const stop = (e) => {
      this.#end();
      this.emit("error", e);
    };
    sub.on("error", stop);
    sub.on("left", (l) => stop(new PgwsError(l.reason, l.message)));
  }

  /** The rows as an array (in the order they came). */
  toArray() {
    return [...this.rows.values()];
  }

  /** Resolves with the rows once the first snapshot is in; rejects if the collection stops first. */
  ready() {
    if (this.state === "live") return Promise.resolve(this.rows);
    if (this.state === "closed") return Promise.reject(new PgwsError("closed", "collection closed"));
    return new Promise((resolve, reject) => {
      const offs = [this.once("ready", (r) => (offs.forEach((f) => f()), resolve(r))), this.once("error", (e) => (offs.forEach((f) => f()), reject(e)))];
    });
  }

  /** Stops following the table. */
  close() {
    this.#end();
    this.#sub.unsubscribe();
  }

  #end() {
    this.state = "closed";
    clearTimeout(this.#timer);
    this.#timer = null;
  }

  /** A row's key; the key columns are taken from the first row (or old row) when not known. */
  #keyOf(row) {
    if (!this.rows.keyColumns) {
      const cols = Object.keys(row).filter((c) => !this.#select.includes(c));
      this.rows.keyColumns = cols.length ? cols : ["id"];
      if (this.#building) this.#building.keyColumns = this.rows.keyColumns;
    }
    return this.rows.keyOf(row);
  }

  /** Asks for a fresh snapshot, backing off (once at a time). */
  #again() {
    this.#sub.resumable = false;
    if (this.#timer || this.#asked || this.state === "closed") return;
    const { minDelay, maxDelay } = this.#opts;
    const base = Math.min(maxDelay, (minDelay / 2) * 2 ** this.#attempt++);
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#asked = true;
      this.#client._resnapshot(this.#sub);
    }, base / 2 + Math.random() * (base / 2));
  }

  /** Applies a live change to `rows` and tells the application what it did. */
  #apply(c) {
    const m = this.rows;
    if (c.op === "TRUNCATE") {
      m.clear();
      this.emit("reset", m);
      return;
    }
    const oldKey = c.old ? m.keyOf(c.old) : null;
    const key = c.new ? m.keyOf(c.new) : null;
    const before = m.get(oldKey ?? key);
    m.apply(c);
    const after = key === null ? undefined : m.get(key);
    if (after) this.emit(before ? "update" : "insert", after, before);
    else if (before) this.emit("delete", before);
  }
}

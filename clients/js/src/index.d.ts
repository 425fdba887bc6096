// Types of pgws-client (hand-written; the implementation is src/index.js).

/** The websocket subprotocol of pgws protocol v2. */
export declare const PROTOCOL: "pgws.v2";

/** Server codes (docs/PROTOCOL.md §3) and the client's own. */
export type ErrorCode =
  | "bad_json" | "bad_request" | "unknown_type" | "rate_limited" | "bad_channel" | "not_granted"
  | "write_only" | "already_subscribed" | "too_many_subscriptions" | "not_subscribed"
  | "bad_token" | "token_expired" | "subject_changed" | "read_only" | "too_large"
  | "database_unavailable" | "shutting_down" | "not_authorized" | "presence_disabled" | "anonymous"
  | "connection_lost" | "timeout" | "closed" | "protocol" | "heartbeat" | "token_unavailable"
  | "connect_failed" | "refresh_failed" | "bad_frame" | "bad_change"
  | "unknown_table" | "bad_filter"
  | "refused" | "expired" | "forbidden" | "unavailable" | "unreachable"
  | (string & {});

/** A JSON value (what `publish` takes besides a string: sent as its JSON text). */
export type JsonValue = string | number | boolean | null | readonly JsonValue[] | object;

/** A failed request or a problem the application may want to show. */
export declare class PgwsError extends Error {
  readonly code: ErrorCode;
  /** The channel of a nack, or of a `bad_change`. */
  readonly channel?: string;
  /** The position of a `bad_change` (a message on a table channel that is no change). */
  readonly position?: string;
  /**
   * The client stopped because of this error (state "closed"): a refused handshake that retrying
   * cannot fix (`refused` or `expired` without a token function, `forbidden`).
   */
  readonly fatal?: boolean;
  /** The HTTP status of the server's token check (`refused`, `expired`, `forbidden`, `unavailable`). */
  readonly status?: number;
  constructor(code: string, message?: string, details?: object);
}

/** A stream message of a subscribed channel. */
export interface Message {
  channel: string;
  /** Opaque; the subscription keeps the last one to resume from. */
  position: string;
  /** Exactly the text an original-protocol client receives. */
  data: string;
  /** `JSON.parse(data)`: the envelope (`{channel, event, payload, claims}` by default). */
  json<T = unknown>(): T;
  /**
   * The published payload: the envelope's `payload` (or `data` itself when it is no envelope),
   * parsed where it is JSON text (a string that is not JSON comes back as it is).
   */
  payload<T = unknown>(): T;
}

/** Messages may be missing before what follows (docs/PROTOCOL.md §4). */
export interface Gap {
  type: "gap";
  channel: string;
  reason: "window_exceeded" | "other_epoch" | "unknown_position" | "future_position" | "source_outage" | "authorization_failed" | (string & {});
  message: string;
  after?: string | null;
  through?: string | null;
  resumes_at?: string | null;
  down_ms?: number;
}

export interface Subscribed {
  type: "subscribed";
  id: number;
  channel: string;
  position: string;
  replayed: number;
  /** With `snapshot: true`: whether a snapshot follows (`false`: resumed exactly from `since`). */
  snapshot?: boolean;
}

/** One page of a snapshot's rows (filtered and projected like changes, key columns always there). */
export interface SnapshotPage<R extends object = Row> {
  type: "snapshot";
  channel: string;
  rows: R[];
}

/** The snapshot is complete; `position` is where it resumes from. */
export interface SnapshotEnd {
  type: "snapshot_end";
  channel: string;
  rows: number;
  position: string;
}

/** The snapshot could not be completed: the subscription is live, its rows incomplete (take another). */
export interface SnapshotFailed {
  type: "snapshot_failed";
  channel: string;
  code: "too_large" | "timeout" | "too_many_changes" | "database_unavailable" | (string & {});
  message: string;
}

export interface Left {
  type: "left";
  channel: string;
  reason: string;
  message: string;
}

/** Who is on a channel (`Subscription.presence()`, the `presence` event). Never modified: each change is a new object. */
export interface PresenceState {
  /** Member name (the token's `sub`, or the claim the server is configured with) → its connections. */
  members: Record<string, number>;
  /** Member name → its state (`Subscription.setState`), for the members that have one. */
  states: Record<string, JsonValue>;
  /** Connections without a member name. */
  anonymous: number;
  /** All connections: the sum of `members` and `anonymous`. */
  count: number;
}

/** The server's presence snapshot frame (docs/PROTOCOL.md). */
export interface PresenceSnapshot {
  type: "presence";
  channel: string;
  members: Record<string, number>;
  states: Record<string, JsonValue>;
  anonymous: number;
  count: number;
}

/** Connections of a member (or anonymous ones: `member` null) joined the channel. */
export interface Join {
  type: "join";
  channel: string;
  member: string | null;
  /** How many of the member's connections joined. */
  connections: number;
  /** The channel's total after the change. */
  count: number;
}

/** Connections of a member (or anonymous ones: `member` null) left the channel. */
export interface Leave {
  type: "leave";
  channel: string;
  member: string | null;
  /** How many of the member's connections left. */
  connections: number;
  /** The channel's total after the change. */
  count: number;
  /** `left`: they unsubscribed or disconnected; `node_lost`: their pgws node stopped answering. */
  reason: "left" | "node_lost" | (string & {});
}

/** A member's state changed (`state` null: it has none now). */
export interface PresenceStateChange {
  type: "presence_state";
  channel: string;
  member: string;
  state: JsonValue | null;
}

/** The server's answer to `Subscription.setState`. */
export interface PresenceSet {
  type: "presence_set";
  id: number;
  channel: string;
}

export interface Welcome {
  type: "welcome";
  protocol: "pgws.v2";
  mode: "r" | "w" | "rw" | "";
  /** `null`: every channel. */
  channels: string[] | null;
  /** Unix seconds; `null`: no expiry. */
  exp: number | null;
  max_subscriptions: number;
  max_message_size: number;
}

export interface Refreshed {
  type: "refreshed";
  id: number;
  mode: Welcome["mode"];
  channels: string[] | null;
  exp: number | null;
}

export interface Ack {
  channel: string;
  /** `null` until the server can tell it (NOTIFY gives none). */
  position: string | null;
}

/** A row as `to_jsonb` gives it (column name → JSON value). */
export type Row = Record<string, JsonValue>;

/**
 * A change of a table (a `table:<schema>.<table>` channel's message, parsed): the `change` event.
 * With a filter, `move` says that an UPDATE moved the row into it ("in": upsert `new`) or out of
 * it ("out": remove the row; `new` is still given).
 */
export interface Change<R extends object = Row> {
  channel: string;
  op: "INSERT" | "UPDATE" | "DELETE" | "TRUNCATE";
  schema: string;
  table: string;
  /** The new row (projected by the filter's `select=`, key columns always there); `null` for DELETE and TRUNCATE. */
  new: R | null;
  /** The replica identity of the old row (its key, or every column with REPLICA IDENTITY FULL); `null` when not sent. */
  old: Partial<R> | null;
  move: "in" | "out" | null;
  /** Columns left out of `new`: unchanged TOASTed values (keep your copy). */
  unchangedToast: string[];
  /** ISO 8601, UTC. */
  commitTime: string;
  /** The message's position (resume point). */
  position: string;
}

/** A message of a table channel as a change; `null` when its data is not a change. */
export declare function toChange<R extends object = Row>(m: { channel: string; position: string; data: string }): Change<R> | null;

/**
 * A table's rows by key (JSON text of the key columns' values), kept from its changes with
 * `apply`: INSERT/UPDATE upsert, `move: "out"` and DELETE remove, TRUNCATE clears. Holds only
 * rows seen changing (no snapshot).
 */
export declare class RowMap<R extends object = Row> extends Map<string, R> {
  /** `keys`: the key columns; default: the names in the first `old` seen, `["id"]` until then. */
  constructor(keys?: readonly string[]);
  /** The key columns; `null` until known. */
  keyColumns: string[] | null;
  keyOf(row: Partial<R> | null): string;
  apply(change: Change<R>): this;
}

interface CollectionEvents<R extends object = Row> {
  /** A row came in (inserted, or moved into the filter). */
  insert: (row: R) => void;
  /** A row changed (its key too, maybe): the new row and the one it replaced. */
  update: (row: R, previous: R) => void;
  /** A row went (deleted, or moved out of the filter). */
  delete: (row: R) => void;
  /** All rows replaced: a snapshot completed (the first, or a fresh one after a gap), or a TRUNCATE. */
  reset: (rows: RowMap<R>) => void;
  /** The first snapshot is in. */
  ready: (rows: RowMap<R>) => void;
  /** A snapshot failed; another is taken, backing off. */
  snapshot_failed: (f: SnapshotFailed) => void;
  /** The subscription was refused (`bad_filter`, `unknown_table`, `not_granted`, …) or left: the collection stopped. */
  error: (e: PgwsError) => void;
}

/** A table's rows kept live (`client.rows`). */
export declare class Collection<R extends object = Row> extends Emitter<CollectionEvents<R>> {
  readonly channel: string;
  /** The rows now (JSON text of the key's values → row); the same object throughout. */
  readonly rows: RowMap<R>;
  /** "loading" until the first snapshot is in, then "live"; "closed" after `close()` or a refusal. */
  readonly state: "loading" | "live" | "closed";
  /** Snapshots completed so far. */
  readonly snapshots: number;
  /** The rows as an array. */
  toArray(): R[];
  /** Resolves with the rows once the first snapshot is in. */
  ready(): Promise<RowMap<R>>;
  close(): void;
}

export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "offline" | "closed";

interface SubscriptionEvents<R extends object = Row> {
  message: (m: Message) => void;
  /** Table channels only: each message as a typed change. */
  change: (c: Change<R>) => void;
  gap: (g: Gap) => void;
  subscribed: (s: Subscribed) => void;
  left: (l: Left) => void;
  /** The whole presence state, after every snapshot, join, leave and state change (with `presence: true`). */
  presence: (p: PresenceState) => void;
  join: (j: Join) => void;
  leave: (l: Leave) => void;
  presence_state: (s: PresenceStateChange) => void;
  /** With `snapshot: true`: a page of the table's rows, then `snapshot_end` or `snapshot_failed`. */
  snapshot: (p: SnapshotPage<R>) => void;
  snapshot_end: (e: SnapshotEnd) => void;
  snapshot_failed: (f: SnapshotFailed) => void;
  error: (e: PgwsError) => void;
}

interface ClientEvents {
  state: (s: ClientState) => void;
  welcome: (w: Welcome) => void;
  refreshed: (r: Refreshed) => void;
  error: (e: PgwsError) => void;
  /**
   * Each closed socket: the close code (1006 when there was no close frame) and the server's
   * reason, or the client's description when the close carried none.
   */
  close: (c: { code: number; reason: string }) => void;
}

declare class Emitter<E extends { [K in keyof E]: (...args: any[]) => void }> {
  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof E>(event: K, fn: E[K]): () => void;
  off<K extends keyof E>(event: K, fn: E[K]): void;
  once<K extends keyof E>(event: K, fn: E[K]): () => void;
}

/** One channel the client follows, across reconnections. */
export declare class Subscription<R extends object = Row> extends Emitter<SubscriptionEvents<R>> {
  readonly channel: string;
  /** The row filter sent with each subscribe; `null`: none. */
  readonly filter: string | null;
  /** The last position received; `null` before the first. */
  readonly position: string | null;
  readonly state: "pending" | "subscribed" | "left" | "closed";
  /** Whether it was created with `presence: true`. */
  readonly wantsPresence: boolean;
  /** Whether each subscribe asks for a snapshot first (`snapshot: true`). */
  readonly snapshot: boolean;
  /** With `snapshot`: `position` may be resumed from (a `snapshot_end` came since the last snapshot began). */
  readonly resumable: boolean;
  /** The channel's presence; `null` before the first snapshot (or without `presence: true`). */
  presence(): PresenceState | null;
  /**
   * Sets this member's state on the channel (any JSON value up to 1 KiB; `null` clears it),
   * seen by the channel's presence watchers; remembered and set again after reconnections.
   * Rejects with a PgwsError ("too_large", "rate_limited", "anonymous", "presence_disabled", …).
   */
  setState(state: JsonValue | null): Promise<PresenceSet>;
  /** Resolves once the server confirmed the subscription on the current connection. */
  ready(): Promise<Subscription<R>>;
  unsubscribe(): void;
}

/** A WebSocket constructor (the browser's, Node 22's, or the `ws` package's). */
export interface WebSocketConstructor {
  new (url: string, protocols?: string | string[]): any;
}

export interface ClientOptions {
  /** The server's websocket URL, e.g. "wss://host/". */
  url: string;
  /** A token, or a function fetching one: called at each connection and before each `exp`. */
  token: string | (() => string | Promise<string>);
  /** Default: the global WebSocket. Node 20: `import WebSocket from "ws"`. */
  WebSocket?: WebSocketConstructor;
  /** First reconnection delay, ms (default 500); doubles per failed attempt, with jitter. */
  minDelay?: number;
  /** Longest reconnection delay, ms (default 30000). */
  maxDelay?: number;
  /** Client ping interval, ms (default 25000; 0: none); silence for two intervals reconnects. */
  heartbeat?: number;
  /** Refresh when this share of the token's remaining life has passed (default 0.8). */
  refreshRatio?: number;
  /** Refresh at least this long before `exp`, ms (default 5000). */
  refreshMinLead?: number;
  /** How long a request waits for its answer, ms (default 15000). */
  publishTimeout?: number;
  /**
   * The frame size limit, bytes, for servers whose `welcome` does not say it (the welcome's
   * `max_message_size` wins). Larger requests are refused locally with `too_large`.
   */
  maxMessageSize?: number;
  /**
   * The `fetch` used to ask the server why a handshake failed (`pgws-check: v2`); default the
   * global one; `null`: never ask (every failed handshake is then retried as `unreachable`).
   */
  fetch?: ((url: string, init: any) => Promise<{ ok: boolean; status: number; text(): Promise<string> }>) | null;
  /** How long that check may take, ms (default 5000). */
  checkTimeout?: number;
}

/** A pgws protocol v2 connection that reconnects, resumes and refreshes by itself. */
export declare class PgwsClient extends Emitter<ClientEvents> {
  constructor(opts: ClientOptions);
  readonly state: ClientState;
  readonly welcome: Welcome | null;
  /** Connections opened so far (1 + reconnections). */
  readonly connections: number;
  connect(): this;
  /**
   * Follows `channel` (the subscription of a channel already followed is returned as it is).
   * `since`: a position to resume after; `presence`: also follow who is on the channel;
   * `filter`: on a table channel, which rows and columns (PostgREST syntax, e.g.
   * "done=eq.false&select=id,title"; refused with `bad_filter`).
   */
  subscribe<R extends object = Row>(channel: string, opts?: { since?: string; presence?: boolean; filter?: string; snapshot?: boolean }): Subscription<R>;
  /**
   * A live collection of `table`'s rows ("public.todos", or "todos" in `public`): snapshot, then
   * live, replaced by a fresh snapshot after a gap or a failed snapshot. `filter`: PostgREST
   * syntax ("done=eq.false"); `select`: the columns; `key`: the key columns (default: the row's
   * columns outside `select`, else `["id"]`). Throws `already_subscribed` when the table's
   * channel is followed already.
   */
  rows<R extends object = Row>(table: string, opts?: { filter?: string; select?: string | readonly string[]; key?: readonly string[] }): Collection<R>;
  /**
   * Publishes `data`: a string as it is, any other JSON value as its JSON text. Rejects with a
   * PgwsError (`too_large` over the frame limit, not sent; a nack's code; `connection_lost`, …).
   */
  publish(channel: string, data: JsonValue): Promise<Ack>;
  close(): void;
}

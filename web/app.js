// pgws example page, on the pgws client library (protocol v2, clients/js in the pgws
// repository). Plain JavaScript modules, no build step: pgws serves the library itself at
// /pgws-client.js, compiled in from clients/js/src/index.js.
//
// Everything received from the network is rendered with textContent (never innerHTML), so
// channel names, payloads, names and claims cannot inject markup.

import { PgwsClient } from "./pgws-client.js";
import { mountLiveTable } from "./live-table.js";

const DEV_SECRET = "auwhfdnskjhewfi34uwehdlaehsfkuaeiskjnfduierhfsiweskjcnzeiluwhskdewishdnpwe";
const MAX_ITEMS = 200; // per list; older entries are dropped
const MAX_OUTBOX = 3; // answered publishes kept in view (pending ones always stay)
const MAX_PREVIEW = 120; // characters of a sent text shown in the outbox

const $ = (id) => document.getElementById(id);
const el = {
  form: $("connect-form"),
  connectionCard: $("connection-card"),
  settings: $("connection-settings"),
  toggleSettings: $("toggle-settings"),
  baseUrl: $("base-url"),
  channel: $("channel"),
  metaChannel: $("meta-channel"),
  srcSecret: $("token-source-secret"),
  srcPaste: $("token-source-paste"),
  signOptions: $("sign-options"),
  name: $("name"),
  secret: $("secret"),
  mode: $("mode"),
  expiresIn: $("expires-in"),
  claimChannel: $("claim-channel"),
  token: $("token"),
  tokenLabel: $("token-label"),
  tokenClaims: $("token-claims"),
  connect: $("connect"),
  disconnect: $("disconnect"),
  resume: $("resume"),
  resumeHint: $("resume-hint"),
  status: $("status"),
  statusText: $("status-text"),
  metaStatus: $("meta-status"),
  metaStatusText: $("meta-status-text"),
  tokenStatus: $("token-status"),
  tokenStatusText: $("token-status-text"),
  errorsCard: $("errors-card"),
  errors: $("errors"),
  clearErrors: $("clear-errors"),
  channels: $("channels"),
  joinForm: $("join-form"),
  joinChannel: $("join-channel"),
  join: $("join"),
  messageForm: $("message-form"),
  sendChannel: $("send-channel"),
  messageText: $("message-text"),
  send: $("send"),
  sendHint: $("send-hint"),
  outbox: $("outbox"),
  messages: $("messages"),
  messagesEmpty: $("messages-empty"),
  clearMessages: $("clear-messages"),
  presence: $("presence"),
  presenceEmpty: $("presence-empty"),
  presenceEvents: $("presence-events"),
  clearPresence: $("clear-presence"),
  meta: $("meta-messages"),
  metaEmpty: $("meta-empty"),
  clearMeta: $("clear-meta"),
  metaChannelName: $("meta-channel-name"),
  snippet: $("snippet"),
  snippetSql: $("snippet-sql"),
};

// ---------------------------------------------------------------- helpers

/** Create an element with a class and text content (always textContent). */
function h(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function pad(n, width) {
  return String(n).padStart(width || 2, "0");
}

function clock(date) {
  return pad(date.getHours()) + ":" + pad(date.getMinutes()) + ":" + pad(date.getSeconds()) +
    "." + pad(date.getMilliseconds(), 3);
}

function timeElement(date, title) {
  const t = h("time", "time", clock(date));
  t.dateTime = date.toISOString();
  t.title = (title ? title + " " : "") + date.toString();
  t.dataset.field = "time";
  return t;
}

function defaultBaseUrl() {
  const loc = window.location;
  if (loc.protocol === "http:" || loc.protocol === "https:") {
    return (loc.protocol === "https:" ? "wss://" : "ws://") + loc.host;
  }
  return "ws://localhost:3000";
}

function trimSlashes(s) {
  return s.trim().replace(/\/+$/, "");
}

function httpUrlFor(wsUrl) {
  return wsUrl.replace(/^ws(s?):/i, "http$1:");
}

function compactJson(value) {
  try {
    return JSON.stringify(value);
  } catch (_) {
    return String(value);
  }
}

function prettyRaw(raw) {
  try {
    return JSON.stringify(JSON.parse(raw), null, 2);
  } catch (_) {
    return raw;
  }
}

function plural(n, word) {
  return n + " " + word + (n === 1 || n === 1n ? "" : "s");
}

/** A position, "<epoch: 16 hex digits>-<number>", as { epoch, seq (BigInt) }; null if it is none. */
function parsePosition(text) {
  const m = typeof text === "string" ? /^([0-9a-f]{16})-(\d{1,20})$/.exec(text) : null;
  return m ? { epoch: m[1], seq: BigInt(m[2]) } : null;
}

function parseObject(text) {
  try {
    const v = JSON.parse(text);
    return v !== null && typeof v === "object" && !Array.isArray(v) ? v : null;
  } catch (_) {
    return null;
  }
}

/** The channel names of a comma (or space) separated text, without duplicates. */
function channelList(text) {
  const out = [];
  for (const c of String(text).split(/[\s,]+/)) {
    if (c && !out.includes(c)) out.push(c);
  }
  return out;
}

function randomName() {
  const bytes = new Uint8Array(2);
  crypto.getRandomValues(bytes);
  return "guest-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ------------------------------------------------------------ base64url / JWT

const utf8 = new TextEncoder();

function b64url(bytes) {
  let bin = "";
  for (let i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function b64urlDecodeText(s) {
  const b64 = s.replace(/-/g, "+").replace(/_/g, "/");
  const bin = atob(b64 + "===".slice((b64.length + 3) % 4));
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
}

// SHA-256 / HMAC in plain JS, used only where WebCrypto is unavailable:
// browsers hide crypto.subtle on plain-http pages that are not localhost.
const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

function sha256(data) {
  const bitLen = data.length * 8;
  const padded = new Uint8Array(((data.length + 9 + 63) >> 6) << 6);
  padded.set(data);
  padded[data.length] = 0x80;
  const view = new DataView(padded.buffer);
  view.setUint32(padded.length - 8, Math.floor(bitLen / 0x100000000));
  view.setUint32(padded.length - 4, bitLen >>> 0);
  const H = new Uint32Array([
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
  ]);
  const W = new Uint32Array(64);
  const rotr = (x, n) => (x >>> n) | (x << (32 - n));
  for (let off = 0; off < padded.length; off += 64) {
    for (let i = 0; i < 16; i++) W[i] = view.getUint32(off + i * 4);
    for (let i = 16; i < 64; i++) {
      const s0 = rotr(W[i - 15], 7) ^ rotr(W[i - 15], 18) ^ (W[i - 15] >>> 3);
      const s1 = rotr(W[i - 2], 17) ^ rotr(W[i - 2], 19) ^ (W[i - 2] >>> 10);
      W[i] = W[i - 16] + s0 + W[i - 7] + s1;
    }
    let [a, b, c, d, e, f, g, hh] = H;
    for (let i = 0; i < 64; i++) {
      const t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + W[i];
      const t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      hh = g; g = f; f = e; e = (d + t1) >>> 0;
      d = c; c = b; b = a; a = (t1 + t2) >>> 0;
    }
    H[0] += a; H[1] += b; H[2] += c; H[3] += d; H[4] += e; H[5] += f; H[6] += g; H[7] += hh;
  }
  const out = new Uint8Array(32);
  const outView = new DataView(out.buffer);
  for (let i = 0; i < 8; i++) outView.setUint32(i * 4, H[i]);
  return out;
}

function hmacSha256Js(key, message) {
  if (key.length > 64) key = sha256(key);
  const block = new Uint8Array(64);
  block.set(key);
  const inner = new Uint8Array(64 + message.length);
  const outer = new Uint8Array(64 + 32);
  for (let i = 0; i < 64; i++) {
    inner[i] = block[i] ^ 0x36;
    outer[i] = block[i] ^ 0x5c;
  }
  inner.set(message, 64);
  outer.set(sha256(inner), 64);
  return sha256(outer);
}

async function hmacSha256(keyBytes, messageBytes) {
  const subtle = window.crypto && window.crypto.subtle;
  if (subtle) {
    const key = await subtle.importKey("raw", keyBytes, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    return new Uint8Array(await subtle.sign("HMAC", key, messageBytes));
  }
  return hmacSha256Js(keyBytes, messageBytes);
}

async function signJwt(claims, secret) {
  const header = b64url(utf8.encode(JSON.stringify({ alg: "HS256", typ: "JWT" })));
  const body = b64url(utf8.encode(JSON.stringify(claims)));
  const input = header + "." + body;
  const sig = await hmacSha256(utf8.encode(secret), utf8.encode(input));
  return input + "." + b64url(sig);
}

/** Decode (without verifying) a token's claims; null if it is not a JWT. */
function decodeClaims(token) {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const v = JSON.parse(b64urlDecodeText(parts[1]));
    return v !== null && typeof v === "object" && !Array.isArray(v) ? v : null;
  } catch (_) {
    return null;
  }
}

/** The claims the page signs: mode, sub (the name), channels (if asked), exp (if asked). */
function wantedClaims(channels) {
  const claims = { mode: el.mode.value };
  const name = el.name.value.trim();
  if (name) claims.sub = name;
  const list = channels || channelList(el.channel.value);
  if (el.claimChannel.checked && list.length) claims.channels = list;
  const secs = expiresInSeconds();
  if (secs) claims.exp = Math.floor(Date.now() / 1000) + secs;
  return claims;
}

function expiresInSeconds() {
  const secs = parseInt(el.expiresIn.value, 10);
  return Number.isFinite(secs) && secs > 0 ? secs : null;
}

// --------------------------------------------------------------- token UI

function tokenSource() {
  return el.srcPaste.checked ? "paste" : "secret";
}

/** Shows a token the page signed (the start of it, not half a line). */
function showSignedToken(token) {
  el.token.value = token;
  el.token.scrollTop = 0;
  signSeq++; // a preview still being signed must not overwrite this token
  showTokenClaims();
}

let signSeq = 0;
/** Re-sign the preview token after an edit (secret mode only, not while connected). */
async function refreshSignedToken() {
  if (tokenSource() !== "secret" || isLive()) return;
  const seq = ++signSeq;
  try {
    const token = await signJwt(wantedClaims(), el.secret.value);
    if (seq === signSeq && tokenSource() === "secret" && !isLive()) {
      el.token.value = token;
      el.token.scrollTop = 0;
      showTokenClaims();
    }
  } catch (err) {
    if (seq === signSeq) el.tokenClaims.textContent = "Could not sign a token: " + err.message;
  }
}

function describeClaims(claims) {
  return Object.keys(claims).map((k) => k + "=" + (typeof claims[k] === "string" ? claims[k] : compactJson(claims[k]))).join(", ");
}

function showTokenClaims() {
  const token = el.token.value.trim();
  el.tokenClaims.classList.remove("bad");
  if (!token) {
    el.tokenClaims.textContent = tokenSource() === "paste" ? "Paste a JWT issued for this server." : "";
    return;
  }
  const claims = decodeClaims(token);
  if (!claims) {
    el.tokenClaims.textContent = "This does not look like a JWT (three base64url parts); the server will refuse it.";
    el.tokenClaims.classList.add("bad");
    return;
  }
  let text = "Claims: " + (describeClaims(claims) || "(none)");
  if (typeof claims.exp === "number") {
    const at = new Date(claims.exp * 1000);
    text += (at > new Date() ? " (expires at " : " (expired at ") + clock(at).slice(0, 8) + ")";
  }
  if (typeof claims.sub !== "string") text += ". No sub claim: presence counts this page as anonymous.";
  el.tokenClaims.textContent = text;
}

function applyTokenSource() {
  const paste = tokenSource() === "paste";
  el.signOptions.hidden = paste;
  el.tokenLabel.querySelector("small").textContent = paste ? "(paste a token)" : "(signed in this browser)";
  if (paste) {
    showTokenClaims();
  } else {
    refreshSignedToken();
  }
}

// ---------------------------------------------------------------- lists

// Whether a list shows its newest entry, so that new entries keep it scrolled to the bottom.
// Measured when the list scrolls or a raw view opens, and the scrolling is done once per
// frame: reading the layout after every insert made a burst (a resume replaying a thousand
// messages) take seconds. While a scroll to the newest entry is due, the list's own scrolling
// (old entries removed at the top) says nothing about where the reader is.
const following = new Map();
const toScroll = new Set();

function atBottom(list) {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 24;
}

function watchList(list) {
  following.set(list, true);
  const measure = () => {
    if (!toScroll.has(list)) following.set(list, atBottom(list));
  };
  list.addEventListener("scroll", measure, { passive: true });
  list.addEventListener("toggle", measure, true); // <details> (toggle does not bubble)
}

function scrollToNewest(list) {
  if (toScroll.size === 0) {
    requestAnimationFrame(() => {
      for (const l of toScroll) l.scrollTop = l.scrollHeight;
      toScroll.clear();
    });
  }
  toScroll.add(list);
}

/**
 * Add an item to a list, newest last. Messages come in the server's order (positions increase
 * on each channel; a replay comes before what is live), so the list keeps that order.
 */
function append(list, emptyNote, item) {
  list.appendChild(item);
  while (list.children.length > MAX_ITEMS) list.removeChild(list.firstElementChild);
  if (emptyNote) emptyNote.hidden = true;
  if (following.get(list) !== false) scrollToNewest(list);
}

function clearList(list, emptyNote) {
  list.replaceChildren();
  following.set(list, true);
  if (emptyNote) emptyNote.hidden = false;
}

function rawDetails(raw, position) {
  const details = h("details", "raw");
  details.appendChild(h("summary", null, "raw JSON"));
  if (position) {
    // The message's place in the server's stream (what a resume starts after).
    const p = h("div", "position", "position ");
    const c = h("code", null, position);
    c.dataset.field = "position";
    p.appendChild(c);
    details.appendChild(p);
  }
  const pre = h("pre", null, prettyRaw(raw));
  pre.dataset.field = "raw";
  details.appendChild(pre);
  return details;
}

/** The sender's claims, without the server's timestamp. */
function claimsLine(claims) {
  if (!claims || typeof claims !== "object") return null;
  const rest = Object.assign({}, claims);
  delete rest.message_delivered_at;
  const text = describeClaims(rest);
  return text || null;
}

/** The time element for a received message: the server's stamp if it has one. */
function messageTime(msg) {
  const at = msg && msg.claims && msg.claims.message_delivered_at;
  if (typeof at === "number" && Number.isFinite(at)) {
    return timeElement(new Date(at * 1000), "Delivered to the database at");
  }
  return timeElement(new Date(), "Received at");
}

function replayedBadge(li, head) {
  const badge = h("span", "badge badge-replayed", "replayed");
  badge.title = "Sent while this page was disconnected: the server replayed it when the subscription resumed";
  badge.dataset.field = "replayed";
  head.appendChild(badge);
  li.dataset.replayed = "true";
  li.classList.add("replayed");
}

/** A message of a channel: raw is the text a compat socket gets (usually pgws's JSON envelope). */
function renderMessage(channel, raw, msg, position, replayed) {
  const li = h("li", "item msg");
  li.dataset.testid = "message";
  li.dataset.channel = channel;
  const head = h("div", "item-head");
  const chan = h("span", "chan", msg && typeof msg.channel === "string" ? msg.channel : channel);
  chan.dataset.field = "channel";
  head.appendChild(chan);
  if (msg && typeof msg.event === "string") {
    const ev = h("span", "event", msg.event);
    ev.dataset.field = "event";
    head.appendChild(ev);
    li.dataset.event = msg.event;
  } else if (!msg) {
    head.appendChild(h("span", "event event-warn", "not JSON"));
  }
  if (replayed) replayedBadge(li, head);
  head.appendChild(messageTime(msg));
  li.appendChild(head);

  let payloadText;
  let payloadClass = "payload";
  if (!msg) {
    payloadText = raw;
  } else if (!("payload" in msg)) {
    payloadText = "(no payload)";
    payloadClass += " muted";
  } else if (typeof msg.payload === "string") {
    payloadText = msg.payload;
    if (payloadText === "") {
      payloadText = "(empty text)";
      payloadClass += " muted";
    }
  } else {
    payloadText = compactJson(msg.payload);
    payloadClass += " json";
  }
  const payload = h("div", payloadClass, payloadText);
  payload.dataset.field = "payload";
  li.appendChild(payload);

  const who = msg && claimsLine(msg.claims);
  const claims = h("div", "claims", who ? "from " + who : msg && msg.claims ? "from a token without claims" : "sent by the database");
  claims.dataset.field = "claims";
  li.appendChild(claims);
  li.appendChild(rawDetails(raw, position));
  return li;
}

/** A line in a list that is not a message: a catch-up, a gap, a channel joined or left. */
function renderNote(kind, text, testid) {
  const li = h("li", "item note note-" + kind);
  li.dataset.testid = testid;
  const t = h("span", "note-text", text);
  t.dataset.field = "note";
  li.appendChild(t);
  return li;
}

function renderMeta(raw, msg, position, replayed) {
  const li = h("li", "item meta");
  li.dataset.testid = "meta-event";
  const head = h("div", "item-head");
  const event = msg && typeof msg.event === "string" ? msg.event : msg ? "(no event)" : "not JSON";
  li.dataset.event = event;
  const badge = h("span", "event", event);
  badge.dataset.field = "event";
  if (event === "ConnectionOpen") badge.classList.add("event-open");
  if (event === "ConnectionClose") badge.classList.add("event-close");
  head.appendChild(badge);
  const known = msg && (event === "ConnectionOpen" || event === "ConnectionClose");
  if (known) {
    // payload: the socket's channels at open, comma separated; none for a protocol v2 socket,
    // which subscribes after it opened.
    const channels = typeof msg.payload === "string" ? msg.payload : compactJson(msg.payload);
    if (channels) {
      head.appendChild(h("span", "on", "on"));
      const c = h("span", "chan", channels);
      c.dataset.field = "payload";
      head.appendChild(c);
    } else {
      const c = h("span", "on", "v2 socket");
      c.title = "A protocol v2 socket opens without channels and joins them afterwards";
      c.dataset.field = "payload";
      head.appendChild(c);
    }
  }
  if (replayed) replayedBadge(li, head);
  head.appendChild(messageTime(msg));
  li.appendChild(head);

  if (!known) {
    const p = h("div", "payload", msg ? (typeof msg.payload === "string" ? msg.payload : compactJson(msg.payload)) : raw);
    p.dataset.field = "payload";
    li.appendChild(p);
  }
  const who = msg && claimsLine(msg.claims);
  if (who) {
    const claims = h("div", "claims", "token: " + who);
    claims.dataset.field = "claims";
    li.appendChild(claims);
  }
  li.appendChild(rawDetails(raw, position));
  return li;
}

/**
 * Show a problem in words. kind: handshake | expired | going-away | closed | lost | unreachable |
 * refresh | subscribe | left | gap | client | local. channel: the channel it concerns, if any.
 */
function addError(kind, channel, title, detail, hint) {
  const li = h("li", "item problem problem-" + kind);
  li.dataset.testid = "error";
  li.dataset.kind = kind;
  if (channel) li.dataset.channel = channel;
  const head = h("div", "item-head");
  if (channel) {
    head.appendChild(h("span", "chan", channel));
  } else {
    head.appendChild(h("span", "event event-error", kind === "local" ? "page" : "connection"));
  }
  const t = h("strong", "problem-title", title);
  t.dataset.field = "title";
  head.appendChild(t);
  head.appendChild(timeElement(new Date(), "At"));
  li.appendChild(head);
  if (detail) {
    const d = h("div", "problem-detail", detail);
    d.dataset.field = "detail";
    li.appendChild(d);
  }
  if (hint) {
    const x = h("div", "hint", hint);
    x.dataset.field = "hint";
    li.appendChild(x);
  }
  el.errorsCard.hidden = false;
  append(el.errors, null, li);
}

// ------------------------------------------------------------------ words

/** Why a handshake can be refused: the server's 400 texts, in words. */
function refusalHint(reason) {
  if (reason === "Token expired") return "The token's exp claim is in the past. Sign or paste a fresh token and connect again.";
  if (reason === "Missing mode") return "The token needs a \"mode\" claim: \"r\", \"w\" or \"rw\".";
  if (/^Error|JWSInvalidSignature|JWSError/.test(reason)) {
    return "The token could not be verified: wrong secret, a malformed token, or an algorithm the server does not accept.";
  }
  if (/^Origin not allowed/.test(reason)) return "The server accepts websockets only from the origins in PGWS_ALLOWED_ORIGINS.";
  return null;
}

function closeCodeMeaning(code) {
  switch (code) {
    case 1000: return "normal closure";
    case 1001: return "going away";
    case 1002: return "protocol error";
    case 1006: return "connection lost without a close frame";
    case 1007: return "invalid data";
    case 1008: return "policy violation";
    case 1009: return "message too big";
    case 1011: return "server error";
    case 3001: return "token expired";
    case 4000: return "slow consumer";
    case 4001: return "no answer to pings";
    default: return code >= 4000 && code < 5000 ? "application-defined" : "";
  }
}

function describeClose(ev) {
  const meaning = closeCodeMeaning(ev.code);
  return "close code " + ev.code + (meaning ? " (" + meaning + ")" : "") +
    (ev.reason ? ", reason \"" + ev.reason + "\"" : ", no reason given");
}

/** A refused subscribe (protocol v2 error codes) in words: [title, hint]. */
function subscribeWords(code, channel) {
  switch (code) {
    case "not_granted":
      return ["the token does not name " + channel,
        "Its channel/channels claims list other channels. Sign a token without the channels claim (it grants every channel) or one that names this channel."];
    case "write_only":
      return ["the token is write-only (mode w)", "A token with mode r or rw can read."];
    case "not_authorized":
      return ["the database refused it", "Authorization by the database (PGWS_AUTHZ_FUNCTION) said no for this channel."];
    case "database_unavailable":
      return ["the database could not be asked", "Try joining again in a moment."];
    case "bad_channel":
      return ["not a usable channel name", "Channel names are 1 to 63 bytes, without control characters."];
    case "too_many_subscriptions":
      return ["this socket follows too many channels", "Leave one first (PGWS_MAX_CHANNELS)."];
    case "rate_limited":
      return ["too many requests", "Try again in a moment."];
    case "already_subscribed":
      return ["already followed", null];
    default:
      return [code, null];
  }
}

/** A failed publish (the nack's code, or the client's) in words. */
function nackWords(err) {
  const code = err && err.code;
  switch (code) {
    case "too_large": return "too large for a NOTIFY: PostgreSQL takes at most 8000 bytes, the envelope and the claims included";
    case "read_only": return "this token is read-only (mode r)";
    case "not_granted": return "the token does not name this channel";
    case "not_authorized": return "the database refused this channel for writing";
    case "bad_channel": return "not a usable channel name";
    case "rate_limited": return "too many messages at once; try again in a moment";
    case "database_unavailable": return "the database did not take it (unavailable or too slow)";
    case "shutting_down": return "the server is stopping";
    case "write_refused": return "the database's write function refused it" + (err.sqlstate ? " (SQLSTATE " + err.sqlstate + ")" : "");
    case "write_timeout": return "the database's write function did not answer in time";
    case "write_busy": return "no database connection was free in time";
    case "write_failed": return "the database's write function failed";
    case "connection_lost": return "the connection closed before the answer: it may or may not have been published";
    case "timeout": return "no answer in time: it may or may not have been published";
    case "closed": return "disconnected before it was sent";
    default: return (err && err.message) || String(code);
  }
}

/** A gap (protocol v2 `gap` frame) in words: what could not be replayed (or may be lost), and why. */
function describeGap(g, from) {
  const on = typeof g.channel === "string" ? " on " + g.channel : "";
  const after = typeof g.after === "string" ? g.after : from;
  const rest = " What the server still has follows, marked replayed.";
  const reason = typeof g.reason === "string" ? " (reason " + g.reason + ")" : "";
  switch (g.reason) {
    case "window_exceeded": {
      const a = parsePosition(g.after);
      const t = parsePosition(g.through);
      const n = a && t && a.epoch === t.epoch && t.seq > a.seq ? t.seq - a.seq : null;
      return {
        title: n === null ? "Some messages could not be replayed" : "Up to " + plural(n, "message") + " could not be replayed",
        detail: "The server no longer has the messages" + on + " after " + after +
          (g.through ? " through " + g.through : "") + ": they left its replay window." + rest + reason,
        hint: "Positions number the messages of every channel, so fewer may be missing here. " +
          "The window is PGWS_REPLAY_MESSAGES (and _BYTES, _AGE) per channel.",
      };
    }
    case "other_epoch":
      return {
        title: "Messages sent meanwhile could not be replayed",
        detail: "The position " + from + " is from another server process (the server restarted, or another node answered), " +
          "so it cannot tell what was missed." + rest + reason,
        hint: null,
      };
    case "unknown_position":
    case "future_position":
      return {
        title: "Messages sent meanwhile could not be replayed",
        detail: "The server does not know the position " + from +
          (g.reason === "future_position" ? " (it is ahead of the server's stream)." : ".") + rest + reason,
        hint: null,
      };
    case "source_outage":
      if (typeof g.down_ms === "number") {
        return {
          title: "Messages may have been lost",
          detail: "The server's connection to PostgreSQL was down for " + (g.down_ms / 1000).toFixed(1) +
            " s and is back: NOTIFYs sent" + on + " meanwhile never reached it." + reason,
          hint: null,
        };
      }
      return {
        title: "Messages sent meanwhile may be lost",
        detail: "The server's connection to PostgreSQL was down after " + after +
          ": NOTIFYs sent then never reached it." + rest + reason,
        hint: null,
      };
    default:
      return {
        title: "Some messages may be lost",
        detail: (typeof g.message === "string" ? g.message : compactJson(g)) + reason,
        hint: null,
      };
  }
}

// --------------------------------------------------------------- session

/**
 * The connection: one PgwsClient (one websocket, which the library reconnects and resumes by
 * itself) and the channels it follows (entries). null before the first Connect; after
 * Disconnect or a refusal it stays, `done`, so that its channels are still shown.
 */
let session = null;
/** The last position of each channel, kept across Disconnect and Connect: what Connect resumes after. */
const positions = new Map();
const positionCodes = new Map(); // channel -> its <code> in the resume hint
const resumeOutcomes = new Map(); // channel -> how its last resume went

function isLive() {
  return !!session && !session.done;
}

function setStatus(box, label, state, text) {
  box.dataset.state = state;
  label.textContent = text;
}

/** The connection's status line (the websocket, as the library reports it). */
function connState(state, text) {
  setStatus(el.status, el.statusText, state, text);
  el.status.dataset.connections = session ? String(session.client.connections) : "0";
  updateControls();
}

/** The meta channel's status line (its subscription). */
function metaState(state, text) {
  setStatus(el.metaStatus, el.metaStatusText, state, text);
}

function openText(s) {
  const mode = (s.welcome && s.welcome.mode) || s.mode;
  const details = [mode ? "mode " + mode : null, s.name ? null : "no sub claim"].filter(Boolean).join(", ");
  return "Connected " + (s.name ? "as " + s.name : "anonymously") + (details ? " (" + details + ")" : "") +
    (s.client.connections > 1 ? ", connection " + s.client.connections + " since Connect" : "");
}

function connect() {
  closeSession();
  const base = trimSlashes(el.baseUrl.value);
  if (!/^wss?:\/\/[^/]/i.test(base)) {
    addError("local", null, "The Server URL must start with ws:// or wss://", base || "(empty)", null);
    return;
  }
  const channels = channelList(el.channel.value);
  const metaChannel = el.metaChannel.value.trim();
  const signed = tokenSource() === "secret";
  let claims;
  let token = "";
  if (signed) {
    claims = wantedClaims(channels);
  } else {
    token = el.token.value.trim();
    if (!token) {
      addError("local", null, "No token", "Paste a token first, or let the page sign one.", null);
      return;
    }
    // The browser sends it in the subprotocol list (bearer.<token>), where only these fit.
    if (!/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/.test(token)) {
      addError("local", null, "This token cannot be sent", "It holds characters a JWT never has (spaces, quotes, …).",
        "A JWT is three base64url parts separated by dots.");
      return;
    }
    claims = decodeClaims(token);
  }
  // Positions of channels no longer followed are forgotten (joining one again starts fresh).
  for (const channel of Array.from(positions.keys())) {
    if (!channels.includes(channel) && channel !== metaChannel) positions.delete(channel);
  }
  const secs = signed ? expiresInSeconds() : null;
  const secret = el.secret.value;
  const claimChannels = signed && el.claimChannel.checked;
  const s = {
    client: null,
    base,
    signed,
    token,
    claims,
    mode: claims && typeof claims.mode === "string" ? claims.mode : null,
    name: claims && typeof claims.sub === "string" ? claims.sub : null,
    exp: claims && typeof claims.exp === "number" ? claims.exp : null,
    entries: new Map(),
    metaChannel,
    welcome: null,
    done: false,
    stopped: null, // {state, text} the status keeps once the page stopped the client
    explaining: false,
    outage: null, // what the page already said about failing connection attempts
    lastClose: null,
    refreshes: 0,
    lastRefresh: null,
  };
  // Signed in the page: the same claims with a new exp at every connection and before each exp
  // (the library sends the new token in band: the socket stays open).
  const sign = async () => {
    const c = Object.assign({}, claims);
    if (secs) c.exp = Math.floor(Date.now() / 1000) + secs;
    if (claimChannels) {
      const list = chatChannels(s);
      if (list.length) c.channels = list;
    }
    const t = await signJwt(c, secret);
    if (s === session) {
      s.token = t;
      s.exp = typeof c.exp === "number" ? c.exp : null;
      showSignedToken(t);
      updateTokenStatus(s);
    }
    return t;
  };
  // Refresh at 80 % of the token's life, at least refreshMinLead before exp: a few seconds
  // for a token that lives a few seconds.
  const refreshMinLead = secs ? Math.min(5000, Math.max(1000, (secs * 1000) / 3)) : 5000;
  try {
    s.client = new PgwsClient({ url: base + "/", token: signed ? sign : token, refreshMinLead });
  } catch (err) {
    addError("local", null, "Cannot create the client", err.message, null);
    return;
  }
  session = s;
  s.client.on("state", (st) => onState(s, st));
  s.client.on("welcome", (w) => onWelcome(s, w));
  s.client.on("refreshed", (r) => onRefreshed(s, r));
  s.client.on("error", (e) => onClientError(s, e));
  s.client.on("close", (ev) => onClose(s, ev));

  for (const channel of channels) follow(s, channel, "chat");
  el.metaChannelName.textContent = metaChannel || "none";
  if (!metaChannel) {
    metaState("idle", "No meta channel");
  } else if (s.entries.has(metaChannel)) {
    metaState("idle", metaChannel + " is followed as a channel");
  } else {
    follow(s, metaChannel, "meta");
  }
  resumeOutcomes.clear();
  renderChips();
  renderPresence();
  updateResumeHint();
  updateTokenStatus(s);
  updateSnippet();
  s.client.connect();
}

/** The channels whose messages go to the chat list (not the meta channel), still followed. */
function chatChannels(s) {
  return Array.from(s.entries.values())
    .filter((e) => e.role === "chat" && e.state !== "refused" && e.state !== "left")
    .map((e) => e.channel);
}

/** Stops the client for good, the status saying why. */
function stopSession(s, state, text) {
  if (s.done) return;
  s.done = true;
  s.stopped = { state, text };
  for (const entry of s.entries.values()) entry.presence = null;
  s.client.close(); // emits "closed": the status takes s.stopped
  connState(state, text);
  renderChips();
  renderPresence();
  updateTokenStatus(s);
}

function closeSession() {
  if (!isLive()) return;
  const s = session;
  stopSession(s, "idle", "Disconnected");
  if (s.metaChannel && s.entries.has(s.metaChannel)) metaState("idle", "Disconnected");
}

function onState(s, state) {
  if (s !== session) return;
  switch (state) {
    case "connecting":
      connState("connecting", "Connecting to " + s.base + "/ …");
      break;
    case "open":
      connState("open", openText(s));
      break;
    case "reconnecting":
      connState("reconnecting", "Reconnecting" + (s.lastClose ? " (" + s.lastClose + ")" : "") + "…");
      break;
    case "offline":
      connState("offline", "Offline: the browser has no network; reconnects when it is back");
      break;
    case "closed":
      if (s.stopped) connState(s.stopped.state, s.stopped.text);
      break;
    default:
      break;
  }
  if (state !== "open" && s.metaChannel && s.entries.has(s.metaChannel) && !s.done) {
    const meta = s.entries.get(s.metaChannel);
    if (meta.role === "meta" && meta.state !== "refused" && meta.state !== "left") metaState("connecting", "Waiting for the connection");
  }
  renderChips();
}

function onWelcome(s, w) {
  if (s !== session) return;
  s.welcome = w;
  s.outage = null;
  s.lastClose = null;
  if (typeof w.exp === "number") s.exp = w.exp;
  connState("open", openText(s));
  updateTokenStatus(s);
}

function onRefreshed(s, r) {
  if (s !== session) return;
  s.refreshes += 1;
  s.lastRefresh = new Date();
  s.exp = typeof r.exp === "number" ? r.exp : null;
  updateTokenStatus(s);
}

/** The token line: when it expires, and the in-band refreshes of a token signed in the page. */
function updateTokenStatus(s) {
  if (!s || (s.exp === null && s.refreshes === 0)) {
    el.tokenStatus.hidden = true;
    return;
  }
  el.tokenStatus.hidden = false;
  el.tokenStatus.dataset.refreshes = String(s.refreshes);
  const exp = s.exp === null ? null : clock(new Date(s.exp * 1000)).slice(0, 8);
  const until = exp ? "expires at " + exp : "does not expire";
  let state = "open";
  let text;
  if (s.stopped && s.stopped.expired) {
    state = "closed";
    text = "Expired at " + exp;
  } else if (s.signed && s.refreshes > 0) {
    text = "Re-signed and refreshed in band " + (s.refreshes === 1 ? "once" : s.refreshes + " times") +
      " (last at " + clock(s.lastRefresh).slice(0, 8) + ", no reconnect); " + until;
  } else if (s.signed) {
    text = exp ? "Expires at " + exp + ": the page re-signs it and refreshes it in band before then" : "Does not expire";
  } else {
    text = exp ? "Expires at " + exp + ": a pasted token cannot be renewed here, the server closes the socket then (3001)" : "Does not expire";
  }
  if (s.done && !(s.stopped && s.stopped.expired)) state = "idle";
  setStatus(el.tokenStatus, el.tokenStatusText, state, text);
}

function onClientError(s, e) {
  if (s !== session || s.done) return;
  switch (e.code) {
    case "bad_token":
    case "token_expired":
    case "subject_changed":
    case "refresh_failed":
      addError("refresh", null, "The token refresh was refused: " + e.code, e.message,
        e.code === "subject_changed" ? "A refresh must keep the token's sub." : "The old token stays until its exp; the page tries again.");
      break;
    case "token_unavailable":
      addError("local", null, "Could not sign a token", e.message, null);
      break;
    case "connect_failed":
      addError("local", null, "The browser would not open the WebSocket", e.message, "Check the Server URL (ws:// or wss://).");
      stopSession(s, "refused", "Cannot open a WebSocket to " + s.base);
      break;
    case "protocol":
      addError("handshake", null, "The server does not speak protocol v2", e.message, "This page needs a pgws with protocol pgws.v2.");
      stopSession(s, "refused", "No protocol v2");
      break;
    case "refused":
    case "expired":
    case "forbidden":
    case "unreachable":
    case "unavailable":
      onHandshakeError(s, e);
      break;
    case "heartbeat":
      s.lastClose = "no answer from the server";
      addError("lost", null, "No answer from the server", e.message, "The library reconnects and resumes every channel.");
      break;
    default:
      addError("client", null, "The server reported an error: " + e.code, e.message, null);
  }
}

function onClose(s, ev) {
  if (s !== session || s.done) return;
  for (const entry of s.entries.values()) {
    entry.presence = null;
    // The library resubscribes from here, with `since`: what arrives before `subscribed` is replayed.
    if (entry.sub && entry.state !== "refused" && entry.state !== "left") {
      entry.since = entry.sub.position;
      entry.state = "pending";
    }
  }
  renderPresence();
  if (!s.welcome) return; // a failed handshake: the library explains it with an `error` (onHandshakeError)
  s.welcome = null;
  const detail = describeClose(ev);
  if (s.client.state === "offline") {
    s.lastClose = "offline";
  } else if (ev.code === 3001) {
    if (s.signed) {
      s.lastClose = "token expired";
      addError("expired", null, "The token expired before it was refreshed", detail,
        "The page signs a new token for the reconnection.");
    } else {
      addError("expired", null, "The token expired", detail,
        "A pasted token cannot be renewed by the page: paste a new one and press Connect. " +
        "A token signed in the page is re-signed and refreshed in band before it expires.");
      s.lastClose = "token expired";
      stopSession(s, "closed", "Token expired");
      s.stopped.expired = true;
      updateTokenStatus(s);
      showTokenClaims(); // now says "expired at"
    }
  } else if (ev.code === 1001) {
    s.lastClose = "the server went away";
    addError("going-away", null, "The server is going away", detail,
      "It is shutting down or restarting. The library reconnects with back-off and resumes every channel where it stopped.");
  } else if (ev.code === 1006) {
    s.lastClose = "connection lost";
    addError("lost", null, "The connection was lost", detail,
      "The network dropped or the server stopped without closing the socket. The library reconnects and resumes.");
  } else {
    s.lastClose = "closed with " + ev.code;
    addError("closed", null, "The server closed the connection", detail, "The library reconnects and resumes.");
  }
  if (!s.done && s.client.state === "reconnecting") connState("reconnecting", "Reconnecting (" + s.lastClose + ")…");
}

/**
 * A refused or failed handshake, as the library explains it (it asks the server about the
 * token with `pgws-check: v2`): `refused`, `expired` and `forbidden` stop the session (the same
 * token would be refused again; a signed one too, the page would sign it alike);
 * `unreachable` and `unavailable` are said once per outage while the library keeps trying.
 */
function onHandshakeError(s, e) {
  if (e.code === "refused" || e.code === "expired" || e.code === "forbidden") {
    const reason = e.message || "(no reason given)";
    addError("handshake", null, "The server refused the connection", reason, refusalHint(reason));
    stopSession(s, "refused", "Refused: " + reason);
    for (const entry of s.entries.values()) {
      if (entry.role === "meta") metaState("refused", "Not connected: the token was refused");
    }
    return;
  }
  if (e.code === "unreachable") {
    let sameOrigin = false;
    try {
      sameOrigin = new URL(httpUrlFor(s.base)).origin === window.location.origin;
    } catch (_) { /* keep false */ }
    s.lastClose = sameOrigin ? "cannot reach the server" : "connection failed";
    if (s.outage !== "unreachable") {
      s.outage = "unreachable";
      addError("unreachable", null, sameOrigin ? "Cannot reach the server" : "The connection failed",
        "No answer from " + s.base + "/.",
        sameOrigin
          ? "Is the server running, and is the Server URL right? The library keeps trying, with back-off."
          : "The server is down, the Server URL is wrong, or it refused the token; the reason cannot be read from another origin.");
    }
  } else {
    s.lastClose = "the WebSocket did not open";
    if (s.outage !== "other") {
      s.outage = "other";
      addError("lost", null, "The WebSocket connection failed",
        e.status === 200
          ? "The server accepts this token, but the WebSocket did not open."
          : "The server did not say why (its token check answered HTTP " + e.status + ").",
        "The server may be full or limiting connections (it answers 429 or 503 then), a proxy may not pass WebSocket upgrades, or the server does not speak protocol v2 (pgws.v2). The library keeps trying.");
    }
  }
  if (s.client.state === "reconnecting") connState("reconnecting", "Reconnecting (" + s.lastClose + ")…");
}

// --------------------------------------------------------------- channels

/**
 * Follows a channel on the session's client: role "chat" (messages list, presence asked for)
 * or "meta" (the Connections list).
 */
function follow(s, channel, role, presence = role === "chat") {
  const entry = {
    channel,
    role,
    wantsPresence: presence,
    presenceOff: false, // the server has presence turned off (PGWS_PRESENCE=false)
    sub: null,
    state: "pending", // pending | subscribed | refused | left | write-only
    code: null,
    // The position this subscription resumes after (null: fresh); what arrives before the
    // `subscribed` answer is the replay of what was sent after it.
    since: el.resume.checked ? positions.get(channel) || null : null,
    gaps: 0,
    replayedSeen: 0,
    presence: null,
  };
  s.entries.set(channel, entry);
  if (!el.resume.checked) positions.delete(channel);
  if (s.mode === "w") {
    // A write-only token cannot subscribe (the server would answer write_only): send only.
    entry.state = "write-only";
    if (role === "meta") metaState("idle", "Not read: the token is write-only (mode w)");
    return entry;
  }
  let sub;
  try {
    sub = s.client.subscribe(channel, { since: entry.since || undefined, presence });
  } catch (err) {
    entry.state = "refused";
    entry.code = err.code || "error";
    addError("subscribe", channel, "Could not follow " + channel, err.message, null);
    return entry;
  }
  entry.sub = sub;
  sub.on("message", (m) => onMessage(s, entry, m));
  sub.on("gap", (g) => onGap(s, entry, g));
  sub.on("subscribed", (a) => onSubscribed(s, entry, a));
  sub.on("error", (e) => onSubscribeError(s, entry, e));
  sub.on("left", (f) => onLeft(s, entry, f));
  sub.on("presence", (p) => onPresence(s, entry, p));
  sub.on("join", (f) => onPresenceChange(s, entry, "join", f));
  sub.on("leave", (f) => onPresenceChange(s, entry, "leave", f));
  if (role === "meta") metaState("connecting", "Joining " + channel + "…");
  return entry;
}

function listFor(entry) {
  return entry.role === "meta" ? [el.meta, el.metaEmpty] : [el.messages, el.messagesEmpty];
}

function onMessage(s, entry, m) {
  if (s !== session || entry.sub === null) return;
  const replayed = entry.sub.state !== "subscribed";
  if (replayed) entry.replayedSeen += 1;
  rememberPosition(entry.channel, m.position);
  const msg = parseObject(m.data);
  const [list, empty] = listFor(entry);
  append(list, empty, entry.role === "meta"
    ? renderMeta(m.data, msg, m.position, replayed)
    : renderMessage(entry.channel, m.data, msg, m.position, replayed));
}

function onSubscribed(s, entry, answer) {
  if (s !== session) return;
  entry.state = "subscribed";
  rememberPosition(entry.channel, answer.position);
  const n = typeof answer.replayed === "number" ? answer.replayed : entry.replayedSeen;
  if (entry.since) {
    const [list, empty] = listFor(entry);
    if (n > 0) {
      const li = renderNote(entry.gaps ? "gap" : "caught-up", "Caught up on " + plural(n, "message") +
        " sent while disconnected (after " + entry.since + ")" +
        (entry.gaps ? "; some before them could not be replayed, see Problems" : ""), "catch-up");
      li.dataset.count = String(n);
      li.dataset.channel = entry.channel;
      append(list, empty, li);
    }
    resumeOutcomes.set(entry.channel, n > 0
      ? "caught up on " + plural(n, "message") + (entry.gaps ? ", with a gap" : "")
      : entry.gaps ? "had a gap and nothing to replay" : "missed nothing");
  }
  entry.since = null;
  entry.gaps = 0;
  entry.replayedSeen = 0;
  if (entry.role === "meta") metaState("open", "Following " + entry.channel);
  renderChips();
  renderPresence();
  updateResumeHint();
}

function onGap(s, entry, g) {
  if (s !== session) return;
  const gap = describeGap(g, entry.since);
  addError("gap", entry.channel, gap.title, gap.detail, gap.hint);
  entry.gaps += 1;
  const note = renderNote("gap", gap.title + (entry.sub.state !== "subscribed" ? " here" : ""), "gap");
  note.dataset.channel = entry.channel;
  const [list, empty] = listFor(entry);
  append(list, empty, note);
}

function onSubscribeError(s, entry, e) {
  if (s !== session || e.fatal) return; // a refused connection: said once, by onHandshakeError
  if (e.code === "presence_disabled" && entry.wantsPresence) {
    // Presence is off on this server: follow the channel without it.
    s.entries.delete(entry.channel);
    follow(s, entry.channel, entry.role, false).presenceOff = true;
    renderChips();
    renderPresence();
    return;
  }
  entry.state = "refused";
  entry.code = e.code;
  entry.presence = null;
  const [why, hint] = subscribeWords(e.code, entry.channel);
  addError("subscribe", entry.channel, "Cannot follow " + entry.channel + ": " + why,
    (e.message ? e.message + " " : "") + "(" + e.code + ")", hint);
  if (entry.role === "meta") metaState("refused", "Refused: " + why);
  renderChips();
  renderPresence();
  updateControls();
}

function onLeft(s, entry, f) {
  if (s !== session) return;
  entry.state = "left";
  entry.code = f.reason;
  entry.presence = null;
  const [why] = subscribeWords(f.reason, entry.channel);
  addError("left", entry.channel, "No longer following " + entry.channel + ": " + why,
    (f.message ? f.message + " " : "") + "(" + f.reason + ")",
    "The refreshed token no longer grants this channel; the server left it.");
  if (entry.role === "meta") metaState("refused", "Left: " + why);
  renderChips();
  renderPresence();
  updateControls();
}

/** Joins a channel at run time, on the open connection (no reconnect). */
function joinChannel() {
  const s = session;
  const channel = el.joinChannel.value.trim();
  if (!isLive() || !channel) return;
  const existing = s.entries.get(channel);
  if (existing && existing.role === "meta") {
    addError("local", channel, "Already followed", channel + " is the meta channel.", null);
    return;
  }
  if (existing && (existing.state === "pending" || existing.state === "subscribed")) {
    addError("local", channel, "Already followed", "This page follows " + channel + " already.", null);
    return;
  }
  if (existing) s.entries.delete(channel); // refused or left before: try again
  el.joinChannel.value = "";
  const list = channelList(el.channel.value);
  if (!list.includes(channel)) el.channel.value = list.concat(channel).join(", ");
  follow(s, channel, "chat");
  append(el.messages, el.messagesEmpty, channelNote("Joined " + channel, channel, "join"));
  renderChips();
  renderPresence();
  updateSnippet();
}

/** Leaves a channel at run time (unsubscribe; the connection stays). */
function leaveChannel(channel) {
  const s = session;
  const entry = s && s.entries.get(channel);
  if (!entry) return;
  if (entry.sub && isLive()) entry.sub.unsubscribe();
  s.entries.delete(channel);
  positions.delete(channel); // joining it again starts fresh
  resumeOutcomes.delete(channel);
  el.channel.value = channelList(el.channel.value).filter((c) => c !== channel).join(", ");
  if (isLive()) append(el.messages, el.messagesEmpty, channelNote("Left " + channel, channel, "leave"));
  renderChips();
  renderPresence();
  updateResumeHint();
  updateSnippet();
}

function channelNote(text, channel, kind) {
  const li = renderNote("channel", text, "channel-note");
  li.dataset.channel = channel;
  li.dataset.event = kind;
  return li;
}

/** What a channel chip says about its subscription. */
function chipState(s, entry) {
  if (entry.state === "refused") return ["refused", "refused: " + entry.code];
  if (entry.state === "left") return ["left", "left: " + entry.code];
  if (entry.state === "write-only") return ["write-only", "send only (mode w)"];
  if (s.done) return ["closed", "not connected"];
  if (entry.state === "subscribed") return ["subscribed", "following"];
  return ["pending", s.client.state === "open" ? "joining…" : "waiting for the connection"];
}

function renderChips() {
  const s = session;
  el.channels.replaceChildren();
  if (s) {
    for (const entry of s.entries.values()) {
      if (entry.role !== "chat") continue;
      const [state, text] = chipState(s, entry);
      const li = h("li", "chip");
      li.dataset.testid = "channel";
      li.dataset.channel = entry.channel;
      li.dataset.state = state;
      li.appendChild(h("span", "chan", entry.channel));
      const label = h("span", "chip-state", text);
      label.dataset.field = "state";
      li.appendChild(label);
      if (!s.done) {
        const leave = h("button", "small chip-leave", entry.state === "refused" || entry.state === "left" ? "Remove" : "Leave");
        leave.type = "button";
        leave.dataset.leave = entry.channel;
        leave.dataset.testid = "leave";
        leave.title = "Stop following " + entry.channel + " (the connection stays open)";
        li.appendChild(leave);
      }
      el.channels.appendChild(li);
    }
  }
  updateSendChannels();
}

function updateSendChannels() {
  const s = session;
  const wanted = s ? Array.from(s.entries.values())
    .filter((e) => e.role === "chat" && e.state !== "refused" && e.state !== "left")
    .map((e) => e.channel) : channelList(el.channel.value);
  const current = Array.from(el.sendChannel.options, (o) => o.value);
  if (current.join("\n") !== wanted.join("\n")) {
    const selected = el.sendChannel.value;
    el.sendChannel.replaceChildren(...wanted.map((c) => {
      const o = h("option", null, c);
      o.value = c;
      return o;
    }));
    if (wanted.includes(selected)) el.sendChannel.value = selected;
  }
  el.sendChannel.hidden = wanted.length < 2; // one channel: nothing to choose
  updateControls();
}

// --------------------------------------------------------------- presence

/**
 * A presence state from the library ({members: {name: connections}, anonymous, count}) as a
 * Map of members: names are the server's (any text, "__proto__" included), never object keys.
 */
function normalizePresence(p) {
  if (!p || typeof p !== "object") return null;
  const members = new Map();
  if (p.members && typeof p.members === "object") {
    for (const [name, n] of Object.entries(p.members)) {
      if (Number(n) > 0) members.set(name, Number(n));
    }
  }
  const anonymous = Number.isFinite(p.anonymous) ? p.anonymous : 0;
  let count = anonymous;
  for (const n of members.values()) count += n;
  if (Number.isFinite(p.count)) count = p.count;
  return { members, anonymous, count };
}

function onPresence(s, entry, p) {
  if (s !== session) return;
  entry.presence = normalizePresence(p);
  renderPresence();
}

/** A join or leave (the library has applied it: its `presence` event follows): a line in the list. */
function onPresenceChange(s, entry, kind, f) {
  if (s !== session || !f || typeof f !== "object") return;
  const li = h("li", "item presence-event presence-" + kind);
  li.dataset.testid = "presence-event";
  li.dataset.event = kind;
  li.dataset.channel = entry.channel;
  li.dataset.member = typeof f.member === "string" ? f.member : "";
  const head = h("div", "item-head");
  const who = h("strong", "member-name", typeof f.member === "string" ? f.member : "someone anonymous");
  who.dataset.field = "member";
  head.appendChild(who);
  const n = Number.isFinite(f.connections) ? f.connections : 1;
  let text = kind === "join" ? "joined" : "left";
  if (kind === "leave" && f.reason === "node_lost") text = "left: their pgws node stopped answering";
  const ev = h("span", "event " + (kind === "join" ? "event-open" : "event-close"), text);
  ev.dataset.field = "event";
  head.appendChild(ev);
  head.appendChild(h("span", "chan", entry.channel));
  if (n > 1) head.appendChild(h("span", "member-count", n + " connections"));
  head.appendChild(timeElement(new Date(), "At"));
  li.appendChild(head);
  append(el.presenceEvents, null, li);
}

/** The panel: who follows each chat channel (members with their connections, anonymous ones). */
function renderPresence() {
  const s = session;
  el.presence.replaceChildren();
  const entries = s ? Array.from(s.entries.values()).filter((e) => e.role === "chat" && e.state !== "write-only") : [];
  el.presenceEmpty.hidden = entries.length > 0;
  for (const entry of entries) {
    const sec = h("section", "presence-channel");
    sec.dataset.testid = "presence-channel";
    sec.dataset.channel = entry.channel;
    const head = h("div", "presence-head");
    head.appendChild(h("span", "chan", entry.channel));
    const p = entry.presence;
    let summary;
    if (p) summary = plural(p.count, "connection");
    else if (entry.presenceOff) summary = "presence is off on this server";
    else if (entry.state === "refused" || entry.state === "left") summary = "not followed";
    else if (s.done) summary = "not connected";
    else if (entry.state === "subscribed") summary = "no presence from the server";
    else summary = s.client.state === "open" ? "joining…" : "waiting for the connection";
    const count = h("span", "presence-count", summary);
    count.dataset.field = "count";
    if (p) sec.dataset.count = String(p.count);
    head.appendChild(count);
    sec.appendChild(head);
    if (p) {
      const ul = h("ul", "members");
      const names = Array.from(p.members.keys()).sort((a, b) => a.localeCompare(b));
      for (const name of names) {
        const n = p.members.get(name);
        const li = h("li", "member");
        li.dataset.testid = "member";
        li.dataset.member = name;
        li.dataset.connections = String(n);
        const nm = h("span", "member-name", name);
        nm.dataset.field = "member";
        li.appendChild(nm);
        if (name === s.name) li.appendChild(h("span", "badge badge-you", "you"));
        if (n > 1) li.appendChild(h("span", "member-count", n + " connections"));
        ul.appendChild(li);
      }
      if (p.anonymous > 0) {
        const li = h("li", "member member-anonymous", plural(p.anonymous, "anonymous connection"));
        li.dataset.testid = "anonymous";
        li.dataset.count = String(p.anonymous);
        ul.appendChild(li);
      }
      if (!ul.children.length) ul.appendChild(h("li", "member muted", "nobody"));
      sec.appendChild(ul);
    }
    el.presence.appendChild(sec);
  }
}

// ------------------------------------------------------------------ resume

function rememberPosition(channel, position) {
  if (typeof position !== "string" || !position) return;
  positions.set(channel, position);
  const code = positionCodes.get(channel);
  if (code) {
    code.textContent = position; // the common case: only the number changes
  } else {
    updateResumeHint();
  }
}

function updateResumeHint() {
  positionCodes.clear();
  const parts = [];
  if (positions.size) {
    parts.push(positions.size === 1 ? "Last position: " : "Last positions: ");
    let first = true;
    for (const [channel, position] of positions) {
      if (!first) parts.push(", ");
      first = false;
      parts.push(h("span", "chan", channel), " ");
      const code = h("code", null, position);
      code.dataset.field = "position";
      code.dataset.channel = channel;
      positionCodes.set(channel, code);
      parts.push(code);
    }
    parts.push(el.resume.checked
      ? ". After a disconnect, Connect resumes each channel there and the server replays what was sent meanwhile."
      : ". Not used: Connect starts fresh (what was sent meanwhile is not replayed).");
  } else {
    parts.push(el.resume.checked
      ? "Each channel's position is kept: after a disconnect, Connect resumes where it stopped."
      : "Connect starts fresh.");
  }
  parts.push(" When the connection drops, the library reconnects and resumes by itself.");
  if (resumeOutcomes.size) {
    parts.push(" Last resume: " + Array.from(resumeOutcomes, ([c, o]) => c + " " + o).join("; ") + ".");
  }
  el.resumeHint.replaceChildren(...parts);
}

// ------------------------------------------------------------------ sending

/** Publishes the typed text; its line in the outbox shows the answer (ack or nack). */
async function sendMessage() {
  const text = el.messageText.value;
  const s = session;
  const channel = el.sendChannel.value;
  if (!text || !channel) return;
  if (!isLive()) {
    addError("local", null, "Not connected", "Connect before sending.", null);
    return;
  }
  const item = addOutbox(channel, text, s.client.state === "open");
  el.messageText.value = "";
  el.messageText.focus();
  try {
    await s.client.publish(channel, text);
    settleOutbox(item, "sent", "sent", "PostgreSQL accepted it (ack)", null);
  } catch (err) {
    const unknown = err && (err.code === "connection_lost" || err.code === "timeout");
    settleOutbox(item, unknown ? "unknown" : "refused", unknown ? "unknown" : "not sent", null,
      (unknown ? "" : "Not sent: ") + nackWords(err) + " (" + (err && err.code) + ")");
  }
}

function addOutbox(channel, text, open) {
  const li = h("li", "item outbox-item");
  li.dataset.testid = "publish";
  li.dataset.state = "pending";
  li.dataset.channel = channel;
  const head = h("div", "item-head");
  head.appendChild(h("span", "chan", channel));
  const badge = h("span", "badge badge-pending", open ? "sending…" : "waiting for the connection");
  badge.dataset.field = "state";
  badge.title = "Sent; waiting for the server's answer";
  head.appendChild(badge);
  const preview = text.length > MAX_PREVIEW
    ? text.slice(0, MAX_PREVIEW) + "… (" + text.length.toLocaleString("en") + " characters)"
    : text;
  const body = h("span", "outbox-text", preview);
  body.dataset.field = "text";
  head.appendChild(body);
  head.appendChild(timeElement(new Date(), "Sent at"));
  li.appendChild(head);
  el.outbox.appendChild(li);
  trimOutbox();
  return li;
}

function settleOutbox(li, state, label, title, detail) {
  li.dataset.state = state;
  const badge = li.querySelector("[data-field=state]");
  badge.textContent = label;
  badge.className = "badge badge-" + state;
  badge.title = title || "";
  if (detail) {
    const d = h("div", "problem-detail", detail);
    d.dataset.field = "detail";
    li.appendChild(d);
  }
  trimOutbox();
}

function trimOutbox() {
  const settled = Array.from(el.outbox.children).filter((c) => c.dataset.state !== "pending");
  while (settled.length > MAX_OUTBOX) settled.shift().remove();
}

/** A phone: the connection settings take more than a screen, so they fold away once connected. */
const narrowScreen = window.matchMedia("(max-width: 720px)");

/** Folds (or unfolds) the connection settings; the status lines and Disconnect stay in view. */
function setSettingsFolded(folded) {
  el.settings.hidden = folded;
  el.connectionCard.dataset.folded = String(folded);
  el.toggleSettings.textContent = folded ? "Show settings" : "Hide settings";
  el.toggleSettings.setAttribute("aria-expanded", String(!folded));
}

function updateControls() {
  const live = isLive();
  const s = session;
  el.disconnect.disabled = !live;
  // While the library keeps a connection (open or being re-opened) the button applies the
  // form's settings with a new connection: a secondary action, so it neither says "Reconnect"
  // (the library does that by itself) nor takes the accent colour from Send. After a refusal,
  // an expiry or Disconnect there is nothing live: the button is the primary Connect again.
  el.connect.textContent = live ? "Apply changes" : "Connect";
  el.connect.title = live ? "Close this connection and connect again with the settings above" : "";
  el.connect.classList.toggle("primary", !live);
  // The settings fold once per connection, when it first opens, on a phone; the toggle unfolds
  // them. Nothing live: they are unfolded, to fix what went wrong.
  el.toggleSettings.hidden = !live;
  if (!live) {
    if (el.settings.hidden) setSettingsFolded(false);
  } else if (s.client.state === "open" && !s.foldedOnce) {
    s.foldedOnce = true;
    if (narrowScreen.matches) setSettingsFolded(true);
  }
  el.join.disabled = !live;
  const mode = s && ((s.welcome && s.welcome.mode) || s.mode);
  el.send.disabled = !live || mode === "r" || el.sendChannel.options.length === 0;
  let hint;
  if (!live) {
    hint = "Connect first.";
  } else if (mode === "r") {
    hint = "This token is read-only (mode r): the server would refuse what you send (nack read_only).";
  } else if (el.sendChannel.options.length === 0) {
    hint = "Join a channel to send to it.";
  } else if (mode === "w") {
    hint = "Write-only token (mode w): your messages go out, nothing comes back here.";
  } else if (s.client.state !== "open") {
    hint = "Not connected right now: what you send waits, and goes out when the connection is back.";
  } else {
    hint = "Your message is NOTIFYed through PostgreSQL and comes back to every reader of the channel, you included; " +
      "the line below says when PostgreSQL accepted it.";
  }
  if (el.sendHint.textContent !== hint) el.sendHint.textContent = hint;
}

// ---------------------------------------------------------------- snippet

function updateSnippet() {
  const base = trimSlashes(el.baseUrl.value) || "ws://localhost:3000";
  const channel = channelList(el.channel.value)[0] || "chat";
  const ch = JSON.stringify(channel);
  el.snippet.textContent = [
    "import { PgwsClient } from \"/pgws-client.js\"; // or the pgws-client package",
    "",
    "const client = new PgwsClient({",
    "  url: " + JSON.stringify(base + "/") + ",",
    "  // A JWT your backend signs, e.g. {\"mode\":\"rw\",\"sub\":\"alice\",\"exp\":…}. A function is called",
    "  // again before exp: the new token goes in band, the socket stays open.",
    "  token: () => fetch(\"/api/pgws-token\").then((r) => r.text()),",
    "}).connect();",
    "",
    "const chat = client.subscribe(" + ch + ", { presence: true });",
    "chat.on(\"message\", (m) => console.log(m.position, m.payload())); // m.json(): {channel, event, payload, claims}",
    "chat.on(\"gap\", (g) => console.warn(\"messages may be missing:\", g.reason));",
    "chat.on(\"presence\", (p) => console.log(p.count, \"connections:\", p.members));",
    "client.on(\"state\", (s) => console.log(s)); // connecting, open, reconnecting, offline, closed",
    "client.on(\"error\", (e) => console.warn(e.code, e.message)); // e.fatal: refused, expired, forbidden",
    "",
    "// Resolves once PostgreSQL took it; rejects with the nack (err.code: too_large, read_only, …).",
    "await client.publish(" + ch + ", { text: \"hi\" }); // a string, or any JSON value",
  ].join("\n");
  el.snippetSql.textContent =
    "SELECT pg_notify('postgres-websockets-listener',\n" +
    "  json_build_object('channel', " + sqlLiteral(channel) + ", 'payload', 'hello from SQL')::text);";
}

function sqlLiteral(s) {
  return "'" + s.replace(/'/g, "''") + "'";
}

// ------------------------------------------------------------------ wiring

el.baseUrl.value = defaultBaseUrl();
if (!el.name.value) el.name.value = randomName();
if (!el.secret.value) el.secret.value = DEV_SECRET;
for (const list of [el.errors, el.messages, el.meta, el.presenceEvents]) watchList(list);

el.form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  connect();
});
el.disconnect.addEventListener("click", closeSession);
el.toggleSettings.addEventListener("click", () => setSettingsFolded(!el.settings.hidden));
// A window that widens (a phone turned, a window enlarged) has room for the settings again.
narrowScreen.addEventListener("change", () => {
  if (!narrowScreen.matches && el.settings.hidden) setSettingsFolded(false);
});
el.resume.addEventListener("change", updateResumeHint);
el.messageForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  sendMessage();
});
el.joinForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  joinChannel();
});
el.channels.addEventListener("click", (ev) => {
  const button = ev.target.closest("button[data-leave]");
  if (button) leaveChannel(button.dataset.leave);
});
for (const input of [el.name, el.secret, el.mode, el.expiresIn, el.claimChannel, el.channel]) {
  input.addEventListener("input", refreshSignedToken);
  input.addEventListener("change", refreshSignedToken);
}
el.channel.addEventListener("input", () => {
  updateSnippet();
  if (!session) updateSendChannels();
});
el.baseUrl.addEventListener("input", updateSnippet);
el.srcSecret.addEventListener("change", applyTokenSource);
el.srcPaste.addEventListener("change", applyTokenSource);
el.token.addEventListener("input", () => {
  if (tokenSource() !== "paste") {
    el.srcPaste.checked = true;
    applyTokenSource();
  }
  showTokenClaims();
});
el.clearErrors.addEventListener("click", () => {
  clearList(el.errors, null);
  el.errorsCard.hidden = true;
});
el.clearMessages.addEventListener("click", () => {
  clearList(el.messages, el.messagesEmpty);
  clearList(el.outbox, null);
});
el.clearMeta.addEventListener("click", () => clearList(el.meta, el.metaEmpty));
el.clearPresence.addEventListener("click", () => clearList(el.presenceEvents, null));

// The live table's own client: a token naming the table's channel (a token without channel
// claims never opens a table), signed like the chat's, or the pasted one.
mountLiveTable({
  baseUrl: () => trimSlashes(el.baseUrl.value),
  token: (channel) => {
    if (tokenSource() !== "secret") return el.token.value.trim();
    const claims = { mode: "r", channels: [channel] };
    const name = el.name.value.trim();
    if (name) claims.sub = name;
    const secs = expiresInSeconds();
    if (secs) claims.exp = Math.floor(Date.now() / 1000) + secs;
    return signJwt(claims, el.secret.value);
  },
});

applyTokenSource();
updateSnippet();
updateSendChannels();
updateResumeHint();
renderPresence();
document.documentElement.dataset.ready = "true";

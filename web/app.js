// pgws example page. Plain JavaScript, no libraries, no build step.
//
// Everything received from the network is rendered with textContent (never
// innerHTML), so channel names, payloads and claims cannot inject markup.
"use strict";

(function () {
  const DEV_SECRET = "auwhfdnskjhewfi34uwehdlaehsfkuaeiskjnfduierhfsiweskjcnzeiluwhskdewishdnpwe";
  const MAX_ITEMS = 200; // per list; older entries are dropped
  const CHECK_TIMEOUT_MS = 5000;
  // A resumed socket first receives what it missed: the server queues it before the socket opens
  // and writes it at once. The protocol marks no end of that replay, so the page takes the
  // catch-up to be over when nothing has arrived for CATCH_UP_QUIET_MS, CATCH_UP_MAX_MS after
  // the socket opened at the latest, or when its own message comes back (anything this socket
  // sends is answered after the replay).
  const CATCH_UP_QUIET_MS = 300;
  const CATCH_UP_MAX_MS = 5000;

  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("connect-form"),
    baseUrl: $("base-url"),
    channel: $("channel"),
    metaChannel: $("meta-channel"),
    srcSecret: $("token-source-secret"),
    srcPaste: $("token-source-paste"),
    signOptions: $("sign-options"),
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
    errorsCard: $("errors-card"),
    errors: $("errors"),
    clearErrors: $("clear-errors"),
    messageForm: $("message-form"),
    messageText: $("message-text"),
    send: $("send"),
    sendHint: $("send-hint"),
    messages: $("messages"),
    messagesEmpty: $("messages-empty"),
    clearMessages: $("clear-messages"),
    meta: $("meta-messages"),
    metaEmpty: $("meta-empty"),
    clearMeta: $("clear-meta"),
    chatChannelName: $("chat-channel-name"),
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
    return "ws://localhost:3000"; // opened from a file
  }

  function trimSlashes(s) {
    return s.trim().replace(/\/+$/, "");
  }

  /** The WebSocket path for a channel (may be empty) and a token. */
  function socketPath(channel, token) {
    return (channel ? "/" + encodeURIComponent(channel) : "") + "/" + token;
  }

  function httpUrlFor(wsUrl) {
    return wsUrl.replace(/^ws(s?):/i, "http$1:");
  }

  function shortToken(token) {
    return token.length > 16 ? token.slice(0, 12) + "…" : token;
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

  function wantedClaims() {
    const claims = { mode: el.mode.value };
    const channel = el.channel.value.trim();
    if (el.claimChannel.checked && channel) claims.channels = [channel];
    const secs = parseInt(el.expiresIn.value, 10);
    if (Number.isFinite(secs) && secs > 0) claims.exp = Math.floor(Date.now() / 1000) + secs;
    return claims;
  }

  // --------------------------------------------------------------- token UI

  function tokenSource() {
    return el.srcPaste.checked ? "paste" : "secret";
  }

  let signSeq = 0;
  /** Re-sign the preview token after an edit (secret mode only). */
  async function refreshSignedToken() {
    if (tokenSource() !== "secret") return;
    const seq = ++signSeq;
    try {
      const token = await signJwt(wantedClaims(), el.secret.value);
      if (seq === signSeq && tokenSource() === "secret") {
        el.token.value = token;
        el.token.scrollTop = 0; // show the start of the new token, not half a line of it
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
   * Add an item to a list, newest last. Items the server stamped (data-at) are
   * kept in the order of their stamps: NOTIFYs published by different database
   * sessions can arrive out of order. An item without a stamp (sent by the
   * database itself, shown with the time it arrived) stays where it arrived, and
   * a stamped item is never moved above it: the two clocks need not agree.
   */
  function append(list, emptyNote, item) {
    let before = null;
    if (item.dataset.at) {
      const at = Number(item.dataset.at);
      for (let prev = list.lastElementChild; prev && prev.dataset.at && Number(prev.dataset.at) > at;
        prev = prev.previousElementSibling) {
        before = prev;
      }
    }
    list.insertBefore(item, before);
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

  /** The time element for a received message; stamps li with the server's time (ms) if it has one. */
  function messageTime(msg, li) {
    const at = msg && msg.claims && msg.claims.message_delivered_at;
    if (typeof at === "number" && Number.isFinite(at)) {
      li.dataset.at = String(at * 1000);
      return timeElement(new Date(at * 1000), "Delivered to the database at");
    }
    return timeElement(new Date(), "Received at");
  }

  function renderMessage(raw, msg, position, replayed) {
    const li = h("li", "item msg");
    li.dataset.testid = "message";
    const head = h("div", "item-head");
    if (msg) {
      const chan = h("span", "chan", typeof msg.channel === "string" ? msg.channel : "?");
      chan.dataset.field = "channel";
      head.appendChild(chan);
      if (typeof msg.event === "string") {
        const ev = h("span", "event", msg.event);
        ev.dataset.field = "event";
        head.appendChild(ev);
        li.dataset.event = msg.event;
      }
    } else {
      head.appendChild(h("span", "event event-warn", "not JSON"));
    }
    if (replayed) {
      const badge = h("span", "badge badge-replayed", "replayed");
      badge.title = "Sent while this page was disconnected: the server replayed it when the socket resumed";
      badge.dataset.field = "replayed";
      head.appendChild(badge);
      li.dataset.replayed = "true";
      li.classList.add("replayed");
    }
    head.appendChild(messageTime(msg, li));
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
    if (msg) li.appendChild(rawDetails(raw, position));
    return li;
  }

  /** A line in a list that is not a message: where a catch-up ended, where messages are missing. */
  function renderNote(kind, text, testid) {
    const li = h("li", "item note note-" + kind);
    li.dataset.testid = testid;
    const t = h("span", "note-text", text);
    t.dataset.field = "note";
    li.appendChild(t);
    return li;
  }

  function renderMeta(raw, msg, position) {
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
      // payload: the socket's channels, comma separated
      head.appendChild(h("span", "on", "on"));
      const c = h("span", "chan", typeof msg.payload === "string" ? msg.payload : compactJson(msg.payload));
      c.dataset.field = "payload";
      head.appendChild(c);
    }
    head.appendChild(messageTime(msg, li));
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
    if (msg) li.appendChild(rawDetails(raw, position));
    return li;
  }

  /**
   * Show a problem in words. kind: handshake | expired | going-away | closed |
   * lost | server-error | gap | unreachable | local.
   */
  function addError(kind, socketName, title, detail, hint) {
    const li = h("li", "item problem problem-" + kind);
    li.dataset.testid = "error";
    li.dataset.kind = kind;
    li.dataset.socket = socketName;
    const head = h("div", "item-head");
    head.appendChild(h("span", "event event-error", socketName === "meta" ? "meta socket" : socketName === "chat" ? "chat socket" : "page"));
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
    if (hint) li.appendChild(h("div", "hint", hint));
    el.errorsCard.hidden = false;
    append(el.errors, null, li);
  }

  // -------------------------------------------------------------- sockets

  /** Why a handshake can be refused: the server's 400 texts, in words. */
  function refusalHint(reason) {
    if (reason === "Token expired") return "The token's exp claim is in the past. Sign or paste a fresh token and connect again.";
    if (reason === "Missing mode") return "The token needs a \"mode\" claim: \"r\", \"w\" or \"rw\".";
    if (reason === "No allowed channels") {
      return "The token's channel/channels claims do not include the requested channel (or no channel was requested and the token lists none).";
    }
    if (/^Error/.test(reason)) {
      return "The token could not be verified: wrong secret, a malformed token, or an algorithm the server does not accept.";
    }
    return null;
  }

  function closeCodeMeaning(code) {
    switch (code) {
      case 1000: return "normal closure";
      case 1001: return "going away";
      case 1002: return "protocol error";
      case 1003: return "unsupported data";
      case 1006: return "connection lost without a close frame";
      case 1007: return "invalid data";
      case 1008: return "policy violation";
      case 1009: return "message too big";
      case 1011: return "server error";
      case 1012: return "service restart";
      case 1013: return "try again later";
      case 3001: return "token expired";
      default: return code >= 4000 && code < 5000 ? "application-defined" : "";
    }
  }

  function describeClose(ev) {
    const meaning = closeCodeMeaning(ev.code);
    return "close code " + ev.code + (meaning ? " (" + meaning + ")" : "") +
      (ev.reason ? ", reason \"" + ev.reason + "\"" : ", no reason given");
  }

  /**
   * A browser cannot read why a handshake failed, so ask the server with the
   * same URL over plain HTTP and the `pgws-check: 1` header.
   */
  async function explainFailedHandshake(socketName, url, conn) {
    const checkUrl = httpUrlFor(url);
    let response;
    let body = "";
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), CHECK_TIMEOUT_MS);
    try {
      response = await fetch(checkUrl, {
        method: "GET",
        headers: { "pgws-check": "1" },
        cache: "no-store",
        credentials: "omit",
        signal: abort.signal,
      });
      body = (await response.text()).trim();
    } catch (_) {
      response = null;
    } finally {
      clearTimeout(timer);
    }
    if (conn !== current) return; // the user has moved on
    if (!response) {
      let sameOrigin = false;
      try {
        sameOrigin = new URL(checkUrl).origin === window.location.origin;
      } catch (_) { /* keep false */ }
      setState(socketName, "refused", sameOrigin ? "Cannot reach the server" : "Connection failed");
      addError("unreachable", socketName, sameOrigin ? "Cannot reach the server" : "The connection failed",
        "No answer from " + url.replace(/\/[^/]*$/, "/…") + ".",
        sameOrigin
          ? "Is the server running, and is the Server URL right?"
          : "The server is down, the Server URL is wrong, or it refused the token; the reason cannot be read from another origin.");
      return;
    }
    if (response.status === 400) {
      const reason = body || "(no reason given)";
      setState(socketName, "refused", "Refused: " + reason);
      addError("handshake", socketName, "The server refused the connection", reason, refusalHint(reason));
      return;
    }
    if (response.ok) {
      setState(socketName, "closed", "Connection failed");
      addError("lost", socketName, "The WebSocket connection failed",
        "The server accepts this token (" + body + "), but the WebSocket did not open.",
        "A proxy between the browser and the server may not pass WebSocket upgrades.");
      return;
    }
    setState(socketName, "refused", "Connection failed");
    addError("handshake", socketName, "The WebSocket connection could not be opened",
      "The server did not say why (its token check answered HTTP " + response.status + ").", null);
  }

  let current = null; // { chat, meta, mode } of the live connection attempt

  function setState(socketName, state, text) {
    const box = socketName === "meta" ? el.metaStatus : el.status;
    const label = socketName === "meta" ? el.metaStatusText : el.statusText;
    box.dataset.state = state;
    label.textContent = text;
    updateControls();
  }

  function socketOpen(name) {
    return !!(current && current[name] && current[name].readyState === WebSocket.OPEN);
  }

  function updateControls() {
    const live = !!current && (el.status.dataset.state === "open" || el.status.dataset.state === "connecting" ||
      el.metaStatus.dataset.state === "open" || el.metaStatus.dataset.state === "connecting");
    el.disconnect.disabled = !live;
    // "Reconnect" only while a socket is open or opening; after a refusal or a close there is
    // nothing to re-open, so the button says what it does: connect.
    el.connect.textContent = live ? "Reconnect" : "Connect";
    const canWrite = socketOpen("chat") && current.mode !== "r";
    el.send.disabled = !canWrite;
    if (socketOpen("chat") && current.mode === "r") {
      el.sendHint.textContent = "This token is read-only (mode r): the server ignores what you send.";
    } else if (socketOpen("chat")) {
      el.sendHint.textContent = current.mode === "w"
        ? "Write-only token (mode w): your messages go out, nothing comes back here."
        : "Your message is NOTIFYed through PostgreSQL and comes back to every reader, you included.";
    } else {
      el.sendHint.textContent = "Connect first.";
    }
  }

  /**
   * Open a socket that asked for positions (?last-event-id): each stream message arrives as
   * {"id":"<position>","data":"<the text a compat client gets>"}; the server's own events (Error,
   * Gap) keep their shape. onData(raw, parsed, position): raw is the unwrapped text, position
   * null for the server's events.
   */
  function openSocket(conn, socketName, url, onData, onOpen) {
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (err) {
      setState(socketName, "refused", "Invalid URL");
      addError("local", socketName, "Cannot open the WebSocket", err.message, "Check the Server URL (ws:// or wss://) and the channel.");
      return null;
    }
    let opened = false;
    setState(socketName, "connecting", "Connecting to " + url.replace(/[^/]*$/, shortToken));
    ws.addEventListener("open", () => {
      if (conn !== current) return;
      opened = true;
      setState(socketName, "open", socketName === "meta"
        ? "Connected to " + conn.metaChannel
        : "Connected to " + (conn.channel || "the token's channels") + (conn.mode ? " (mode " + conn.mode + ")" : ""));
      if (onOpen) onOpen();
    });
    ws.addEventListener("message", (ev) => {
      if (conn !== current) return;
      const text = typeof ev.data === "string" ? ev.data : "(binary frame)";
      const outer = parseObject(text);
      if (outer && typeof outer.id === "string" && typeof outer.data === "string") {
        onData(outer.data, parseObject(outer.data), outer.id);
      } else {
        onData(text, outer, null);
      }
    });
    ws.addEventListener("close", (ev) => {
      if (conn !== current || conn.closing) return;
      updateControls();
      if (!opened) {
        setState(socketName, "connecting", "Connection failed, asking the server why…");
        explainFailedHandshake(socketName, url, conn);
        return;
      }
      const detail = describeClose(ev);
      if (ev.code === 3001) {
        showTokenClaims(); // now says "expired at"
        setState(socketName, "closed", "Token expired");
        addError("expired", socketName, "The token expired", detail,
          "Sign or paste a new token and press Connect.");
      } else if (ev.code === 1001) {
        setState(socketName, "closed", "Server going away");
        addError("going-away", socketName, "The server is going away", detail,
          "It is shutting down or restarting. Press Connect once it is back.");
      } else if (ev.code === 1006) {
        setState(socketName, "closed", "Connection lost");
        addError("lost", socketName, "The connection was lost", detail,
          "The network dropped or the server stopped without closing the socket.");
      } else {
        setState(socketName, "closed", "Closed by the server (" + ev.code + ")");
        addError("closed", socketName, "The server closed the connection", detail, null);
      }
    });
    return ws;
  }

  function serverError(socketName, msg) {
    const code = typeof msg.code === "string" ? msg.code : "error";
    const message = typeof msg.message === "string" ? msg.message : compactJson(msg);
    const where = typeof msg.channel === "string" ? " (channel " + msg.channel + ")" : "";
    addError("server-error", socketName, "The server reported an error: " + code, message + where, null);
  }

  // ------------------------------------------------------------- resume

  /**
   * Where the chat socket stopped: the position of the last message it received, and what it
   * was reading (a position resumes the same channels only). outcome: how the last resume went.
   */
  const resume = { key: null, position: null, outcome: null };

  function resumeKey(channel, claims) {
    if (channel) return "channel " + channel;
    return "token " + compactJson(claims ? [claims.channel, claims.channels] : null);
  }

  function rememberPosition(position) {
    resume.position = position;
    if (el.resumeCode) {
      el.resumeCode.textContent = position; // the common case: only the number changes
    } else {
      updateResumeHint();
    }
  }

  function updateResumeHint() {
    const parts = [];
    el.resumeCode = null;
    if (resume.position) {
      el.resumeCode = h("code", null, resume.position);
      el.resumeCode.dataset.field = "position";
      el.resumeCode.dataset.testid = "resume-position";
      parts.push("Last position ", el.resumeCode, el.resume.checked
        ? ": after a disconnect, Connect resumes there and the server replays what was sent meanwhile."
        : ": not used, Connect starts fresh (what was sent meanwhile is not replayed).");
    } else {
      parts.push(el.resume.checked
        ? "The chat socket asks for positions: once it has received a message, Connect after a disconnect resumes where it stopped."
        : "Connect starts fresh.");
    }
    if (resume.outcome) parts.push(" " + resume.outcome);
    el.resumeHint.replaceChildren(...parts);
  }

  /** A resumed socket opened: what arrives until a quiet moment is what it missed. */
  function startCatchUp(conn) {
    conn.catchUp = { count: 0, gap: false, timer: null, started: performance.now(), sent: [] };
    armCatchUp(conn);
  }

  function armCatchUp(conn) {
    clearTimeout(conn.catchUp.timer);
    conn.catchUp.timer = setTimeout(() => finishCatchUp(conn), CATCH_UP_QUIET_MS);
  }

  /** Claims equal but for the server's time stamp. */
  function sameClaims(received, sent) {
    if (!received || typeof received !== "object" || !sent) return false;
    const keys = Object.keys(received).filter((k) => k !== "message_delivered_at");
    return keys.length === Object.keys(sent).length &&
      keys.every((k) => compactJson(received[k]) === compactJson(sent[k]));
  }

  /** Whether a message arriving now is part of the catch-up (counts it). */
  function caughtUp(conn, msg) {
    const c = conn.catchUp;
    if (!c) return false;
    const own = c.sent.length > 0 && msg && msg.event === "WebsocketMessage" &&
      c.sent.includes(msg.payload) && sameClaims(msg.claims, conn.claims);
    if (own || performance.now() - c.started > CATCH_UP_MAX_MS) {
      finishCatchUp(conn);
      return false;
    }
    c.count += 1;
    armCatchUp(conn);
    return true;
  }

  function finishCatchUp(conn) {
    const c = conn.catchUp;
    conn.catchUp = null;
    if (c) clearTimeout(c.timer);
    if (!c || conn !== current) return;
    const n = c.count + " message" + (c.count === 1 ? "" : "s");
    if (c.count > 0) {
      const li = renderNote(c.gap ? "gap" : "caught-up", "Caught up on " + n + " sent while disconnected (after " +
        conn.resumeFrom + ")" + (c.gap ? "; some before them could not be replayed, see Problems" : ""), "catch-up");
      li.dataset.count = String(c.count);
      append(el.messages, el.messagesEmpty, li);
    }
    resume.outcome = c.count > 0
      ? "The last resume caught up on " + n + (c.gap ? ", with a gap." : ".")
      : c.gap ? "The last resume had a gap and nothing to replay." : "The last resume missed nothing.";
    updateResumeHint();
  }

  /** A Gap event in words: what could not be replayed (or may be lost), and why. */
  function describeGap(msg, from) {
    const on = Array.isArray(msg.channels) && msg.channels.length ? " on " + msg.channels.join(", ") : "";
    const after = typeof msg.after === "string" ? msg.after : from;
    const rest = " What the server still has follows, marked replayed.";
    const reason = typeof msg.reason === "string" ? " (reason " + msg.reason + ")" : "";
    switch (msg.reason) {
      case "window_exceeded": {
        const a = parsePosition(msg.after);
        const t = parsePosition(msg.through);
        const n = a && t && a.epoch === t.epoch && t.seq > a.seq ? t.seq - a.seq : null;
        return {
          title: n === null ? "Some messages could not be replayed"
            : "Up to " + n + " message" + (n === 1n ? "" : "s") + " could not be replayed",
          detail: "The server no longer has the messages" + on + " after " + after +
            (msg.through ? " through " + msg.through : "") + ": they left its replay window." + rest + reason,
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
            (msg.reason === "future_position" ? " (it is ahead of the server's stream)." : ".") + rest + reason,
          hint: null,
        };
      case "source_outage":
        return {
          title: "Messages sent meanwhile may be lost",
          detail: "The server's connection to PostgreSQL was down after " + after +
            ": NOTIFYs sent then never reached it." + rest + reason,
          hint: null,
        };
      default:
        if (typeof msg.down_ms === "number") {
          return {
            title: "Notifications may have been lost",
            detail: "The server's connection to PostgreSQL was down for " + (msg.down_ms / 1000).toFixed(1) +
              " s and is back: NOTIFYs sent meanwhile never reached it.",
            hint: null,
          };
        }
        return {
          title: "Some messages may be lost",
          detail: (typeof msg.message === "string" ? msg.message : compactJson(msg)) + reason,
          hint: null,
        };
    }
  }

  function showGap(conn, socketName, msg) {
    const gap = describeGap(msg, socketName === "chat" ? conn.resumeFrom : null);
    addError("gap", socketName, gap.title, gap.detail, gap.hint);
    const note = renderNote("gap", gap.title + (socketName === "chat" && conn.catchUp ? " here" : ""), "gap");
    if (socketName === "meta") {
      append(el.meta, el.metaEmpty, note);
    } else {
      append(el.messages, el.messagesEmpty, note);
      if (conn.catchUp) {
        conn.catchUp.gap = true;
        armCatchUp(conn);
      }
    }
  }

  function closeCurrent() {
    if (!current) return;
    const conn = current;
    conn.closing = true;
    if (conn.catchUp) clearTimeout(conn.catchUp.timer);
    for (const ws of [conn.chat, conn.meta]) {
      if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, "client disconnect");
    }
    current = null;
  }

  async function connect() {
    closeCurrent();
    let token;
    if (tokenSource() === "secret") {
      try {
        token = await signJwt(wantedClaims(), el.secret.value);
      } catch (err) {
        addError("local", "page", "Could not sign a token", err.message, null);
        return;
      }
      el.token.value = token;
      el.token.scrollTop = 0; // show the start of the new token, not half a line of it
      signSeq++; // a preview still being signed must not overwrite this token
      showTokenClaims();
    } else {
      token = el.token.value.trim();
    }
    const base = trimSlashes(el.baseUrl.value);
    if (!/^wss?:\/\/[^/]/i.test(base)) {
      addError("local", "page", "The Server URL must start with ws:// or wss://", base || "(empty)", null);
      return;
    }
    const channel = el.channel.value.trim();
    const metaChannel = el.metaChannel.value.trim();
    const claims = decodeClaims(token);
    const key = resumeKey(channel, claims);
    if (resume.key !== key) {
      // Another channel: the position says nothing about it.
      resume.key = key;
      resume.position = null;
    }
    resume.outcome = null;
    const conn = {
      channel,
      metaChannel,
      mode: claims && typeof claims.mode === "string" ? claims.mode : null,
      claims,
      closing: false,
      chat: null,
      meta: null,
      // The position the chat socket resumes after (null: it starts fresh).
      resumeFrom: el.resume.checked ? resume.position : null,
      catchUp: null,
    };
    current = conn;
    el.chatChannelName.textContent = channel || "the token's channels";
    el.metaChannelName.textContent = metaChannel || "none";
    updateSnippet();

    updateResumeHint();

    // Both sockets ask for positions (?last-event-id=); the chat socket also resumes after the
    // last one it received, so that the server first replays what was sent meanwhile.
    const chatUrl = base + socketPath(channel, token) + "?last-event-id=" + encodeURIComponent(conn.resumeFrom || "");
    conn.chat = openSocket(conn, "chat", chatUrl, (raw, msg, position) => {
      if (position === null && msg && msg.event === "Error") {
        serverError("chat", msg);
      } else if (position === null && msg && msg.event === "Gap") {
        showGap(conn, "chat", msg);
      } else {
        const replayed = caughtUp(conn, msg);
        if (position) rememberPosition(position);
        append(el.messages, el.messagesEmpty, renderMessage(raw, msg, position, replayed));
      }
    }, () => {
      if (conn.resumeFrom && conn.mode !== "w") startCatchUp(conn); // a w socket receives nothing
    });
    if (metaChannel) {
      conn.meta = openSocket(conn, "meta", base + socketPath(metaChannel, token) + "?last-event-id=", (raw, msg, position) => {
        if (position === null && msg && msg.event === "Error") {
          serverError("meta", msg);
        } else if (position === null && msg && msg.event === "Gap") {
          showGap(conn, "meta", msg);
        } else {
          append(el.meta, el.metaEmpty, renderMeta(raw, msg, position));
        }
      });
    } else {
      setState("meta", "idle", "No meta channel");
    }
    updateControls();
  }

  function disconnect() {
    closeCurrent();
    setState("chat", "idle", "Disconnected");
    setState("meta", "idle", "Disconnected");
  }

  function sendMessage() {
    const text = el.messageText.value;
    if (!text) return;
    if (!socketOpen("chat")) {
      addError("local", "chat", "Not connected", "Connect before sending.", null);
      return;
    }
    current.chat.send(text);
    if (current.catchUp) current.catchUp.sent.push(text); // its echo ends the catch-up
    el.messageText.value = "";
    el.messageText.focus();
  }

  // ---------------------------------------------------------------- snippet

  function updateSnippet() {
    const base = trimSlashes(el.baseUrl.value) || "ws://localhost:3000";
    const channel = el.channel.value.trim() || "chat";
    el.snippet.textContent = [
      "// token: a JWT your backend signs with the server's secret, e.g. claims {\"mode\":\"rw\"}",
      "const ws = new WebSocket(" + JSON.stringify(base + "/" + channel + "/") + " + token);",
      "",
      "ws.addEventListener(\"message\", (event) => {",
      "  // {\"channel\":\"" + channel + "\",\"event\":\"WebsocketMessage\",\"payload\":\"hi\",\"claims\":{...}}",
      "  const msg = JSON.parse(event.data);",
      "  console.log(msg.channel, msg.payload, msg.claims);",
      "});",
      "",
      "// Each text you send becomes a NOTIFY that every reader of the channel receives.",
      "ws.addEventListener(\"open\", () => ws.send(\"hi\"));",
      "",
      "ws.addEventListener(\"close\", (event) => {",
      "  // 3001 \"JWT expired\": get a fresh token and open a new WebSocket.",
      "  // 1001: the server is shutting down; try again later.",
      "  console.log(\"closed\", event.code, event.reason);",
      "});",
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
  for (const list of [el.errors, el.messages, el.meta]) watchList(list);
  if (!el.secret.value) el.secret.value = DEV_SECRET;

  el.form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    connect();
  });
  el.disconnect.addEventListener("click", disconnect);
  el.resume.addEventListener("change", updateResumeHint);
  el.messageForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    sendMessage();
  });
  for (const input of [el.secret, el.mode, el.expiresIn, el.claimChannel, el.channel]) {
    input.addEventListener("input", refreshSignedToken);
    input.addEventListener("change", refreshSignedToken);
  }
  el.channel.addEventListener("input", updateSnippet);
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
  el.clearMessages.addEventListener("click", () => clearList(el.messages, el.messagesEmpty));
  el.clearMeta.addEventListener("click", () => clearList(el.meta, el.metaEmpty));

  applyTokenSource();
  updateSnippet();
  updateControls();
  updateResumeHint();
  document.documentElement.dataset.ready = "true";
})();

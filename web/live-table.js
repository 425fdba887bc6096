// The example page's "Live table" panel: follows one table channel (`table:<schema>.<table>`,
// pgws with PGWS_SOURCE=wal and the table in its publication) with an optional row filter, on a
// PgwsClient of its own (its token names the table's channel, which the chat's token need not),
// as a live collection (`client.rows`: the table's rows first, then each change, keyed by the key
// columns given), shown as a table that each change updates in place. A gap (a restart onto
// another slot, an outage) is healed by a fresh snapshot that replaces the rows.
//
// Everything from the network is rendered with textContent (never innerHTML).

import { PgwsClient } from "./pgws-client.js";

const $ = (id) => document.getElementById(id);

function h(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

const plural = (n, word) => n + " " + word + (n === 1 ? "" : "s");

/** What a refusal of a table subscription means, in a few words. */
const REFUSALS = {
  unknown_table: "no such table in pgws's publication (or the source is not WAL)",
  bad_filter: "the filter is wrong",
  not_granted: "the token does not name this channel",
  bad_request: "not a table channel",
  not_authorized: "the database refused it",
};

/**
 * Wires the panel. `baseUrl()`: the server's ws:// URL without the trailing slash; `token(channel)`:
 * a token (or a promise of one) that names `channel`, asked at each connection and refresh.
 */
export function mountLiveTable({ baseUrl, token }) {
  const el = {
    form: $("rows-form"),
    channel: $("rows-channel"),
    filter: $("rows-filter"),
    keys: $("rows-keys"),
    follow: $("rows-follow"),
    stop: $("rows-stop"),
    status: $("rows-status"),
    statusText: $("rows-status-text"),
    head: $("rows-head"),
    body: $("rows-body"),
    empty: $("rows-empty"),
    last: $("rows-last"),
  };
  /** The table followed: {client, coll, sub, rows, trs, columns, changes, channel, filter}; null before Follow. */
  let view = null;

  function setStatus(state, text, code) {
    el.status.dataset.state = state;
    if (code) el.status.dataset.code = code;
    else delete el.status.dataset.code;
    el.statusText.textContent = text;
  }

  function following(v) {
    return "Following " + v.channel + (v.filter ? " where " + v.filter : "") + ": " +
      plural(v.rows.size, "row") + ", " + plural(v.changes, "change") +
      (v.coll.snapshots > 1 ? "; rows replaced by a fresh snapshot " + plural(v.coll.snapshots - 1, "time") + (v.gap ? " (after " + v.gap + ")" : "") : "");
  }

  /** The panel's status and counters, as data-* for tests. */
  function live(v) {
    if (v !== view || v.done) return;
    el.status.dataset.snapshots = String(v.coll.snapshots);
    if (v.coll.state === "live" && v.sub.state === "subscribed") setStatus("open", following(v));
  }

  /** A cell: the value as text (JSON for objects and arrays), its JSON in data-json. */
  function fillCell(td, row, column) {
    const has = Object.hasOwn(row, column);
    const value = has ? row[column] : undefined;
    const json = has ? JSON.stringify(value) : "";
    if (td.dataset.json === json && td.dataset.present === String(has)) return;
    td.dataset.json = json;
    td.dataset.present = String(has);
    td.className = value === null ? "null" : "";
    td.textContent = !has ? "" : value === null ? "null" : typeof value === "object" ? json : String(value);
  }

  /** Brings the DOM table to the rows: rows kept in place, cells rewritten only when changed. */
  function render(v, touched, op) {
    let columnsChanged = false;
    // The key columns first, then the others in the order they come (jsonb's: shortest name first).
    if (v.columns.length === 0 && v.rows.size > 0) v.columns.push(...(v.rows.keyColumns ?? []));
    for (const row of v.rows.values()) {
      for (const c of Object.keys(row)) {
        if (!v.columns.includes(c)) {
          v.columns.push(c);
          columnsChanged = true;
        }
      }
    }
    if (columnsChanged) {
      el.head.replaceChildren(...v.columns.map((c) => {
        const th = h("th", null, c);
        th.scope = "col";
        th.dataset.column = c;
        return th;
      }));
    }
    for (const [key, tr] of v.trs) {
      if (!v.rows.has(key)) {
        tr.remove();
        v.trs.delete(key);
      }
    }
    let before = null;
    for (const [key, row] of v.rows) {
      let tr = v.trs.get(key);
      if (!tr) {
        tr = h("tr");
        tr.dataset.testid = "row";
        tr.dataset.key = key;
        v.trs.set(key, tr);
      }
      if (tr.previousSibling !== before || tr.parentNode !== el.body) {
        el.body.insertBefore(tr, before ? before.nextSibling : el.body.firstChild);
      }
      if (columnsChanged || tr.children.length !== v.columns.length || key === touched) {
        while (tr.children.length < v.columns.length) tr.appendChild(h("td"));
        v.columns.forEach((c, i) => {
          tr.children[i].dataset.column = c;
          fillCell(tr.children[i], row, c);
        });
      }
      if (key === touched) tr.dataset.op = op;
      before = tr;
    }
    el.empty.hidden = v.rows.size > 0;
    el.body.parentElement.dataset.rows = String(v.rows.size);
  }

  /** A change the collection applied (`op`: the collection's event), or a new snapshot (`reset`). */
  function onRows(v, op, row) {
    if (v !== view) return;
    if (op !== "reset") v.changes += 1;
    render(v, op === "insert" || op === "update" ? v.rows.keyOf(row) : null, op.toUpperCase());
    live(v);
  }

  /** The last change's line (every change the server sent). */
  function onChange(v, c) {
    if (v !== view) return;
    const key = c.old ? v.rows.keyOf(c.old) : c.new ? v.rows.keyOf(c.new) : "";
    el.last.textContent = "Last change: " + c.op + (c.move ? " (moved " + c.move + " of the filter)" : "") +
      (key ? " of " + key : "") + ", committed " + c.commitTime;
    el.last.dataset.op = c.op;
    el.last.dataset.count = String(v.changes);
  }

  function stop(text) {
    if (!view) return;
    const v = view;
    v.done = true;
    v.client.close();
    el.stop.disabled = true;
    setStatus("idle", text || "Stopped following " + v.channel + " (" + plural(v.rows.size, "row") + " as last seen)");
  }

  function follow() {
    const channel = el.channel.value.trim();
    const filter = el.filter.value.trim();
    const keys = el.keys.value.split(",").map((k) => k.trim()).filter(Boolean);
    if (view && !view.done) stop("Stopped");
    el.body.replaceChildren();
    el.head.replaceChildren();
    el.empty.hidden = false;
    el.last.textContent = "";
    delete el.last.dataset.op;
    delete el.last.dataset.count;
    if (!/^table:[^.]+\..+$/.test(channel)) {
      setStatus("refused", "A table channel is table:<schema>.<table>, e.g. table:public.todos", "local");
      return;
    }
    const base = baseUrl();
    if (!/^wss?:\/\/[^/]/i.test(base)) {
      setStatus("refused", "The Server URL (above) must start with ws:// or wss://", "local");
      return;
    }
    const v = { channel, filter, trs: new Map(), columns: [], changes: 0, done: false, gap: null };
    try {
      v.client = new PgwsClient({ url: base + "/", token: () => token(channel) });
      v.coll = v.client.rows(channel, { filter: filter || undefined, key: keys });
      v.rows = v.coll.rows;
      v.sub = v.client.subscribe(channel); // the collection's subscription: its change, gap and state events
    } catch (err) {
      setStatus("refused", "Cannot follow: " + err.message, "local");
      return;
    }
    view = v;
    el.stop.disabled = false;
    setStatus("connecting", "Loading the rows of " + channel + "…");
    for (const op of ["insert", "update", "delete", "reset"]) v.coll.on(op, (row) => onRows(v, op, row));
    v.sub.on("change", (c) => onChange(v, c));
    v.sub.on("subscribed", (a) => {
      if (v !== view) return;
      if (a.snapshot && v.coll.state === "live") setStatus("reconnecting", "Taking a fresh snapshot of " + channel + "…");
      else live(v);
    });
    v.sub.on("gap", (g) => {
      if (v !== view) return;
      v.gap = g.reason; // healed by a fresh snapshot, which replaces the rows
      setStatus("reconnecting", "Changes may be missing (" + g.reason + "): taking a fresh snapshot…");
    });
    v.coll.on("snapshot_failed", (f) => {
      if (v !== view) return;
      setStatus("reconnecting", "The snapshot failed (" + f.code + "): trying again…");
    });
    v.sub.on("error", (e) => {
      if (v !== view || e.fatal) return;
      stop();
      setStatus("refused", "Refused: " + (REFUSALS[e.code] || e.code) + (e.message ? ": " + e.message : "") + " (" + e.code + ")", e.code);
    });
    v.sub.on("left", (f) => {
      if (v !== view) return;
      stop();
      setStatus("refused", "Left: " + (f.message || f.reason) + " (" + f.reason + ")", f.reason);
    });
    v.client.on("state", (s) => {
      if (v !== view || v.done) return;
      el.status.dataset.connections = String(v.client.connections);
      if (s === "reconnecting" || s === "offline") setStatus("reconnecting", "Reconnecting; the changes missed meanwhile are replayed (or a fresh snapshot taken)…");
      else if (s === "open" && v.sub.state !== "subscribed") setStatus("connecting", "Joining " + channel + "…");
    });
    v.client.on("error", (e) => {
      if (v !== view) return;
      if (e.fatal) {
        stop();
        setStatus("refused", "The server refused the connection: " + e.message + " (" + e.code + ")", e.code);
      } else if (e.code === "bad_change") {
        el.last.textContent = "A message on " + channel + " is not a table change (ignored)";
      }
    });
    v.client.connect();
  }

  el.form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    follow();
  });
  el.stop.addEventListener("click", () => stop());
}

// Test harness: a real `pgws --embedded` (PGWS_BIN), tokens, a TCP proxy that can cut
// connections, and waits that all have a timeout.

import { execFileSync, spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "../../..");
export const SECRET = "pgws-client-test-secret-0123456789abcdef";
const START_MS = 60_000; // includes initdb of the embedded cluster
export const WAIT_MS = 15_000;

function defaultBin() {
  try {
    const out = execFileSync(process.env.CARGO || "cargo", ["metadata", "--format-version", "1", "--no-deps"], {
      cwd: REPO,
      encoding: "utf8",
      timeout: 30_000,
      stdio: ["ignore", "pipe", "pipe"],
    });
    return path.join(JSON.parse(out).target_directory, "debug", "pgws");
  } catch {
    return path.join(REPO, "target", "debug", "pgws");
  }
}

export const PGWS_BIN = process.env.PGWS_BIN ? path.resolve(process.env.PGWS_BIN) : defaultBin();

/** Rejects after `ms` unless the promise settles first. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Resolves when `emitter` emits `event` with an argument for which `pred` holds. */
export function next(emitter, event, what, pred = () => true, ms = WAIT_MS) {
  let off;
  const p = new Promise((resolve) => {
    off = emitter.on(event, (v) => {
      if (pred(v)) resolve(v);
    });
  });
  return withTimeout(p, ms, what).finally(() => off());
}

/** Signs an HS256 token. */
export function token(claims, secret = SECRET) {
  const enc = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const input = enc({ alg: "HS256", typ: "JWT" }) + "." + enc(claims);
  return input + "." + crypto.createHmac("sha256", secret).update(input).digest("base64url");
}

/**
 * Runs SQL through psql (a real PostgreSQL connection, `conninfo`: the embedded cluster's);
 * `vars` become psql variables (`:'name'` quotes them, nothing is pasted into the SQL text).
 * Resolves with psql's output (`-At`: unaligned, tuples only).
 */
export function psql(conninfo, sql, vars = {}) {
  const args = [conninfo, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"];
  for (const [k, v] of Object.entries(vars)) args.push("-v", `${k}=${v}`);
  args.push("-f", "-");
  const run = new Promise((resolve, reject) => {
    const child = spawn(process.env.PSQL || "psql", args, { stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    child.once("error", reject);
    child.once("exit", (code) => (code === 0 ? resolve(out) : reject(new Error(`psql exited with ${code}: ${err}${out}`))));
    child.stdin.end(sql + "\n");
  });
  return withTimeout(run, WAIT_MS, "psql");
}

/** Waits (bounded) until pgws's publication exists: the WAL source creates it when it starts. */
export async function publicationReady(conninfo, name = "pgws") {
  const start = Date.now();
  for (;;) {
    const out = await psql(conninfo, "SELECT count(*) FROM pg_publication WHERE pubname = :'name';", { name });
    if (out.trim() === "1") return;
    if (Date.now() - start > WAIT_MS) throw new Error(`timed out: the publication ${name}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Starts pgws --embedded on `port` (0: any); resolves with {port, url, conninfo, stop()}
 * (`conninfo`: the embedded PostgreSQL's, for psql). `extraEnv`: more
 * settings (e.g. PGWS_ROOT_PATH, for the browser tests that load the client from pgws itself).
 */
export async function startServer(port = 0, logName = "server", extraEnv = {}) {
  if (!fs.existsSync(PGWS_BIN)) throw new Error(`pgws binary not found at ${PGWS_BIN}; build it or set PGWS_BIN`);
  const env = { ...process.env, PGWS_JWT_SECRET: SECRET };
  for (const k of ["PGWS_JWT_SECRET_BASE64", "PGWS_PORT", "PGWS_LISTEN_CHANNEL", "PGWS_META_CHANNEL"]) delete env[k];
  Object.assign(env, extraEnv);
  fs.mkdirSync(path.join(HERE, "artifacts"), { recursive: true });
  const log = fs.createWriteStream(path.join(HERE, "artifacts", `${logName}.log`), { flags: "a" });
  // With PGWS_DB_URI given: a pgws on that database (another pgws's embedded one), no cluster of its own.
  const embedded = extraEnv.PGWS_DB_URI ? [] : ["--embedded"];
  const child = spawn(PGWS_BIN, [...embedded, "--port", String(port), "--host", "127.0.0.1"], {
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stderr.pipe(log, { end: false });
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  process.once("exit", () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  });
  let conninfo = null;
  const ready = new Promise((resolve, reject) => {
    child.once("error", reject);
    exited.then(({ code, signal }) => reject(new Error(`pgws exited early (${code}, ${signal})`)));
    readline.createInterface({ input: child.stdout }).on("line", (line) => {
      log.write(line + "\n");
      const pg = /Embedded PostgreSQL: (.*\S)/.exec(line); // printed before the port
      if (pg) conninfo = pg[1];
      const m = /Listening on port (\d+)/.exec(line);
      if (m) resolve(Number(m[1]));
    });
  });
  const actual = await withTimeout(ready, START_MS, "pgws to print its port");
  return {
    port: actual,
    url: `ws://127.0.0.1:${actual}/`,
    conninfo,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      await withTimeout(exited, WAIT_MS, "pgws to stop");
    },
  };
}

/** A TCP proxy to `port` that can cut every connection and refuse new ones for a while. */
export async function proxy(port) {
  const sockets = new Set();
  let up = true;
  const server = net.createServer((client) => {
    if (!up) {
      client.destroy();
      return;
    }
    const upstream = net.connect(port, "127.0.0.1");
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    client.pipe(upstream);
    upstream.pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `ws://127.0.0.1:${server.address().port}/`,
    /** Cuts every connection (no close frame: the TCP connection is destroyed). */
    cut() {
      for (const s of sockets) s.destroy();
    },
    set up(v) {
      up = v;
    },
    close() {
      this.cut();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

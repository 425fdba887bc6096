//! The chaos run's clients: subscribers (websocket opted in to positions with
//! `?last-event-id=`, or Server-Sent Events with `Last-Event-ID`) that resume from their last
//! position after every disconnection and log what they received; SQL publishers (one
//! connection each, `pg_logical_emit_message` or `pg_notify` in the same statement as a row in
//! the ledger table, so that what was committed is known exactly); websocket writers (`rw`, one
//! per channel, one message at a time, the echo as acknowledgement).
//!
//! Every channel has exactly one publisher, which numbers its messages 0, 1, 2, …: the order of
//! the numbers is the commit order, so that any reordering a subscriber sees is pgws's.

use crate::chaos_check::{GAP, Outcome, SubLog};
use crate::sseclient::{self, SseMsg};
use crate::target::Target;
use crate::wsclient::{self, Msg};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Traffic and faults.
    Running,
    /// Faults are over and pgws is ready: each publisher sends one more message per channel
    /// that must be acknowledged, then stops.
    Closing,
    /// Everyone stops.
    Stop,
}

/// What every client shares.
pub struct Ctx {
    /// pgws (a fixed port: it is restarted on the same one).
    pub target: Target,
    /// The JWT secret pgws runs with.
    pub secret: String,
    /// `PGWS_LISTEN_CHANNEL`: the NOTIFY channel, or the logical messages' prefix.
    pub prefix: String,
    /// WAL source (logical messages) or NOTIFY.
    pub wal: bool,
    /// Direct connection string to PostgreSQL (not through the cut-able proxy).
    pub pg: String,
    /// Padding added to every message.
    pub pad: String,
    /// The run's phase.
    pub phase: watch::Receiver<Phase>,
}

/// The name of channel `k`.
pub fn channel_name(k: usize) -> String {
    format!("chaos{k}")
}

/// A small xorshift generator: reproducible runs from `--seed`, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded (0 is mapped to a fixed non-zero state).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, n)`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Uniform duration in `[lo, hi)` seconds.
    pub fn secs(&mut self, lo: f64, hi: f64) -> Duration {
        Duration::from_secs_f64(lo + (hi - lo).max(0.0) * self.unit())
    }
}

/// Percent-encodes everything but unreserved characters (for `?last-event-id=`).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Increments a named counter.
fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    *map.entry(key.to_string()).or_default() += 1;
}

/// A subscriber's plan.
#[derive(Debug, Clone)]
pub struct SubSpec {
    /// Its number (also spreads source addresses).
    pub idx: usize,
    /// Server-Sent Events (else a websocket).
    pub sse: bool,
    /// The channels it follows.
    pub channels: Vec<usize>,
}

/// What the run watches while a subscriber runs.
pub struct Progress {
    /// Highest number received per followed channel (parallel to `SubSpec::channels`).
    pub max: Vec<AtomicI64>,
    /// Connected at least once.
    pub connected: AtomicBool,
}

impl Progress {
    /// For `channels` followed channels.
    pub fn new(channels: usize) -> Self {
        Self {
            max: (0..channels).map(|_| AtomicI64::new(-1)).collect(),
            connected: AtomicBool::new(false),
        }
    }
}

/// What a subscriber saw.
#[derive(Debug, Default)]
pub struct SubResult {
    /// Its logs.
    pub log: SubLog,
    /// Streams opened.
    pub connects: u64,
    /// Cuts by the fault injector.
    pub cuts: u64,
    /// Streams that ended by themselves (pgws restarted, closed, reset).
    pub ended: u64,
    /// Connection attempts that failed, by reason.
    pub refused: BTreeMap<String, u64>,
    /// `Gap` events by `reason` (`outage` when it has none: a source outage announced live).
    pub gaps: BTreeMap<String, u64>,
    /// Messages for a channel it does not follow, unreadable ones, other events.
    pub strange: BTreeMap<String, u64>,
}

/// An open subscription.
enum Conn {
    Ws(
        wsclient::WsReader<tokio::net::tcp::OwnedReadHalf>,
        wsclient::WsWriter<tokio::net::tcp::OwnedWriteHalf>,
    ),
    Sse(
        sseclient::SseReader<tokio::net::tcp::OwnedReadHalf>,
        #[allow(dead_code)] tokio::net::tcp::OwnedWriteHalf,
    ),
}

/// A subscriber's running state.
struct SubState {
    spec: SubSpec,
    names: Vec<String>,
    last_id: Option<String>,
    result: SubResult,
    progress: Arc<Progress>,
}

impl SubState {
    fn slot(&self, channel: &str) -> Option<usize> {
        self.names.iter().position(|n| n == channel)
    }

    /// A message with its position and compat text.
    fn message(&mut self, id: &str, text: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(text) else {
            bump(&mut self.result.strange, "not_json");
            return;
        };
        let Some(slot) = v["channel"].as_str().and_then(|c| self.slot(c)) else {
            bump(&mut self.result.strange, "foreign_channel");
            return;
        };
        let Some(n) = number(&v["payload"]) else {
            bump(&mut self.result.strange, "no_number");
            return;
        };
        self.last_id = Some(id.to_string());
        self.result.log.logs[slot].push(n as i64);
        self.progress.max[slot].fetch_max(n as i64, Ordering::Relaxed);
    }

    /// A JSON event of pgws's own (`Gap`, …).
    fn event(&mut self, v: &Value) {
        if v["event"] != "Gap" {
            bump(&mut self.result.strange, "other_event");
            return;
        }
        let reason = v["reason"].as_str().unwrap_or("outage").to_string();
        bump(&mut self.result.gaps, &reason);
        match v["channels"].as_array() {
            Some(names) => {
                for name in names.iter().filter_map(Value::as_str) {
                    if let Some(slot) = self.slot(name) {
                        self.result.log.logs[slot].push(GAP);
                    }
                }
            }
            None => {
                for log in &mut self.result.log.logs {
                    log.push(GAP);
                }
            }
        }
    }

    /// A websocket text frame of an opted-in socket.
    fn ws_text(&mut self, text: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(text) else {
            bump(&mut self.result.strange, "not_json");
            return;
        };
        match (v["id"].as_str(), v["data"].as_str()) {
            (Some(id), Some(data)) => self.message(id, data.as_bytes()),
            _ => self.event(&v),
        }
    }

    /// A Server-Sent Event.
    fn sse_event(&mut self, id: Option<&[u8]>, event: Option<&[u8]>, data: &[u8]) {
        match event {
            // A `Gap` is a named event (`event: gap`), apart from messages.
            Some(b"gap") => {
                match serde_json::from_slice::<Value>(data) {
                    Ok(v) => self.event(&v),
                    Err(_) => bump(&mut self.result.strange, "not_json"),
                }
                return;
            }
            // `close`: the stream ends after it.
            Some(_) => return,
            None => {}
        }
        match id {
            Some(id) => {
                let id = String::from_utf8_lossy(id).into_owned();
                self.message(&id, data);
            }
            None => match serde_json::from_slice::<Value>(data) {
                Ok(v) => self.event(&v),
                Err(_) => bump(&mut self.result.strange, "not_json"),
            },
        }
    }
}

/// A numbered payload: a number (SQL publishers) or a string holding one (websocket writers).
fn number(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// Runs a subscriber until the phase is `Stop`; `cut` ticks when the fault injector cuts it.
pub async fn subscriber(
    spec: SubSpec,
    ctx: Arc<Ctx>,
    progress: Arc<Progress>,
    mut cut: watch::Receiver<u64>,
    seed: u64,
) -> SubResult {
    let names: Vec<String> = spec.channels.iter().map(|&c| channel_name(c)).collect();
    let token = crate::token::sign(&ctx.secret, &json!({"mode": "r", "channels": names}))
        .expect("sign a token");
    let mut rng = Rng::new(seed);
    let mut st = SubState {
        spec: spec.clone(),
        names,
        last_id: None,
        result: SubResult::default(),
        progress,
    }
    .init();
    let mut phase = ctx.phase.clone();
    let timeout = Duration::from_secs(5);
    'outer: loop {
        if *phase.borrow() == Phase::Stop {
            break;
        }
        let opened = if spec.sse {
            sseclient::connect(
                &ctx.target,
                spec.idx,
                &format!("/{token}"),
                st.last_id.as_deref().map(str::as_bytes),
                timeout,
                16 * 1024,
            )
            .await
            .map(|(r, w)| Conn::Sse(r, w))
        } else {
            let q = percent_encode(st.last_id.as_deref().unwrap_or(""));
            wsclient::connect(
                &ctx.target,
                spec.idx,
                &format!("/{token}?last-event-id={q}"),
                timeout,
                16 * 1024,
            )
            .await
            .map(|(r, w)| Conn::Ws(r, w))
        };
        let mut conn = match opened {
            Ok(c) => c,
            Err(e) => {
                bump(&mut st.result.refused, &e.category());
                tokio::select! {
                    _ = phase.changed() => {}
                    _ = tokio::time::sleep(rng.secs(0.1, 0.4)) => {}
                }
                continue;
            }
        };
        st.result.connects += 1;
        st.progress.connected.store(true, Ordering::Relaxed);
        loop {
            tokio::select! {
                biased;
                _ = phase.changed() => {
                    if *phase.borrow() == Phase::Stop {
                        break 'outer;
                    }
                }
                _ = cut.changed() => {
                    st.result.cuts += 1;
                    drop(conn);
                    tokio::time::sleep(rng.secs(0.0, 0.8)).await;
                    continue 'outer;
                }
                open = read_some(&mut conn, &mut st) => {
                    if !open {
                        st.result.ended += 1;
                        drop(conn);
                        tokio::time::sleep(rng.secs(0.05, 0.3)).await;
                        continue 'outer;
                    }
                }
            }
        }
    }
    st.result.log.channels = st.spec.channels.clone();
    st.result
}

impl SubState {
    /// With empty logs, one per followed channel.
    fn init(mut self) -> Self {
        self.result.log.logs = vec![Vec::new(); self.spec.channels.len()];
        self
    }
}

/// Reads once and handles every complete message; `false` when the stream ended.
async fn read_some(conn: &mut Conn, st: &mut SubState) -> bool {
    match conn {
        Conn::Ws(rd, wr) => {
            match rd.fill().await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
            loop {
                match rd.next_msg() {
                    Ok(Some(Msg::Text(t))) | Ok(Some(Msg::Binary(t))) => st.ws_text(t),
                    Ok(Some(Msg::Ping(p))) => wr.push_pong(p),
                    Ok(Some(Msg::Pong)) => {}
                    Ok(Some(Msg::Close(_))) | Err(_) => return false,
                    Ok(None) => break,
                }
            }
            wr.pending() == 0 || wr.flush().await.is_ok()
        }
        Conn::Sse(rd, _) => {
            match rd.fill().await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
            loop {
                match rd.next_msg() {
                    Ok(Some(SseMsg::Event { id, event, data })) => st.sse_event(id, event, data),
                    Ok(Some(SseMsg::Comment)) => {}
                    Ok(None) => break,
                    Err(_) => return false,
                }
            }
            !rd.ended()
        }
    }
}

/// What a publisher published.
#[derive(Debug, Default)]
pub struct PubResult {
    /// Its channels.
    pub channels: Vec<usize>,
    /// Per channel (parallel): the outcome of every number.
    pub outcomes: Vec<Vec<Outcome>>,
    /// Failed publishes by reason.
    pub errors: BTreeMap<String, u64>,
    /// Whether every channel got its closing message acknowledged.
    pub closed: bool,
}

/// The SQL of one numbered message and its ledger row, one statement (one transaction).
fn publish_sql(wal: bool) -> &'static str {
    if wal {
        "WITH l AS (INSERT INTO chaos_ledger (channel, seq) VALUES ($1, $2)) \
         SELECT pg_logical_emit_message(true, $3::text, $4::text)"
    } else {
        "WITH l AS (INSERT INTO chaos_ledger (channel, seq) VALUES ($1, $2)) \
         SELECT pg_notify($3::text, $4::text)"
    }
}

/// Publishes on `channels` through one PostgreSQL connection, one message every `interval`
/// (round robin), until it has closed every channel (or the phase is `Stop`).
pub async fn sql_publisher(channels: Vec<usize>, ctx: Arc<Ctx>, interval: Duration) -> PubResult {
    let mut r = PubResult {
        outcomes: vec![Vec::new(); channels.len()],
        channels: channels.clone(),
        ..PubResult::default()
    };
    let mut done = vec![false; channels.len()];
    let mut client: Option<tokio_postgres::Client> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = 0;
    let sql = publish_sql(ctx.wal);
    loop {
        tick.tick().await;
        let phase = *ctx.phase.borrow();
        if phase == Phase::Stop {
            break;
        }
        if done.iter().all(|&d| d) {
            r.closed = true;
            break;
        }
        while done[next] {
            next = (next + 1) % channels.len();
        }
        let slot = next;
        next = (next + 1) % channels.len();
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match crate::pg::connect(&ctx.pg, Duration::from_secs(5)).await {
                Ok(c) => client = Some(c),
                Err(_) => {
                    bump(&mut r.errors, "connect");
                    client = None;
                    continue;
                }
            }
        }
        let c = client.as_ref().expect("connected above");
        let seq = r.outcomes[slot].len() as i64;
        let text = json!({"channel": channel_name(channels[slot]), "payload": seq, "pad": ctx.pad})
            .to_string();
        let done_now = tokio::time::timeout(
            Duration::from_secs(10),
            c.execute(sql, &[&(channels[slot] as i32), &seq, &ctx.prefix, &text]),
        )
        .await;
        let outcome = match done_now {
            Ok(Ok(_)) => Outcome::Certain,
            Ok(Err(e)) => {
                bump(&mut r.errors, if e.is_closed() { "closed" } else { "sql" });
                Outcome::Uncertain
            }
            Err(_) => {
                bump(&mut r.errors, "timeout");
                client = None;
                Outcome::Uncertain
            }
        };
        r.outcomes[slot].push(outcome);
        if phase == Phase::Closing && outcome == Outcome::Certain {
            done[slot] = true;
        }
    }
    r
}

/// Publishes numbered messages on `channel` as a websocket writer (`rw`): one at a time, each
/// acknowledged by its echo; an `Error` answer, a lost connection or no echo within `wait`
/// leaves the number uncertain and the next one follows.
pub async fn writer(
    idx: usize,
    channel: usize,
    ctx: Arc<Ctx>,
    interval: Duration,
    wait: Duration,
) -> PubResult {
    let mut r = PubResult {
        channels: vec![channel],
        outcomes: vec![Vec::new()],
        ..PubResult::default()
    };
    let name = channel_name(channel);
    let token = crate::token::for_mode(&ctx.secret, "rw").expect("sign a token");
    let path = format!("/{name}/{token}");
    let mut conn: Option<wsclient::Conn> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let phase = *ctx.phase.borrow();
        if phase == Phase::Stop {
            break;
        }
        if conn.is_none() {
            match wsclient::connect(&ctx.target, idx, &path, Duration::from_secs(5), 16 * 1024)
                .await
            {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    bump(&mut r.errors, &format!("connect {}", e.category()));
                    continue;
                }
            }
        }
        let (rd, wr) = conn.as_mut().expect("connected above");
        let seq = r.outcomes[0].len();
        let text = seq.to_string();
        wr.push_text(text.as_bytes());
        let outcome = if wr.flush().await.is_err() {
            conn = None;
            bump(&mut r.errors, "write");
            Outcome::Uncertain
        } else {
            match tokio::time::timeout(wait, echo(rd, wr, &name, &text)).await {
                Ok(Ok(true)) => Outcome::Certain,
                Ok(Ok(false)) => {
                    bump(&mut r.errors, "error_event");
                    Outcome::Uncertain
                }
                Ok(Err(())) => {
                    conn = None;
                    bump(&mut r.errors, "connection_lost");
                    Outcome::Uncertain
                }
                Err(_) => {
                    bump(&mut r.errors, "no_echo");
                    Outcome::Uncertain
                }
            }
        };
        r.outcomes[0].push(outcome);
        if phase == Phase::Closing && outcome == Outcome::Certain {
            r.closed = true;
            break;
        }
    }
    r
}

/// Waits for the echo of `text` on `channel` (`Ok(true)`), an `Error` event (`Ok(false)`) or
/// the end of the connection (`Err`).
async fn echo(
    rd: &mut wsclient::WsReader<tokio::net::tcp::OwnedReadHalf>,
    wr: &mut wsclient::WsWriter<tokio::net::tcp::OwnedWriteHalf>,
    channel: &str,
    text: &str,
) -> Result<bool, ()> {
    loop {
        match rd.fill().await {
            Ok(0) | Err(_) => return Err(()),
            Ok(_) => {}
        }
        let mut answer = None;
        loop {
            match rd.next_msg() {
                Ok(Some(Msg::Text(t))) | Ok(Some(Msg::Binary(t))) => {
                    let Ok(v) = serde_json::from_slice::<Value>(t) else {
                        continue;
                    };
                    if v["event"] == "Error" {
                        answer = Some(false);
                    } else if v["channel"] == channel && v["payload"] == text {
                        answer = Some(true);
                    }
                }
                Ok(Some(Msg::Ping(p))) => wr.push_pong(p),
                Ok(Some(Msg::Pong)) => {}
                Ok(Some(Msg::Close(_))) | Err(_) => return Err(()),
                Ok(None) => break,
            }
        }
        if wr.pending() > 0 && wr.flush().await.is_err() {
            return Err(());
        }
        if let Some(a) = answer {
            return Ok(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_encoding() {
        assert_eq!(number(&json!(17)), Some(17));
        assert_eq!(number(&json!("17")), Some(17));
        assert_eq!(number(&json!("x")), None);
        assert_eq!(percent_encode("5d16-0/1500EE0.1"), "5d16-0%2F1500EE0.1");
        let mut r = Rng::new(7);
        let d = r.secs(1.0, 2.0);
        assert!(d >= Duration::from_secs(1) && d < Duration::from_secs(2));
        assert!(r.below(3) < 3);
    }
}

//! Past one database server: a PostgreSQL 18 primary and a streaming standby made with
//! `pg_basebackup` (physical slot, slot synchronisation), pgws given both in one libpq-style
//! connection string, the primary killed (`pg_ctl stop -m immediate`) under steady publishing and
//! the standby promoted. In WAL mode every client must end with exactly what the new primary
//! holds (0 lost, 0 duplicated, 0 reordered); when the slot had not been synchronised, the loss
//! is announced (`Gap`), never a silent stall. Also: servers tried in order by what they are
//! (`target_session_attrs`), and a connection string whose servers are all down.
//!
//! The oracle: each message is published in a transaction that also inserts its number into a
//! table, so the new primary's table says exactly which messages were committed and survived
//! (including those whose commit the publisher never saw acknowledged).
//!
//! Needs PostgreSQL 18 with `pg_basebackup` (`scripts/pg-install.sh 18`, or
//! `PGWS_FAILOVER_PG_BIN`); without it the tests print why and pass.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;
use crate::resume::message;

/// How long a failover may take, end to end, before the test fails.
const FAILOVER_WAIT: Duration = Duration::from_secs(90);

/// The PostgreSQL 18 binaries with `pg_basebackup`, or why there are none.
fn pg18_bin() -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = [
        std::env::var_os("PGWS_FAILOVER_PG_BIN").map(PathBuf::from),
        std::env::var_os("PGWS_PG_BIN").map(PathBuf::from),
        Some(pgws::embedded::registry_cache().join("pg-18/bin")),
    ]
    .into_iter()
    .flatten()
    .collect();
    for bin in &candidates {
        let version = Command::new(bin.join("postgres"))
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if version.contains(") 18.") && bin.join("pg_basebackup").exists() {
            return Ok(bin.clone());
        }
    }
    Err(format!(
        "no PostgreSQL 18 with pg_basebackup in {candidates:?} (run scripts/pg-install.sh 18)"
    ))
}

/// The OS user PostgreSQL runs as: `postgres` when the tests run as root (PostgreSQL refuses
/// root), else the current user.
fn owner() -> Option<(String, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == "postgres")
        .map(|f| {
            (
                f[0].to_string(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
            )
        })
}

/// One PostgreSQL server in its own directory, listening on a Unix socket there only.
struct Node {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    user: String,
    owner: Option<(u32, u32)>,
}

impl Node {
    fn new(bin: &Path, name: &str, port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "pgws-failover-{}-{name}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let who = owner();
        if let Some((_, uid, gid)) = &who {
            std::os::unix::fs::chown(&dir, Some(*uid), Some(*gid)).unwrap();
        }
        Self {
            bin: bin.to_path_buf(),
            dir,
            port,
            user: who
                .as_ref()
                .map(|w| w.0.clone())
                .unwrap_or_else(|| std::env::var("USER").unwrap_or_else(|_| "postgres".into())),
            owner: who.map(|(_, u, g)| (u, g)),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn run(&self, program: &str, args: &[&str]) {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(self.bin.join(program));
        c.args(args).stdin(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
        }
        let out = c.output().unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn initdb(&self) {
        let data = self.data();
        self.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                &self.user,
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale",
                "C",
            ],
        );
    }

    /// A standby of `primary`: a base backup over its physical slot `slot`, with the settings
    /// slot synchronisation needs (`sync` false leaves `sync_replication_slots` off).
    fn standby_of(&self, primary: &Node, slot: &str, sync: bool) {
        let data = self.data();
        let conninfo = format!(
            "host={} port={} user={} dbname=postgres application_name={slot}",
            primary.dir.display(),
            primary.port,
            primary.user
        );
        self.run(
            "pg_basebackup",
            &[
                "-D",
                data.to_str().unwrap(),
                "-d",
                &conninfo,
                "-X",
                "stream",
                "-C",
                "-S",
                slot,
                "-R",
                "--no-sync",
            ],
        );
        // Written out in full (with the dbname slot synchronisation needs), whatever -R wrote.
        let auto = data.join("postgresql.auto.conf");
        let mut conf = std::fs::read_to_string(&auto).unwrap_or_default();
        conf.push_str(&format!(
            "\nprimary_conninfo = '{conninfo}'\nprimary_slot_name = '{slot}'\n\
             hot_standby_feedback = on\nsync_replication_slots = {}\n",
            if sync { "on" } else { "off" }
        ));
        std::fs::write(&auto, conf).unwrap();
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(&auto, Some(uid), Some(gid)).unwrap();
        }
    }

    fn start(&self, settings: &[(&str, &str)]) {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses= -c fsync=off -c wal_level=logical \
             -c max_wal_senders=20 -c max_replication_slots=20 -c wal_writer_delay=10ms \
             -c max_connections=100",
            self.port,
            self.dir.display()
        );
        for (k, v) in settings {
            opts.push_str(&format!(" -c {k}={v}"));
        }
        let data = self.data();
        let log = self.dir.join("postgres.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Kills the server (`-m immediate`: no checkpoint, no goodbye to clients).
    fn kill(&self) {
        let data = self.data();
        self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
    }

    fn promote(&self) {
        let data = self.data();
        self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-w", "-t", "60", "promote"],
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// A key=value connection string to this server alone.
    fn uri(&self) -> String {
        format!(
            "host={} port={} user={} dbname=postgres",
            self.dir.display(),
            self.port,
            self.user
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
        }
        let _ = c.status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs blocking process work without stalling the servers on this runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// A primary and a streaming standby (physical slot `standby1`), replicating synchronously so that
/// what a publisher saw committed is on the standby; `sync` sets slot synchronisation up.
async fn pair(bin: PathBuf, sync: bool) -> (Arc<Node>, Arc<Node>) {
    pair_with(
        bin,
        sync,
        &[
            ("synchronized_standby_slots", "standby1"),
            ("synchronous_standby_names", "standby1"),
        ],
    )
    .await
}

/// [`pair`] with other settings on the primary.
async fn pair_with(
    bin: PathBuf,
    sync: bool,
    primary_settings: &'static [(&'static str, &'static str)],
) -> (Arc<Node>, Arc<Node>) {
    static PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(5500);
    let p = PORT.fetch_add(2, Ordering::Relaxed);
    blocking(move || {
        let primary = Node::new(&bin, "primary", p);
        primary.initdb();
        primary.start(primary_settings);
        let standby = Node::new(&bin, "standby", p + 1);
        standby.standby_of(&primary, "standby1", sync);
        standby.start(&[]);
        (Arc::new(primary), Arc::new(standby))
    })
    .await
}

/// The connection string naming both servers, primary first (as an operator writes it).
fn both(first: &Node, second: &Node) -> String {
    format!(
        "host={},{} port={},{} user={} dbname=postgres",
        first.dir.display(),
        second.dir.display(),
        first.port,
        second.port,
        first.user
    )
}

/// Waits until `query` (one boolean) is true on `uri`.
async fn until(uri: &str, query: &str, what: &str) {
    let db = pg(uri).await;
    let deadline = Instant::now() + FAILOVER_WAIT;
    loop {
        let ok: Option<bool> = db.query_one(query, &[]).await.unwrap().get(0);
        if ok == Some(true) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {FAILOVER_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a compat websocket client receives: numbered messages, and `Gap` events.
#[derive(Debug, Default)]
struct Received {
    numbers: Vec<usize>,
    gaps: Vec<Value>,
}

/// Reads the websocket until `done` says so (checked on every frame and every 200 ms).
async fn follow(
    ws: &mut Ws,
    got: &mut Received,
    mut done: impl FnMut(&Received) -> bool,
    limit: Duration,
) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done(got) {
        let frame = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + Duration::from_millis(200)),
            ws.next(),
        )
        .await;
        match frame {
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "stalled: after {} messages and {} gaps nothing more within {limit:?} (last: {:?})",
                got.numbers.len(),
                got.gaps.len(),
                got.numbers.last()
            ),
            Ok(Some(Ok(Message::Text(text)))) => {
                let v: Value = serde_json::from_str(&text).expect("JSON");
                if v["event"] == "Gap" {
                    got.gaps.push(v);
                } else {
                    got.numbers
                        .push(v["payload"].as_u64().expect("numbered") as usize);
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(other) => panic!("the websocket ended: {other:?}"),
        }
    }
}

/// Publishes `message(channel, n)` for n in `range`, each in a transaction that also records n
/// in `sent`, through a connection string naming both servers (reconnecting through a failover);
/// returns the numbers whose commit was not acknowledged.
async fn publish(
    uri: String,
    channel: &'static str,
    range: std::ops::Range<usize>,
    pause: Duration,
    go_on: Arc<AtomicBool>,
) -> Vec<usize> {
    let uri = format!("{uri} target_session_attrs=read-write connect_timeout=2");
    let mut unacknowledged = Vec::new();
    let mut client: Option<tokio_postgres::Client> = None;
    for n in range {
        if !go_on.load(Ordering::Relaxed) {
            break;
        }
        loop {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                match tokio_postgres::connect(&uri, tokio_postgres::NoTls).await {
                    Ok((c, conn)) => {
                        tokio::spawn(conn);
                        client = Some(c);
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            let c = client.as_ref().unwrap();
            let sent = c
                .batch_execute(&format!(
                    "BEGIN; INSERT INTO sent VALUES ({n}); \
                     SELECT pg_logical_emit_message(true, '{LISTEN}', '{}'); COMMIT;",
                    message(channel, n)
                ))
                .await;
            match sent {
                Ok(()) => break,
                Err(_) => {
                    // Committed or not: the new primary's table says.
                    unacknowledged.push(n);
                    client = None;
                    break;
                }
            }
        }
        tokio::time::sleep(pause).await;
    }
    unacknowledged
}

/// The numbers the (new) primary holds, in commit order (one publisher: number order).
async fn committed(uri: &str) -> Vec<usize> {
    let db = pg(uri).await;
    db.query("SELECT n FROM sent ORDER BY n", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i32>(0) as usize)
        .collect()
}

/// Loss, duplicates and order of `got` against `expected`.
fn compare(got: &[usize], expected: &[usize]) -> (usize, usize, usize) {
    let want: BTreeSet<usize> = expected.iter().copied().collect();
    let mut seen = BTreeSet::new();
    let mut dup = 0;
    let mut reordered = 0;
    let mut last = None;
    for &n in got {
        if !seen.insert(n) {
            dup += 1;
        }
        if last.is_some_and(|l| n < l) {
            reordered += 1;
        }
        last = Some(n);
    }
    let lost = want.difference(&seen).count();
    (lost, dup, reordered)
}

/// How many failovers [`wal_clients_lose_nothing_across_a_failover_to_a_synced_standby`] runs
/// (`PGWS_FAILOVER_SEEDS`, default 1), each killing the primary at another point of the stream.
fn seeds() -> u64 {
    std::env::var("PGWS_FAILOVER_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wal_clients_lose_nothing_across_a_failover_to_a_synced_standby() {
    let bin = match pg18_bin() {
        Ok(b) => b,
        Err(why) => return eprintln!("SKIPPED: {why}"),
    };
    for seed in 0..seeds() {
        // The kill lands after 150, 247, 344, 141, … messages of 400.
        let kill_after = 50 + ((100 + seed * 97) % 300) as usize;
        failover_once(&bin, kill_after).await;
    }
}

/// One failover under steady publishing, the primary killed after `kill_after` messages.
async fn failover_once(bin: &Path, kill_after: usize) {
    let (primary, standby) = pair(bin.to_path_buf(), true).await;
    pg(&primary.uri())
        .await
        .batch_execute("CREATE TABLE sent (n int PRIMARY KEY)")
        .await
        .unwrap();
    let uri = both(&primary, &standby);
    let started = Instant::now();
    let s = start_on(&uri, &["--source", "wal"]).await;
    // pgws's slot is a failover slot, and its copy on the standby becomes persistent.
    until(
        &primary.uri(),
        "SELECT bool_and(failover) FROM pg_replication_slots WHERE slot_name LIKE 'pgws%'",
        "pgws's slot is a failover slot",
    )
    .await;
    until(
        &standby.uri(),
        "SELECT bool_and(synced AND NOT temporary) FROM pg_replication_slots WHERE slot_name LIKE 'pgws%'",
        "the standby holds a persistent copy of pgws's slot",
    )
    .await;
    let safe = started.elapsed();
    let mut ws = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"r"}))))).await;
    let go_on = Arc::new(AtomicBool::new(true));
    let publisher = tokio::spawn(publish(
        uri.clone(),
        "chat",
        0..400,
        Duration::from_millis(5),
        go_on.clone(),
    ));
    let mut got = Received::default();
    follow(
        &mut ws,
        &mut got,
        |g| g.numbers.len() >= kill_after,
        FAILOVER_WAIT,
    )
    .await;
    let killed = Instant::now();
    blocking({
        let primary = primary.clone();
        move || primary.kill()
    })
    .await;
    blocking({
        let standby = standby.clone();
        move || standby.promote()
    })
    .await;
    let promoted = killed.elapsed();
    let unacknowledged = tokio::time::timeout(FAILOVER_WAIT, publisher)
        .await
        .expect("the publisher finishes on the new primary")
        .unwrap();
    let expected = committed(&standby.uri()).await;
    let last = *expected.last().unwrap();
    follow(
        &mut ws,
        &mut got,
        |g| g.numbers.contains(&last) || !g.gaps.is_empty(),
        FAILOVER_WAIT,
    )
    .await;
    let caught_up = killed.elapsed();
    let (lost, dup, reordered) = compare(&got.numbers, &expected);
    let acknowledged_but_gone = (0..400)
        .filter(|n| !unacknowledged.contains(n) && !expected.contains(n))
        .count();
    eprintln!(
        "failover after {kill_after} messages: slot failover-safe {safe:?} after start, promoted \
         {promoted:?} after the kill, client caught up {caught_up:?} after it; \
         {} committed, {} received, {} unacknowledged commits ({} of them kept), \
         lost {lost}, duplicated {dup}, reordered {reordered}, gaps {}",
        expected.len(),
        got.numbers.len(),
        unacknowledged.len(),
        unacknowledged
            .iter()
            .filter(|n| expected.contains(n))
            .count(),
        got.gaps.len()
    );
    assert!(
        got.gaps.is_empty(),
        "no gap with a synced slot: {:?}",
        got.gaps
    );
    assert_eq!(
        acknowledged_but_gone, 0,
        "synchronous replication kept every acknowledged commit"
    );
    assert_eq!(
        (lost, dup, reordered),
        (0, 0, 0),
        "exact across the failover"
    );
    assert_eq!(got.numbers, expected);
    s.stop().await.unwrap();
    drop(ws);
    let _ = (primary.log(), standby.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_not_synced_at_failover_is_announced_as_a_gap() {
    let bin = match pg18_bin() {
        Ok(b) => b,
        Err(why) => return eprintln!("SKIPPED: {why}"),
    };
    let (primary, standby) = pair(bin, false).await;
    let uri = both(&primary, &standby);
    let s = start_on(&uri, &["--source", "wal"]).await;
    let mut ws = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"r"}))))).await;
    let db = pg(&primary.uri()).await;
    for n in 0..5 {
        db.execute(
            "SELECT pg_logical_emit_message(true, $1::text, $2::text)",
            &[&LISTEN, &message("chat", n)],
        )
        .await
        .unwrap();
    }
    let mut got = Received::default();
    follow(&mut ws, &mut got, |g| g.numbers.len() == 5, FAILOVER_WAIT).await;
    drop(db);
    let killed = Instant::now();
    blocking({
        let primary = primary.clone();
        move || primary.kill()
    })
    .await;
    blocking({
        let standby = standby.clone();
        move || standby.promote()
    })
    .await;
    follow(&mut ws, &mut got, |g| !g.gaps.is_empty(), FAILOVER_WAIT).await;
    eprintln!(
        "unsynced slot: the Gap came {:?} after the kill",
        killed.elapsed()
    );
    // Then live again, from the promoted standby.
    let db = pg(&standby.uri()).await;
    db.execute(
        "SELECT pg_logical_emit_message(true, $1::text, $2::text)",
        &[&LISTEN, &message("chat", 5)],
    )
    .await
    .unwrap();
    follow(&mut ws, &mut got, |g| g.numbers.contains(&5), FAILOVER_WAIT).await;
    assert_eq!(got.numbers, (0..6).collect::<Vec<_>>());
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_are_chosen_by_what_they_are_and_notify_mode_announces_a_failover() {
    let bin = match pg18_bin() {
        Ok(b) => b,
        Err(why) => return eprintln!("SKIPPED: {why}"),
    };
    let (primary, standby) = pair(bin, false).await;
    // The standby first: NOTIFY and LISTEN need the primary (read-write, pgws's default with
    // several hosts), so pgws passes over the standby.
    let uri = both(&standby, &primary);
    let mut s = start_on(&uri, &["--check-listener-interval", "200"]).await;
    let mut ws = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"r"}))))).await;
    notify(&pg(&primary.uri()).await, LISTEN, &message("chat", 0)).await;
    let mut got = Received::default();
    follow(&mut ws, &mut got, |g| g.numbers == [0], FAILOVER_WAIT).await;
    until(
        &primary.uri(),
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = 'pgws'",
        "pgws is connected to the primary",
    )
    .await;
    // target_session_attrs=standby and prefer-standby pick the standby, which refuses LISTEN:
    // the start-up error says where pgws went.
    for attrs in ["standby", "prefer-standby"] {
        let other = spawn_on(
            &format!("{} target_session_attrs={attrs}", both(&primary, &standby)),
            &["--retries", "1"],
        )
        .await;
        let e = tokio::time::timeout(Duration::from_secs(30), other.handle_result())
            .await
            .expect("gives up in time")
            .expect_err("LISTEN on a standby fails")
            .to_string();
        assert!(e.contains("recovery"), "{attrs}: {e}");
    }
    let killed = Instant::now();
    blocking({
        let primary = primary.clone();
        move || primary.kill()
    })
    .await;
    s.wait_down().await;
    // No primary: a new node's start-up error names every server and why it was passed over.
    let other = spawn_on(&uri, &["--retries", "1"]).await;
    let e = tokio::time::timeout(Duration::from_secs(30), other.handle_result())
        .await
        .expect("gives up in time")
        .expect_err("no primary")
        .to_string();
    assert!(
        e.contains("target_session_attrs=read-write")
            && e.contains(&format!(
                "{}:{}: a standby",
                standby.dir.display(),
                standby.port
            ))
            && e.contains(&format!("{}:{}:", primary.dir.display(), primary.port)),
        "{e}"
    );
    blocking({
        let standby = standby.clone();
        move || standby.promote()
    })
    .await;
    s.wait_listening(2).await;
    notify(&pg(&standby.uri()).await, LISTEN, &message("chat", 1)).await;
    follow(&mut ws, &mut got, |g| g.numbers.contains(&1), FAILOVER_WAIT).await;
    eprintln!(
        "notify failover: live again {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(
        got.gaps.len(),
        1,
        "the failover is announced once: {:?}",
        got.gaps
    );
    assert_eq!(got.numbers, [0, 1]);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_connection_string_whose_servers_are_all_down_fails_naming_each() {
    let dir = std::env::temp_dir().join(format!("pgws-nobody-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let uri = format!(
        "host={0},{0} port=6001,6002 dbname=postgres user=postgres",
        dir.display()
    );
    for source in ["wal", "notify"] {
        let s = spawn_on(&uri, &["--source", source, "--retries", "2"]).await;
        let e = tokio::time::timeout(Duration::from_secs(30), s.handle_result())
            .await
            .unwrap_or_else(|_| panic!("{source}: gives up in time, no silent stall"))
            .expect_err("start-up fails")
            .to_string();
        for port in ["6001", "6002"] {
            assert!(
                e.contains(&format!("{}:{port}", dir.display())),
                "{source}: names every server: {e}"
            );
        }
    }
    let _ = std::fs::remove_dir(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_that_is_down_holds_messages_back_and_pgws_says_so() {
    let bin = match pg18_bin() {
        Ok(b) => b,
        Err(why) => return eprintln!("SKIPPED: {why}"),
    };
    let (primary, standby) = pair(bin, true).await;
    let s = start_on(
        &both(&primary, &standby),
        &[
            "--source",
            "wal",
            "--check-listener-interval",
            "200",
            "--admin-address",
            "127.0.0.1:0",
        ],
    )
    .await;
    let mut ws = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"r"}))))).await;
    let db = pg(&primary.uri()).await;
    // Commits do not wait for the standby; logical decoding does (synchronized_standby_slots).
    db.batch_execute("SET synchronous_commit = local")
        .await
        .unwrap();
    let emit = |n: usize| {
        let text = message("chat", n);
        let db = &db;
        async move {
            db.execute(
                "SELECT pg_logical_emit_message(true, $1::text, $2::text)",
                &[&LISTEN, &text],
            )
            .await
            .unwrap();
        }
    };
    emit(0).await;
    let mut got = Received::default();
    follow(&mut ws, &mut got, |g| g.numbers == [0], FAILOVER_WAIT).await;
    blocking({
        let standby = standby.clone();
        move || standby.kill()
    })
    .await;
    emit(1).await;
    let deadline = Instant::now() + FAILOVER_WAIT;
    while s.metric("pgws_wal_waiting_for_standby ").await != 1.0 {
        assert!(
            Instant::now() < deadline,
            "pgws reports the wait for the standby"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got.numbers, [0], "held back, not lost");
    blocking({
        let standby = standby.clone();
        move || standby.start(&[])
    })
    .await;
    follow(&mut ws, &mut got, |g| g.numbers.contains(&1), FAILOVER_WAIT).await;
    assert_eq!(got.numbers, [0, 1]);
    assert!(got.gaps.is_empty(), "{:?}", got.gaps);
    let deadline = Instant::now() + FAILOVER_WAIT;
    while s.metric("pgws_wal_waiting_for_standby ").await != 0.0 {
        assert!(Instant::now() < deadline, "the wait is over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_the_promoted_standby_never_had_are_announced_and_new_ones_not_skipped() {
    let bin = match pg18_bin() {
        Ok(b) => b,
        Err(why) => return eprintln!("SKIPPED: {why}"),
    };
    // No synchronized_standby_slots, asynchronous replication: the misconfiguration pgws warns
    // about, under which it can deliver what the standby never receives.
    let (primary, standby) = pair_with(bin, true, &[]).await;
    let s = start_on(&both(&primary, &standby), &["--source", "wal"]).await;
    until(
        &standby.uri(),
        "SELECT bool_and(synced AND NOT temporary) FROM pg_replication_slots WHERE slot_name LIKE 'pgws%'",
        "the standby holds a persistent copy of pgws's slot",
    )
    .await;
    let mut ws = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"r"}))))).await;
    let emit = |uri: String, n: usize| async move {
        pg(&uri)
            .await
            .execute(
                "SELECT pg_logical_emit_message(true, $1::text, $2::text)",
                &[&LISTEN, &message("chat", n)],
            )
            .await
            .unwrap();
    };
    emit(primary.uri(), 0).await;
    let mut got = Received::default();
    follow(&mut ws, &mut got, |g| g.numbers == [0], FAILOVER_WAIT).await;
    // The standby stops receiving; the primary goes on, pgws delivers 1 and 2.
    blocking({
        let standby = standby.clone();
        move || standby.kill()
    })
    .await;
    emit(primary.uri(), 1).await;
    emit(primary.uri(), 2).await;
    follow(&mut ws, &mut got, |g| g.numbers.len() == 3, FAILOVER_WAIT).await;
    // The primary dies; the standby, without 1 and 2, is promoted.
    blocking({
        let (primary, standby) = (primary.clone(), standby.clone());
        move || {
            primary.kill();
            standby.start(&[]);
            standby.promote();
        }
    })
    .await;
    follow(&mut ws, &mut got, |g| !g.gaps.is_empty(), FAILOVER_WAIT).await;
    // A message of the new timeline, at positions pgws had already delivered on the old one,
    // still arrives.
    emit(standby.uri(), 3).await;
    follow(&mut ws, &mut got, |g| g.numbers.contains(&3), FAILOVER_WAIT).await;
    assert_eq!(got.numbers, [0, 1, 2, 3]);
    assert_eq!(got.gaps.len(), 1, "{:?}", got.gaps);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_reading_a_standby_delivers_and_resumes_exactly() {
    let bin = match pg18_bin() {
        Ok(b) => b,
        Err(why) => return eprintln!("SKIPPED: {why}"),
    };
    // Asynchronous replication; the slot lives on the standby, publishes go to the primary.
    let (primary, standby) = pair_with(bin, false, &[]).await;
    let read = format!("{} target_session_attrs=standby", standby.uri());
    let args = [
        "--source",
        "wal",
        "--wal-read-uri",
        read.as_str(),
        "--node-id",
        "reader",
    ];
    let s = start_on(&primary.uri(), &args).await;
    until(
        &standby.uri(),
        "SELECT count(*) = 1 FROM pg_replication_slots WHERE slot_name = 'pgws_reader' AND active",
        "pgws reads its slot on the standby",
    )
    .await;
    until(
        &primary.uri(),
        "SELECT count(*) = 0 FROM pg_replication_slots WHERE slot_type = 'logical'",
        "no logical slot on the primary",
    )
    .await;
    let mut ws = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"r"}))))).await;
    let mut sse = crate::resume::stream(&s, "chat", None).await;
    // From SQL on the primary, and from a websocket writer through pgws (to the primary).
    let db = pg(&primary.uri()).await;
    for n in 0..50 {
        db.execute(
            "SELECT pg_logical_emit_message(true, $1::text, $2::text)",
            &[&LISTEN, &message("chat", n)],
        )
        .await
        .unwrap();
    }
    let mut got = Received::default();
    follow(&mut ws, &mut got, |g| g.numbers.len() == 50, FAILOVER_WAIT).await;
    assert_eq!(got.numbers, (0..50).collect::<Vec<_>>());
    let mut last = None;
    for n in 0..50 {
        let ev = sse.next_event().await;
        assert_eq!(crate::resume::number(ev.data.as_deref().unwrap()), n);
        last = ev.id;
    }
    // The node restarts; what was written meanwhile is read from the standby's slot, and a
    // client resumes from its last position with nothing lost or doubled.
    s.stop().await.unwrap();
    drop(ws);
    drop(sse);
    for n in 50..80 {
        db.execute(
            "SELECT pg_logical_emit_message(true, $1::text, $2::text)",
            &[&LISTEN, &message("chat", n)],
        )
        .await
        .unwrap();
    }
    let s = start_on(&primary.uri(), &args).await;
    let mut resumed = crate::resume::stream(&s, "chat", last.as_deref()).await;
    for n in 50..80 {
        let ev = resumed.next_event().await;
        assert_eq!(ev.event, None, "no gap: {:?}", ev.data);
        assert_eq!(crate::resume::number(ev.data.as_deref().unwrap()), n);
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_made_before_becomes_a_failover_slot() {
    let bin = match pg18_bin() {
        Ok(b) => b,
        Err(why) => return eprintln!("SKIPPED: {why}"),
    };
    static PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(5590);
    let port = PORT.fetch_add(1, Ordering::Relaxed);
    let node = blocking(move || {
        let node = Node::new(&bin, "alone", port);
        node.initdb();
        node.start(&[]);
        node
    })
    .await;
    let db = pg(&node.uri()).await;
    db.batch_execute("SELECT pg_create_logical_replication_slot('pgws_old', 'pgoutput')")
        .await
        .unwrap();
    let s = start_on(&node.uri(), &["--source", "wal", "--wal-slot", "pgws_old"]).await;
    until(
        &node.uri(),
        "SELECT failover FROM pg_replication_slots WHERE slot_name = 'pgws_old'",
        "pgws made its existing slot a failover slot",
    )
    .await;
    s.stop().await.unwrap();
}

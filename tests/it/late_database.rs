//! Issue "The first hour with pgws", item 5: a database that is not there when pgws starts must
//! not take pgws down. The real binary with default settings (only the addresses are given), and a
//! real PostgreSQL cluster started 60 s later.

use std::process::Stdio;
use std::time::Duration;

use pgws::embedded::Cluster;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::common::*;

/// How late the database is: the scenario itself, not a synchronisation.
const LATE: Duration = Duration::from_secs(60);

/// Forwards every line of `from` to a channel.
fn lines(
    from: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits (at most `limit`) for a line containing `text`; returns it.
async fn line_with(
    rx: &mut mpsc::UnboundedReceiver<String>,
    text: &str,
    limit: Duration,
) -> String {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(limit, async {
        while let Some(line) = rx.recv().await {
            if line.contains(text) {
                return Some(line);
            }
            seen.push(line);
        }
        None
    })
    .await;
    match found {
        Ok(Some(line)) => line,
        Ok(None) => panic!(
            "output ended before a line with {text:?}:\n{}",
            seen.join("\n")
        ),
        Err(_) => panic!(
            "no line with {text:?} within {limit:?}:\n{}",
            seen.join("\n")
        ),
    }
}

/// A websocket handshake, raw, so that the refusal's headers can be read.
async fn handshake(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<(String, String)>, String) {
    get(
        addr,
        "GET",
        path,
        "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    )
    .await
}

#[tokio::test]
async fn a_database_that_starts_a_minute_late_is_waited_for_by_default() {
    // The cluster's server is stopped before pgws starts (its socket file is gone) and started
    // a minute later: the directory, and so the connection string, is known in advance without
    // reserving a TCP port for a minute on a shared machine.
    let cluster = tokio::task::spawn_blocking(|| {
        let mut c = Cluster::start()?;
        c.pause().map(|()| c)
    })
    .await
    .unwrap()
    .expect("a private cluster, stopped");
    let db = cluster.connection_string("postgres");
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgws"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("PGWS_DB_URI", &db)
        .env("PGWS_JWT_SECRET", SECRET)
        .env("PGWS_HOST", "127.0.0.1")
        .env("PGWS_PORT", "0")
        .env("PGWS_ADMIN_ADDRESS", format!("127.0.0.1:{admin_port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn pgws");
    let started = tokio::time::Instant::now();
    let mut stdout = lines(child.stdout.take().unwrap());
    let mut stderr = lines(child.stderr.take().unwrap());
    let port = line_with(&mut stdout, "Listening on port", WAIT).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", port.rsplit(' ').next().unwrap())
        .parse()
        .unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let refused = line_with(&mut stderr, "Error connecting notification listener", WAIT).await;
    // The line names where it tried (the cluster's socket directory and port), never a secret.
    let (host, port) = (
        db.split("host=")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap(),
        db.split("port=")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap(),
    );
    assert!(
        refused.contains(&format!("at {host}:{port}")),
        "names the host and port tried: {refused}"
    );

    // Down: alive, not ready, handshakes refused with a reason and Retry-After.
    let t = token(json!({"mode":"rw"}));
    assert_eq!(get(admin, "GET", "/health", "").await.0, 200);
    let (status, _, body) = get(admin, "GET", "/ready", "").await;
    assert_eq!(status, 503, "{body}");
    let (status, headers, body) = handshake(addr, &format!("/chat/{t}")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not connected to the database"), "{body}");
    assert_eq!(header(&headers, "retry-after"), Some("5"));
    // A bad token is still told so (400, not 503): it would never work.
    assert_eq!(handshake(addr, "/chat/bad.token.x").await.0, 400);
    let (_, _, metrics) = get(admin, "GET", "/metrics", "").await;
    assert!(
        metrics.contains("pgws_handshakes_refused_total{reason=\"source_down\"} 1"),
        "{metrics}"
    );

    // The database starts a minute after pgws; pgws must not exit meanwhile.
    tokio::select! {
        _ = tokio::time::sleep_until(started + LATE) => {}
        exit = child.wait() => panic!("pgws exited while the database was away: {exit:?}"),
    }
    assert_eq!(get(admin, "GET", "/health", "").await.0, 200);
    assert_eq!(handshake(addr, &format!("/chat/{t}")).await.0, 503);
    let cluster = tokio::task::spawn_blocking(move || {
        let mut c = cluster;
        c.resume().map(|()| c)
    })
    .await
    .unwrap()
    .expect("start PostgreSQL");

    // The next attempt succeeds: at most one back-off later (32 s, plus jitter).
    line_with(
        &mut stderr,
        "listening for notifications",
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(get(admin, "GET", "/ready", "").await.0, 200);
    let mut ws = connect(&format!("ws://{addr}/chat/{t}")).await;
    let db = pg(&cluster.connection_string("postgres")).await;
    notify(
        &db,
        "postgres-websockets-listener",
        r#"{"channel":"chat","late":true}"#,
    )
    .await;
    assert_eq!(
        next_text(&mut ws).await,
        r#"{"channel":"chat","late":true}"#
    );
    assert!(child.try_wait().unwrap().is_none(), "pgws is still running");
    let pid = child.id().expect("running").to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().await;
    assert!(killed.unwrap().success());
    let exit = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits after SIGTERM in time")
        .expect("wait");
    assert_eq!(exit.code(), Some(0));
    drop(ws);
    drop(cluster);
}

//! The `pgws` binary as a user runs it: configured only by `PGWS_*` variables (spec §1, §13
//! scenario 11), `--help`, `--version`, signals, and embedded mode.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_pgws");

fn pgws() -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// `pgws` on database `db` with the test secret, on 127.0.0.1 and a free port, stdout piped.
pub(crate) fn pgws_on(db: &str) -> Command {
    let mut c = pgws();
    c.env("PGWS_DB_URI", db)
        .env("PGWS_JWT_SECRET", SECRET)
        .env("PGWS_HOST", "127.0.0.1")
        .env("PGWS_PORT", "0")
        .stdout(Stdio::piped());
    c
}

async fn output(mut c: Command) -> (i32, String, String) {
    let out = tokio::time::timeout(WAIT, c.output())
        .await
        .expect("exits in time")
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn help_and_version() {
    let mut c = pgws();
    c.arg("--version");
    let (code, out, _) = output(c).await;
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")));
    let mut c = pgws();
    c.arg("--help");
    let (code, out, _) = output(c).await;
    assert_eq!(code, 0);
    for var in [
        "PGWS_DB_URI",
        "PGWS_JWT_SECRET",
        "PGWS_JWT_SECRET_BASE64",
        "PGWS_HOST",
        "PGWS_PORT",
        "PGWS_LISTEN_CHANNEL",
        "PGWS_META_CHANNEL",
        "PGWS_ROOT_PATH",
        "PGWS_POOL_SIZE",
        "PGWS_RETRIES",
        "PGWS_CHECK_LISTENER_INTERVAL",
        "PGWS_CERTIFICATE_FILE",
        "PGWS_KEY_FILE",
        "PGWS_EMBEDDED",
    ] {
        assert!(out.contains(var), "--help lacks {var}");
    }
    assert!(out.contains("default: 3000"), "--help shows defaults");
}

// §13 scenario 11.
#[tokio::test]
async fn missing_and_invalid_settings_exit_1_with_a_clear_message() {
    let (code, _, err) = output(pgws()).await;
    assert_eq!(code, 1);
    assert!(err.contains("PGWS_DB_URI is unset"), "{err}");
    assert!(err.contains("PGWS_JWT_SECRET is unset"), "{err}");
    assert!(err.contains("pgws --embedded"), "{err}");

    let mut c = pgws();
    c.env("PGWS_DB_URI", "postgres://x/y")
        .env("PGWS_JWT_SECRET", SECRET)
        .env("PGWS_PORT", "abc");
    let (code, _, err) = output(c).await;
    assert_eq!(code, 1);
    assert!(err.contains("PGWS_PORT") && err.contains("abc"), "{err}");

    let mut c = pgws();
    c.env("PGWS_DB_URI", "postgres://x/y")
        .env("PGWS_JWT_SECRET", SECRET)
        .env("PGWS_JWT_SECRET_BASE64", "maybe");
    let (code, _, err) = output(c).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("PGWS_JWT_SECRET_BASE64") && err.contains("maybe"),
        "{err}"
    );

    let mut c = pgws();
    c.env("PGWS_DB_URI", "postgres://x/y")
        .env("PGWS_JWT_SECRET", SECRET)
        .env("PGWS_CERTIFICATE_FILE", "/tmp/cert.pem");
    let (code, _, err) = output(c).await;
    assert_eq!(code, 1);
    assert!(err.contains("PGWS_KEY_FILE"), "{err}");
}

/// Reads stdout lines until one starts with `prefix`; returns the rest of that line.
pub(crate) async fn line_after(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    prefix: &str,
) -> String {
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_string();
            }
        }
        panic!("stdout ended before a line starting with {prefix:?}");
    })
    .await
    .expect("line in time")
}

pub(crate) async fn terminate(mut child: Child) -> i32 {
    let pid = child.id().expect("running").to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits after SIGTERM in time")
        .expect("wait")
        .code()
        .unwrap_or(-1)
}

#[tokio::test]
async fn configured_only_by_environment_variables() {
    let db = fresh_db().await;
    let mut c = pgws_on(&db);
    c.env("PGWS_LISTEN_CHANNEL", "env-channel")
        .env("PGWS_POOL_SIZE", "2")
        .env("PGWS_META_CHANNEL", "meta")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = c.spawn().expect("spawn pgws");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = line_after(&mut lines, "Listening on port").await;
    let mut audit = Listen::new(&db, "env-channel").await;
    let t = token(json!({"mode":"rw"}));
    // The listener may still be connecting: the handshake works regardless.
    let mut ws = connect(&format!("ws://127.0.0.1:{port}/chat/{t}")).await;
    assert_eq!(audit.next_json().await["event"], "ConnectionOpen");
    send(&mut ws, "via env").await;
    let v = audit.next_json().await;
    assert_eq!(v["payload"], "via env");
    assert_eq!(terminate(child).await, 0);
}

#[tokio::test]
async fn embedded_mode_runs_and_cleans_up() {
    let mut c = pgws();
    c.args(["--embedded", "--port", "0", "--host", "127.0.0.1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = c.spawn().expect("spawn pgws --embedded");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let conn = line_after(&mut lines, "Embedded PostgreSQL:").await;
    let port = line_after(&mut lines, "Listening on port").await;
    let token = line_after(&mut lines, "Development token:").await;
    let dir = conn
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("host="))
        .unwrap()
        .to_string();
    assert!(std::path::Path::new(&dir).exists());

    let mut meta = connect(&format!("ws://127.0.0.1:{port}/server-info/{token}")).await;
    assert_eq!(next_json(&mut meta).await["event"], "ConnectionOpen");
    let mut chat = connect(&format!("ws://127.0.0.1:{port}/chat/{token}")).await;
    let db = pg(&conn).await;
    // The listener is up once the meta event went through it.
    notify(
        &db,
        "postgres-websockets-listener",
        r#"{"channel":"chat","payload":"from sql"}"#,
    )
    .await;
    assert_eq!(
        next_text(&mut chat).await,
        r#"{"channel":"chat","payload":"from sql"}"#
    );
    drop(db);
    assert_eq!(terminate(child).await, 0);
    // The wrapper removes the cluster once pgws is gone.
    let gone = tokio::time::timeout(Duration::from_secs(20), async {
        while std::path::Path::new(&dir).exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "cluster directory {dir} was not removed");
}

#[tokio::test]
async fn sigterm_during_traffic_closes_sockets_with_1001_exits_0_and_logs_no_token() {
    let db = fresh_db().await;
    let mut c = pgws_on(&db);
    c.env("PGWS_META_CHANNEL", "meta")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn pgws");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = line_after(&mut lines, "Listening on port").await;
    let mut stderr = child.stderr.take().unwrap();
    let logs = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let t = token(json!({"mode":"rw","sub":"alice"}));
    let mut reader = connect(&format!("ws://127.0.0.1:{port}/chat/{t}")).await;
    let mut writer = connect(&format!("ws://127.0.0.1:{port}/chat/{t}")).await;
    // Traffic: the writer keeps sending until the server closes it.
    let sending = tokio::spawn(async move {
        use futures_util::SinkExt;
        let mut n = 0u64;
        while writer.send(Message::text(format!("m{n}"))).await.is_ok() {
            n += 1;
            tokio::task::yield_now().await;
        }
        n
    });
    assert!(
        next_json(&mut reader).await["payload"]
            .as_str()
            .unwrap()
            .starts_with('m')
    );
    // Also a refused handshake and a plain request with a token in the path.
    let _ = refused(&format!("ws://127.0.0.1:{port}/chat/{t}x")).await;
    let _ = get(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "GET",
        &format!("/chat/{t}"),
        "",
    )
    .await;

    let pid = child.id().unwrap().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    let (frame, _) = closed(&mut reader).await;
    assert_eq!(u16::from(frame.expect("close frame").code), 1001);
    let sent = tokio::time::timeout(WAIT, sending)
        .await
        .expect("writer stopped")
        .unwrap();
    assert!(sent > 0);
    let code = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits in time")
        .unwrap()
        .code();
    assert_eq!(code, Some(0));
    let logs = logs.await.unwrap();
    assert!(logs.contains("SIGTERM"), "{logs}");
    // The drain says what it waits for, and the shutdown ends with a line of its own.
    assert!(
        logs.lines().any(
            |l| l.contains("waiting up to 10s (PGWS_SHUTDOWN_TIMEOUT) for ")
                && l.contains("connections to close (websockets get 1001")
                && l.contains("websockets=2")
        ),
        "{logs}"
    );
    let last_info = logs.lines().rfind(|l| l.contains(" INFO "));
    assert!(
        last_info.is_some_and(|l| l.ends_with("Shutdown complete")),
        "{last_info:?}\n{logs}"
    );
    let signature = t.rsplit('.').next().unwrap();
    assert!(!logs.contains(signature), "a token reached the logs");
    assert!(!logs.contains(&t[..20]), "a token reached the logs");
    // Each socket's first line names it; its later lines carry the same `conn` id.
    let conn_of = |line: &str| {
        let at = line.find("conn=")? + "conn=".len();
        let digits: String = line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse::<u64>().ok()
    };
    let opened: Vec<u64> = logs
        .lines()
        .filter(|l| l.contains("websocket open") && l.contains("alice") && l.contains("chat"))
        .filter_map(conn_of)
        .collect();
    assert_eq!(
        opened.len(),
        2,
        "two open lines with conn, sub and channels: {logs}"
    );
    let closed_1001: Vec<u64> = logs
        .lines()
        .filter(|l| l.contains("closing websocket") && l.contains("1001"))
        .filter_map(conn_of)
        .collect();
    assert!(!closed_1001.is_empty(), "{logs}");
    assert!(
        closed_1001.iter().all(|c| opened.contains(c)),
        "close lines name sockets opened before: {closed_1001:?} vs {opened:?}"
    );
}

#[tokio::test]
async fn sighup_reloads_the_jwks_file_without_dropping_sockets() {
    use base64::Engine as _;
    let b64 = |k: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k);
    let (key_a, key_b) = ([1u8; 32], [2u8; 32]);
    let file = std::env::temp_dir().join(format!("pgws-jwks-{}.json", std::process::id()));
    let write = |k: &[u8]| {
        std::fs::write(
            &file,
            format!(r#"{{"keys":[{{"kty":"oct","k":"{}"}}]}}"#, b64(k)),
        )
        .unwrap()
    };
    write(&key_a);
    let db = fresh_db().await;
    let mut c = pgws_on(&db);
    c.env("PGWS_JWT_SECRET", format!("@{}", file.display()))
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn pgws");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = line_after(&mut lines, "Listening on port").await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut err_lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(l)) = err_lines.next_line().await {
            let _ = tx.send(l);
        }
    });
    wait_log(&mut rx, "listening for notifications").await;
    let url = |t: &str| format!("ws://127.0.0.1:{port}/chat/{t}");
    let token_a = sign(json!({"mode":"rw"}), &key_a);
    let token_b = sign(json!({"mode":"rw"}), &key_b);
    let mut old = connect(&url(&token_a)).await;
    assert_eq!(refused(&url(&token_b)).await.0, 400);

    write(&key_b);
    let pid = child.id().unwrap().to_string();
    Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .await
        .unwrap();
    wait_log(&mut rx, "JWT keys reloaded").await;
    let mut new = connect(&url(&token_b)).await;
    assert_eq!(refused(&url(&token_a)).await.0, 400);
    // The socket opened with the old key is still there and working.
    send(&mut old, "still open").await;
    assert_eq!(next_json(&mut old).await["payload"], "still open");
    assert_eq!(next_json(&mut new).await["payload"], "still open");
    assert_eq!(terminate(child).await, 0);
    std::fs::remove_file(&file).ok();
}

/// Waits for a stderr line containing `text`.
pub(crate) async fn wait_log(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, text: &str) {
    tokio::time::timeout(WAIT, async {
        while let Some(l) = rx.recv().await {
            if l.contains(text) {
                return;
            }
        }
        panic!("stderr ended before {text:?}");
    })
    .await
    .expect("log line in time")
}

/// A pipe whose reading end is already closed: every write to it fails with EPIPE.
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    writer.into()
}

// The first hour: `--help` with PGWS_DB_URI set must not print the password.
#[tokio::test]
async fn help_shows_the_database_uri_without_its_password() {
    for (uri, shown) in [
        (
            "postgres://u:secretpw@db.example.com/app",
            "PGWS_DB_URI=postgres://u:***@db.example.com/app]",
        ),
        (
            "host=db.example.com password='secret pw' dbname=app",
            "PGWS_DB_URI=host=db.example.com password=*** dbname=app]",
        ),
    ] {
        for flag in ["--help", "-h"] {
            let mut c = pgws();
            c.arg(flag)
                .env("PGWS_DB_URI", uri)
                .env("PGWS_JWT_SECRET", "secretjwt-secretjwt-secretjwt-secretjwt");
            let (code, out, err) = output(c).await;
            assert_eq!(code, 0, "{err}");
            for secret in ["secretpw", "secret pw", "secretjwt"] {
                assert!(!out.contains(secret), "{flag} shows {secret}:\n{out}");
            }
            // `-h` may wrap the line; the value itself stays whole.
            let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(flat.contains(shown), "{flag} lacks {shown}:\n{out}");
        }
    }
}

// The first hour: `pgws | head -1` must not end in "failed printing to stdout" and status 101.
#[tokio::test]
async fn closed_stdout_or_stderr_never_panics() {
    for flag in ["--help", "--version"] {
        let mut c = pgws();
        c.arg(flag).stdout(closed_pipe());
        let (code, _, err) = output(c).await;
        assert_eq!(code, 0, "{flag}: {err}");
        assert!(!err.contains("panicked"), "{flag}: {err}");
    }

    // Serving with a closed stdout: the banner and `Listening on port` go nowhere, pgws serves on.
    let db = fresh_db().await;
    let mut c = pgws_on(&db);
    c.stdout(closed_pipe()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn pgws");
    let mut err_lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let collected = tokio::spawn(async move {
        let mut all = String::new();
        while let Ok(Some(l)) = err_lines.next_line().await {
            all.push_str(&l);
            all.push('\n');
            let _ = tx.send(l);
        }
        all
    });
    // Logged once the server runs, after `Listening on port` was written (to nothing).
    wait_log(&mut rx, "listening for notifications").await;
    assert_eq!(terminate(child).await, 0);
    let logs = tokio::time::timeout(WAIT, collected)
        .await
        .unwrap()
        .unwrap();
    assert!(!logs.contains("panicked"), "{logs}");
    assert!(!logs.contains("Broken pipe"), "{logs}");

    // Serving with a closed stderr: every log line (debug: many) fails to be written.
    let mut c = pgws_on(&db);
    c.env("RUST_LOG", "debug").stderr(closed_pipe());
    let mut child = c.spawn().expect("spawn pgws");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = line_after(&mut lines, "Listening on port").await;
    // A websocket makes more log lines, in the connection's task.
    let t = token(json!({"mode":"rw"}));
    let mut ws = connect(&format!("ws://127.0.0.1:{port}/chat/{t}")).await;
    send(&mut ws, "hello").await;
    assert_eq!(next_json(&mut ws).await["payload"], "hello");
    // The SIGTERM task logs before it starts the shutdown: a panic there would hang pgws.
    assert_eq!(terminate(child).await, 0);
}

// The first hour: errors name the variable the user set, the address in a form they know, and
// each cause once.
#[tokio::test]
async fn start_up_errors_speak_the_users_language() {
    let mut c = pgws();
    c.env("PGWS_DB_URI", "postgres://x/y")
        .env("PGWS_JWT_SECRET", SECRET)
        .env("PGWS_PORT", "abc");
    let (code, _, err) = output(c).await;
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: PGWS_PORT: invalid value 'abc': invalid digit found in string\n"),
        "{err}"
    );
    assert!(!err.contains("--port"), "{err}");

    // The same value on the command line: the flag is named.
    let mut c = pgws();
    c.env("PGWS_DB_URI", "postgres://x/y")
        .env("PGWS_JWT_SECRET", SECRET)
        .env("PGWS_PORT", "abc")
        .args(["--port", "xyz"]);
    let (code, _, err) = output(c).await;
    assert_eq!(code, 1);
    assert!(err.contains("'xyz' for '--port"), "{err}");

    let mut c = pgws();
    c.env("PGWS_DB_URI", "postgres://x/y")
        .env("PGWS_JWT_SECRET", SECRET)
        .env("PGWS_GAP_EVENTS", "maybe");
    let (code, _, err) = output(c).await;
    assert_eq!(code, 1);
    assert!(
        err.starts_with(
            "error: PGWS_GAP_EVENTS: invalid value 'maybe': expected True or False (also true/false, yes/no, on/off, 1/0, in any case)\n"
        ),
        "{err}"
    );

    // A busy port: the address as the user knows it, the OS error once.
    let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let mut c = pgws();
    c.env("PGWS_DB_URI", "postgres://x/y")
        .env("PGWS_JWT_SECRET", SECRET)
        .env("PGWS_PORT", port.to_string());
    let (code, _, err) = output(c).await;
    assert_eq!(code, 1);
    assert_eq!(
        err.trim_end(),
        format!(
            "pgws: cannot bind 0.0.0.0:{port} (PGWS_HOST, PGWS_PORT): Address already in use (os error 98)"
        )
    );
    drop(busy);

    let mut c = pgws();
    c.env("PGWS_DB_URI", "postgres://x/y")
        .env("PGWS_JWT_SECRET", "short");
    let (code, _, err) = output(c).await;
    assert_eq!(code, 1);
    assert_eq!(
        err.trim_end(),
        "pgws: PGWS_JWT_SECRET: the HMAC secret is 5 bytes; HS256 needs at least 32 (HS384 48, HS512 64), so no token could be verified"
    );

    let mut c = pgws();
    c.env("PGWS_DB_URI", "postgres://u:secretpw@h:zz/db")
        .env("PGWS_JWT_SECRET", SECRET);
    let (code, _, err) = output(c).await;
    assert_eq!(code, 1);
    assert_eq!(
        err.trim_end(),
        "pgws: PGWS_DB_URI: cannot use the connection string 'postgres://u:***@h:zz/db': invalid connection string: invalid value for option `port`"
    );
}

// The first hour: Ctrl-C on `pgws --embedded` after some traffic is quiet and ends with the
// cluster's removal.
#[tokio::test]
async fn embedded_mode_stops_quietly_on_sigint() {
    // stdout and stderr into one pipe, so that the order of the lines is the order written.
    let (reader, writer) = std::io::pipe().expect("pipe");
    let mut c = pgws();
    c.args(["--embedded", "--port", "0", "--host", "127.0.0.1"])
        .stdout(writer.try_clone().expect("clone the pipe"))
        .stderr(writer);
    let child = c.spawn().expect("spawn pgws --embedded");
    drop(c); // Our copies of the writing end: the pipe ends when pgws has exited.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut after = async |prefix: &str| -> String {
        tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = rx.recv().await {
                seen.push(line.clone());
                if let Some(rest) = line.strip_prefix(prefix) {
                    return rest.trim().to_string();
                }
            }
            panic!("output ended before {prefix:?}: {seen:#?}");
        })
        .await
        .expect("line in time")
    };
    let conn = after("Embedded PostgreSQL:").await;
    let port = after("Listening on port").await;
    let token = after("Development token:").await;
    let watch = after("Watch a channel:").await;
    assert!(
        watch.starts_with("curl -N -H 'Accept: text/event-stream' http://localhost:"),
        "{watch}"
    );
    let psql = after("Send from SQL:").await;
    assert!(!seen.iter().any(|l| l.contains("websocat")), "{seen:#?}");
    // `psql` on PATH, or the one beside a registry build's server binaries.
    assert!(
        psql.starts_with("psql ")
            || psql
                .split_whitespace()
                .next()
                .is_some_and(|p| p.ends_with("/psql")),
        "{psql}"
    );
    let dir = conn
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("host="))
        .unwrap()
        .to_string();

    // Traffic on many sockets, so that all the NOTIFY connections (one per socket, up to
    // PGWS_POOL_SIZE) are open when the signal comes.
    let mut meta = connect(&format!("ws://127.0.0.1:{port}/server-info/{token}")).await;
    assert_eq!(next_json(&mut meta).await["event"], "ConnectionOpen");
    let mut sockets = Vec::new();
    for i in 0..12 {
        let mut chat = connect(&format!("ws://127.0.0.1:{port}/chat-{i}/{token}")).await;
        send(&mut chat, &format!("m{i}")).await;
        assert_eq!(next_json(&mut chat).await["payload"], format!("m{i}"));
        sockets.push(chat);
    }

    let pid = child.id().expect("running").to_string();
    let status = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let mut child = child;
    let code = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGINT in time")
        .expect("wait")
        .code();
    let rest = tokio::time::timeout(WAIT, async {
        let mut rest = Vec::new();
        while let Some(line) = rx.recv().await {
            rest.push(line);
        }
        rest
    })
    .await
    .expect("output ends once pgws has exited");
    drop((meta, sockets)); // Open until pgws stopped, as the tabs of a user pressing Ctrl-C.
    assert_eq!(code, Some(0), "{rest:#?}");
    for line in seen.iter().chain(&rest) {
        assert!(
            !line.contains(" WARN ") && !line.contains(" ERROR "),
            "not quiet: {line}\n{rest:#?}"
        );
    }
    assert_eq!(
        rest.last().map(String::as_str),
        Some(format!("Embedded PostgreSQL stopped; cluster {dir} removed.").as_str()),
        "{rest:#?}"
    );
    assert!(!std::path::Path::new(&dir).exists());
}

// Issue 25 item 12: `--help` is grouped by topic, fits in one screenful per topic, and shows a
// variable's value only when it is set (no `[env: PGWS_X=]` for unset ones).
#[tokio::test]
async fn help_is_grouped_and_shows_set_variables_with_their_value() {
    for flag in ["--help", "-h"] {
        let mut c = pgws();
        c.arg(flag).env("PGWS_PORT", "3001");
        let (code, out, err) = output(c).await;
        assert_eq!(code, 0, "{err}");
        assert!(
            out.lines().count() < 300,
            "{flag}: {} lines",
            out.lines().count()
        );
        assert!(!out.contains("=]"), "{flag}:\n{out}");
        let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(flat.contains("[env: PGWS_PORT=3001]"), "{flag}:\n{out}");
        assert!(flat.contains("[env: PGWS_HOST]"), "{flag}:\n{out}");
        for heading in ["Database:", "Tokens:", "Reading from the WAL:", "Presence:"] {
            assert!(out.lines().any(|l| l == heading), "{flag} lacks {heading}");
        }
    }
}

// Issue 25 item 12: dropping a slot needs the database only, not a JWT secret.
#[tokio::test]
async fn drop_wal_slot_needs_no_jwt_secret() {
    let db = fresh_db().await;
    let client = pg(&db).await;
    client
        .batch_execute("SELECT pg_create_logical_replication_slot('pgws_dropme', 'pgoutput')")
        .await
        .unwrap();
    let mut c = pgws();
    c.env("PGWS_DB_URI", &db)
        .args(["--drop-wal-slot", "pgws_dropme"]);
    let (code, out, err) = output(c).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Dropped the replication slot pgws_dropme."),
        "{out}"
    );
    assert!(!err.contains("PGWS_JWT_SECRET"), "{err}");
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgws_dropme'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    // A secret that would not load does not matter either.
    let mut c = pgws();
    c.env("PGWS_DB_URI", &db)
        .env("PGWS_JWT_SECRET", "short")
        .args(["--drop-wal-slot", "pgws_dropme"]);
    let (code, _, err) = output(c).await;
    assert_eq!(code, 1);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!err.contains("PGWS_JWT_SECRET"), "{err}");
}

/// Reads the next websocket text frame as JSON, skipping nothing.
async fn next_position(ws: &mut Ws) -> (String, serde_json::Value) {
    let v = next_json(ws).await;
    let id = v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id: {v}"))
        .to_string();
    let data: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
    (id, data)
}

/// `pgws --embedded-dir DIR --source wal` on a free port; its stdout lines, the database's
/// connection string, the port and the development token.
async fn embedded_in(
    dir: &std::path::Path,
) -> (
    Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    String,
    String,
    String,
) {
    let mut c = pgws();
    c.arg("--embedded-dir")
        .arg(dir)
        .args(["--source", "wal", "--port", "0", "--host", "127.0.0.1"])
        .env("PGWS_NODE_ID", "kept")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = c.spawn().expect("spawn pgws --embedded-dir");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let conn = line_after(&mut lines, "Embedded PostgreSQL:").await;
    let port = line_after(&mut lines, "Listening on port").await;
    let token = line_after(&mut lines, "Development token:").await;
    (child, lines, conn, port, token)
}

// Issue 25 item 10: `--embedded-dir` keeps the cluster across restarts (initdb once), so that a
// table and the WAL positions survive; pgws stops the cluster however it ends, and never
// removes the directory.
#[tokio::test]
async fn embedded_dir_keeps_the_cluster_and_positions_across_restarts() {
    let dir = std::env::temp_dir().join(format!("pgws-kept-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let emit = |text: &str| {
        format!(
            "SELECT pg_logical_emit_message(true, 'postgres-websockets-listener', '{{\"channel\":\"chat\",\"payload\":\"{text}\"}}')"
        )
    };

    // First run: initdb; a table, and a message whose position the client keeps.
    let (child, mut lines, conn, port, token) = embedded_in(&dir).await;
    assert!(
        conn.contains(&format!("host={}", dir.canonicalize().unwrap().display())),
        "{conn}"
    );
    let db = pg(&conn).await;
    db.batch_execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        .await
        .unwrap();
    let mut ws = connect(&format!(
        "ws://127.0.0.1:{port}/chat/{token}?last-event-id="
    ))
    .await;
    db.batch_execute(&emit("one")).await.unwrap();
    let (one, data) = next_position(&mut ws).await;
    assert_eq!(data["payload"], "one");
    drop((db, ws));
    let pid = child.id().unwrap().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    let stopped = line_after(&mut lines, "Embedded PostgreSQL stopped;").await;
    let shown = dir.canonicalize().unwrap().display().to_string();
    assert_eq!(stopped, format!("cluster kept in {shown}."));
    let mut child = child;
    let code = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code.code(), Some(0));
    assert!(dir.join("data/PG_VERSION").is_file(), "the cluster stays");
    assert!(
        !dir.join("data/postmaster.pid").exists(),
        "PostgreSQL stopped"
    );

    // Second run: no initdb; the table is there, and the position of "one" resumes exactly.
    let (child, _lines, conn, port, token) = embedded_in(&dir).await;
    let db = pg(&conn).await;
    let x: i32 = db
        .query_one("SELECT x FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(x, 42);
    let mut ws = connect(&format!(
        "ws://127.0.0.1:{port}/chat/{token}?last-event-id={one}"
    ))
    .await;
    db.batch_execute(&emit("two")).await.unwrap();
    let v = next_json(&mut ws).await;
    assert!(
        v.get("event").is_none(),
        "no Gap (other_epoch) before the message: {v}"
    );
    let data: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["payload"], "two", "{v}");
    assert_ne!(v["id"].as_str().unwrap(), one);

    // Killed outright: the watchdog still stops PostgreSQL, and leaves the directory.
    drop(db);
    let pid = child.id().unwrap().to_string();
    Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .await
        .unwrap();
    let mut child = child;
    let _ = tokio::time::timeout(WAIT, child.wait()).await.unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(30), async {
        while dir.join("data/postmaster.pid").exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        stopped.is_ok(),
        "PostgreSQL still runs after pgws was killed"
    );
    assert!(dir.join("data/PG_VERSION").is_file(), "the cluster stays");

    // A directory holding something else is refused, and left as it was.
    let other = std::env::temp_dir().join(format!("pgws-not-a-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let mut c = pgws();
    c.arg("--embedded-dir").arg(&other);
    let (code, _, err) = output(c).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("neither empty nor a cluster made by pgws"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(other.join("notes.txt")).unwrap(),
        "mine"
    );
    std::fs::remove_dir_all(&other).ok();
    std::fs::remove_dir_all(&dir).ok();

    // As root, PostgreSQL runs as `postgres`: a directory it cannot reach is named as such.
    use std::os::unix::fs::MetadataExt as _;
    let root_home = std::fs::metadata("/root");
    let am_root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if am_root && root_home.is_ok_and(|m| m.mode() & 0o001 == 0) {
        let closed = format!("/root/pgws-kept-{}", std::process::id());
        let mut c = pgws();
        c.args(["--embedded-dir", &closed]);
        let (code, _, err) = output(c).await;
        assert_eq!(code, 1);
        assert!(err.contains("cannot reach /root/pgws-kept-"), "{err}");
        std::fs::remove_dir_all(&closed).ok();
    }
}

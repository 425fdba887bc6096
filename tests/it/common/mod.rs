//! Test harness: one real PostgreSQL cluster per test binary (started by pgws's own embedded
//! module), one fresh database per test (NOTIFY is scoped to a database, so tests run in parallel
//! without hearing each other), servers on port 0, real websocket clients, and a timeout on
//! every wait.

#![allow(dead_code)]

/// The TCP proxy that cuts the network to the database (shared with the chaos run in bench/).
#[path = "../../../bench/src/chaos_proxy.rs"]
pub mod proxy;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use clap::Parser as _;
use futures_util::{SinkExt, StreamExt};
use pgws::SourceStatus as ListenerStatus;
use pgws::embedded::Cluster;
use pgws::{Cli, Server};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// The secret of the original's test suite (exactly 32 bytes).
pub const SECRET: &str = "reallyreallyreallyreallyverysafe";
/// The listen channel of the original's test suite.
pub const LISTEN: &str = "postgres-websockets-test-channel";
/// Upper bound for any single wait.
pub const WAIT: Duration = Duration::from_secs(15);

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The shared cluster, started on first use; it is stopped and removed when the test process
/// ends (see `pgws::embedded`).
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| Cluster::start().expect("start a PostgreSQL cluster for the tests"))
}

/// A new, empty database; returns its connection string.
pub async fn fresh_db() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let c = cluster();
    let name = format!(
        "t{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let admin = pg(&c.connection_string("postgres")).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    c.connection_string(&name)
}

/// A plain PostgreSQL client.
pub async fn pg(conn: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio::time::timeout(WAIT, tokio_postgres::connect(conn, NoTls))
        .await
        .expect("connect in time")
        .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

/// `SELECT pg_notify($1, $2)`.
pub async fn notify(client: &tokio_postgres::Client, channel: &str, payload: &str) {
    client
        .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
        .await
        .expect("pg_notify");
}

/// A direct LISTEN connection, as an audit client of the original would have.
pub struct Listen {
    rx: mpsc::UnboundedReceiver<String>,
    _client: tokio_postgres::Client,
}

impl Listen {
    /// LISTENs on `channel` of database `conn`.
    pub async fn new(conn: &str, channel: &str) -> Self {
        let (client, mut connection) = tokio_postgres::connect(conn, NoTls).await.expect("connect");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(m)) = stream.next().await {
                // pgws's own presence control messages share the listen channel (while v2
                // subscriptions exist): not what these tests look at.
                if let AsyncMessage::Notification(n) = m
                    && !n.payload().starts_with("{\"pgws_control\":\"presence\",")
                {
                    let _ = tx.send(n.payload().to_string());
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .await
            .expect("LISTEN");
        Self {
            rx,
            _client: client,
        }
    }

    /// The next notification payload.
    pub async fn next(&mut self) -> String {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a notification in time")
            .expect("listener alive")
    }

    /// The next notification, parsed.
    pub async fn next_json(&mut self) -> Value {
        serde_json::from_str(&self.next().await).expect("notification is JSON")
    }
}

/// A server running in this process.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its database.
    pub db: String,
    /// LISTEN connection state.
    pub status: watch::Receiver<ListenerStatus>,
    /// The admin listener, when `--admin-address` was given.
    pub admin: Option<SocketAddr>,
    /// The last LISTEN generation [`TestServer::wait_listening`] saw.
    listened: u64,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), pgws::Error>>,
}

/// Builds the command line: defaults of the original's test config, overridden by `extra`
/// (`["--flag", "value", …]`; a flag without value must be last).
pub fn args(db: &str, extra: &[&str]) -> Vec<String> {
    let mut base: Vec<(String, Option<String>)> = vec![
        ("--host".into(), Some("127.0.0.1".into())),
        ("--port".into(), Some("0".into())),
        ("--db-uri".into(), Some(db.into())),
        ("--jwt-secret".into(), Some(SECRET.into())),
        ("--listen-channel".into(), Some(LISTEN.into())),
        ("--retries".into(), Some("3".into())),
        // Many servers share the test cluster: keep each one's connections few.
        ("--pool-size".into(), Some("2".into())),
    ];
    let mut i = 0;
    while i < extra.len() {
        let flag = extra[i].to_string();
        let value = extra
            .get(i + 1)
            .filter(|v| {
                !(v.starts_with("--") && v.chars().nth(2).is_some_and(|c| c.is_ascii_alphabetic()))
            })
            .map(|v| v.to_string());
        i += if value.is_some() { 2 } else { 1 };
        base.retain(|(f, _)| *f != flag);
        base.push((flag, value));
    }
    let mut out = vec!["pgws".to_string()];
    for (f, v) in base {
        out.push(f);
        out.extend(v);
    }
    out
}

/// Starts a server on a fresh database with the given extra flags and waits until it LISTENs.
pub async fn start(extra: &[&str]) -> TestServer {
    let db = fresh_db().await;
    start_on(&db, extra).await
}

/// Starts a server on database `db` and waits until it LISTENs.
pub async fn start_on(db: &str, extra: &[&str]) -> TestServer {
    let mut s = spawn_on(db, extra).await;
    s.wait_listening(1).await;
    s
}

/// Starts a server on database `db` without waiting for its LISTEN connection.
pub async fn spawn_on(db: &str, extra: &[&str]) -> TestServer {
    let server = bind(db, extra).await;
    let addr = server.local_addr();
    let admin = server.admin_addr();
    let status = server.listener_status();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(server.run(shutdown.clone()));
    TestServer {
        addr,
        db: db.to_string(),
        status,
        admin,
        listened: 0,
        shutdown,
        handle,
    }
}

/// A bound server, not yet running.
pub async fn bind(db: &str, extra: &[&str]) -> Server {
    let cli = Cli::try_parse_from(args(db, extra)).expect("valid flags");
    let config = cli.resolve(None, None).expect("valid config");
    Server::bind(config).await.expect("bind")
}

impl TestServer {
    /// `ws://127.0.0.1:port<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Stops the server and returns how `run` ended.
    pub async fn stop(self) -> Result<(), pgws::Error> {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("server stops in time")
            .expect("server task")
    }

    /// Waits for `run` to end by itself (e.g. start-up retries exhausted) and returns how.
    pub async fn handle_result(self) -> Result<(), pgws::Error> {
        self.handle.await.expect("server task")
    }

    /// The admin endpoint's answer: status and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let addr = self.admin.expect("started with --admin-address");
        let (status, _, body) = get(addr, "GET", path, "").await;
        (status, body)
    }

    /// The value of a metric line starting with `prefix` (name plus labels) in `/metrics`.
    pub async fn metric(&self, prefix: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics").await;
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until the LISTEN connection is down, or was lost and is already back (a reconnection
    /// faster than this wait: a generation after the last one [`Self::wait_listening`] saw).
    pub async fn wait_down(&mut self) {
        let seen = self.listened;
        tokio::time::timeout(
            Duration::from_secs(30),
            self.status.wait_for(|s| match s {
                ListenerStatus::Down => true,
                ListenerStatus::Listening { generation } => *generation > seen,
                _ => false,
            }),
        )
        .await
        .expect("listener noticed the loss in time")
        .expect("status channel open");
    }

    /// Waits until the LISTEN connection has been (re)established `generation` times.
    pub async fn wait_listening(&mut self, generation: u64) {
        let now = tokio::time::timeout(
            Duration::from_secs(30),
            self.status.wait_for(
                |s| matches!(s, ListenerStatus::Listening { generation: g } if *g >= generation),
            ),
        )
        .await
        .expect("listening again in time")
        .expect("status channel open");
        if let ListenerStatus::Listening { generation } = *now {
            self.listened = generation;
        }
    }
}

/// Signs an HS256 token with [`SECRET`].
pub fn token(claims: Value) -> String {
    sign(claims, SECRET.as_bytes())
}

/// Signs an HS256 token with `secret`.
pub fn sign(claims: Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

/// A client websocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a websocket and expects the handshake to succeed.
pub async fn connect(url: &str) -> Ws {
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake in time")
        .unwrap_or_else(|e| panic!("handshake to {url} refused: {e:?}"));
    assert_eq!(resp.status(), 101);
    ws
}

/// Opens a websocket and expects the handshake to be refused; returns status and body.
pub async fn refused(url: &str) -> (u16, String) {
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("answer in time")
    {
        Ok(_) => panic!("handshake to {url} was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("expected an HTTP refusal, got {e:?}"),
    }
}

/// The next text frame (pings and pongs are skipped).
pub async fn next_text(ws: &mut Ws) -> String {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("valid frame");
        match frame {
            Message::Text(t) => return t.as_str().to_string(),
            Message::Binary(b) => return String::from_utf8_lossy(&b).into_owned(),
            Message::Close(c) => panic!("socket closed while waiting for text: {c:?}"),
            _ => {}
        }
    }
}

/// The next text frame, parsed.
pub async fn next_json(ws: &mut Ws) -> Value {
    let t = next_text(ws).await;
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
}

/// Sends a text frame.
pub async fn send(ws: &mut Ws, text: &str) {
    tokio::time::timeout(WAIT, ws.send(Message::text(text)))
        .await
        .expect("send in time")
        .expect("send");
}

/// Waits for the server's close frame; returns it. Frames before it are returned too.
pub async fn closed(ws: &mut Ws) -> (Option<CloseFrame>, Vec<String>) {
    let mut texts = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(c))) => return (c, texts),
            Some(Ok(Message::Text(t))) => texts.push(t.as_str().to_string()),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("socket error before close frame: {e}"),
            None => panic!("socket ended without a close frame"),
        }
    }
}

/// A minimal HTTP/1.1 exchange over a fresh connection (`Connection: close`).
pub async fn http(addr: SocketAddr, raw_request: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    stream
        .write_all(raw_request.as_bytes())
        .await
        .expect("write request");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read response");
    parse_response(&buf)
}

/// Parses status, headers (lower-case names) and body of a raw response.
pub fn parse_response(buf: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let body = buf[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body)
}

/// `GET path` with `Connection: close`.
pub async fn get(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> (u16, Vec<(String, String)>, String) {
    let (s, h, b) = http(
        addr,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n"
        ),
    )
    .await;
    (s, h, String::from_utf8_lossy(&b).into_owned())
}

/// Header value by lower-case name.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Terminates the server's LISTEN backend (exactly one must exist).
pub async fn kill_listener(db: &tokio_postgres::Client) {
    let killed: i64 = db
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%' \
             AND application_name = 'pgws'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
}

/// Opens a protocol v2 socket at `url` (the answer must name `pgws.v2`) and reads its `welcome`.
pub async fn open_v2_url(url: &str) -> (Ws, Value) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "pgws.v2".parse().unwrap());
    let (mut ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake in time")
        .expect("handshake accepted");
    assert_eq!(resp.status(), 101);
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("pgws.v2")
    );
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

/// The bytes of a plain websocket upgrade request for `path` (clients that speak the protocol by
/// hand, to control every byte and read raw frames).
pub fn raw_upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// The test database of `s` refuses new connections and pgws's pool connections are cut (its
/// LISTEN session is left alone): publishes fail until [`DatabaseRefusal::end`].
pub struct DatabaseRefusal {
    admin: tokio_postgres::Client,
    name: String,
}

impl DatabaseRefusal {
    /// Starts refusing.
    pub async fn start(db: &str) -> Self {
        let name: String = pg(db)
            .await
            .query_one("SELECT current_database()", &[])
            .await
            .unwrap()
            .get(0);
        let admin = pg(&cluster().connection_string("postgres")).await;
        admin
            .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
            .await
            .unwrap();
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 \
                 AND application_name = 'pgws' AND query NOT ILIKE 'LISTEN%'",
                &[&name],
            )
            .await
            .unwrap();
        Self { admin, name }
    }

    /// Accepts connections again.
    pub async fn end(self) {
        self.admin
            .batch_execute(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS true",
                self.name
            ))
            .await
            .unwrap();
    }
}

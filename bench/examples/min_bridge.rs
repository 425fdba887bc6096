//! The limit reference of the benchmark: the least a WebSocket <-> LISTEN bridge on tokio can do.
//! One LISTEN connection on `postgres-websockets-listener`; each notification is routed by its
//! payload's `channel` field (else the PostgreSQL channel) and its text, allocated once and
//! shared, goes verbatim to every socket of that channel through a `tokio::sync::broadcast`
//! per channel. Sockets connect at `/<channel>/<anything>` (the token is ignored); one task per
//! socket waits for the next notification, then drains everything already queued into
//! tungstenite's write buffer and flushes once. No auth, no limits, no metrics, no meta events;
//! client messages are read (pings answered, closes honoured) and otherwise ignored.
//! Loopback only.
//!
//! `cargo run --release -p pgws-bench --example min_bridge -- <port|0> '<pg conninfo>'`
//! prints `Listening on port N` once it accepts connections. `MIN_BRIDGE_WRITE_BUFFER` (bytes,
//! default tungstenite's 128 KiB) is how full the write buffer may get before a drain writes it
//! out mid-way.

// tungstenite's handshake callback signature returns its large error type
#![allow(clippy::result_large_err)]

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, RwLock};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

const LISTEN: &str = "postgres-websockets-listener";
/// Notifications a socket may fall behind before it skips (pgws's default queue limit).
const BACKLOG: usize = 4096;

type Channels = Arc<RwLock<HashMap<Box<str>, broadcast::Sender<Utf8Bytes>>>>;

#[derive(Deserialize)]
struct Route<'a> {
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = args.get(1).map_or(Ok(3000), |p| p.parse())?;
    let conninfo = args.get(2).cloned().unwrap_or_default();
    let write_buffer =
        std::env::var("MIN_BRIDGE_WRITE_BUFFER").map_or(Ok(128 * 1024), |v| v.parse())?;
    // Small read buffer (allocated per socket up front); the write buffer grows on demand.
    let config = WebSocketConfig::default()
        .read_buffer_size(256)
        .write_buffer_size(write_buffer);
    let chans: Channels = Arc::default();

    let (client, mut conn) = tokio_postgres::connect(&conninfo, NoTls).await?;
    let routes = chans.clone();
    tokio::spawn(async move {
        let mut msgs = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = msgs.next().await {
            let AsyncMessage::Notification(n) = m else {
                continue;
            };
            let text = n.payload();
            let channel = match serde_json::from_str::<Route<'_>>(text) {
                Ok(Route { channel: Some(c) }) => c,
                _ => Cow::Borrowed(n.channel()),
            };
            if let Some(tx) = routes.read().unwrap().get(&*channel) {
                let _ = tx.send(Utf8Bytes::from(text.to_owned()));
            }
        }
        eprintln!("LISTEN connection ended");
        std::process::exit(1);
    });
    client
        .batch_execute(&format!("LISTEN \"{LISTEN}\""))
        .await?;

    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("Listening on port {}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    loop {
        let (sock, _) = listener.accept().await?;
        tokio::spawn(serve(sock, chans.clone(), config));
    }
}

async fn serve(sock: TcpStream, chans: Channels, config: WebSocketConfig) {
    let _ = sock.set_nodelay(true);
    let mut channel = None;
    let cb = |req: &Request, resp: Response| {
        let mut segs = req.uri().path()[1..].split('/');
        channel = segs
            .next()
            .filter(|_| segs.next().is_some())
            .map(Box::<str>::from);
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async_with_config(sock, cb, Some(config)).await
    else {
        return;
    };
    let Some(channel) = channel else { return };
    let mut rx = {
        let mut map = chans.write().unwrap();
        let tx = map
            .entry(channel.clone())
            .or_insert_with(|| broadcast::channel(BACKLOG).0);
        tx.subscribe()
    };
    loop {
        tokio::select! {
            r = rx.recv() => {
                let first = match r {
                    Ok(m) => m,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => break,
                };
                // Everything already queued goes into one flush (one write while it fits).
                let mut next = Ok(first);
                let sent: Result<(), _> = async {
                    loop {
                        match next {
                            Ok(m) => ws.feed(Message::Text(m)).await?,
                            Err(TryRecvError::Lagged(_)) => {}
                            Err(_) => break,
                        }
                        next = rx.try_recv();
                    }
                    ws.flush().await
                }
                .await;
                if sent.is_err() {
                    break;
                }
            }
            m = ws.next() => match m {
                Some(Ok(Message::Ping(_))) => {
                    if ws.flush().await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    drop(rx);
    let mut map = chans.write().unwrap();
    if map.get(&channel).is_some_and(|tx| tx.receiver_count() == 0) {
        map.remove(&channel);
    }
}

//! Minimal stand-in for a postgres-websockets server, used to exercise the
//! load generator without the real server: `/<channel>/<jwt>` sockets,
//! notifications on the listen channel routed by their `channel` field and
//! delivered verbatim, client text wrapped in a `WebsocketMessage` envelope
//! and NOTIFYed. No claim checks beyond decoding `mode`; loopback only.
//!
//! `cargo run --release -p pgws-bench --example mock_server -- <port> '<pg conninfo>'`

// tungstenite's handshake callback signature returns its large error type
#![allow(clippy::result_large_err)]

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

const LISTEN: &str = "postgres-websockets-listener";
const SECRET: &str = "auwhfdnskjhewfi34uwehdlaehsfkuaeiskjnfduierhfsiweskjcnzeiluwhskdewishdnpwe";

type Channels = Arc<Mutex<HashMap<String, broadcast::Sender<Arc<str>>>>>;

fn channel_tx(chans: &Channels, name: &str) -> broadcast::Sender<Arc<str>> {
    let mut m = chans.lock().unwrap();
    m.entry(name.to_string())
        .or_insert_with(|| broadcast::channel(1 << 16).0)
        .clone()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = args.get(1).map_or(Ok(3000), |p| p.parse())?;
    let conninfo = args.get(2).cloned().unwrap_or_default();
    let chans: Channels = Arc::default();

    let (listen_client, mut conn) = tokio_postgres::connect(&conninfo, NoTls).await?;
    let routes = chans.clone();
    tokio::spawn(async move {
        let mut msgs = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = msgs.next().await {
            if let AsyncMessage::Notification(n) = m {
                let ch = serde_json::from_str::<Value>(n.payload())
                    .ok()
                    .and_then(|v| v.get("channel")?.as_str().map(String::from))
                    .unwrap_or_else(|| n.channel().to_string());
                let tx = routes.lock().unwrap().get(&ch).cloned();
                if let Some(tx) = tx {
                    let _ = tx.send(Arc::from(n.payload()));
                }
            }
        }
    });
    listen_client
        .batch_execute(&format!("LISTEN \"{LISTEN}\""))
        .await?;
    let (notify, nconn) = tokio_postgres::connect(&conninfo, NoTls).await?;
    tokio::spawn(nconn);
    let notify = Arc::new(notify);

    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("Listening on port {}", listener.local_addr()?.port());
    loop {
        let (sock, _) = listener.accept().await?;
        let chans = chans.clone();
        let notify = notify.clone();
        tokio::spawn(async move {
            let mut path = String::new();
            let cb = |req: &Request, resp: Response| {
                path = req.uri().path().to_string();
                Ok(resp)
            };
            let Ok(ws) = tokio_tungstenite::accept_hdr_async(sock, cb).await else {
                return;
            };
            let segs: Vec<&str> = path[1..].split('/').collect();
            let (channel, token) = match segs.as_slice() {
                [c, t, ..] => (c.to_string(), t.to_string()),
                [t] => (String::new(), t.to_string()),
                [] => return,
            };
            let mut v = Validation::new(Algorithm::HS256);
            v.required_spec_claims.clear();
            v.validate_exp = false;
            let Ok(claims) =
                decode::<Value>(&token, &DecodingKey::from_secret(SECRET.as_bytes()), &v)
            else {
                return;
            };
            let mode = claims.claims["mode"].as_str().unwrap_or("").to_string();
            let (mut sink, mut stream) = ws.split();
            if mode.contains('r') {
                let mut rx = channel_tx(&chans, &channel).subscribe();
                tokio::spawn(async move {
                    while let Ok(m) = rx.recv().await {
                        if sink.send(Message::text(&*m)).await.is_err() {
                            break;
                        }
                    }
                });
            }
            while let Some(Ok(m)) = stream.next().await {
                if let (true, Message::Text(t)) = (mode.contains('w'), m) {
                    let env = json!({"channel": channel, "event": "WebsocketMessage",
                        "payload": t.as_str(), "claims": claims.claims})
                    .to_string();
                    let _ = notify
                        .execute("SELECT pg_notify($1, $2)", &[&LISTEN, &env])
                        .await;
                }
            }
        });
    }
}

//! The websocket transport: the RFC 6455 handshake (after [`crate::http::admission`] admitted
//! the request) and one task per socket that `select!`s between the client's frames, the
//! client's outbox, the token's expiry, server pings and shutdown. Everything that is not about
//! websocket framing (subscriptions, publishing, meta events, limits) is the [`Client`]'s.
//!
//! Lifecycle (spec §2.5, with the original's gaps closed): the client is subscribed before the
//! 101 is sent, `ConnectionOpen` is published, the loop runs, then the client finishes
//! (unsubscribe, `ConnectionClose`). Every mode reads the socket, so pings are answered and close
//! frames honoured on read-only sockets too. When the server closes a socket (expiry, shutdown,
//! slow consumer) it sends a close frame, waits briefly for the answer and then closes TCP itself.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::header::{
    CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::io::IoSlice;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::client::Client;
use crate::http::admission::{Admitted, Carrier, SUBPROTOCOL};
use crate::http::body::{Body, full, text};
use crate::ops::metrics::ReasonLabel;
use crate::state::AppState;
use crate::stream::{Encoding, Frame};
use crate::wire;

/// Close code when the token's `exp` passes (the original's).
pub const CLOSE_JWT_EXPIRED: u16 = 3001;
/// Close code for a socket that fell too far behind its outbound queue limits.
pub const CLOSE_SLOW_CONSUMER: u16 = 4000;
/// Close code for a peer that answered no ping for two ping intervals.
pub const CLOSE_PING_TIMEOUT: u16 = 4001;
/// How long a blocked write may take before the peer is considered gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the peer's answer to our close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Websocket settings: small buffers (tungstenite's defaults allocate 128 KiB per socket up
/// front; the read buffer is allocated eagerly, so it dominates an idle socket's memory) and an
/// explicit message size limit. A larger client message grows the buffer as needed.
pub fn ws_config(max_message_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(256)
        .write_buffer_size(4 * 1024)
        .max_write_buffer_size(16 * 1024 * 1024)
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size))
}

/// Whether a request asks for a websocket (any path, spec §2.1).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Accepts an admitted websocket request: checks the RFC 6455 headers, opens the client
/// (subscribed before the 101 is sent) and spawns its task.
pub async fn accept(
    req: &mut Request<hyper::body::Incoming>,
    state: Arc<AppState>,
    admitted: Admitted,
) -> Response<Body> {
    let ip = admitted.ip;
    if req
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        tracing::info!(peer = %ip, "Rejecting Request: unsupported Sec-WebSocket-Version");
        let mut r = text(
            StatusCode::BAD_REQUEST,
            "Error: unsupported websocket version (Sec-WebSocket-Version must be 13)",
        );
        r.headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return r;
    }
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY) else {
        tracing::info!(peer = %ip, "Rejecting Request: no Sec-WebSocket-Key");
        return text(
            StatusCode::BAD_REQUEST,
            "Error: missing Sec-WebSocket-Key header",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(req);
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    // No span per socket (it would cost every idle socket ≈270 B): this line names the socket,
    // and every later line of it carries `conn`.
    tracing::info!(
        conn = id,
        peer = %ip,
        channels = %admitted.grant.channels.join(","),
        mode = admitted.grant.mode.as_str(),
        sub = admitted.grant.claims.get("sub").and_then(|s| s.as_str()).unwrap_or(""),
        "websocket open"
    );
    let carrier = admitted.carrier;
    let v2 = admitted.v2.then(|| {
        let claim = state.presence.as_ref().map(|p| p.claim());
        Box::new(crate::v2::access::Access::new(&admitted.grant, claim))
    });
    let config = state.ws_config;
    let v2_answer = v2.is_some();
    let tracker = state.sessions.clone();
    let encoding = if v2.is_some() {
        wire::V2
    } else if admitted.positions {
        wire::COMPAT_POSITIONED
    } else {
        wire::COMPAT
    };
    let client = Client::open(state, id, admitted, encoding);
    client.following().await;
    // One task type per protocol: a task holds the state of the session it runs inline, so a
    // shared task would make every socket pay for the larger of the two sessions (or, boxing
    // one, for a second allocation).
    match v2 {
        Some(access) => tracker.spawn(async move {
            if let Some(ws) = websocket(upgrade, config, id).await {
                run_v2(ws, client, access).await;
            }
        }),
        None => tracker.spawn(async move {
            if let Some(ws) = websocket(upgrade, config, id).await {
                run(ws, client).await;
            }
        }),
    };
    let mut r = Response::new(full(bytes::Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    if v2_answer {
        h.insert(
            hyper::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(crate::v2::SUBPROTOCOL),
        );
    } else if carrier == Carrier::Subprotocol {
        h.insert(
            hyper::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    r
}

/// Most frames handed to one `writev` (Linux's `IOV_MAX` is 1024).
const IOV_BATCH: usize = 1024;

/// Writes frames in the socket's encoding (made once per message by [`wire::encode`] and shared
/// by every socket of that encoding) straight to the socket with vectored writes: no per-socket
/// copy or re-encoding, one system call for a batch.
async fn write_frames<S>(io: &mut S, frames: &[Frame], encoding: Encoding) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    for chunk in frames.chunks(IOV_BATCH) {
        let mut slices: Vec<IoSlice<'_>> = chunk
            .iter()
            .map(|f| IoSlice::new(f.encoded(encoding, wire::encode)))
            .collect();
        let mut bufs = &mut slices[..];
        while !bufs.is_empty() {
            let n = io.write_vectored(bufs).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut bufs, n);
        }
    }
    io.flush().await
}

/// Why the loop ended.
pub(crate) enum End {
    /// The peer closed or vanished; nothing more to send.
    Peer,
    /// We close with this code and reason; the label names the reason in metrics.
    Close(u16, &'static str, &'static str),
    /// We drop the connection without a close frame (it accepts no data); label for metrics.
    Drop(&'static str),
}

/// The websocket once the HTTP upgrade is done (`None`: it failed, logged).
async fn websocket(
    upgrade: hyper::upgrade::OnUpgrade,
    config: WebSocketConfig,
    id: u64,
) -> Option<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>> {
    match upgrade.await {
        Ok(upgraded) => Some(
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await,
        ),
        Err(e) => {
            tracing::info!(conn = id, error = %e, "websocket upgrade failed");
            None
        }
    }
}

/// A socket of the original protocol, from its start to its end.
async fn run<S>(mut ws: WebSocketStream<S>, mut client: Client)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    Box::pin(client.start()).await;
    let end = serve(&mut ws, &mut client).await;
    Box::pin(conclude(ws, client, end)).await;
}

/// A protocol v2 socket, from its start to its end.
async fn run_v2<S>(
    mut ws: WebSocketStream<S>,
    mut client: Client,
    access: Box<crate::v2::access::Access>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    Box::pin(client.start()).await;
    let end = crate::v2::session::serve(&mut ws, &mut client, access).await;
    Box::pin(conclude(ws, client, end)).await;
}

/// Counts and logs how a socket ended, sends the close frame when it is ours to send, and
/// lets the client go.
async fn conclude<S>(mut ws: WebSocketStream<S>, client: Client, end: End)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let id = client.id();
    let label = match end {
        End::Close(_, _, label) | End::Drop(label) => Some(label),
        End::Peer => None,
    };
    if let Some(reason) = label {
        client
            .state()
            .metrics
            .server_closes
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
    if let End::Drop(reason) = end {
        tracing::warn!(conn = id, reason, "dropping websocket");
    } else if let End::Close(code, reason, _) = end {
        tracing::info!(conn = id, code, reason, "closing websocket");
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let closed = async {
            if ws.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        };
        let _ = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, closed)).await;
    } else {
        tracing::info!(conn = id, "websocket closed by peer");
    }
    Box::pin(client.finish()).await;
}

async fn serve<S>(ws: &mut WebSocketStream<S>, client: &mut Client) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let id = client.id();
    let state = client.state();
    let shutdown = state.shutdown.clone();
    let ping_interval = state.config.ping_interval;
    let expiry = client.expiry();
    // One timer for both the token's expiry and the next ping (one timer per idle socket).
    let mut next_ping = ping_interval.map(|p| tokio::time::Instant::now() + p);
    let deadline = |next_ping: Option<tokio::time::Instant>| {
        [expiry, next_ping]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400 * 365))
    };
    let timer = tokio::time::sleep_until(deadline(next_ping));
    tokio::pin!(timer);
    let mut ping_count: u64 = 0;
    let mut last_inbound = tokio::time::Instant::now();
    let mut batch: Vec<Frame> = Vec::new();
    // Made once: re-made on every turn of the loop it would join and leave the token's waiter
    // list, which every socket shares, on every delivery.
    let shutdown = shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => return End::Close(1001, "server shutting down", "shutdown"),
            _ = &mut timer => {
                let now = tokio::time::Instant::now();
                if expiry.is_some_and(|at| now >= at) {
                    return End::Close(CLOSE_JWT_EXPIRED, "JWT expired", "expired");
                }
                if let (Some(at), Some(interval)) = (next_ping, ping_interval)
                    && now >= at
                {
                    if last_inbound.elapsed() > interval * 2 {
                        return End::Close(CLOSE_PING_TIMEOUT, "no answer to pings", "ping_timeout");
                    }
                    ping_count += 1;
                    let payload = ping_count.to_string().into_bytes();
                    if ws.send(Message::Ping(payload.into())).await.is_err() {
                        return End::Peer;
                    }
                    next_ping = Some(now + interval);
                }
                timer.as_mut().reset(deadline(next_ping));
            }
            _ = client.outbox().wait() => {
                if let Err(end) = write_outbox(ws, client, &mut batch).await {
                    return end;
                }
            }
            frame = ws.next() => {
                if let Some(Ok(_)) = &frame {
                    last_inbound = tokio::time::Instant::now();
                }
                match read(ws, frame, id).await {
                    Inbound::Text(text) => Box::pin(client.publish(text.as_str())).await,
                    Inbound::Binary(bytes) => match std::str::from_utf8(&bytes) {
                        Ok(text) => Box::pin(client.publish(text)).await,
                        Err(_) => client.refuse("invalid_utf8",
                            "binary message is not valid UTF-8 text; it was not published", None),
                    },
                    Inbound::Handled => {}
                    Inbound::End(end) => return end,
                }
            }
        }
    }
}

/// Writes what the client's outbox holds, in its encoding; `Err` when the socket must end.
pub(crate) async fn write_outbox<S>(
    ws: &mut WebSocketStream<S>,
    client: &Client,
    batch: &mut Vec<Frame>,
) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let id = client.id();
    let drained = client.outbox().drain_into(batch);
    if let Some((code, reason)) = drained.end {
        // Access revoked (authorization by the database): nothing more is sent.
        return Err(End::Close(code, reason, "revoked"));
    }
    if !batch.is_empty() {
        // Boxed, like the other rare paths: a future's size is the largest of its states, and
        // every idle socket would otherwise carry the write state.
        let write = Box::pin(async {
            // Anything tungstenite still holds (a pong) goes first, whole, so that the raw
            // frames below never interleave with one of its frames.
            ws.flush().await?;
            write_frames(ws.get_mut(), batch, client.outbox().encoding())
                .await
                .map_err(WsError::Io)
        });
        tokio::select! {
            r = Box::pin(tokio::time::timeout(WRITE_TIMEOUT, write)) => match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(conn = id, error = %e, "write failed");
                    return Err(End::Peer);
                }
                Err(_) => return Err(End::Drop("write_timeout")),
            },
            // The peer stopped reading and its queue overflowed meanwhile.
            _ = client.outbox().overflowed() => return Err(End::Drop("slow_consumer")),
        }
        if let Some(oldest) = drained.oldest {
            client
                .state()
                .metrics
                .delivery_latency
                .observe(oldest.elapsed().as_secs_f64());
        }
        batch.clear();
        if batch.capacity() > 256 {
            batch.shrink_to_fit();
        }
    }
    if !drained.healthy {
        return Err(End::Close(
            CLOSE_SLOW_CONSUMER,
            "slow consumer: outbound queue limit reached",
            "slow_consumer",
        ));
    }
    Ok(())
}

/// A frame the client sent, once the websocket's own business (pings, close) is done.
pub(crate) enum Inbound {
    /// A text message.
    Text(tokio_tungstenite::tungstenite::Utf8Bytes),
    /// A binary message.
    Binary(bytes::Bytes),
    /// Nothing for the protocol (a ping answered, a pong).
    Handled,
    /// The socket ends.
    End(End),
}

/// Handles what `ws.next()` gave: pings, close frames and errors here, messages to the caller.
pub(crate) async fn read<S>(
    ws: &mut WebSocketStream<S>,
    frame: Option<Result<Message, WsError>>,
    id: u64,
) -> Inbound
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match frame {
        None => Inbound::End(End::Peer),
        Some(Ok(Message::Text(text))) => Inbound::Text(text),
        Some(Ok(Message::Binary(bytes))) => Inbound::Binary(bytes),
        Some(Ok(Message::Ping(_))) => {
            // tungstenite queued the pong; push it out now.
            if ws.flush().await.is_err() {
                return Inbound::End(End::Peer);
            }
            Inbound::Handled
        }
        Some(Ok(Message::Close(_))) => {
            // tungstenite answered the close; finish the closing handshake.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
            Inbound::End(End::Peer)
        }
        Some(Ok(_)) => Inbound::Handled,
        Some(Err(WsError::Capacity(e))) => {
            tracing::warn!(conn = id, error = %e, "client message too large");
            Inbound::End(End::Close(1009, "message too big", "message_too_big"))
        }
        Some(Err(WsError::Utf8(_))) => Inbound::End(End::Close(
            1007,
            "invalid UTF-8 in text message",
            "invalid_utf8",
        )),
        Some(Err(WsError::Protocol(e))) => {
            tracing::info!(conn = id, error = %e, "websocket protocol error");
            Inbound::End(End::Close(1002, "protocol error", "protocol_error"))
        }
        Some(Err(e)) => {
            tracing::debug!(conn = id, error = %e, "websocket read ended");
            Inbound::End(End::Peer)
        }
    }
}

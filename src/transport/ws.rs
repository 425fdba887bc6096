//! The websocket carrier: the RFC 6455 handshake (after [`crate::admission`] admitted
//! the request), then a session ([`crate::session::run`]) in the protocol the socket negotiated,
//! over [`Ws`], this module's [`Carrier`]: frames written as shared pre-framed bytes with
//! vectored writes, pings, pongs and the close handshake. Everything that is not about
//! websocket framing (subscriptions, publishing, meta events, limits) is the [`Client`]'s, and
//! the loop (shutdown, timers, draining, close reasons) is the session's.
//!
//! Lifecycle (spec §2.5, with the original's gaps closed): the client is subscribed before the
//! 101 is sent, `ConnectionOpen` is published, the loop runs, then the client finishes
//! (unsubscribe, `ConnectionClose`). Every mode reads the socket, so pings are answered and close
//! frames honoured on read-only sockets too. When the server closes a socket (expiry, shutdown,
//! slow consumer) it sends a close frame, waits briefly for the answer and then closes TCP itself.
//!
//! What it owns: the handshake's headers (version, key, accept, subprotocol), the socket's
//! tungstenite settings, and the bytes on the wire. What it must never do: decide who may
//! connect or to what (that is admission's, done before `accept` is called), interpret a
//! client's text (it hands it to the session as [`Inbound::Text`]), or copy a message per
//! socket: every socket of one encoding writes the same shared bytes.
//!
//! Why raw writes beside tungstenite: tungstenite would re-frame and copy each message into
//! its write buffer for every socket. The frames are framed once ([`wire::encode`]) and written
//! with `writev` straight to the socket, so fan-out costs a reference per socket, not a copy;
//! tungstenite keeps the read side and the control frames it must answer itself.

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

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::admission::{self, Admitted, SUBPROTOCOL};
use crate::client::Client;
use crate::respond::{Body, full, text};
use crate::session::{self, Carrier, End, Inbound};
use crate::state::AppState;
use crate::stream::{Encoding, Frame};
use crate::wire;

/// How long to wait for the peer's answer to our close frame.
///
/// Long enough for a peer on a slow mobile link to answer; short enough that a peer that
/// never answers does not hold a session task (and a shutdown) for long.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long, after our close, what a peer still sends is read and dropped (so that it reads
/// our close frame rather than a reset).
const LINGER: Duration = Duration::from_secs(2);

/// Websocket settings: small buffers (tungstenite's defaults allocate 128 KiB per socket up
/// front; the read buffer is allocated eagerly, so it dominates an idle socket's memory) and an
/// explicit message size limit. A larger client message grows the buffer as needed.
pub fn ws_config(max_message_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        // 256 B read buffer: enough for a typical small client message in one read; a larger
        // one grows it for that read only. The write buffer serves only tungstenite's own
        // frames (pongs, pings, close): messages bypass it. The 16 MiB cap bounds what a peer
        // that stops reading can make tungstenite hold before a write fails.
        .read_buffer_size(256)
        .write_buffer_size(4 * 1024)
        .max_write_buffer_size(16 * 1024 * 1024)
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size))
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
        // RFC 6455 §4.4: answer an unsupported version with 400 and the one we speak, so a
        // client can retry with it.
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
    // The key's content is not checked beyond being present: the accept value proves only
    // that the server speaks websocket, and any bytes derive one.
    let accept = derive_accept_key(key.as_bytes());
    // Taken now, awaited in the spawned task: hyper completes the upgrade only after the
    // 101 below has been written.
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
    let protocol = session::Protocol::of(
        admitted.v2,
        admitted.positions,
        &admitted.grant,
        state.presence.as_ref().map(|p| p.claim()),
    );
    let config = state.ws_config;
    let tracker = state.sessions.clone();
    let subprotocol = protocol.subprotocol();
    let client = Client::open(state, id, admitted, protocol.encoding());
    // Subscribed (in `Client::open`) and, in direct mode, LISTENed before the 101: what is
    // routed once the client sees the handshake complete reaches its outbox.
    client.following().await;
    protocol.spawn(&tracker, client, async move {
        websocket(upgrade, config, id).await.map(Ws::new)
    });
    // The 101: only the headers RFC 6455 requires, and the subprotocol only when the
    // client offered it (a client that offers none must get none back).
    let mut r = Response::new(full(bytes::Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    // Base64 text, always a valid header value; the check only avoids an unwrap.
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(own) = subprotocol {
        h.insert(
            hyper::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(own),
        );
    } else if carrier == admission::Carrier::Subprotocol {
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
        // `encoded` makes the frame's bytes for this encoding on first use and returns the
        // shared copy after: the first socket pays the encoding, the others a lookup.
        let mut slices: Vec<IoSlice<'_>> = chunk
            .iter()
            .map(|f| IoSlice::new(f.encoded(encoding, wire::encode)))
            .collect();
        let mut bufs = &mut slices[..];
        while !bufs.is_empty() {
            // A short write is normal on a busy socket: skip what was written and go on; the
            // await is where a slow peer holds this task (the session watches for overflow then).
            let n = io.write_vectored(bufs).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut bufs, n);
        }
    }
    // A no-op on a plain TCP stream; needed when something buffers under us (TLS).
    io.flush().await
}

/// The websocket once the HTTP upgrade is done (`None`: it failed, logged).
async fn websocket(
    upgrade: hyper::upgrade::OnUpgrade,
    config: WebSocketConfig,
    id: u64,
) -> Option<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>> {
    match upgrade.await {
        // `from_raw_socket`: the handshake was already done by hand above, so tungstenite
        // starts straight in the open state.
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

/// A websocket as a session's [`Carrier`]: frames written as shared, pre-framed bytes; pings,
/// pongs and the close handshake handled here.
struct Ws<S> {
    ws: WebSocketStream<S>,
    /// Pings sent (each ping carries its number).
    // A counter rather than a timestamp: cheap, and a pong echoing an old number is
    // recognisable in a packet capture.
    pings: u64,
}

impl<S> Ws<S> {
    fn new(ws: WebSocketStream<S>) -> Self {
        Self { ws, pings: 0 }
    }
}

impl<S> Carrier for Ws<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    type Raw = Option<Result<Message, WsError>>;
    const NAME: &'static str = "websocket";

    // Cancel-safe (the session `select!`s on it): `StreamExt::next` on tungstenite loses
    // no frame when dropped before it completes.
    fn next(&mut self) -> impl std::future::Future<Output = Self::Raw> + Send {
        self.ws.next()
    }

    async fn inbound(&mut self, raw: Self::Raw, conn: u64) -> Inbound {
        read(&mut self.ws, raw, conn).await
    }

    async fn write(&mut self, frames: &[Frame], encoding: Encoding) -> std::io::Result<()> {
        // Anything tungstenite still holds (a pong) goes first, whole, so that the raw frames
        // below never interleave with one of its frames.
        self.ws.flush().await.map_err(std::io::Error::other)?;
        write_frames(self.ws.get_mut(), frames, encoding).await
    }

    // Called by the session's one timer. A failed send means the peer is gone; the
    // session ends the socket without a close handshake.
    async fn keepalive(&mut self) -> Result<(), ()> {
        self.pings += 1;
        let payload = self.pings.to_string().into_bytes();
        self.ws
            .send(Message::Ping(payload.into()))
            .await
            .map_err(|_| ())
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let ws = &mut self.ws;
        // Send our close frame, then read (and drop) whatever the peer still sends until
        // its answering close frame ends the stream (the closing handshake, RFC 6455 §5.5.1).
        let closed = async {
            if ws.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closed).await;
        // Linger: a peer still writing (a frame over the size limit, cut short) would get a TCP
        // reset if we closed with its bytes unread, and could lose our close frame with it.
        // Our side is done (FIN after the close frame); what the peer still sends is read and
        // dropped until it closes too, for a bounded time.
        let raw = self.ws.get_mut();
        let _ = raw.shutdown().await;
        let drain = async {
            let mut scratch = [0u8; 4096];
            while let Ok(n) = raw.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }
}

/// Handles what `ws.next()` gave: pings, close frames and errors here, messages to the caller.
async fn read<S>(
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
            Inbound::Alive
        }
        Some(Ok(Message::Close(_))) => {
            // tungstenite answered the close; finish the closing handshake.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
            Inbound::End(End::Peer)
        }
        // Pongs (and raw frames tungstenite does not surface): proof of life, no content.
        Some(Ok(_)) => Inbound::Alive,
        // The close codes below are RFC 6455's (§7.4.1); the third part is the reason
        // counted in the metrics.
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
        // Resets, EOF without a close frame: ordinary ends of a connection, not worth more
        // than a debug line.
        Some(Err(e)) => {
            tracing::debug!(conn = id, error = %e, "websocket read ended");
            Inbound::End(End::Peer)
        }
    }
}

//! One accepted websocket: a single task that `select!`s between the client's frames, the
//! socket's outbox, the token's expiry, server pings and shutdown.
//!
//! Lifecycle (spec §2.5, with the original's gaps closed): subscribe the socket's channels (read
//! mode), publish `ConnectionOpen` on the meta channel, loop, then unsubscribe and publish
//! `ConnectionClose`. Every mode reads the socket, so pings are answered and close frames honoured
//! on read-only sockets too. When the server closes a socket (expiry, shutdown, slow consumer) it
//! sends a close frame, waits briefly for the answer and then closes TCP itself.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::auth::{Grant, now_seconds};
use crate::config::{ChannelMode, MessageFormat};
use crate::envelope::{ClaimsText, MAX_NOTIFY_PAYLOAD, envelope, error_event, postgrest_envelope};
use crate::limits::{Bucket, SubjectSlot};
use crate::metrics::{ModeLabel, ReasonLabel};
use crate::outbox::Outbox;
use crate::pg::listener::ListenCmd;
use crate::pg::publisher::Job;
use crate::state::AppState;

/// Close code when the token's `exp` passes (the original's).
pub const CLOSE_JWT_EXPIRED: u16 = 3001;
/// Close code for a socket that fell too far behind its outbound queue limits.
pub const CLOSE_SLOW_CONSUMER: u16 = 4000;
/// How long a blocked write may take before the peer is considered gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the peer's answer to our close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Close code for a peer that answered no ping for two ping intervals.
pub const CLOSE_PING_TIMEOUT: u16 = 4001;

/// Why the loop ended.
enum End {
    /// The peer closed or vanished; nothing more to send.
    Peer,
    /// We close with this code and reason; the label names the reason in metrics.
    Close(u16, &'static str, &'static str),
    /// We drop the connection without a close frame (it accepts no data); label for metrics.
    Drop(&'static str),
}

/// A socket whose handshake is being accepted: already subscribed, so that everything routed to
/// its channels after the client sees the handshake complete is delivered.
pub struct Session {
    state: Arc<AppState>,
    id: u64,
    grant: Grant,
    /// The claims, serialised once; the parsed claims are not kept (memory per idle socket).
    claims: ClaimsText,
    outbox: Arc<Outbox>,
    /// Held while the socket is open (per-subject limit).
    _slot: Option<SubjectSlot>,
}

impl Session {
    /// Subscribes the socket's channels (read mode).
    pub fn open(
        state: Arc<AppState>,
        id: u64,
        mut grant: Grant,
        slot: Option<SubjectSlot>,
    ) -> Self {
        let claims = ClaimsText::new(&grant.claims);
        grant.claims = serde_json::Map::new();
        state.active.fetch_add(1, Ordering::Relaxed);
        state.metrics.accepted.inc();
        state
            .metrics
            .connections
            .get_or_create(&ModeLabel {
                mode: grant.mode.as_str(),
            })
            .inc();
        let outbox = Arc::new(Outbox::new(state.outbox_limits));
        if grant.mode.read {
            for channel in &grant.channels {
                state.hub.subscribe(channel, &outbox);
            }
        }
        Self {
            state,
            id,
            grant,
            claims,
            outbox,
            _slot: slot,
        }
    }

    /// Runs the socket to its end.
    pub async fn run<S>(self, ws: WebSocketStream<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Self {
            state,
            id,
            grant,
            claims,
            outbox,
            ..
        } = &self;
        run(ws, state, *id, grant, claims, outbox).await;
    }
}

impl Session {
    /// In direct mode, waits (at most 5 s) until the socket's channels are LISTENed, so that the
    /// client misses nothing sent after its handshake completes.
    pub async fn listening(&self) {
        let Some(cmds) = &self.state.listen_cmds else {
            return;
        };
        if !self.grant.mode.read {
            return;
        }
        let mut waits = Vec::new();
        for channel in &self.grant.channels {
            let (done, wait) = tokio::sync::oneshot::channel();
            if cmds
                .send(ListenCmd::Listen(channel.clone(), done))
                .await
                .is_ok()
            {
                waits.push(wait);
            }
        }
        let all = futures_util::future::join_all(waits);
        if tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .is_err()
        {
            tracing::warn!(
                conn = self.id,
                "LISTEN not confirmed within 5 s; the socket opens anyway"
            );
        }
    }
}

/// Removes the socket from its channels; in direct mode, asks for UNLISTEN of channels it was
/// the last subscriber of. Idempotent.
fn leave(state: &AppState, grant: &Grant, outbox: &Arc<Outbox>) {
    if !grant.mode.read {
        return;
    }
    for channel in &grant.channels {
        if state.hub.unsubscribe(channel, outbox)
            && let Some(cmds) = &state.listen_cmds
        {
            // A full queue only leaves a LISTEN in place until the next reconnection.
            let _ = cmds.try_send(ListenCmd::Unlisten(channel.clone()));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::Relaxed);
        self.state
            .metrics
            .connections
            .get_or_create(&ModeLabel {
                mode: self.grant.mode.as_str(),
            })
            .dec();
        leave(&self.state, &self.grant, &self.outbox);
        self.outbox.close();
    }
}

async fn run<S>(
    mut ws: WebSocketStream<S>,
    state: &Arc<AppState>,
    id: u64,
    grant: &Grant,
    claims: &ClaimsText,
    outbox: &Arc<Outbox>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (state, outbox) = (state.as_ref(), outbox);
    Box::pin(meta_event(state, id, "ConnectionOpen", grant, claims)).await;

    let end = serve(&mut ws, state, id, grant, claims, outbox).await;

    leave(state, grant, outbox);
    outbox.close();
    let label = match end {
        End::Close(_, _, label) | End::Drop(label) => Some(label),
        End::Peer => None,
    };
    if let Some(reason) = label {
        state
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
    Box::pin(meta_event(state, id, "ConnectionClose", grant, claims)).await;
}

/// Publishes a meta-channel event. Its failure is logged and counted, not sent to the socket:
/// the client did not send it.
async fn meta_event(state: &AppState, id: u64, event: &str, grant: &Grant, claims: &ClaimsText) {
    let Some(meta) = &state.meta_channel else {
        return;
    };
    let payload = envelope(
        event,
        meta,
        &grant.channels.join(","),
        claims,
        now_seconds(),
    );
    state
        .publisher
        .publish(
            id,
            Job {
                pg_channel: (!state.channel_mode.uses_listen_channel()).then(|| meta.clone()),
                payload,
                channel: Some(meta.clone()),
                reply: None,
            },
        )
        .await;
}

async fn serve<S>(
    ws: &mut WebSocketStream<S>,
    state: &AppState,
    id: u64,
    grant: &Grant,
    claims: &ClaimsText,
    outbox: &Arc<Outbox>,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let expiry = grant.exp.map(|exp| {
        let left = (exp - now_seconds()).max(0.0);
        tokio::time::Instant::now() + Duration::from_secs_f64(left.min(1e9))
    });
    // One timer for both the token's expiry and the next ping (one timer per idle socket).
    let mut next_ping = state.ping_interval.map(|p| tokio::time::Instant::now() + p);
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
    let mut rates = SocketRates::new(state);
    let mut batch: Vec<Utf8Bytes> = Vec::new();
    // Made once: re-made on every turn of the loop it would join and leave the token's waiter
    // list, which every socket shares, on every delivery.
    let shutdown = state.shutdown.cancelled();
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
                if let (Some(at), Some(interval)) = (next_ping, state.ping_interval)
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
            _ = outbox.wait() => {
                let drained = outbox.drain_into(&mut batch);
                if !batch.is_empty() {
                    // Boxed, like the other rare paths below: a future's size is the largest of
                    // its states, and every idle socket would otherwise carry the write state.
                    let write = Box::pin(async {
                        for msg in batch.drain(..) {
                            ws.feed(Message::Text(msg)).await?;
                        }
                        ws.flush().await
                    });
                    tokio::select! {
                        r = Box::pin(tokio::time::timeout(WRITE_TIMEOUT, write)) => match r {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => {
                                tracing::debug!(conn = id, error = %e, "write failed");
                                return End::Peer;
                            }
                            Err(_) => return End::Drop("write_timeout"),
                        },
                        // The peer stopped reading and its queue overflowed meanwhile.
                        _ = outbox.overflowed() => return End::Drop("slow_consumer"),
                    }
                    if let Some(oldest) = drained.oldest {
                        state.metrics.delivery_latency.observe(oldest.elapsed().as_secs_f64());
                    }
                    batch.clear();
                    if batch.capacity() > 256 {
                        batch.shrink_to_fit();
                    }
                }
                if !drained.healthy {
                    return End::Close(
                        CLOSE_SLOW_CONSUMER,
                        "slow consumer: outbound queue limit reached",
                        "slow_consumer",
                    );
                }
            }
            frame = ws.next() => {
                if let Some(Ok(_)) = &frame {
                    last_inbound = tokio::time::Instant::now();
                }
                match frame {
                None => return End::Peer,
                Some(Ok(Message::Text(text))) => {
                    if rates.allow(text.len(), outbox, state) {
                        Box::pin(on_client_text(state, id, grant, claims, outbox, text.as_str())).await;
                    }
                }
                Some(Ok(Message::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                    Ok(text) if !rates.allow(text.len(), outbox, state) => {}
                    Ok(text) => Box::pin(on_client_text(state, id, grant, claims, outbox, text)).await,
                    Err(_) => {
                        outbox.push(error_event("invalid_utf8",
                            "binary message is not valid UTF-8 text; it was not published", None).into());
                    }
                },
                Some(Ok(Message::Ping(_))) => {
                    // tungstenite queued the pong; push it out now.
                    if ws.flush().await.is_err() {
                        return End::Peer;
                    }
                }
                Some(Ok(Message::Close(_))) => {
                    // tungstenite answered the close; finish the closing handshake.
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
                    return End::Peer;
                }
                Some(Ok(_)) => {}
                Some(Err(WsError::Capacity(e))) => {
                    tracing::warn!(conn = id, error = %e, "client message too large");
                    return End::Close(1009, "message too big", "message_too_big");
                }
                Some(Err(WsError::Utf8(_))) => {
                    return End::Close(1007, "invalid UTF-8 in text message", "invalid_utf8");
                }
                Some(Err(WsError::Protocol(e))) => {
                    tracing::info!(conn = id, error = %e, "websocket protocol error");
                    return End::Close(1002, "protocol error", "protocol_error");
                }
                Some(Err(e)) => {
                    tracing::debug!(conn = id, error = %e, "websocket read ended");
                    return End::Peer;
                }
                }
            }
        }
    }
}

/// Per-socket message and byte rates (`PGWS_RATE_MESSAGES`, `PGWS_RATE_BYTES`).
struct SocketRates {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl SocketRates {
    fn new(state: &AppState) -> Self {
        let bucket = |rate: u32| (rate > 0).then(|| Bucket::new(rate));
        Self {
            messages: bucket(state.rates.messages),
            bytes: bucket(state.rates.bytes),
        }
    }

    /// Whether a message of `len` bytes may be published; tells the socket (and the metrics)
    /// when not.
    fn allow(&mut self, len: usize, outbox: &Outbox, state: &AppState) -> bool {
        let now = std::time::Instant::now();
        let messages_ok = self.messages.as_mut().is_none_or(|b| b.take(1.0, now));
        let bytes_ok = messages_ok && self.bytes.as_mut().is_none_or(|b| b.take(len as f64, now));
        if messages_ok && bytes_ok {
            return true;
        }
        let what = if messages_ok { "bytes" } else { "messages" };
        state
            .metrics
            .drops
            .get_or_create(&ReasonLabel {
                reason: "rate_limited",
            })
            .inc();
        outbox.push(
            error_event(
                "rate_limited",
                &format!(
                    "too many {what} per second from this socket; the message was not published"
                ),
                None,
            )
            .into(),
        );
        false
    }
}

/// Publishes one client message to every channel of the socket (spec §5.1), or says why not.
async fn on_client_text(
    state: &AppState,
    id: u64,
    grant: &Grant,
    claims: &ClaimsText,
    outbox: &Arc<Outbox>,
    text: &str,
) {
    state.metrics.messages_in.inc();
    if !grant.mode.write {
        outbox.push(
            error_event(
                "read_only",
                "this socket's token does not allow writing (mode is not 'w' or 'rw'); the message was not published",
                None,
            )
            .into(),
        );
        return;
    }
    let at = now_seconds();
    // postgres-websockets: through the listen channel; direct mode and the postgrest-ws formats:
    // on the channel itself.
    let on_channel = state.channel_mode == ChannelMode::Direct
        || state.message_format != MessageFormat::PostgresWebsockets;
    for channel in &grant.channels {
        let payload = match state.message_format {
            MessageFormat::PostgresWebsockets => {
                envelope("WebsocketMessage", channel, text, claims, at)
            }
            MessageFormat::PostgrestWs => postgrest_envelope(text, claims, at, false),
            MessageFormat::PostgrestWsLegacy => postgrest_envelope(text, claims, at, true),
        };
        if payload.len() > MAX_NOTIFY_PAYLOAD {
            let msg = format!(
                "message too large: its notification would be {} bytes and PostgreSQL accepts at most {} (the envelope and your token's claims take {} of them)",
                payload.len(),
                MAX_NOTIFY_PAYLOAD,
                payload.len() - text.len()
            );
            tracing::warn!(conn = id, channel = %channel, bytes = payload.len(), "message too large for NOTIFY");
            outbox.push(error_event("payload_too_large", &msg, Some(channel)).into());
            continue;
        }
        state
            .publisher
            .publish(
                id,
                Job {
                    pg_channel: on_channel.then(|| channel.clone()),
                    payload,
                    channel: Some(channel.clone()),
                    reply: Some(outbox.clone()),
                },
            )
            .await;
    }
}

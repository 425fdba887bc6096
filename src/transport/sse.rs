//! The Server-Sent Events transport: the same URLs as the websocket (`/:channel/:token`,
//! `/:token`, or the token in `Authorization: Bearer`), asked for with `Accept: text/event-stream`
//! on a `GET` without `Upgrade`. Read-only by nature; the same admission, the same client core.
//!
//! Each message is one event whose `id:` is its stream position and whose `data:` lines are
//! exactly the text a compat websocket client receives (one `data:` line per line of text; the
//! browser joins them with `\n`). A `Last-Event-ID` header (what `EventSource` sends when it
//! reconnects by itself) resumes: the hub replays what the stream missed, after a `Gap` event
//! when that cannot be exact. A comment line
//! goes out at every ping interval so that proxies do not close an idle stream. The stream ends
//! with a named `close` event (`{"event":"Close","code":…,"reason":…}`, the websocket's close
//! code) when the token expires (3001), the server shuts down (1001, with `retry:` advice so that
//! browsers come back after a moment), the stream reached `PGWS_SSE_MAX_AGE` (4002, `retry:`
//! 250 ms: the browser reconnects with `Last-Event-ID` and misses nothing) or the client falls
//! too far behind (4000).
//!
//! The response body *is* the client's loop: hyper polls it, it polls the outbox, the timer and
//! shutdown, so an SSE stream costs no task of its own. When hyper drops the body (the peer went
//! away, or the stream ended) the client finishes in a task of its own (`ConnectionClose`).

use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::body::Frame as BodyFrame;
use hyper::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::ws::{CLOSE_JWT_EXPIRED, CLOSE_SLOW_CONSUMER};
use crate::client::Client;
use crate::http::admission::Admitted;
use crate::http::body::Body;
use crate::ops::metrics::ReasonLabel;
use crate::protocol::close_event;
use crate::state::AppState;
use crate::stream::Frame;

/// How long a browser should wait before reconnecting after the server shut down.
const RETRY_AFTER_SHUTDOWN_MS: u64 = 3000;
/// How long a browser should wait before reconnecting after its stream reached its lifetime.
const RETRY_AFTER_ROTATION_MS: u64 = 250;
/// The `close` event's code when a stream reached `PGWS_SSE_MAX_AGE` (the client should simply
/// reconnect, with its `Last-Event-ID`).
pub const CLOSE_ROTATED: u16 = 4002;

/// Whether a request asks for an event stream: `GET`, `Accept: text/event-stream`, no `Upgrade`.
/// Nothing else is taken from static files or the upstream: browsers never send that `Accept`
/// for pages, scripts or API calls.
pub fn is_request<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && !req.headers().contains_key(UPGRADE)
        && req
            .headers()
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| {
                t.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
            })
}

/// Accepts an admitted request as an event stream.
pub async fn accept(state: Arc<AppState>, admitted: Admitted) -> Response<Body> {
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        conn = id,
        peer = %admitted.ip,
        channels = %admitted.grant.channels.join(","),
        mode = admitted.grant.mode.as_str(),
        sub = admitted.grant.claims.get("sub").and_then(|s| s.as_str()).unwrap_or(""),
        "event stream open"
    );
    let client = Client::open(state.clone(), id, admitted);
    client.following().await;
    client.start().await;
    let body = Stream::new(client, &state);
    let mut r = Response::new(body.boxed());
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx buffers proxied responses unless told not to.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// Encodes one message as an event: a `data:` line per line of its text.
fn encode_message(out: &mut BytesMut, text: &str) {
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        // A lone `\r` is also a line end for the browser; keep the text's lines intact.
        for part in line.split('\r') {
            out.put_slice(b"data: ");
            out.put_slice(part.as_bytes());
            out.put_u8(b'\n');
        }
    }
    out.put_u8(b'\n');
}

/// The stream's body and loop.
struct Stream {
    /// `None` once finished (the body was dropped, or ended).
    client: Option<Client>,
    /// Expiry and pings, as in the websocket transport: one timer.
    timer: Pin<Box<Sleep>>,
    expiry: Option<Instant>,
    /// When the stream ends by itself (`PGWS_SSE_MAX_AGE`).
    rotate: Option<Instant>,
    ping: Option<Duration>,
    next_ping: Option<Instant>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// First frame not sent yet (a comment, so that headers and a first byte go out at once).
    opened: bool,
    /// The stream has said goodbye; the next poll ends it.
    done: bool,
    batch: Vec<Frame>,
}

impl Stream {
    fn new(client: Client, state: &AppState) -> Self {
        let expiry = client.expiry();
        let rotate = state.config.sse_max_age.map(|age| Instant::now() + age);
        let ping = state.config.ping_interval;
        let next_ping = ping.map(|p| Instant::now() + p);
        let mut stream = Self {
            client: Some(client),
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            expiry,
            rotate,
            ping,
            next_ping,
            shutdown: Box::pin(state.shutdown.clone().cancelled_owned()),
            opened: false,
            done: false,
            batch: Vec::new(),
        };
        stream.rearm();
        stream
    }

    fn rearm(&mut self) {
        let at = [self.expiry, self.rotate, self.next_ping]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        self.timer.as_mut().reset(at);
    }

    /// The goodbye event, counted like a websocket close.
    fn close(&mut self, code: u16, reason: &'static str, label: &'static str) -> Bytes {
        self.done = true;
        if let Some(client) = &self.client {
            tracing::info!(conn = client.id(), code, reason, "closing event stream");
            client
                .state()
                .metrics
                .server_closes
                .get_or_create(&ReasonLabel { reason: label })
                .inc();
        }
        let mut out = BytesMut::new();
        if code == 1001 {
            out.put_slice(format!("retry: {RETRY_AFTER_SHUTDOWN_MS}\n").as_bytes());
        } else if code == CLOSE_ROTATED {
            out.put_slice(format!("retry: {RETRY_AFTER_ROTATION_MS}\n").as_bytes());
        }
        out.put_slice(b"event: close\n");
        encode_message(&mut out, &close_event(code, reason));
        out.freeze()
    }
}

impl hyper::body::Body for Stream {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done || this.client.is_none() {
            return Poll::Ready(None);
        }
        if !this.opened {
            this.opened = true;
            return Poll::Ready(Some(Ok(BodyFrame::data(Bytes::from_static(b": ok\n\n")))));
        }
        if this.shutdown.as_mut().poll(cx).is_ready() {
            let bye = this.close(1001, "server shutting down", "shutdown");
            return Poll::Ready(Some(Ok(BodyFrame::data(bye))));
        }
        if this.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if this.expiry.is_some_and(|at| now >= at) {
                let bye = this.close(CLOSE_JWT_EXPIRED, "JWT expired", "expired");
                return Poll::Ready(Some(Ok(BodyFrame::data(bye))));
            }
            if this.rotate.is_some_and(|at| now >= at) {
                let bye = this.close(
                    CLOSE_ROTATED,
                    "stream lifetime reached; reconnect",
                    "rotated",
                );
                return Poll::Ready(Some(Ok(BodyFrame::data(bye))));
            }
            if let (Some(at), Some(interval)) = (this.next_ping, this.ping)
                && now >= at
            {
                this.next_ping = Some(now + interval);
                this.rearm();
                return Poll::Ready(Some(Ok(BodyFrame::data(Bytes::from_static(b": ping\n\n")))));
            }
            this.rearm();
        }
        let Some(client) = &this.client else {
            return Poll::Ready(None);
        };
        if client.outbox().poll_wait(cx).is_pending() {
            return Poll::Pending;
        }
        let drained = client.outbox().drain_into(&mut this.batch);
        if let Some((code, reason)) = drained.end {
            // Access revoked (authorization by the database): nothing more is sent.
            this.batch.clear();
            let bye = this.close(code, reason, "revoked");
            return Poll::Ready(Some(Ok(BodyFrame::data(bye))));
        }
        if !drained.healthy {
            this.batch.clear();
            let bye = this.close(
                CLOSE_SLOW_CONSUMER,
                "slow consumer: outbound queue limit reached",
                "slow_consumer",
            );
            return Poll::Ready(Some(Ok(BodyFrame::data(bye))));
        }
        if let Some(oldest) = drained.oldest {
            client
                .state()
                .metrics
                .delivery_latency
                .observe(oldest.elapsed().as_secs_f64());
        }
        // `id: <position>\n` (≤ 42 bytes) and `data: `/`\n` around the text.
        let size: usize = this.batch.iter().map(|f| f.len() + 64).sum();
        let mut out = BytesMut::with_capacity(size);
        for frame in this.batch.drain(..) {
            if let Some(position) = client.position_of(&frame) {
                // Formatted straight into the buffer: no String per message and stream.
                let _ = writeln!(out, "id: {position}");
            }
            encode_message(&mut out, frame.as_str());
        }
        if this.batch.capacity() > 256 {
            this.batch.shrink_to_fit();
        }
        if out.is_empty() {
            // Woken without messages (a spurious signal): wait again.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Some(Ok(BodyFrame::data(out.freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.client.is_none()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            tracing::info!(conn = client.id(), "event stream closed");
            let tracker = client.state().sessions.clone();
            tracker.spawn(async move { client.finish().await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_data_line_per_line() {
        let mut out = BytesMut::new();
        encode_message(&mut out, "a\nb\r\nc\rd");
        assert_eq!(&out[..], b"data: a\ndata: b\ndata: c\ndata: d\n\n");
        let mut out = BytesMut::new();
        encode_message(&mut out, "");
        assert_eq!(&out[..], b"data: \n\n");
    }

    #[test]
    fn accept_header_forms() {
        let req = |accept: &str| {
            Request::get("/chat/t")
                .header(ACCEPT, accept)
                .body(())
                .unwrap()
        };
        assert!(is_request(&req("text/event-stream")));
        assert!(is_request(&req("text/html, Text/Event-Stream;q=0.9")));
        assert!(!is_request(&req("text/html,*/*")));
        let upgrade = Request::get("/")
            .header(ACCEPT, "text/event-stream")
            .header(UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(!is_request(&upgrade));
    }
}

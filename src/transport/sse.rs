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
//! A message's event (`id:`, `data:` lines, blank line) is the same for every stream, so it is
//! encoded once, by the first stream that sends it, and shared by all (`crate::wire::SSE`, cached
//! in the frame): a stream only hands shared bytes to the socket.
//!
//! A stream is a session ([`crate::session::serve`]) over one of two [`Carrier`]s, so shutdown,
//! the timer (expiry, heartbeats, `PGWS_SSE_MAX_AGE`), draining and close reasons are the
//! websocket's:
//! - [`Raw`] ([`serve_raw`]): the first request of a connection (and every request after a
//!   stream or a refusal served this way) is read by the accept loop itself
//!   ([`crate::http::head`]); an event-stream request (HTTP/1.1, no body) is answered on the raw
//!   connection: admission, the response head, then chunks written with vectored writes straight
//!   from the shared events. Nothing is buffered per stream besides its outbox, so a reader too
//!   slow for its queue limits is closed as a slow consumer (4000) rather than piling bytes up.
//! - [`Channel`] ([`accept`]): an event-stream request that arrives on a connection hyper already
//!   serves (a keep-alive connection that carried other requests first) is a hyper response whose
//!   body is fed by the session's task through a small bounded channel; the same bytes.
//!
//! What it owns: recognising an event-stream request, the response head and chunked framing
//! of a raw stream, the hyper body of a carried one, heartbeats and the `close` goodbye.
//! What it must never do: admit a request by its own rules (it calls [`crate::admission`],
//! exactly as the websocket does), read anything the client sends as a message (SSE is
//! one-way: the peer is read only to notice it left), buffer events per stream beyond the
//! outbox, or make the accept loop wait on a slow reader (each stream's writes time out).
//!
//! Why serve raw at all: a hyper response body costs a task hand-off, a channel and a copy
//! per chunk; on the raw connection a stream is one session writing shared bytes, which is
//! what keeps an idle stream's memory and a fan-out's CPU close to a websocket's.

use std::future::poll_fn;
use std::io::{self, IoSlice, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::body::Frame as BodyFrame;
use hyper::header::{
    ACCEPT, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue,
    SERVER, TRANSFER_ENCODING, UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use crate::admission::{self, Admitted, Purpose};
use crate::client::Client;
use crate::respond::Body;
use crate::session::compat::Compat;
use crate::session::{self, Carrier, End, Inbound};
use crate::state::AppState;
use crate::stream::{Encoding, Frame};
use crate::wire::{self, compat::close_event};

/// How long a browser should wait before reconnecting after the server shut down.
///
/// 3 s after a shutdown: long enough for a restarting server (or a load balancer's next
/// node) to be ready, so a crowd of browsers does not hammer a port that is not open yet.
const RETRY_AFTER_SHUTDOWN_MS: u64 = 3000;
/// How long a browser should wait before reconnecting after its stream reached its lifetime.
///
/// 250 ms after a rotation: the server is up and waiting; the small delay only spreads
/// the reconnects of streams that were opened together.
const RETRY_AFTER_ROTATION_MS: u64 = 250;
/// The `close` event's code when a stream reached `PGWS_SSE_MAX_AGE` (the client should simply
/// reconnect, with its `Last-Event-ID`).
///
/// In the 4000–4999 range RFC 6455 leaves to applications, beside 4000 (slow consumer).
pub const CLOSE_ROTATED: u16 = 4002;
/// How long a blocked write may take before the peer is considered gone (as for websockets).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most slices handed to one `writev` (Linux's `IOV_MAX` is 1024).
///
/// Each chunk needs two more slices (its size line and its trailer); see `Raw::write`.
const IOV_BATCH: usize = 1024;

/// Whether a request asks for an event stream: `GET`, `Accept: text/event-stream`, no `Upgrade`.
/// Nothing else is taken from static files or the upstream: browsers never send that `Accept`
/// for pages, scripts or API calls.
pub fn is_request<B>(req: &Request<B>) -> bool {
    // Only the media type counts: parameters (`;q=0.9`) are ignored, and a list with
    // `text/event-stream` anywhere in it asks for a stream.
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

/// Whether [`serve_raw`] serves this request (read by [`crate::http::head`]): an event-stream
/// request over HTTP/1.1 without a body. Anything else goes to hyper, which serves it exactly as
/// before (an HTTP/1.0 stream, or a `GET` with a body, is rare enough to keep hyper's framing).
pub fn is_raw_request(req: &Request<()>) -> bool {
    let h = req.headers();
    is_request(req)
        // HTTP/1.1 only: chunked framing is written by hand below, and HTTP/1.0 has none.
        // No body: the raw path reads only the head, and a body left unread would be taken for
        // the next request.
        && req.version() == Version::HTTP_11
        && !h.contains_key(TRANSFER_ENCODING)
        && h.get_all(CONTENT_LENGTH)
            .iter()
            .all(|v| v.as_bytes() == b"0")
}

/// Accepts an admitted request as an event stream carried by hyper (see the module header): the
/// session runs in a task of its own and hands its bytes to the response body through a small
/// bounded channel (so a body nobody reads stops the session's writes, and its outbox overflows
/// as any slow consumer's does).
pub async fn accept(state: Arc<AppState>, admitted: Admitted) -> Response<Body> {
    let mut client = open(&state, admitted).await;
    let (tx, rx) = tokio::sync::mpsc::channel(BODY_CHUNKS);
    // The first chunk (a comment) makes hyper send the head and a first byte at once.
    // `try_send` on a fresh channel with room for `BODY_CHUNKS`: it cannot fail.
    let _ = tx.try_send(Bytes::from_static(b": ok\n\n"));
    let mut carrier = Channel {
        tx,
        lifetime: lifetime(&state),
    };
    // Tracked by the server's session tracker, so a shutdown waits for this stream's
    // goodbye as for a websocket's.
    state.sessions.spawn(async move {
        let end = session::serve(&mut carrier, &mut client, &mut Compat).await;
        session::conclude(&mut carrier, client, end).await;
    });
    let mut r = Response::new(ChannelBody(rx).boxed());
    *r.status_mut() = StatusCode::OK;
    stream_headers(r.headers_mut());
    r
}

/// Opens the client of an admitted stream: subscribed (and its replay queued) before the response
/// head goes out, `ConnectionOpen` published.
async fn open(state: &Arc<AppState>, admitted: Admitted) -> Client {
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        conn = id,
        peer = %admitted.ip,
        channels = %admitted.grant.channels.join(","),
        mode = admitted.grant.mode.as_str(),
        sub = admitted.grant.claims.get("sub").and_then(|s| s.as_str()).unwrap_or(""),
        "event stream open"
    );
    let client = Client::open(state.clone(), id, admitted, wire::SSE);
    // Subscribed (with its replay queued) before the head goes out: nothing routed after
    // the browser sees the response begin can be missed.
    client.following().await;
    client.start().await;
    client
}

fn stream_headers(h: &mut HeaderMap) {
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    // A cached event stream would replay old events to a new reader.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx buffers proxied responses unless told not to.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

/// Chunks a hyper-carried stream's channel holds before the session waits for the body.
///
/// 8: each chunk is a whole drained batch, so a few are enough to keep the body busy;
/// more would only hide a reader that stopped, whose outbox should overflow instead.
const BODY_CHUNKS: usize = 8;

/// When a stream ends by itself (`PGWS_SSE_MAX_AGE`): rotated with `close` 4002, which the
/// browser answers by reconnecting with its `Last-Event-ID`.
fn lifetime(state: &AppState) -> Option<(Instant, End)> {
    state.config.sse_max_age.map(|age| {
        (
            Instant::now() + age,
            // The third field is the reason the metrics count.
            End::Close(
                CLOSE_ROTATED,
                "stream lifetime reached; reconnect",
                "rotated",
            ),
        )
    })
}

/// The goodbye event of a stream the server ends (Server-Sent Events have no close frame): the
/// `close` event with the websocket close code it stands for, after `retry:` advice when the
/// browser should come back (after a shutdown, a moment later; after a rotation, at once).
fn goodbye(code: u16, reason: &str) -> Vec<u8> {
    // Other codes (expiry, slow consumer, revocation) give no advice: the browser's
    // default retry applies, and a client whose token expired needs a new one first.
    let retry = match code {
        1001 => Some(RETRY_AFTER_SHUTDOWN_MS),
        CLOSE_ROTATED => Some(RETRY_AFTER_ROTATION_MS),
        _ => None,
    };
    wire::sse::close(retry, &close_event(code, reason))
}

/// The heartbeat: a comment line, so that proxies do not close an idle stream.
///
/// A comment: `EventSource` ignores it, so no event reaches the page.
const HEARTBEAT: &[u8] = b": ping\n\n";

/// An event stream on a raw connection as a session's [`Carrier`]: chunks written with
/// vectored writes straight from the shared events; the peer, which sends nothing, is read only
/// to learn when it went away.
struct Raw<'a, S> {
    /// The connection, borrowed from the accept loop, which takes it back after the stream.
    io: &'a mut S,
    /// When and how the stream ends by itself (`PGWS_SSE_MAX_AGE`), if it does.
    lifetime: Option<(Instant, End)>,
    /// The connection cannot carry another request (the peer left, a write failed, or the
    /// server shut down).
    // Set, never cleared: once the connection cannot be trusted to be at a request
    // boundary, it must not be reused.
    spent: bool,
}

impl<S> Carrier for Raw<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    type Raw = ();
    const NAME: &'static str = "event stream";
    // A blocked write is finished (within the write time-out), not abandoned: a chunk cut
    // in half would corrupt the body, and whole it can be followed by the `close` event
    // (4000) that tells the browser why it was dropped.
    const DROP_ON_OVERFLOW: bool = false;

    fn next(&mut self) -> impl std::future::Future<Output = ()> + Send {
        poll_fn(|cx| poll_peer(self.io, cx))
    }

    // `next` resolves only when the peer closed or failed: that is the only inbound event.
    async fn inbound(&mut self, _: (), _conn: u64) -> Inbound {
        self.spent = true;
        Inbound::End(End::Peer)
    }

    async fn write(&mut self, frames: &[Frame], encoding: Encoding) -> io::Result<()> {
        // One HTTP chunk per batch of events: its size line, the shared events, its trailer.
        for part in frames.chunks(IOV_BATCH - 2) {
            let slices: Vec<&[u8]> = part
                .iter()
                .map(|f| f.encoded(encoding, wire::encode))
                .collect();
            if let Err(e) = write_chunks(self.io, &slices, false).await {
                self.spent = true;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn keepalive(&mut self) -> Result<(), ()> {
        write_chunks(self.io, &[HEARTBEAT], false)
            .await
            .map_err(|_| self.spent = true)
    }

    // The browser never answers a heartbeat; a dead peer shows up as a failed write.
    fn answers_keepalive(&self) -> bool {
        false
    }

    fn lifetime(&self) -> Option<(Instant, End)> {
        self.lifetime
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        let bye = goodbye(code, reason);
        // The goodbye ends the chunked body (`last`), so the connection could carry another
        // request; not after a shutdown (1001), when the server closes it anyway.
        if write_chunks(self.io, &[&bye], true).await.is_err() || code == 1001 {
            self.spent = true;
        }
    }
}

/// A hyper-carried event stream as a session's [`Carrier`]: bytes go to the response body
/// through a bounded channel; the body's drop (the peer left) closes it.
struct Channel {
    /// To the response body; closed when hyper drops the body (the peer left).
    tx: tokio::sync::mpsc::Sender<Bytes>,
    lifetime: Option<(Instant, End)>,
}

impl Carrier for Channel {
    type Raw = ();
    const NAME: &'static str = "event stream";
    // As for `Raw`: a slow reader still gets its `close` event after what was sent.
    const DROP_ON_OVERFLOW: bool = false;

    fn next(&mut self) -> impl std::future::Future<Output = ()> + Send {
        self.tx.closed()
    }

    async fn inbound(&mut self, _: (), _conn: u64) -> Inbound {
        Inbound::End(End::Peer)
    }

    async fn write(&mut self, frames: &[Frame], encoding: Encoding) -> io::Result<()> {
        let size = frames
            .iter()
            .map(|f| f.encoded(encoding, wire::encode).len())
            .sum();
        // One copy per batch into one chunk: the price of going through hyper's body, which
        // takes owned `Bytes`; this path serves only streams on already-busy connections.
        let mut out = BytesMut::with_capacity(size);
        for frame in frames {
            out.put_slice(frame.encoded(encoding, wire::encode));
        }
        self.tx
            .send(out.freeze())
            .await
            .map_err(|_| io::ErrorKind::BrokenPipe.into())
    }

    async fn keepalive(&mut self) -> Result<(), ()> {
        self.tx
            .send(Bytes::from_static(HEARTBEAT))
            .await
            .map_err(|_| ())
    }

    fn answers_keepalive(&self) -> bool {
        false
    }

    fn lifetime(&self) -> Option<(Instant, End)> {
        self.lifetime
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        // Bounded: a body nobody reads must not hold the session (and a shutdown) forever.
        let _ = tokio::time::timeout(
            WRITE_TIMEOUT,
            self.tx.send(Bytes::from(goodbye(code, reason))),
        )
        .await;
    }
}

/// The response body of a hyper-carried stream: what the session sent, until it ends.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = hyper::Error;

    // `None` once the session dropped its sender (the stream ended): hyper then finishes
    // the chunked body. A dropped body (the peer left) closes the channel, which the
    // session sees in `Channel::next`.
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(BodyFrame::data(bytes))))
    }
}

/// What the connection does after [`serve_raw`].
///
/// The accept loop acts on this: an event stream may end cleanly and leave the
/// connection ready for another request (keep-alive), like any other response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Read the next request (the response was complete and the connection stays open).
    NextRequest,
    /// Close the connection.
    Close,
}

/// Serves an event-stream request read by the accept loop ([`is_raw_request`]) on the raw
/// connection: the same admission and refusals as through hyper, then the stream.
pub async fn serve_raw<S>(
    io: &mut S,
    req: Request<()>,
    peer: SocketAddr,
    state: &Arc<AppState>,
) -> After
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // What the client said about the connection (hyper honours `Connection: close` the same way).
    // A client that asked to close gets its connection closed after the stream, whatever
    // ended it.
    let close = req
        .headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("close"));
    let admitted = match admission::admit(&req, state, peer, Purpose::Connect).await {
        Ok(admitted) => admitted,
        Err(refusal) => {
            let response = crate::admission::refuse(state, peer, refusal);
            return Box::pin(write_response(io, response, close)).await;
        }
    };
    // Dropped early, as are the head buffers below: the stream lives for hours, and the
    // session's future keeps whatever is still alive at its await points.
    drop(req);
    // Boxed here and below: a future is as large as its largest await, and this one lives
    // as long as the stream; boxing the one-off steps (open, the head, the conclusion) keeps
    // an idle stream's memory to what the session itself needs.
    let mut client = Box::pin(open(state, admitted)).await;
    let mut head = Vec::with_capacity(256);
    let mut headers = HeaderMap::new();
    stream_headers(&mut headers);
    write_head(&mut head, StatusCode::OK, &headers, None, close);
    // The first chunk rides with the head: `: ok\n\n` is 6 bytes; the browser fires `open`.
    chunk_header(&mut head, 6);
    head.extend_from_slice(b": ok\n\n\r\n");
    drop(headers);
    let wrote = Box::pin(tokio::time::timeout(WRITE_TIMEOUT, async {
        io.write_all(&head).await?;
        io.flush().await
    }))
    .await;
    drop(head);
    let mut carrier = Raw {
        io,
        lifetime: lifetime(state),
        spent: false,
    };
    let end = match wrote {
        Ok(Ok(())) => session::serve(&mut carrier, &mut client, &mut Compat).await,
        _ => End::Peer,
    };
    Box::pin(session::conclude(&mut carrier, client, end)).await;
    // The connection serves its next request only after a goodbye that ended the response (a
    // rotation, an expiry, a revocation), never after the peer left or a failed write.
    let reusable = matches!(end, End::Close(..)) && !carrier.spent;
    if close || !reusable {
        After::Close
    } else {
        After::NextRequest
    }
}

/// Reads and discards what the peer sends; ready when it closed (or the connection failed).
fn poll_peer<S: AsyncRead + Unpin>(io: &mut S, cx: &mut Context<'_>) -> Poll<()> {
    // The peer should send nothing; whatever it sends is read and dropped into a small
    // stack buffer so that the connection's receive window never fills.
    let mut scratch = [0u8; 64];
    // At most 16 reads per poll, then yield (below): a peer sending without end cannot
    // keep this task, and the session's writes, from running.
    for _ in 0..16 {
        let mut buf = ReadBuf::new(&mut scratch);
        match Pin::new(&mut *io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(()),
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Pending => return Poll::Pending,
        }
    }
    // A peer that keeps sending: let others run, come back.
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// Writes `parts` as one chunk of the chunked body (and the last chunk after it when `last`),
/// with vectored writes straight from the shared bytes, within [`WRITE_TIMEOUT`].
async fn write_chunks<S, B>(io: &mut S, parts: &[B], last: bool) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
    B: AsRef<[u8]>,
{
    let len: usize = parts.iter().map(|p| p.as_ref().len()).sum();
    let mut header = Vec::with_capacity(20);
    chunk_header(&mut header, len);
    // With `last`, the zero-length chunk follows, which ends the body (RFC 9112 §7.1).
    let trailer: &[u8] = if last { b"\r\n0\r\n\r\n" } else { b"\r\n" };
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(parts.len() + 2);
    slices.push(IoSlice::new(&header));
    slices.extend(parts.iter().map(|p| IoSlice::new(p.as_ref())));
    slices.push(IoSlice::new(trailer));
    let write = async {
        let mut bufs = &mut slices[..];
        while !bufs.is_empty() {
            let n = io.write_vectored(bufs).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut bufs, n);
        }
        io.flush().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// A chunk's size line: the length in hexadecimal, then CRLF.
fn chunk_header(out: &mut Vec<u8>, len: usize) {
    let _ = write!(out, "{len:x}\r\n");
}

/// An HTTP/1.1 response head as hyper writes it: the status line, the headers, the framing
/// (`content-length`, or chunked), `date`, and the `server` header every pgws answer carries.
fn write_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    length: Option<usize>,
    close: bool,
) {
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // The same `server` header hyper's answers carry: a raw and a hyper answer look alike.
    if !headers.contains_key(SERVER) {
        let _ = write!(out, "server: {}\r\n", crate::respond::SERVER_NAME);
    }
    match length {
        Some(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    let _ = write!(
        out,
        "date: {}\r\n\r\n",
        httpdate::fmt_http_date(std::time::SystemTime::now())
    );
}

/// Writes a whole (in-memory) response, such as a refusal.
async fn write_response<S>(io: &mut S, response: Response<Body>, close: bool) -> After
where
    S: AsyncWrite + Unpin,
{
    let (parts, body) = response.into_parts();
    // Refusals are small in-memory bodies; collecting cannot really fail, but if it did
    // the connection is closed rather than left half-answered.
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return After::Close;
    };
    let mut out = Vec::with_capacity(256 + body.len());
    write_head(
        &mut out,
        parts.status,
        &parts.headers,
        Some(body.len()),
        close,
    );
    out.extend_from_slice(&body);
    let wrote = tokio::time::timeout(WRITE_TIMEOUT, async {
        io.write_all(&out).await?;
        io.flush().await
    })
    .await;
    match wrote {
        // A refusal is a complete response: the connection may carry the next request.
        Ok(Ok(())) if !close => After::NextRequest,
        _ => After::Close,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn raw_requests_are_http_1_1_without_a_body() {
        let req = |version, header: Option<(&str, &str)>| {
            let mut b = Request::get("/chat/t")
                .version(version)
                .header(ACCEPT, "text/event-stream");
            if let Some((k, v)) = header {
                b = b.header(k, v);
            }
            b.body(()).unwrap()
        };
        assert!(is_raw_request(&req(Version::HTTP_11, None)));
        assert!(is_raw_request(&req(
            Version::HTTP_11,
            Some(("content-length", "0"))
        )));
        assert!(!is_raw_request(&req(Version::HTTP_10, None)));
        assert!(!is_raw_request(&req(
            Version::HTTP_11,
            Some(("content-length", "3"))
        )));
        assert!(!is_raw_request(&req(
            Version::HTTP_11,
            Some(("transfer-encoding", "chunked"))
        )));
    }

    #[test]
    fn response_heads_are_complete() {
        let mut out = Vec::new();
        let mut h = HeaderMap::new();
        stream_headers(&mut h);
        write_head(&mut out, StatusCode::OK, &h, None, false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"));
        assert!(text.contains("\r\ntransfer-encoding: chunked\r\n"));
        assert!(text.contains("\r\nserver: pgws/"));
        assert!(text.contains("\r\ndate: ") && text.ends_with(" GMT\r\n\r\n"));
        let mut out = Vec::new();
        write_head(
            &mut out,
            StatusCode::FORBIDDEN,
            &HeaderMap::new(),
            Some(5),
            true,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"));
        assert!(text.contains("\r\ncontent-length: 5\r\nconnection: close\r\n"));
    }
}

//! Reading a request head before hyper does, so that event streams can be served on the raw
//! connection (see [`crate::transport::sse::serve_raw`]): hyper's HTTP/1 connection keeps two
//! 8 KiB buffers, a task and a boxed service future for as long as a response streams, about
//! 18 KB per idle event stream, and has no setting to shrink them.
//!
//! [`read`] reads one head, with a size bound ([`MAX_HEAD`]); the caller keeps the time bound
//! (the handshake timeout, as hyper's header read timeout). It gives up early, and hands the
//! bytes it read to hyper through [`Rewind`], for anything that cannot be an event-stream request
//! (not a `GET`, a malformed or oversized head, a header value `http` refuses): hyper then serves
//! the connection exactly as when it read those bytes itself, including its own answers to bad
//! heads (`400`, `431`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Longest head read here; a longer one is left to hyper (whose own limits then apply).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header fields read here (hyper's default limit).
const MAX_HEADERS: usize = 100;
/// The only method served outside hyper.
const GET: &[u8] = b"GET ";

/// What [`read`] found.
#[derive(Debug)]
pub enum Head {
    /// The peer closed the connection before sending a byte.
    Closed,
    /// A complete `GET` head: the request (no body) and the length of its head in the buffer.
    Get(Box<Request<()>>, usize),
    /// Anything else: hyper should serve the connection, starting with the buffer.
    Other,
}

/// Reads into `buf` (which may already hold bytes of the head) until it holds a complete head.
pub async fn read<S>(io: &mut S, buf: &mut BytesMut) -> io::Result<Head>
where
    S: AsyncRead + Unpin,
{
    loop {
        if !buf.is_empty() {
            let n = buf.len().min(GET.len());
            if buf[..n] != GET[..n] {
                return Ok(Head::Other);
            }
            match parse(buf) {
                Parsed::Complete(req, len) => return Ok(Head::Get(req, len)),
                Parsed::Partial if buf.len() < MAX_HEAD => {}
                Parsed::Partial | Parsed::Refused => return Ok(Head::Other),
            }
        }
        if buf.capacity() - buf.len() < 256 {
            buf.reserve(buf.len().clamp(1024, MAX_HEAD));
        }
        if io.read_buf(buf).await? == 0 {
            return Ok(if buf.is_empty() {
                Head::Closed
            } else {
                Head::Other
            });
        }
    }
}

enum Parsed {
    Complete(Box<Request<()>>, usize),
    Partial,
    /// Malformed, or not representable as an `http::Request`.
    Refused,
}

fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let len = match head.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Refused,
    };
    let version = match head.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Parsed::Refused,
    };
    let Some(Ok(uri)) = head.path.map(|p| p.parse::<Uri>()) else {
        return Parsed::Refused;
    };
    let mut req = Request::new(());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    let map = req.headers_mut();
    for h in head.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::Refused;
        };
        map.append(name, value);
    }
    Parsed::Complete(Box::new(req), len)
}

/// A connection whose first bytes were already read: they are read again first. Writes go
/// straight through.
pub struct Rewind<S> {
    pre: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    /// `pre` is read before anything from `inner`.
    pub fn new(pre: Bytes, inner: S) -> Self {
        Self { pre, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pre.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, out);
        }
        let n = self.pre.len().min(out.remaining());
        out.put_slice(&self.pre[..n]);
        self.pre.advance(n);
        if self.pre.is_empty() {
            // Give the allocation back now, not when the connection ends.
            self.pre = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(input: &[u8]) -> (Head, BytesMut) {
        let mut io = input;
        let mut buf = BytesMut::new();
        let head = read(&mut io, &mut buf).await.unwrap();
        (head, buf)
    }

    #[tokio::test]
    async fn a_get_head_is_parsed_and_what_follows_is_kept() {
        let input = b"GET /chat/tok?x=1 HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\nAccept: x\r\n\r\nGET /next";
        let (head, buf) = read_all(input).await;
        let Head::Get(req, len) = head else {
            panic!("{head:?}")
        };
        assert_eq!(req.uri().path(), "/chat/tok");
        assert_eq!(req.uri().query(), Some("x=1"));
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers().get_all("accept").iter().count(), 2);
        assert_eq!(&buf[len..], b"GET /next");
    }

    #[tokio::test]
    async fn anything_else_is_left_to_hyper_with_the_bytes_read() {
        for input in [
            &b"POST /chat/tok HTTP/1.1\r\n\r\n"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET /a b c\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a", // the peer closed half-way
        ] {
            let (head, buf) = read_all(input).await;
            assert!(matches!(head, Head::Other), "{input:?}: {head:?}");
            assert_eq!(&buf[..], input, "every byte read is handed on");
        }
        let (head, _) = read_all(b"").await;
        assert!(matches!(head, Head::Closed));
        let mut long = b"GET / HTTP/1.1\r\nCookie: ".to_vec();
        long.resize(MAX_HEAD + 100, b'a');
        let (head, buf) = read_all(&long).await;
        assert!(matches!(head, Head::Other));
        assert!(buf.len() >= MAX_HEAD && long.starts_with(&buf));
    }

    #[tokio::test]
    async fn rewind_reads_the_prefix_first() {
        let mut r = Rewind::new(Bytes::from_static(b"abc"), &b"def"[..]);
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "abcdef");
    }
}

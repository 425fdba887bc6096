//! Minimal Server-Sent Events client: TCP connect from a chosen loopback source address, one
//! HTTP/1.1 `GET` with `Accept: text/event-stream` (and `Last-Event-ID` to resume), then a
//! buffered reader that undoes the chunked transfer encoding in place and yields whole events
//! (blank-line separated), many per read syscall. Lean for the same reason as the websocket
//! client: the generator must stay cheaper per event than the server it measures.

use crate::target::Target;
use crate::wsclient::{ConnectError, MAX_PAYLOAD};
use anyhow::{Result, bail};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Largest response head accepted.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 1024;

/// One thing read from the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum SseMsg<'a> {
    /// An event with at least one `data:` line.
    Event {
        /// Its `id:` field, if any.
        id: Option<&'a [u8]>,
        /// Its `event:` field (`None`: the default `message`).
        event: Option<&'a [u8]>,
        /// The `data:` lines joined with `\n`.
        data: &'a [u8],
    },
    /// A block without data: comments (`: ok`, `: ping`) or `retry:` advice only.
    Comment,
}

/// Where the de-chunker is in the transfer encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk: bytes still to come.
    Data(usize),
    /// Expecting the CRLF after a chunk's data.
    Crlf,
    /// After the last (zero-size) chunk: trailer lines until a blank one.
    Trailer,
    /// The body ended.
    Done,
    /// No transfer encoding: the body runs to the end of the connection.
    Identity,
}

/// Buffered event reader.
///
/// One buffer holds, in order: consumed bytes (`..pos`), de-chunked body not yet parsed into
/// events (`pos..dec`), and raw bytes from the socket not yet de-chunked (`raw..len`); chunk
/// framing between `dec` and `raw` is garbage left behind by the in-place de-chunking.
#[derive(Debug)]
pub struct SseReader<R> {
    rd: R,
    buf: Vec<u8>,
    pos: usize,
    dec: usize,
    raw: usize,
    len: usize,
    chunk: Chunk,
    /// Multi-line `data:` joined here.
    joined: Vec<u8>,
}

impl<R: AsyncRead + Unpin> SseReader<R> {
    /// Wraps `rd`; `leftover` are body bytes already read past the response head; `chunked`
    /// says whether the body uses the chunked transfer encoding.
    pub fn new(rd: R, leftover: &[u8], chunked: bool, initial: usize) -> Self {
        let mut buf = vec![0u8; initial.max(leftover.len()).max(64)];
        buf[..leftover.len()].copy_from_slice(leftover);
        let mut r = Self {
            rd,
            buf,
            pos: 0,
            dec: 0,
            raw: 0,
            len: leftover.len(),
            chunk: if chunked {
                Chunk::Size
            } else {
                Chunk::Identity
            },
            joined: Vec::new(),
        };
        // Errors surface again on the next `next_msg`.
        let _ = r.dechunk();
        r
    }

    /// Whether the server ended the body (last chunk seen).
    pub fn ended(&self) -> bool {
        self.chunk == Chunk::Done
    }

    /// Makes room for the next read: moves unparsed body and raw bytes to the front (closing
    /// the gap the chunk framing left), grows a full buffer.
    fn make_room(&mut self) -> io::Result<()> {
        if self.pos > 0 || self.dec < self.raw {
            let body = self.dec - self.pos;
            self.buf.copy_within(self.pos..self.dec, 0);
            self.buf.copy_within(self.raw..self.len, body);
            self.len = body + (self.len - self.raw);
            self.pos = 0;
            self.dec = body;
            self.raw = body;
        }
        if self.len == self.buf.len() {
            let grown = (self.buf.len() * 2).min(MAX_PAYLOAD + MAX_CHUNK_LINE + 16);
            if grown <= self.buf.len() {
                return Err(io::Error::other("event larger than the read limit"));
            }
            self.buf.resize(grown, 0);
        }
        Ok(())
    }

    /// Reads more bytes from the socket; `Ok(0)` means end of stream.
    pub async fn fill(&mut self) -> io::Result<usize> {
        self.make_room()?;
        let n = self.rd.read(&mut self.buf[self.len..]).await?;
        self.len += n;
        self.dechunk().map_err(io::Error::other)?;
        Ok(n)
    }

    /// Moves the data of every complete (or partial) chunk in `raw..len` down to `dec`.
    fn dechunk(&mut self) -> Result<()> {
        loop {
            match self.chunk {
                Chunk::Identity => {
                    if self.dec < self.raw {
                        self.buf.copy_within(self.raw..self.len, self.dec);
                        self.len -= self.raw - self.dec;
                    }
                    self.dec = self.len;
                    self.raw = self.len;
                    return Ok(());
                }
                Chunk::Done => return Ok(()),
                Chunk::Size | Chunk::Trailer => {
                    let Some(eol) = find(&self.buf[self.raw..self.len], b"\r\n") else {
                        if self.len - self.raw > MAX_CHUNK_LINE {
                            bail!("chunk-size line too long");
                        }
                        return Ok(());
                    };
                    let line = &self.buf[self.raw..self.raw + eol];
                    self.chunk = if self.chunk == Chunk::Trailer {
                        if line.is_empty() {
                            Chunk::Done
                        } else {
                            Chunk::Trailer
                        }
                    } else {
                        match chunk_size(line)? {
                            0 => Chunk::Trailer,
                            n => Chunk::Data(n),
                        }
                    };
                    self.raw += eol + 2;
                }
                Chunk::Data(n) => {
                    let take = n.min(self.len - self.raw);
                    if take == 0 {
                        return Ok(());
                    }
                    if self.dec < self.raw {
                        self.buf.copy_within(self.raw..self.raw + take, self.dec);
                    }
                    self.dec += take;
                    self.raw += take;
                    self.chunk = if take == n {
                        Chunk::Crlf
                    } else {
                        Chunk::Data(n - take)
                    };
                }
                Chunk::Crlf => {
                    if self.len - self.raw < 2 {
                        return Ok(());
                    }
                    if &self.buf[self.raw..self.raw + 2] != b"\r\n" {
                        bail!("chunk data not followed by CRLF");
                    }
                    self.raw += 2;
                    self.chunk = Chunk::Size;
                }
            }
        }
    }

    /// Next complete event (or comment block) already in the buffer, if any.
    pub fn next_msg(&mut self) -> Result<Option<SseMsg<'_>>> {
        self.dechunk()?;
        let start = self.pos;
        let body = &self.buf[start..self.dec];
        // Lines end with LF or CRLF (a lone CR, which the spec also allows, is not used by pgws
        // and would cost every event a second scan).
        let mut at = 0;
        let mut id = None;
        let mut event = None;
        let mut data: Option<(usize, usize)> = None;
        let mut multi = false;
        let end = loop {
            let Some(nl) = body[at..].iter().position(|&c| c == b'\n') else {
                return Ok(None);
            };
            let mut line = &body[at..at + nl];
            let line_start = at;
            at += nl + 1;
            if let Some(l) = line.strip_suffix(b"\r") {
                line = l;
            }
            if line.is_empty() {
                break at;
            }
            if line[0] == b':' {
                continue;
            }
            let (name, value_off) = match line.iter().position(|&c| c == b':') {
                Some(c) if line.get(c + 1) == Some(&b' ') => (&line[..c], c + 2),
                Some(c) => (&line[..c], c + 1),
                None => (line, line.len()),
            };
            let value = (
                start + line_start + value_off,
                start + line_start + line.len(),
            );
            match name {
                b"data" => {
                    if let Some(first) = data {
                        if !multi {
                            multi = true;
                            self.joined.clear();
                            self.joined.extend_from_slice(&self.buf[first.0..first.1]);
                        }
                        self.joined.push(b'\n');
                        self.joined.extend_from_slice(&self.buf[value.0..value.1]);
                    } else {
                        data = Some(value);
                    }
                }
                b"id" => id = Some(value),
                b"event" => event = Some(value),
                _ => {}
            }
        };
        self.pos = start + end;
        let Some(d) = data else {
            return Ok(Some(SseMsg::Comment));
        };
        let buf = &self.buf;
        Ok(Some(SseMsg::Event {
            id: id.map(|(a, b)| &buf[a..b]),
            event: event.map(|(a, b)| &buf[a..b]),
            data: if multi { &self.joined } else { &buf[d.0..d.1] },
        }))
    }
}

/// Parses a chunk-size line (hex digits, optional `;extensions`). A chunk's data streams
/// through the buffer, so its size is not limited (pgws sends a whole replay, megabytes, as one
/// chunk); only events must fit the buffer.
fn chunk_size(line: &[u8]) -> Result<usize> {
    let hex = line.split(|&c| c == b';').next().unwrap_or_default();
    let hex = std::str::from_utf8(hex)?.trim();
    if hex.is_empty() || hex.len() > 8 {
        bail!("bad chunk size {hex:?}");
    }
    Ok(usize::from_str_radix(hex, 16)?)
}

/// Reader and (unused but kept open) writer halves of an established stream.
pub type SseConn = (SseReader<OwnedReadHalf>, OwnedWriteHalf);

/// Opens stream number `idx` to `target` at `path` (resuming after `last_event_id` when
/// given) and reads the response head, all within `timeout`.
pub async fn connect(
    target: &Target,
    idx: usize,
    path: &str,
    last_event_id: Option<&[u8]>,
    timeout: Duration,
    read_buf: usize,
) -> Result<SseConn, ConnectError> {
    match tokio::time::timeout(
        timeout,
        connect_inner(target, idx, path, last_event_id, read_buf),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout),
    }
}

async fn connect_inner(
    target: &Target,
    idx: usize,
    path: &str,
    last_event_id: Option<&[u8]>,
    read_buf: usize,
) -> Result<SseConn, ConnectError> {
    let socket = TcpSocket::new_v4()?;
    socket.bind((target.source(idx), 0).into())?;
    let mut stream = socket.connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n",
        target.host_header
    )
    .into_bytes();
    if let Some(id) = last_event_id {
        if id.iter().any(|&c| c == b'\r' || c == b'\n') {
            return Err(ConnectError::Protocol(
                "Last-Event-ID with a line break".into(),
            ));
        }
        request.extend_from_slice(b"Last-Event-ID: ");
        request.extend_from_slice(id);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    stream.write_all(&request).await?;
    let mut buf = Vec::with_capacity(512);
    let head_end = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ConnectError::Protocol(
                "connection closed before the response head".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err(ConnectError::Protocol("response head too long".into()));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = parse_status(&head)?;
    if status != 200 {
        let mut body = buf[head_end..].to_vec();
        let mut chunk = [0u8; 1024];
        while body.len() < 1024 {
            match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => body.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        return Err(ConnectError::Rejected {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    let content_type = header(&head, "content-type").unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("text/event-stream")
    {
        return Err(ConnectError::Protocol(format!(
            "content-type {content_type:?}, not text/event-stream"
        )));
    }
    let chunked = header(&head, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let (rd, wr) = stream.into_split();
    Ok((SseReader::new(rd, &buf[head_end..], chunked, read_buf), wr))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_status(head: &str) -> Result<u16, ConnectError> {
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().and_then(|s| s.parse().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => Ok(code),
        _ => Err(ConnectError::Protocol(format!("bad status line {line:?}"))),
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Everything the reader yields for `wire`, fed `step` bytes per read.
    async fn events(wire: &[u8], chunked: bool, step: usize) -> Vec<String> {
        let (mut a, b) = tokio::io::duplex(64);
        let wire = wire.to_vec();
        let feeder = tokio::spawn(async move {
            for part in wire.chunks(step) {
                a.write_all(part).await.unwrap();
                a.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut r = SseReader::new(b, b"", chunked, 16);
        let mut out = Vec::new();
        loop {
            while let Some(m) = r.next_msg().unwrap() {
                out.push(match m {
                    SseMsg::Comment => "comment".to_string(),
                    SseMsg::Event { id, event, data } => format!(
                        "{}|{}|{}",
                        String::from_utf8_lossy(id.unwrap_or(b"-")),
                        String::from_utf8_lossy(event.unwrap_or(b"-")),
                        String::from_utf8_lossy(data)
                    ),
                });
            }
            if r.ended() || r.fill().await.unwrap() == 0 {
                break;
            }
        }
        feeder.await.unwrap();
        out
    }

    fn chunked(parts: &[&str]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in parts {
            v.extend_from_slice(format!("{:x};ext=1\r\n{p}\r\n", p.len()).as_bytes());
        }
        v.extend_from_slice(b"0\r\n\r\n");
        v
    }

    #[tokio::test]
    async fn events_across_chunks_and_reads() {
        let body = [
            ": ok\n\n",
            "id: e-1\ndata: {\"a\":1}\n\nid: e-2\nda",
            "ta: line one\ndata: line two\n\n",
            "retry: 3000\n\n: ping\n\nevent: close\ndata: {\"event\":\"Close\"}\n\n",
        ];
        let want = [
            "comment",
            "e-1|-|{\"a\":1}",
            "e-2|-|line one\nline two",
            "comment",
            "comment",
            "-|close|{\"event\":\"Close\"}",
        ];
        for step in [1, 3, 7, 64, 4096] {
            assert_eq!(
                events(&chunked(&body), true, step).await,
                want,
                "step {step}"
            );
            assert_eq!(
                events(body.concat().as_bytes(), false, step).await,
                want,
                "identity, step {step}"
            );
        }
        // CRLF line ends, a field without a space after the colon, an empty data line
        let crlf = "id:x\r\ndata:\r\n\r\n";
        assert_eq!(events(&chunked(&[crlf]), true, 5).await, ["x|-|"]);
    }

    #[tokio::test]
    async fn a_chunk_larger_than_the_buffer_limit_streams_through() {
        // pgws sends a resume's whole replay as one chunk: 20,000 events, 2.5 MB.
        let body: String = (0..20_000)
            .map(|i| format!("id: p-{i}\ndata: {}\n\n", "x".repeat(110)))
            .collect();
        assert!(body.len() > MAX_PAYLOAD * 2);
        let got = events(&chunked(&[&body]), true, 65_536).await;
        assert_eq!(got.len(), 20_000);
        assert_eq!(got[19_999], format!("p-19999|-|{}", "x".repeat(110)));
    }

    #[tokio::test]
    async fn bad_chunk_framing_is_an_error() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"zz\r\nhello\r\n").await.unwrap();
        let mut r = SseReader::new(b, b"", true, 16);
        assert!(r.fill().await.is_err());
    }

    #[tokio::test]
    async fn talks_to_a_raw_server_and_sends_last_event_id() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target::new("127.0.0.1", l.local_addr().unwrap().port(), 2).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 512];
            while find(&req, b"\r\n\r\n").is_none() {
                let n = s.read(&mut b).await.unwrap();
                req.extend_from_slice(&b[..n]);
            }
            s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                  transfer-encoding: chunked\r\n\r\n6\r\n: ok\n\n\r\n",
            )
            .await
            .unwrap();
            s.write_all(b"13\r\nid: 9\ndata: hello\n\n\r\n0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(req).unwrap()
        });
        let (mut rd, _wr) = connect(
            &target,
            0,
            "/chan/tok",
            Some(b"abc-5"),
            Duration::from_secs(5),
            64,
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        while !rd.ended() {
            while let Some(m) = rd.next_msg().unwrap() {
                if let SseMsg::Event { id, data, .. } = m {
                    got.push((id.unwrap().to_vec(), data.to_vec()));
                }
            }
            if rd.fill().await.unwrap() == 0 {
                break;
            }
        }
        while let Some(m) = rd.next_msg().unwrap() {
            if let SseMsg::Event { id, data, .. } = m {
                got.push((id.unwrap().to_vec(), data.to_vec()));
            }
        }
        assert_eq!(got, [(b"9".to_vec(), b"hello".to_vec())]);
        let req = server.await.unwrap();
        assert!(req.starts_with("GET /chan/tok HTTP/1.1\r\n"));
        assert!(req.contains("\r\nAccept: text/event-stream\r\n"));
        assert!(req.contains("\r\nLast-Event-ID: abc-5\r\n"));
    }

    #[tokio::test]
    async fn refusals_carry_status_and_body() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target::new("127.0.0.1", l.local_addr().unwrap().port(), 1).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 512];
            let _ = s.read(&mut b).await.unwrap();
            s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 13\r\n\r\nToken expired")
                .await
                .unwrap();
        });
        let e = connect(&target, 0, "/c/t", None, Duration::from_secs(5), 64)
            .await
            .unwrap_err();
        assert_eq!(e.category(), "http 400: Token expired");
    }
}

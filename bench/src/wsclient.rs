//! Minimal WebSocket client: TCP connect from a chosen loopback source
//! address, HTTP/1.1 upgrade handshake, then a buffered frame reader that
//! yields many frames per read syscall and a writer that batches masked
//! frames. Kept deliberately lean so the generator stays cheaper per frame
//! than the server it measures.

use crate::frame::{self, Head, MaskGen};
use crate::target::Target;
use anyhow::{Result, bail};
use std::fmt;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Largest frame payload accepted from the server.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Largest handshake response accepted.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum ConnectError {
    /// Connect plus handshake took longer than the timeout.
    Timeout,
    /// Socket-level error.
    Io(io::Error),
    /// The server answered with a non-101 status.
    Rejected {
        /// HTTP status code.
        status: u16,
        /// Start of the response body.
        body: String,
    },
    /// Malformed or unexpected handshake response.
    Protocol(String),
}

impl ConnectError {
    /// Short category used to group failures in reports.
    pub fn category(&self) -> String {
        match self {
            Self::Timeout => "timeout".into(),
            Self::Io(e) => format!("io: {:?}", e.kind()),
            Self::Rejected { status, body } => {
                let body: String = body.chars().take(60).collect();
                format!("http {status}: {body}")
            }
            Self::Protocol(m) => format!("protocol: {m}"),
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            other => f.write_str(&other.category()),
        }
    }
}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// One message read from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Msg<'a> {
    /// Text message (reassembled if fragmented).
    Text(&'a [u8]),
    /// Binary message (reassembled if fragmented).
    Binary(&'a [u8]),
    /// Ping with its payload (the caller should answer with a pong).
    Ping(&'a [u8]),
    /// Pong.
    Pong,
    /// Close with its status code, if any.
    Close(Option<u16>),
}

/// Buffered frame reader.
#[derive(Debug)]
pub struct WsReader<R> {
    rd: R,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    frag: Vec<u8>,
    frag_op: Option<u8>,
    /// Control-message buffer, when kernel receive timestamps are on.
    cmsg: Option<Vec<u8>>,
    /// Kernel receive time of the latest read (ns since the epoch), 0 if unknown.
    rx_ns: u64,
}

impl<R: AsyncRead + Unpin> WsReader<R> {
    /// Wraps `rd`; `leftover` are bytes already read past the handshake.
    pub fn new(rd: R, leftover: &[u8], initial: usize) -> Self {
        let mut buf = vec![0u8; initial.max(leftover.len()).max(64)];
        buf[..leftover.len()].copy_from_slice(leftover);
        Self {
            rd,
            buf,
            pos: 0,
            len: leftover.len(),
            frag: Vec::new(),
            frag_op: None,
            cmsg: None,
            rx_ns: 0,
        }
    }

    /// Kernel receive time of the latest read (ns since the Unix epoch), 0 when timestamps are
    /// off or the kernel gave none.
    pub fn rx_ns(&self) -> u64 {
        self.rx_ns
    }

    /// Makes room for the next read: moves unread bytes to the front, grows a full buffer.
    fn make_room(&mut self) -> io::Result<()> {
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
        }
        if self.len == self.buf.len() {
            let grown = (self.buf.len() * 2).min(MAX_PAYLOAD + 16);
            if grown <= self.buf.len() {
                return Err(io::Error::other("frame larger than the read limit"));
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
        Ok(n)
    }

    /// Next complete message already in the buffer, if any.
    pub fn next_msg(&mut self) -> Result<Option<Msg<'_>>> {
        loop {
            let Some(Head {
                fin,
                opcode,
                start,
                end,
            }) = frame::parse(&self.buf[self.pos..self.len], MAX_PAYLOAD)?
            else {
                return Ok(None);
            };
            let (a, b) = (self.pos + start, self.pos + end);
            self.pos = b;
            match opcode {
                frame::OP_TEXT | frame::OP_BINARY if fin && self.frag_op.is_none() => {
                    let p = &self.buf[a..b];
                    return Ok(Some(if opcode == frame::OP_TEXT {
                        Msg::Text(p)
                    } else {
                        Msg::Binary(p)
                    }));
                }
                frame::OP_TEXT | frame::OP_BINARY => {
                    if self.frag_op.is_some() {
                        bail!("new data frame inside a fragmented message");
                    }
                    self.frag_op = Some(opcode);
                    self.frag.clear();
                    self.frag.extend_from_slice(&self.buf[a..b]);
                }
                frame::OP_CONT => {
                    let Some(op) = self.frag_op else {
                        bail!("continuation frame without a start");
                    };
                    if self.frag.len() + (b - a) > MAX_PAYLOAD {
                        bail!("fragmented message exceeds the limit");
                    }
                    self.frag.extend_from_slice(&self.buf[a..b]);
                    if fin {
                        self.frag_op = None;
                        return Ok(Some(if op == frame::OP_TEXT {
                            Msg::Text(&self.frag)
                        } else {
                            Msg::Binary(&self.frag)
                        }));
                    }
                }
                frame::OP_PING => return Ok(Some(Msg::Ping(&self.buf[a..b]))),
                frame::OP_PONG => return Ok(Some(Msg::Pong)),
                frame::OP_CLOSE => {
                    let p = &self.buf[a..b];
                    let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                    return Ok(Some(Msg::Close(code)));
                }
                other => bail!("unknown opcode {other}"),
            }
        }
    }
}

impl WsReader<OwnedReadHalf> {
    /// Turns on kernel receive timestamps ([`crate::rxstamp`]) for this socket's reads.
    pub fn enable_rx_timestamps(&mut self) -> io::Result<()> {
        crate::rxstamp::enable(self.rd.as_ref())?;
        self.cmsg = Some(crate::rxstamp::cmsg_buffer());
        Ok(())
    }

    /// [`WsReader::fill`], recording the kernel receive time when timestamps are on.
    pub async fn fill_stamped(&mut self) -> io::Result<usize> {
        if self.cmsg.is_none() {
            return self.fill().await;
        }
        self.make_room()?;
        let cmsg = self.cmsg.as_mut().expect("checked above");
        let (n, stamp) =
            crate::rxstamp::read(self.rd.as_ref(), &mut self.buf[self.len..], cmsg).await?;
        self.len += n;
        self.rx_ns = stamp.unwrap_or(0);
        Ok(n)
    }
}

/// Frame writer that batches masked frames until `flush`.
#[derive(Debug)]
pub struct WsWriter<W> {
    wr: W,
    out: Vec<u8>,
    masks: MaskGen,
}

impl<W: AsyncWrite + Unpin> WsWriter<W> {
    /// Wraps `wr`; `seed` seeds the masking keys.
    pub fn new(wr: W, seed: u64) -> Self {
        Self {
            wr,
            out: Vec::new(),
            masks: MaskGen::new(seed),
        }
    }

    /// Queues a text frame.
    pub fn push_text(&mut self, payload: &[u8]) {
        let m = self.masks.next_mask();
        frame::encode_masked(frame::OP_TEXT, payload, m, &mut self.out);
    }

    /// Queues a pong answering a ping.
    pub fn push_pong(&mut self, payload: &[u8]) {
        let m = self.masks.next_mask();
        frame::encode_masked(frame::OP_PONG, payload, m, &mut self.out);
    }

    /// Queues a close frame with `code`.
    #[cfg(test)]
    pub fn push_close(&mut self, code: u16) {
        let m = self.masks.next_mask();
        frame::encode_masked(frame::OP_CLOSE, &code.to_be_bytes(), m, &mut self.out);
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.out.len()
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.wr.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }
}

/// Reader and writer halves of an established WebSocket connection.
pub type Conn = (WsReader<OwnedReadHalf>, WsWriter<OwnedWriteHalf>);

/// Connects socket number `idx` to `target` at `path` and performs the
/// handshake, all within `timeout`.
pub async fn connect(
    target: &Target,
    idx: usize,
    path: &str,
    timeout: Duration,
    read_buf: usize,
) -> Result<Conn, ConnectError> {
    connect_as(target, idx, path, timeout, read_buf, None).await
}

/// [`connect`] offering the websocket subprotocol `subprotocol` (e.g. `pgws.v2`); the server
/// must answer with it, or the attempt fails (a server without it would speak another protocol).
pub async fn connect_as(
    target: &Target,
    idx: usize,
    path: &str,
    timeout: Duration,
    read_buf: usize,
    subprotocol: Option<&str>,
) -> Result<Conn, ConnectError> {
    let attempt = connect_inner(target, idx, path, read_buf, subprotocol);
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout),
    }
}

async fn connect_inner(
    target: &Target,
    idx: usize,
    path: &str,
    read_buf: usize,
    subprotocol: Option<&str>,
) -> Result<Conn, ConnectError> {
    let socket = TcpSocket::new_v4()?;
    socket.bind((target.source(idx), 0).into())?;
    let mut stream = socket.connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let key = generate_key();
    let offer = subprotocol.map_or(String::new(), |p| {
        format!("Sec-WebSocket-Protocol: {p}\r\n")
    });
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n",
        target.host_header
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    let head_end = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ConnectError::Protocol(
                "connection closed during handshake".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err(ConnectError::Protocol("handshake response too long".into()));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = parse_status(&head)?;
    if status != 101 {
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
    let expected = derive_accept_key(key.as_bytes());
    if header(&head, "sec-websocket-accept") != Some(expected.as_str()) {
        return Err(ConnectError::Protocol("bad Sec-WebSocket-Accept".into()));
    }
    if let Some(p) = subprotocol
        && header(&head, "sec-websocket-protocol") != Some(p)
    {
        return Err(ConnectError::Protocol(format!(
            "subprotocol {p} not accepted"
        )));
    }
    let (rd, wr) = stream.into_split();
    let reader = WsReader::new(rd, &buf[head_end..], read_buf);
    let writer = WsWriter::new(
        wr,
        (idx as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xdead_beef,
    );
    Ok((reader, writer))
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
mod tests;

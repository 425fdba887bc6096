//! `Frame`: one message on its way to clients, encoded once and shared by reference count with
//! every client it goes to.
//!
//! The bytes are the complete websocket text frame as a server sends it (RFC 6455 §5.2: FIN +
//! text opcode, the length, no mask, the payload), so the websocket transport writes the same
//! bytes to every socket without copying or re-encoding them per socket; the text is the tail
//! of the same allocation, for transports that encode differently and for queue limits, which
//! count text bytes.
//!
//! The other encodings a message goes out in are the same for every client too (a Server-Sent
//! Events event carries the message's position, which is the stream's, not the client's; so does
//! the positioned websocket form `{"id","data"}`): each is made by the first client that needs it
//! and kept beside the websocket frame, in the same shared allocation, for every other client
//! ([`Frame::sse`], [`Frame::positioned`]). A frame nobody reads that way pays one empty slot.

use std::sync::{Arc, OnceLock};

use super::Seq;

/// A message, cheap to clone (a reference count and the position).
#[derive(Clone)]
pub struct Frame {
    inner: Arc<Inner>,
    /// The message's stream position (`Position::seq`); zero for texts outside the stream
    /// (events to one client, server notices).
    seq: Seq,
}

/// What every clone of a frame shares.
struct Inner {
    /// The websocket frame: header, then the UTF-8 text. Never changed after `Frame::text`.
    wire: Box<[u8]>,
    /// Length of the header in `wire`.
    header: u8,
    /// The event-stream encoding, made once by the first event stream that sends the frame.
    sse: OnceLock<Box<[u8]>>,
    /// The positioned websocket form, made once by the first opted-in websocket that sends it.
    positioned: OnceLock<Frame>,
}

impl Frame {
    /// Encodes `text` as one unmasked, final websocket text frame.
    pub fn text(text: &str) -> Self {
        let len = text.len();
        let header: usize = match len {
            0..=125 => 2,
            126..=65535 => 4,
            _ => 10,
        };
        let mut wire = Vec::with_capacity(header + len);
        wire.push(0x81); // FIN, opcode 1 (text)
        match header {
            2 => wire.push(len as u8),
            4 => {
                wire.push(126);
                wire.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                wire.push(127);
                wire.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        wire.extend_from_slice(text.as_bytes());
        Self {
            inner: Arc::new(Inner {
                wire: wire.into_boxed_slice(),
                header: header as u8,
                sse: OnceLock::new(),
                positioned: OnceLock::new(),
            }),
            seq: Seq::ZERO,
        }
    }

    /// The message's position in the stream (zero: none).
    pub fn seq(&self) -> Seq {
        self.seq
    }

    /// Numbers the message (the hub does, as it routes it, before any client has it). The shared
    /// encodings carry the position, so a frame whose allocation is already shared is detached
    /// first: clones numbered differently never share an encoding.
    pub(crate) fn set_seq(&mut self, seq: Seq) {
        if seq == self.seq {
            return;
        }
        self.seq = seq;
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => {
                inner.sse = OnceLock::new();
                inner.positioned = OnceLock::new();
            }
            None => *self = Self::text(self.as_str()).with_seq(seq),
        }
    }

    fn with_seq(mut self, seq: Seq) -> Self {
        self.seq = seq;
        self
    }

    /// The text (transports that encode it differently read it here, once per message).
    pub fn as_str(&self) -> &str {
        // Built from a `&str` in `Frame::text` and never changed, so the check cannot fail. It
        // scans the text, but only the first client to encode a frame differently reads it
        // (the encodings are shared, see `sse`/`positioned`): once per message, not per client.
        std::str::from_utf8(&self.inner.wire[usize::from(self.inner.header)..]).unwrap_or_default()
    }

    /// Length of the text in bytes (what queue limits count).
    pub fn len(&self) -> usize {
        self.inner.wire.len() - usize::from(self.inner.header)
    }

    /// The encoded websocket frame, shared.
    pub fn wire(&self) -> &[u8] {
        &self.inner.wire
    }

    /// The frame's event-stream encoding, made by `encode` the first time any client asks and
    /// shared by every later one. `encode` must not depend on the client (only on the frame and
    /// on what is the same for every client: the stream's epoch).
    pub fn sse(&self, encode: impl FnOnce(&Frame) -> Vec<u8>) -> &[u8] {
        self.inner
            .sse
            .get_or_init(|| encode(self).into_boxed_slice())
    }

    /// The frame's positioned websocket form, made by `make` the first time an opted-in client
    /// asks and shared by every later one; the same rule as [`Frame::sse`] for `make`.
    pub fn positioned(&self, make: impl FnOnce(&Frame) -> Frame) -> Frame {
        self.inner.positioned.get_or_init(|| make(self)).clone()
    }
}

impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq
            && (Arc::ptr_eq(&self.inner, &other.inner) || self.inner.wire == other.inner.wire)
    }
}

impl Eq for Frame {}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("text", &self.as_str())
            .field("seq", &self.seq)
            .finish()
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Self {
        Self::text(&text)
    }
}

impl From<&str> for Frame {
    fn from(text: &str) -> Self {
        Self::text(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame as WsFrame, FrameHeader};

    /// tungstenite's own parser reads our frames back as the same text, at every length form.
    #[test]
    fn frames_parse_as_websocket_text_frames() {
        for len in [0, 1, 125, 126, 127, 65535, 65536, 70000] {
            let text: String = "é".repeat(len / 2) + &"x".repeat(len % 2);
            let frame = Frame::text(&text);
            assert_eq!(frame.len(), text.len());
            assert_eq!(frame.as_str(), text);
            let mut cursor = std::io::Cursor::new(frame.wire().to_vec());
            let (header, payload_len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final && !header.rsv1 && header.mask.is_none());
            assert_eq!(payload_len as usize, text.len());
            let start = cursor.position() as usize;
            let ws =
                WsFrame::from_payload(header, bytes::Bytes::from(frame.wire()[start..].to_vec()));
            assert_eq!(ws.into_text().unwrap().as_str(), text);
        }
    }

    /// The shared encodings are made once for all clones, and never shared across positions.
    #[test]
    fn encodings_are_made_once_and_follow_the_position() {
        let mut frame = Frame::text("hello");
        frame.set_seq(Seq::counter(7));
        let clone = frame.clone();
        let mut calls = 0;
        let mut encode = |f: &Frame| {
            calls += 1;
            format!("{}:{}", f.seq().minor, f.as_str()).into_bytes()
        };
        assert_eq!(frame.sse(&mut encode), b"7:hello");
        assert_eq!(clone.sse(&mut encode), b"7:hello");
        assert_eq!(calls, 1);
        assert!(std::ptr::eq(
            frame.sse(|_| unreachable!()),
            clone.sse(|_| unreachable!())
        ));

        // Renumbering a shared frame detaches it: the clone keeps its encoding, the renumbered
        // frame gets its own.
        let mut renumbered = clone.clone();
        renumbered.set_seq(Seq::counter(8));
        assert_eq!(renumbered.as_str(), "hello");
        assert_eq!(
            renumbered.sse(|f| f.seq().minor.to_string().into_bytes()),
            b"8"
        );
        assert_eq!(clone.sse(|_| unreachable!()), b"7:hello");

        let positioned = frame.positioned(|f| Frame::from(format!("[{}]", f.as_str())));
        let again = clone.positioned(|_| unreachable!());
        assert_eq!(again.as_str(), "[hello]");
        assert_eq!(positioned, again);
    }
}

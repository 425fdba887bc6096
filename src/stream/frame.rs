//! `Frame`: one message on its way to clients, encoded once and shared by reference count with
//! every client it goes to.
//!
//! The bytes are the complete websocket text frame as a server sends it (RFC 6455 §5.2: FIN +
//! text opcode, the length, no mask, the payload), so the websocket transport writes the same
//! bytes to every socket without copying or re-encoding them per socket; the text is the tail
//! of the same allocation, for transports that encode differently (Server-Sent Events) and for
//! queue limits, which count text bytes.

use bytes::{BufMut, Bytes, BytesMut};

use super::Seq;

/// A message, cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The websocket frame: header, then the UTF-8 text.
    wire: Bytes,
    /// Length of the header in `wire`.
    header: u8,
    /// The message's stream position (`Position::seq`); zero for texts outside the stream
    /// (events to one client, server notices).
    seq: Seq,
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
        let mut wire = BytesMut::with_capacity(header + len);
        wire.put_u8(0x81); // FIN, opcode 1 (text)
        match header {
            2 => wire.put_u8(len as u8),
            4 => {
                wire.put_u8(126);
                wire.put_u16(len as u16);
            }
            _ => {
                wire.put_u8(127);
                wire.put_u64(len as u64);
            }
        }
        wire.put_slice(text.as_bytes());
        Self {
            wire: wire.freeze(),
            header: header as u8,
            seq: Seq::ZERO,
        }
    }

    /// The message's position in the stream (zero: none).
    pub fn seq(&self) -> Seq {
        self.seq
    }

    /// Numbers the message (the hub does, as it routes it).
    pub(crate) fn set_seq(&mut self, seq: Seq) {
        self.seq = seq;
    }

    /// The text (transports that re-encode it, such as Server-Sent Events, read it here).
    pub fn as_str(&self) -> &str {
        // Built from a `&str` in `Frame::text`; the check cannot fail and costs a scan, which
        // only the rare readers of the text pay.
        std::str::from_utf8(&self.wire[usize::from(self.header)..]).unwrap_or_default()
    }

    /// Length of the text in bytes (what queue limits count).
    pub fn len(&self) -> usize {
        self.wire.len() - usize::from(self.header)
    }

    /// The encoded websocket frame, shared.
    pub fn wire(&self) -> &Bytes {
        &self.wire
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
            let ws = WsFrame::from_payload(header, frame.wire().slice(start..));
            assert_eq!(ws.into_text().unwrap().as_str(), text);
        }
    }
}

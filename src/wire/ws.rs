//! Websocket framing of the frames the server sends: one unmasked, final text frame (RFC 6455
//! §5.2: FIN + text opcode, the length, no mask, the payload), so that a transport writes the
//! same bytes to every socket without copying or re-encoding them per socket. Control frames
//! (ping, pong, close) are tungstenite's business, not this module's.
//!
//! What it owns: the frame header's bytes. What it must never do: mask (only clients mask,
//! RFC 6455 §5.1), split a message into fragments (every frame is final, so a frame is a
//! unit a transport can write in any batch), or compress (no `permessage-deflate`: a
//! per-socket compression context would defeat the shared bytes, and `rsv1` stays clear).

/// `text` as one complete websocket text frame, header and payload in one allocation.
pub fn text_frame(text: &str) -> Vec<u8> {
    let len = text.len();
    // 10: the largest header (1 byte of flags and opcode, 1 of length, 8 of extended length).
    let mut wire = Vec::with_capacity(10 + len);
    wire.push(0x81); // FIN, opcode 1 (text)
    match len {
        // The three length forms of §5.2: 7 bits, then 16, then 64; the shortest one that fits
        // must be used.
        0..=125 => wire.push(len as u8),
        126..=65535 => {
            wire.push(126);
            wire.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            wire.push(127);
            wire.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    wire.extend_from_slice(text.as_bytes());
    wire
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
            let wire = text_frame(&text);
            let mut cursor = std::io::Cursor::new(wire.clone());
            let (header, payload_len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final && !header.rsv1 && header.mask.is_none());
            assert_eq!(payload_len as usize, text.len());
            let start = cursor.position() as usize;
            let ws = WsFrame::from_payload(header, bytes::Bytes::from(wire[start..].to_vec()));
            assert_eq!(ws.into_text().unwrap().as_str(), text);
        }
    }
}

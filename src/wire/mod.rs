//! The wire formats: every byte a client receives is worded and framed here, and nowhere else.
//!
//! - [`compat`]: the original protocol's texts (the envelope of client messages, `Error`, `Gap`,
//!   `Close` and meta events, the positioned `{"id","data"}` form), byte for byte.
//! - [`v2`]: protocol v2's JSON both ways (bounded request parsing, every frame the server sends).
//! - [`sse`]: Server-Sent Events (`id:`, `data:` lines, named events).
//! - [`ws`]: websocket text framing of what the server sends.
//!
//! What this module owns: the words and the framing, and the [`Encoding`]s a transport picks
//! from ([`COMPAT`], [`COMPAT_POSITIONED`], [`V2`], [`SSE`]). What it must never do: decide
//! anything (who gets a message, whether a request is allowed) or import a module above it:
//! it stands on [`crate::stream`] (frames and positions) and nothing else of pgws, so that every
//! other layer may use it.
//!
//! How a frame is encoded: the hub queues the same [`Frame`] for every socket; a transport asks
//! for `frame.encoded(its_encoding, wire::encode)`, and the first socket of that encoding makes
//! the bytes for all the others. A stream message's encoding depends on the protocol (a v2
//! socket wraps it in a `message` frame with its channel and position); a direct frame (an
//! answer or notice already in its protocol's words) is only framed for its carrier.

pub mod compat;
pub mod sse;
pub mod v2;
pub mod ws;

use std::time::Duration;

use crate::stream::{Encoding, Frame};

/// A compat websocket: the text as it is (spec §5.2).
pub const COMPAT: Encoding = Encoding::slot(0);
/// A compat websocket that asked for positions (`?last-event-id`): stream messages as
/// `{"id":<position>,"data":<text>}`.
pub const COMPAT_POSITIONED: Encoding = Encoding::slot(1);
/// A protocol v2 websocket: stream messages as `message` frames.
pub const V2: Encoding = Encoding::slot(2);
/// A Server-Sent Events stream: events with `id:` and `data:` lines.
pub const SSE: Encoding = Encoding::slot(3);

/// The bytes a transport of `encoding` writes for `frame` (see the module's header). The
/// function [`Frame::encoded`] calls, once per frame and encoding.
pub fn encode(encoding: Encoding, frame: &Frame) -> Vec<u8> {
    let text = frame.as_str();
    if encoding == SSE {
        return sse::event(frame);
    }
    let routed = frame.channel().zip(frame.position());
    match routed {
        Some((channel, position)) if encoding == V2 => {
            ws::text_frame(&v2::message(channel, position, text))
        }
        Some((_, position)) if encoding == COMPAT_POSITIONED => {
            ws::text_frame(&compat::positioned_message(position, text))
        }
        _ => ws::text_frame(text),
    }
}

/// What a socket of `encoding` is told once when the source was down for `down` (its
/// connection to PostgreSQL was lost and is back): compat sockets a `Gap` event when
/// `PGWS_GAP_EVENTS` is on (`gap_events`), others nothing (they are told per channel).
pub fn outage_per_socket(encoding: Encoding, down: Duration, gap_events: bool) -> Option<Frame> {
    (gap_events && (encoding == COMPAT || encoding == COMPAT_POSITIONED || encoding == SSE))
        .then(|| compat::gap_frame(down))
}

/// What a socket of `encoding` is told, per channel it follows, after the same outage: v2
/// sockets a `gap` frame always (a v2 client never misses a message silently).
pub fn outage_per_channel(encoding: Encoding, channel: &str, down: Duration) -> Option<Frame> {
    (encoding == V2).then(|| v2::outage_gap(channel, down.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::stream::{Hub, Limits, Outbox};

    fn limits() -> Limits {
        Limits {
            messages: 16,
            bytes: 1 << 16,
        }
    }

    /// One message, three encodings: the compat text as it is, the positioned form, and the v2
    /// `message` frame; the v2 encoding is one allocation shared by every v2 socket.
    #[test]
    fn a_message_in_each_encoding() {
        let hub = Hub::with_stats(Default::default(), Default::default());
        let outboxes: Vec<Arc<Outbox>> = [COMPAT, COMPAT_POSITIONED, V2, V2, SSE]
            .into_iter()
            .map(|e| Arc::new(Outbox::new(limits(), e)))
            .collect();
        for o in &outboxes {
            hub.subscribe_with(
                &["c"],
                o,
                |_| None,
                None,
                |_| unreachable!(),
                |_, _| None,
                || {},
            );
        }
        let mut run = [Frame::text("{\"x\":1}")];
        hub.publish_run("c", &mut run);
        let frames: Vec<Frame> = outboxes
            .iter()
            .map(|o| {
                let mut v = Vec::new();
                o.drain_into(&mut v);
                v.pop().unwrap()
            })
            .collect();
        let position = frames[0].position().unwrap().to_string();
        let text =
            |e: Encoding, f: &Frame| String::from_utf8_lossy(f.encoded(e, encode)).into_owned();
        assert!(text(COMPAT, &frames[0]).ends_with("{\"x\":1}"));
        assert!(text(COMPAT_POSITIONED, &frames[1]).ends_with(&format!(
            "{{\"id\":\"{position}\",\"data\":\"{{\\\"x\\\":1}}\"}}"
        )));
        assert!(
            text(V2, &frames[2]).contains("{\"type\":\"message\",\"channel\":\"c\",\"position\":")
        );
        assert!(std::ptr::eq(
            frames[2].encoded(V2, encode),
            frames[3].encoded(V2, encode)
        ));
        assert_eq!(
            text(SSE, &frames[4]),
            format!("id: {position}\ndata: {{\"x\":1}}\n\n")
        );
    }
}

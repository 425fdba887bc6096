//! The carrier: what a session needs from the connection under it, and nothing about what the
//! frames mean. The websocket ([`crate::transport::ws`]) implements it; a Server-Sent Events
//! stream, a long-poll or a WebTransport stream would implement the same five calls (a carrier
//! that reads nothing returns a future that never completes from [`Carrier::next`], and one whose
//! peer answers no keep-alive says so in [`Carrier::answers_keepalive`]).

use std::future::Future;

use crate::stream::{Encoding, Frame};

use super::End;

/// What a carrier read, once its own business (pings, pongs, close frames) is done.
pub enum Inbound {
    /// A text message for the protocol.
    Text(tokio_tungstenite::tungstenite::Utf8Bytes),
    /// A binary message for the protocol.
    Binary(bytes::Bytes),
    /// Nothing for the protocol, but the peer is alive (a ping answered, a pong).
    Alive,
    /// The session ends.
    End(End),
}

/// A connection that carries one client's session.
pub trait Carrier: Send {
    /// What [`Carrier::next`] yields, handed back to [`Carrier::inbound`].
    type Raw: Send;

    /// The name in log lines ("websocket").
    const NAME: &'static str;

    /// Whether a write blocked on a slow peer is abandoned (the connection dropped) as soon as
    /// the client's queue overflows meanwhile. `false`: the write finishes (within the write
    /// time-out) and the carrier says goodbye with 4000 (an event stream, whose `close` event
    /// tells the browser why).
    const DROP_ON_OVERFLOW: bool = true;

    /// Waits for the next thing the peer sends. Kept small and cancel-safe: the loop re-makes
    /// it on every turn; the handling goes into [`Carrier::inbound`].
    fn next(&mut self) -> impl Future<Output = Self::Raw> + Send;

    /// Handles what `next` gave: the carrier's own frames here, the rest for the protocol.
    fn inbound(&mut self, raw: Self::Raw, conn: u64) -> impl Future<Output = Inbound> + Send;

    /// Writes frames in `encoding` (each made once per message by `crate::wire` and shared).
    fn write(
        &mut self,
        frames: &[Frame],
        encoding: Encoding,
    ) -> impl Future<Output = std::io::Result<()>> + Send;

    /// Sends a keep-alive (a ping, a comment); `Err` when the peer is gone.
    fn keepalive(&mut self) -> impl Future<Output = Result<(), ()>> + Send;

    /// Whether the peer answers keep-alives (then silence for two intervals ends the session).
    fn answers_keepalive(&self) -> bool {
        true
    }

    /// When the carrier ends the session by itself, and how (an event stream's
    /// `PGWS_SSE_MAX_AGE`); `None`: never.
    fn lifetime(&self) -> Option<(tokio::time::Instant, End)> {
        None
    }

    /// Says goodbye with a close code and reason, waiting a bounded time for the peer.
    fn close(&mut self, code: u16, reason: &'static str) -> impl Future<Output = ()> + Send;
}

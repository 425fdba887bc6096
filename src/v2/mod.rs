//! Protocol v2 (`pgws.v2`, docs/PROTOCOL.md): a websocket that negotiates the subprotocol
//! `pgws.v2` speaks JSON requests and events instead of the original's bare texts. It
//! subscribes and unsubscribes at run time (each checked against its token's grant), resumes
//! each channel from a position, publishes with an acknowledgement, and replaces its token in
//! band before `exp`. Sockets that do not negotiate it are untouched (the compat path in
//! [`crate::transport::ws`] and [`crate::client`] is the same code as before).
//!
//! - [`wire`]: every v2 JSON shape, both ways (bounded parsing).
//! - [`access`]: what a token grants a v2 socket, and the one function every channel check goes
//!   through (the hook for database authorization).
//! - [`session`]: the socket's loop (requests, answers, refresh, the token's expiry).
//!
//! Where the rest of pgws knows about v2: admission reads the subprotocol (the grant is the
//! token's alone, no channel subscribed at open), the outbox is marked v2, and the hub encodes a
//! message once for all v2 sockets of its channel ([`crate::stream::Hub::subscribe_v2`]).

pub mod access;
pub mod session;

use hyper::Request;

pub use crate::wire::v2::SUBPROTOCOL;

/// Whether a websocket request offers protocol v2 (`Sec-WebSocket-Protocol: pgws.v2`, possibly
/// next to `bearer.<token>`). It wins over `pgws` when both are offered.
pub fn negotiated<B>(req: &Request<B>) -> bool {
    crate::transport::ws::is_upgrade(req)
        && req
            .headers()
            .get_all(hyper::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == SUBPROTOCOL)
}

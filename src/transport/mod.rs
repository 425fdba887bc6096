//! Transports: how a [`crate::client::Client`] reaches its peer. Each one accepts an admitted
//! request ([`crate::admission`]), opens a client, and moves the client's outbox onto its
//! wire in its own encoding, and the peer's messages into [`crate::client::Client::publish`].
//!
//! Today: [`ws`] (RFC 6455), [`sse`] (Server-Sent Events, read-only) and [`publish`] (one
//! message per HTTP `POST`, the write side for SSE users). A transport owns framing, keep-alives and close codes; it never
//! decides routing, limits or what a client may do.

pub mod publish;
pub mod sse;
pub mod ws;

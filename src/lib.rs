//! pgws connects WebSocket clients to PostgreSQL LISTEN/NOTIFY, with channel access granted by
//! JWTs. It is a drop-in replacement for postgres-websockets: same URLs, same `PGWS_*` settings,
//! same messages.
//!
//! How the pieces fit (data flows left to right, client messages back the other way):
//!
//! ```text
//!  PostgreSQL ──LISTEN──▶ source ──▶ stream (hub ─▶ outbox) ──▶ client ──▶ transport ──ws──▶ browser
//!      ▲                                                          │
//!      └──────────── pg::publisher ◀── pg_notify($1,$2) ──────────┘   (http::admission before)
//! ```
//!
//! The public API is small on purpose: [`Cli`] and [`Config`] (settings), [`Server`] (bind, run),
//! [`SourceStatus`] (readiness), [`auth`] (token rules, for tools and tests) and [`embedded`] (the
//! throwaway cluster). Everything else is internal and may change.

pub(crate) mod address;
pub mod auth;
pub(crate) mod authz;
pub(crate) mod channel;
pub(crate) mod client;
pub mod config;
pub mod embedded;
pub(crate) mod http;
pub(crate) mod net;
pub(crate) mod ops;
pub(crate) mod pg;
pub(crate) mod presence;
pub(crate) mod protocol;
pub(crate) mod routing;
pub(crate) mod server;
pub(crate) mod source;
pub(crate) mod state;
pub(crate) mod stream;
pub(crate) mod transport;
pub(crate) mod v2;

pub use config::{Cli, Config, ConfigError, DEV_META_CHANNEL, DEV_SECRET};
pub use server::{Error, Server};
pub use source::SourceStatus;

/// Drops a WAL node's replication slot in the configured database (`pgws --drop-wal-slot`), for
/// a node gone for good: its slot would otherwise make PostgreSQL keep WAL for it.
pub async fn drop_wal_slot(config: &Config, slot: &str) -> Result<(), String> {
    source::wal::drop_slot(&config.db, slot).await
}

/// Internals that the fuzz targets exercise directly (`--features internals`); not a stable API.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    pub use crate::channel::quote_ident;
    pub use crate::http::redact;
    pub use crate::protocol::{ClaimsText, envelope, error_event, postgrest_envelope};
    pub use crate::routing::route;
    pub use crate::{stream::position, v2::wire as v2_wire};
}

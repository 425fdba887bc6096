//! pgws connects WebSocket clients to PostgreSQL LISTEN/NOTIFY, with channel access granted by
//! JWTs. It is a drop-in replacement for postgres-websockets: same URLs, same `PGWS_*` settings,
//! same messages.
//!
//! How the pieces fit: three planes (docs/ARCHITECTURE.md draws them).
//!
//! ```text
//!  data     PostgreSQL ─LISTEN/WAL─▶ source ─▶ Sink ─▶ stream (hub ─▶ outbox) ─▶ session ─▶ carrier ─▶ client
//!  control  Sink ─▶ control::Plane ─▶ presence / authz handlers (never delivered)
//!  publish  session / HTTP publish / presence ─▶ pg::publisher::publish ─▶ Result<Ack, PublishError>
//! ```
//!
//! A request becomes a client through `http` (dispatch) and `admission` (the same rules for every
//! carrier); every byte a client receives is made by `wire`.
//!
//! The public API is small on purpose: [`Cli`] and [`Config`] (settings), [`Server`] (bind, run),
//! [`SourceStatus`] (readiness), [`auth`] (token rules, for tools and tests) and [`embedded`] (the
//! throwaway cluster). Everything else is internal and may change.

pub(crate) mod address;
pub(crate) mod admission;
pub mod auth;
pub(crate) mod authz;
pub(crate) mod channel;
pub(crate) mod client;
pub mod config;
pub(crate) mod control;
pub mod embedded;
pub(crate) mod http;
pub(crate) mod net;
pub(crate) mod ops;
pub(crate) mod pg;
pub(crate) mod presence;
pub(crate) mod publish;
pub(crate) mod respond;
pub(crate) mod routing;
pub(crate) mod rows;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod source;
pub(crate) mod state;
pub(crate) mod stream;
pub(crate) mod transport;
pub(crate) mod wire;

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
    pub use crate::routing::route;
    pub use crate::rows::filter::{Filter, Limits, Verdict};
    pub use crate::rows::pgoutput::{
        Message as PgoutputMessage, TupleValue, decode as decode_pgoutput,
    };
    pub use crate::rows::value::ColumnType;
    pub use crate::wire::compat::{ClaimsText, envelope, error_event, postgrest_envelope};
    pub use crate::{stream::position, wire::v2 as v2_wire};
}

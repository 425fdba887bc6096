//! pgws connects WebSocket clients to PostgreSQL LISTEN/NOTIFY, with channel access granted by
//! JWTs. It is a drop-in replacement for postgres-websockets: same URLs, same `PGWS_*` settings,
//! same messages.
//!
//! How the pieces fit:
//!
//! ```text
//!  browser ──ws──▶ http (token check) ──▶ session ──▶ pg::publisher ──pg_notify($1,$2)──▶ PostgreSQL
//!                                           ▲                                               │
//!                                        outbox ◀── hub ◀── pg::listener ◀──LISTEN──────────┘
//! ```
//!
//! - [`config`]: settings from `PGWS_*` variables and flags.
//! - [`auth`]: keys, token verification, and what a token grants.
//! - [`http`]: request dispatch and the websocket handshake; [`static_files`] for the rest.
//! - [`session`]: one task per socket.
//! - [`hub`] and [`outbox`]: routing notifications to sockets, with bounded queues.
//! - [`pg`]: the LISTEN actor and the NOTIFY pool.
//! - [`server`]: binding, serving and draining; [`embedded`]: the throwaway cluster.

pub mod admin;
pub mod assets;
pub mod auth;
pub mod config;
pub mod embedded;
pub mod envelope;
pub mod http;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod outbox;
pub mod pg;
pub mod proxy;
pub mod server;
pub mod session;
pub mod state;
pub mod static_files;

pub use config::{Cli, Config};
pub use server::{Error, Server};

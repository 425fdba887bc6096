//! Black-box integration tests: real PostgreSQL, real sockets, real websocket clients.

mod common;

mod faults;
mod ops;

mod authz;
mod binary;
mod direct;
mod failover;
mod handshake;
mod keys;
mod late_database;
mod listener;
mod messages;
mod meta;
mod pg_tls;
mod presence;
mod publish;
mod resume;
mod rows;
mod rows_rls;
mod security;
mod snapshot;
mod sse;
mod sse_raw;
mod static_http;
mod tls;
mod v2;
mod wal;
mod wal_rows;

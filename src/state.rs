//! `AppState`: everything a request or a client needs, built once by the server and passed in
//! (no globals, so tests can run several servers side by side). Settings are read from the
//! resolved [`Config`]; only what is built at run time (the hub, the pools, the source handle,
//! counters) sits beside it.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, RwLock};

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::KeySet;
use crate::config::Config;
use crate::ops::limits::{AddressLimiter, ForwardedHeaders, SubjectCounter};
use crate::ops::metrics::Metrics;
use crate::pg::publisher::Publisher;
use crate::routing::Router;
use crate::source::SourceHandle;
use crate::stream::{Hub, Limits};

/// Shared state of one server.
pub struct AppState {
    /// The settings the server was started with.
    pub config: Config,
    /// Token verification keys; replaced on SIGHUP.
    pub keys: Arc<RwLock<KeySet>>,
    /// Where messages go.
    pub router: Router,
    /// New connections per client address.
    pub address_limiter: AddressLimiter,
    /// Forwarding headers from peers that are not trusted proxies (counted, named in the log).
    pub forwarded: ForwardedHeaders,
    /// Open clients per token subject.
    pub subjects: Arc<SubjectCounter>,
    /// Channel registry.
    pub hub: Arc<Hub>,
    /// NOTIFY pool.
    pub publisher: Publisher,
    /// The running source: its state, and (direct mode) channel interest.
    pub source: SourceHandle,
    /// Per-client queue limits.
    pub outbox_limits: Limits,
    /// Websocket buffer sizes and limits.
    pub ws_config: WebSocketConfig,
    /// Cancelled when the server stops; clients close with 1001.
    pub shutdown: CancellationToken,
    /// Tracks client tasks so shutdown can wait for their close handshakes.
    pub sessions: TaskTracker,
    /// Client ids.
    pub next_id: AtomicU64,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Clients connected now.
    pub active: AtomicUsize,
    /// Authorization by the database (`PGWS_AUTHZ_*`); `None` when off.
    pub authz: Option<Arc<crate::authz::Authorizer>>,
    /// Presence of protocol v2 subscriptions (`PGWS_PRESENCE`); `None` when off.
    pub presence: Option<Arc<crate::presence::Presence>>,
    /// Tables' descriptions for row subscriptions (WAL source only).
    pub catalog: Option<Arc<crate::rows::catalog::Catalog>>,
    /// Per-row authorization of row subscriptions (WAL source with authorization by the
    /// database).
    pub rls: Option<Arc<crate::rows::rls::Rls>>,
    /// Turns of snapshots (`PGWS_SNAPSHOT_CONCURRENCY`): each holds a connection while it reads.
    pub snapshots: tokio::sync::Semaphore,
    /// The WAL source's metrics (the readiness answer quotes the slot's lag).
    pub wal_metrics: crate::source::wal::WalMetrics,
}

impl AppState {
    /// The current keys (cheap: the set is reference-counted).
    pub fn keys(&self) -> KeySet {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Ready to serve: the source is receiving and the NOTIFY pool can connect.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if !self.source.is_up() {
            return Err(match self.config.source {
                crate::pg::SourceKind::Notify => "the LISTEN connection is down",
                crate::pg::SourceKind::Wal => "the replication stream is down",
            });
        }
        let failed = self
            .publisher
            .stats
            .last_failure_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if failed != 0 && crate::auth::now_millis().saturating_sub(failed) < 2000 {
            return Err("the NOTIFY pool could not connect in the last 2 s");
        }
        Ok(())
    }
}

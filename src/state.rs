//! `AppState`: everything a request or a session needs, built once by the server and passed in
//! (no globals, so tests can run several servers side by side).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Duration;

use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use std::net::IpAddr;
use std::sync::RwLock;

use crate::auth::{KeySet, Rules};
use crate::config::{ChannelMode, MessageFormat, RateLimits, Site};
use crate::hub::Hub;
use crate::limits::{AddressLimiter, SubjectCounter};
use crate::metrics::Metrics;
use crate::outbox::Limits;
use crate::pg::listener::ListenCmd;
use crate::pg::listener::ListenerStatus;
use crate::pg::publisher::Publisher;
use crate::proxy::Upstream;
use tokio::sync::mpsc;

/// Shared state of one server.
pub struct AppState {
    /// Token verification keys; replaced on SIGHUP.
    pub keys: Arc<RwLock<KeySet>>,
    /// Token rules beyond the signature.
    pub rules: Rules,
    /// Allowed browser origins (`None`: any).
    pub allowed_origins: Option<Vec<String>>,
    /// Abuse limits.
    pub rates: RateLimits,
    /// New connections per client address.
    pub address_limiter: AddressLimiter,
    /// Open sockets per token subject.
    pub subjects: Arc<SubjectCounter>,
    /// Proxies whose X-Forwarded-For is trusted.
    pub trusted_proxies: Vec<IpAddr>,
    /// Which PostgreSQL channels reach sockets.
    pub channel_mode: ChannelMode,
    /// Shape of client messages.
    pub message_format: MessageFormat,
    /// LISTEN/UNLISTEN requests to the listener (direct mode).
    pub listen_cmds: Option<mpsc::Sender<ListenCmd>>,
    /// Where plain HTTP requests go, when set.
    pub upstream: Option<Upstream>,
    /// Channel registry.
    pub hub: Arc<Hub>,
    /// NOTIFY pool.
    pub publisher: Publisher,
    /// Channel for connection events.
    pub meta_channel: Option<String>,
    /// Server ping period.
    pub ping_interval: Option<Duration>,
    /// Per-socket queue limits.
    pub outbox_limits: Limits,
    /// Websocket buffer sizes and limits.
    pub ws_config: WebSocketConfig,
    /// What plain HTTP requests get.
    pub site: Site,
    /// Cancelled when the server stops; sessions close with 1001.
    pub shutdown: CancellationToken,
    /// Tracks sessions so shutdown can wait for their close handshakes.
    pub sessions: TaskTracker,
    /// Socket ids.
    pub next_id: AtomicU64,
    /// State of the LISTEN connection.
    pub listener: watch::Receiver<ListenerStatus>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Websockets open now.
    pub active: AtomicUsize,
    /// Most websockets open at once.
    pub max_connections: usize,
    /// Most channels per socket.
    pub max_channels: usize,
    /// Time limit for request heads and TLS handshakes.
    pub handshake_timeout: Duration,
}

impl AppState {
    /// The current keys (cheap: the set is reference-counted).
    pub fn keys(&self) -> KeySet {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Ready to serve: the LISTEN connection is up and the NOTIFY pool can connect.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if !matches!(*self.listener.borrow(), ListenerStatus::Listening { .. }) {
            return Err("the LISTEN connection is down");
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

/// Websocket settings: small buffers (tungstenite's defaults allocate 128 KiB per socket up
/// front; the read buffer is allocated eagerly, so it dominates an idle socket's memory) and an
/// explicit message size limit. A larger client message grows the buffer as needed.
pub fn ws_config(max_message_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(256)
        .write_buffer_size(4 * 1024)
        .max_write_buffer_size(16 * 1024 * 1024)
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size))
}

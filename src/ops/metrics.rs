//! Prometheus metrics, served by the admin listener (`PGWS_ADMIN_ADDRESS`).
//!
//! Counters and gauges are cheap atomics shared with the parts that update them (the hub, the
//! NOTIFY pool, the listener, sessions); the registry only reads them when `/metrics` is scraped.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// A `mode` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    /// `r`, `w`, `rw` or empty.
    pub mode: &'static str,
}

/// A `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: &'static str,
}

/// Every metric pgws exports.
pub struct Metrics {
    registry: Registry,
    /// Open websockets by mode.
    pub connections: Family<ModeLabel, Gauge>,
    /// Websockets accepted since start.
    pub accepted: Counter,
    /// Handshakes refused, by reason.
    pub refused: Family<ReasonLabel, Counter>,
    /// Websockets closed by the server, by reason (slow_consumer, ping_timeout, expired, …).
    pub server_closes: Family<ReasonLabel, Counter>,
    /// Messages received from clients.
    pub messages_in: Counter,
    /// Notifications received on the LISTEN connection.
    pub notifications: Counter,
    /// Notifications for channels without subscribers here.
    pub unrouted: Counter,
    /// Frames queued for sockets.
    pub deliveries: Counter,
    /// Frames dropped, by reason.
    pub drops: Family<ReasonLabel, Counter>,
    /// NOTIFYs PostgreSQL accepted.
    pub notify_sent: Counter,
    /// NOTIFYs that failed (and were reported to their socket), by code.
    pub notify_errors: Family<ReasonLabel, Counter>,
    /// 1 while the LISTEN connection is up.
    pub listener_up: Gauge,
    /// Times the LISTEN connection was re-established after a loss.
    pub listener_reconnects: Counter,
    /// Gaps announced to sockets.
    pub gaps: Counter,
    /// `pg_notification_queue_usage()` at the last heartbeat (0 to 1).
    pub queue_usage: Gauge<f64, AtomicU64>,
    /// Seconds from a notification's arrival to its socket write (per write batch).
    pub delivery_latency: Histogram,
    /// Channels with at least one subscriber (set at scrape).
    pub channels: Gauge,
    /// PostgreSQL channels LISTENed for sockets (direct mode).
    pub listened: Gauge,
    /// Messages replayed to resuming clients.
    pub replayed: Counter,
    /// Resumes answered with a `Gap` first (position too old, unknown, other epoch, outage).
    pub resume_gaps: Counter,
    /// Row subscriptions' filters evaluated on table changes (candidates of the index).
    pub row_evaluations: Counter,
    /// Table changes queued for row subscriptions (after their filters).
    pub row_deliveries: Counter,
    /// Messages held by the replay windows (set at scrape).
    pub window_messages: Gauge,
    /// Text bytes held by the replay windows (set at scrape).
    pub window_bytes: Gauge,
    /// Handshakes whose peer sent forwarding headers without being a trusted proxy.
    pub forwarded_ignored: Counter,
}

/// A feature's own metrics, registered under its prefix when the server builds the registry
/// ([`Metrics::new`]). Features implement it, so that this module imports none of them.
pub trait Register {
    /// Registers every metric of the feature.
    fn register(&self, registry: &mut Registry);
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl Metrics {
    /// Creates and registers every metric, and those of `features` (authorization, presence).
    pub fn new(features: &[&dyn Register]) -> Self {
        let mut registry = Registry::with_prefix("pgws");
        let m = Self {
            connections: Family::default(),
            accepted: Counter::default(),
            refused: Family::default(),
            server_closes: Family::default(),
            messages_in: Counter::default(),
            notifications: Counter::default(),
            unrouted: Counter::default(),
            deliveries: Counter::default(),
            drops: Family::default(),
            notify_sent: Counter::default(),
            notify_errors: Family::default(),
            listener_up: Gauge::default(),
            listener_reconnects: Counter::default(),
            gaps: Counter::default(),
            queue_usage: Gauge::default(),
            delivery_latency: Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ]),
            channels: Gauge::default(),
            listened: Gauge::default(),
            replayed: Counter::default(),
            resume_gaps: Counter::default(),
            row_evaluations: Counter::default(),
            row_deliveries: Counter::default(),
            window_messages: Gauge::default(),
            window_bytes: Gauge::default(),
            forwarded_ignored: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Open websockets by mode",
            m.connections.clone(),
        );
        registry.register(
            "connections_accepted",
            "Websockets accepted",
            m.accepted.clone(),
        );
        registry.register(
            "handshakes_refused",
            "Handshakes refused by reason",
            m.refused.clone(),
        );
        registry.register(
            "server_closes",
            "Websockets closed by the server by reason",
            m.server_closes.clone(),
        );
        registry.register(
            "messages_in",
            "Messages received from clients",
            m.messages_in.clone(),
        );
        registry.register(
            "notifications_received",
            "Notifications received on the LISTEN connection",
            m.notifications.clone(),
        );
        registry.register(
            "notifications_unrouted",
            "Notifications for channels without subscribers on this instance",
            m.unrouted.clone(),
        );
        registry.register(
            "deliveries",
            "Frames queued for sockets",
            m.deliveries.clone(),
        );
        registry.register("drops", "Frames dropped by reason", m.drops.clone());
        registry.register(
            "notify_sent",
            "NOTIFYs accepted by PostgreSQL",
            m.notify_sent.clone(),
        );
        registry.register(
            "notify_errors",
            "NOTIFYs that failed by code",
            m.notify_errors.clone(),
        );
        registry.register(
            "listener_up",
            "1 while the LISTEN connection is up",
            m.listener_up.clone(),
        );
        registry.register(
            "listener_reconnects",
            "LISTEN connection re-established after a loss",
            m.listener_reconnects.clone(),
        );
        registry.register("gaps", "Gaps announced to sockets", m.gaps.clone());
        registry.register(
            "notification_queue_usage",
            "pg_notification_queue_usage() at the last heartbeat",
            m.queue_usage.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Seconds from a notification's arrival to its socket write",
            m.delivery_latency.clone(),
        );
        registry.register("channels", "Channels with subscribers", m.channels.clone());
        registry.register(
            "listened_channels",
            "PostgreSQL channels LISTENed for sockets (direct mode)",
            m.listened.clone(),
        );
        registry.register(
            "replayed",
            "Messages replayed to resuming clients",
            m.replayed.clone(),
        );
        registry.register(
            "resume_gaps",
            "Resumes that began with a Gap event (position too old, unknown, other epoch, outage)",
            m.resume_gaps.clone(),
        );
        registry.register(
            "rows_filter_evaluations",
            "Row subscriptions' filters evaluated on table changes (the equality index's candidates); minus rows_deliveries: changes filtered out",
            m.row_evaluations.clone(),
        );
        registry.register(
            "rows_deliveries",
            "Table changes queued for row subscriptions, after their filters",
            m.row_deliveries.clone(),
        );
        registry.register(
            "window_messages",
            "Messages held by the replay windows",
            m.window_messages.clone(),
        );
        registry.register(
            "window_bytes",
            "Text bytes held by the replay windows",
            m.window_bytes.clone(),
        );
        registry.register(
            "forwarded_headers_ignored",
            "Handshakes with X-Forwarded-For/Forwarded/X-Real-IP from a peer not in PGWS_TRUSTED_PROXIES",
            m.forwarded_ignored.clone(),
        );
        for feature in features {
            feature.register(&mut registry);
        }
        Self { registry, ..m }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

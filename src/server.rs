//! The server: binds, starts the PostgreSQL side, accepts connections, and drains at shutdown.
//!
//! [`Server::bind`] and [`Server::run`] are separate so that tests (and `main`) learn the bound
//! address before serving, and can start several servers side by side on port 0.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Duration;

use bytes::BytesMut;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use std::sync::RwLock;

use crate::auth::KeySet;
use crate::config::Config;
use crate::http::head::{self, Head, Rewind};
use crate::net::{self, PLAIN_ON_TLS_RESPONSE, TlsError};
use crate::ops::limits::{AddressLimiter, ForwardedHeaders, SubjectCounter};
use crate::ops::metrics::{Metrics, ReasonLabel};
use crate::pg::publisher::{Publisher, PublisherStats};
use crate::routing::Router;
use crate::source::notify::{self, ListenerError, ListenerMetrics, ListenerSettings};
use crate::source::wal::{self, WalError, WalSettings};
use crate::source::{Sink, SourceHandle, SourceKind, SourceStatus};
use crate::state::AppState;
use crate::stream::{Hub, HubStats, Limits, ReplaySettings};
use crate::transport::sse;
use crate::transport::ws::ws_config;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The port could not be bound. (The OS error is part of the text, not a `source`, so that
    /// printing the chain does not repeat it.)
    #[error("cannot bind {address} ({settings}): {error}")]
    Bind {
        /// The address as in a URL (`0.0.0.0:3000`), or `PGWS_ADMIN_ADDRESS` as written.
        address: String,
        /// The settings it comes from.
        settings: &'static str,
        /// The OS error.
        error: std::io::Error,
    },
    /// TLS files unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The LISTEN connection could not be established at start-up.
    #[error("Broadcaster connection is dead: {0}")]
    Listener(ListenerError),
    /// The WAL source could not start.
    #[error("cannot read messages from the WAL: {0}")]
    Wal(WalError),
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    admin: Option<TcpListener>,
    tls: Option<TlsAcceptor>,
    config: Config,
    status: (watch::Sender<SourceStatus>, watch::Receiver<SourceStatus>),
    keys: Arc<RwLock<KeySet>>,
}

impl Server {
    /// Binds the configured address and loads TLS files.
    pub async fn bind(config: Config) -> Result<Self, Error> {
        let tls = config.tls.as_ref().map(net::tls_acceptor).transpose()?;
        let listener = net::bind(&config.host, config.port)
            .await
            .map_err(|error| Error::Bind {
                address: format!("{}:{}", config.host, config.port),
                settings: "PGWS_HOST, PGWS_PORT",
                error,
            })?;
        let admin = match &config.admin_address {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr.as_str())
                        .await
                        .map_err(|error| Error::Bind {
                            address: addr.clone(),
                            settings: "PGWS_ADMIN_ADDRESS",
                            error,
                        })?,
                )
            }
            None => None,
        };
        Ok(Self {
            listener,
            admin,
            tls,
            status: watch::channel(SourceStatus::Connecting),
            keys: Arc::new(RwLock::new(config.keys.clone())),
            config,
        })
    }

    /// The keys the server verifies tokens with; replace them (SIGHUP) without dropping
    /// connections.
    pub fn keys(&self) -> Arc<RwLock<KeySet>> {
        self.keys.clone()
    }

    /// The admin listener's address, when `PGWS_ADMIN_ADDRESS` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// The state of the source (the LISTEN connection), updated for the server's whole life
    /// (readiness).
    pub fn listener_status(&self) -> watch::Receiver<SourceStatus> {
        self.status.1.clone()
    }

    /// The bound address (with the real port when the configured one was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled (returns `Ok`), or, only when `PGWS_RETRIES` was set
    /// (without `PGWS_CHECK_LISTENER_INTERVAL`), until the LISTEN connection cannot be established
    /// at start-up within that many attempts (returns the error; the process should exit with
    /// status 1 so that a supervisor restarts it, as the original did). By default it waits for
    /// the database for ever, refusing handshakes with `503` meanwhile.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let config = self.config;
        let stop = shutdown.child_token();
        let authz_metrics = crate::authz::AuthzMetrics::new();
        let presence_metrics = crate::presence::PresenceMetrics::default();
        let rows_authz_metrics = crate::rows::authorize::AuthorizeMetrics::default();
        // The WAL source's metrics are registered like a feature's (ops imports no source).
        let wal_metrics = crate::source::wal::WalMetrics::default();
        let metrics = Arc::new(Metrics::new(&[
            &wal_metrics,
            &authz_metrics,
            &presence_metrics,
            &rows_authz_metrics,
        ]));
        let hub = Arc::new(Hub::with_stats(
            HubStats {
                delivered: metrics.deliveries.clone(),
                unrouted: metrics.unrouted.clone(),
                overflowed: metrics
                    .drops
                    .get_or_create(&ReasonLabel {
                        reason: "slow_consumer",
                    })
                    .clone(),
                replayed: metrics.replayed.clone(),
                resume_gaps: metrics.resume_gaps.clone(),
                row_evaluations: metrics.row_evaluations.clone(),
                row_deliveries: metrics.row_deliveries.clone(),
            },
            ReplaySettings {
                limits: config.replay,
                retain_idle: !config.channel_mode.uses_direct(),
                keep_all: config.source == SourceKind::Wal,
            },
        ));
        tokio::spawn(sweep_windows(hub.clone(), stop.clone()));
        let (status_tx, status_rx) = self.status;
        let publisher = Publisher::start(
            &config.db,
            &config.listen_channel,
            config.pool_size,
            PublisherStats {
                sent: metrics.notify_sent.clone(),
                errors: metrics.notify_errors.clone(),
                last_failure_ms: Arc::default(),
            },
            config.source,
        );
        let router = Router::new(
            config.channel_mode,
            config.message_format,
            &config.listen_channel,
        );
        let (interest_tx, interest_rx) = if config.channel_mode.uses_direct() {
            let (tx, rx) = tokio::sync::mpsc::channel(4096);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let rls_timeout = config.authz.as_ref().map(|s| s.check_timeout);
        let rls_discarded = authz_metrics.discarded.clone();
        let authz = config.authz.clone().map(|settings| {
            crate::authz::Authorizer::start(&config.db, settings, authz_metrics, stop.clone())
        });
        // Row subscriptions (WAL source): the tables' catalog, and per-row authorization when
        // authorization by the database is on.
        let catalog = (config.source == SourceKind::Wal).then(|| {
            Arc::new(crate::rows::catalog::Catalog::new(
                &config.db,
                &config.wal_publication,
            ))
        });
        let rls = match (rls_timeout, &catalog) {
            (Some(timeout), Some(_)) => Some(Arc::new(crate::rows::rls::Rls::new(
                &config.db,
                crate::rows::authorize::CohortClaims::from_setting(
                    config.rows_cohort_claims.as_deref(),
                ),
                timeout,
                rows_authz_metrics,
                rls_discarded,
            ))),
            _ => None,
        };
        let presence = config.presence.clone().map(|settings| {
            crate::presence::Presence::new(
                settings,
                config.node_id.as_deref(),
                config.source == SourceKind::Wal,
                presence_metrics,
            )
        });
        let presence_task = presence.clone().map(|p| {
            tracing::info!(node = p.node(), "presence on");
            tokio::spawn(p.run(publisher.clone(), status_rx.clone(), stop.clone()))
        });
        let mut control = crate::control::Plane::new(&config.listen_channel);
        if let Some(p) = &presence {
            let p = p.clone();
            control.on_presence(move |payload| p.receive(payload));
        }
        if let Some(a) = &authz {
            let a = a.clone();
            control.on_revoke(move |revocation| a.revoked(revocation));
        }
        let sink = Arc::new(Sink {
            control,
            hub: hub.clone(),
            router: router.clone(),
            gap_events: config.gap_events,
            meta: config
                .meta_channel
                .clone()
                .map(|meta| (publisher.clone(), meta)),
            gaps: metrics.gaps.clone(),
            received: metrics.notifications.clone(),
        });
        let listener_task: tokio::task::JoinHandle<Result<(), Error>> = match config.source {
            SourceKind::Notify => {
                let run = notify::run(
                    ListenerSettings {
                        db: config.db.clone(),
                        channel: config.listen_channel.clone(),
                        check_interval: config.check_listener_interval,
                        startup_retries: config.startup_retries,
                        metrics: ListenerMetrics {
                            up: metrics.listener_up.clone(),
                            reconnects: metrics.listener_reconnects.clone(),
                            queue_usage: metrics.queue_usage.clone(),
                            listened: metrics.listened.clone(),
                        },
                        interest: interest_rx,
                    },
                    sink,
                    status_tx,
                    stop.clone(),
                );
                tokio::spawn(async move { run.await.map_err(Error::Listener) })
            }
            SourceKind::Wal => {
                let port = self.listener.local_addr().map_or(config.port, |a| a.port());
                let node = config
                    .node_id
                    .clone()
                    .unwrap_or_else(|| format!("{}_{port}", wal::host_name()));
                // A pg_notify on the listen channel is not in the WAL: say so once.
                tokio::spawn(crate::source::unread_notify::watch(
                    config.db.clone(),
                    config.listen_channel.clone(),
                    stop.clone(),
                ));
                let run = wal::run(
                    WalSettings {
                        db: config.db.clone(),
                        prefix: config.listen_channel.clone(),
                        slot: config
                            .wal_slot
                            .clone()
                            .unwrap_or_else(|| wal::slot_name(&node)),
                        publication: config.wal_publication.clone(),
                        read_db: config.wal_read_db.clone(),
                        check_interval: config.check_listener_interval,
                        startup_retries: config.startup_retries,
                        metrics: wal_metrics.clone(),
                        rows: rls.clone().zip(catalog.clone()),
                    },
                    sink,
                    status_tx,
                    stop.clone(),
                );
                tokio::spawn(async move { run.await.map_err(Error::Wal) })
            }
        };
        let shutdown_timeout = config.shutdown_timeout;
        let state = Arc::new(AppState {
            keys: self.keys.clone(),
            router,
            address_limiter: AddressLimiter::new(
                config.rates.connections,
                config.rate_exempt.clone(),
            ),
            forwarded: ForwardedHeaders::new(metrics.forwarded_ignored.clone()),
            subjects: Arc::new(SubjectCounter::new(config.rates.per_subject)),
            hub,
            publisher,
            source: SourceHandle::new(status_rx, interest_tx),
            outbox_limits: Limits {
                messages: config.max_queue_messages,
                bytes: config.max_queue_bytes,
            },
            ws_config: ws_config(config.max_message_size),
            shutdown: stop.clone(),
            sessions: TaskTracker::new(),
            next_id: AtomicU64::new(1),
            metrics,
            active: AtomicUsize::new(0),
            authz,
            presence,
            catalog,
            rls,
            snapshots: tokio::sync::Semaphore::new(config.snapshot_concurrency),
            wal_metrics,
            config,
        });
        if let Some(admin) = self.admin {
            tokio::spawn(crate::ops::admin::serve(admin, state.clone(), stop.clone()));
        }

        let connections = TaskTracker::new();
        let accept = accept_loop(
            self.listener,
            self.tls,
            state.clone(),
            connections.clone(),
            stop.clone(),
        );
        tokio::pin!(listener_task);
        let mut listener_ended = false;
        let result = tokio::select! {
            _ = accept => Ok(()),
            r = &mut listener_task => {
                listener_ended = true;
                match r {
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "the source stopped; shutting down");
                        Err(e)
                    }
                    _ => Ok(()),
                }
            }
        };
        tracing::info!("Shutting down server...");
        stop.cancel();
        // The LISTEN connection closes on the cancellation; wait for it, so that no connection
        // of ours is left open when `run` returns (an embedded cluster is stopped next).
        if !listener_ended {
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut listener_task).await;
        }
        state.sessions.close();
        connections.close();
        let drain = shutdown_timeout;
        let (clients, open) = (state.sessions.len(), connections.len());
        if clients + open > 0 {
            // Say what the wait is for: a drain of several seconds otherwise looks like a hang.
            // Websockets are sessions once upgraded; event streams and HTTP requests are
            // connections: the two counts do not overlap.
            let total = clients + open;
            tracing::info!(
                websockets = clients,
                other = open,
                "waiting up to {drain:?} (PGWS_SHUTDOWN_TIMEOUT) for {total} connections to close (websockets get 1001, event streams end, requests finish)"
            );
        }
        if tokio::time::timeout(drain, async {
            state.sessions.wait().await;
            connections.wait().await;
        })
        .await
        .is_err()
        {
            tracing::warn!(
                clients = state.sessions.len(),
                connections = connections.len(),
                "some connections did not close within {drain:?} (PGWS_SHUTDOWN_TIMEOUT); closing them"
            );
        }
        // Presence says goodbye (its members leave the other nodes' presence at once).
        if let Some(task) = presence_task {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        // The sessions' last events (ConnectionClose) are queued; send them before returning.
        tracing::debug!("sending the queued NOTIFYs");
        if tokio::time::timeout(drain.max(Duration::from_secs(1)), state.publisher.flush())
            .await
            .is_err()
        {
            tracing::warn!("pending NOTIFYs were not all sent in time");
        }
        if let Some(authz) = &state.authz {
            authz.close().await;
        }
        if tokio::time::timeout(Duration::from_secs(5), state.publisher.close())
            .await
            .is_err()
        {
            tracing::warn!("the NOTIFY connections did not close in time");
        }
        // The last line: the drain is over and no connection of ours is open any more.
        match &result {
            Ok(()) => tracing::info!("Shutdown complete"),
            Err(_) => tracing::info!("Stopped"),
        }
        result
    }
}

/// Ages out the replay windows once a second.
async fn sweep_windows(hub: Arc<Hub>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => hub.sweep(),
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<AppState>,
    connections: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Typically EMFILE: too many open files. Back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            match tls {
                None => serve_connection(stream, peer, state, stop).await,
                Some(acceptor) => Box::pin(serve_tls(stream, acceptor, peer, state, stop)).await,
            }
        });
    }
}

async fn serve_tls(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    peer: SocketAddr,
    state: Arc<AppState>,
    stop: CancellationToken,
) {
    // A TLS ClientHello starts with 0x16; anything else is plain HTTP on the TLS port.
    let mut first = [0u8; 1];
    let limit = state.config.handshake_timeout;
    match tokio::time::timeout(limit, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == 0x16 => {}
        Ok(Ok(1)) => {
            let mut stream = stream;
            let _ = stream.write_all(PLAIN_ON_TLS_RESPONSE).await;
            let _ = stream.shutdown().await;
            return;
        }
        _ => return,
    }
    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => serve_connection(tls, peer, state, stop).await,
        Ok(Err(e)) => tracing::info!(peer = %peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::info!(peer = %peer, "TLS handshake timed out"),
    }
}

/// Serves one connection (plain TCP, or TLS once its handshake is done). Its request heads are
/// read here first ([`head`]): an event-stream request is served on the raw connection
/// ([`sse::serve_raw`], no HTTP connection state kept while the stream lasts), and the connection
/// comes back here for its next request when that response is complete; anything else goes to
/// hyper, with the bytes already read, which then serves the connection to its end exactly as
/// if it had read them itself.
///
/// Timing is hyper's: each head must arrive within the handshake timeout (hyper's header read
/// timeout; on a kept-alive connection it runs from the end of the previous response), and a
/// connection that misses it is closed without an answer; at shutdown a connection waiting for a
/// head is closed.
async fn serve_connection<I>(
    mut io: I,
    peer: SocketAddr,
    state: Arc<AppState>,
    stop: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limit = state.config.handshake_timeout;
    let mut buf = BytesMut::new();
    loop {
        let read = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(limit, head::read(&mut io, &mut buf)) => r,
        };
        match read {
            Err(_) => {
                tracing::debug!(peer = %peer, "request head timed out");
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer, error = %e, "reading a request head failed");
                return;
            }
            Ok(Ok(Head::Closed)) => return,
            Ok(Ok(Head::Get(req, len))) if sse::is_raw_request(&req) => {
                let _ = buf.split_to(len);
                if buf.is_empty() {
                    // Nothing pipelined behind it: give the buffer back for the stream's life.
                    buf = BytesMut::new();
                }
                let after = Box::pin(sse::serve_raw(&mut io, *req, peer, &state)).await;
                if after == sse::After::Close {
                    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
                    return;
                }
            }
            Ok(Ok(_)) => {
                let io = Rewind::new(std::mem::take(&mut buf).freeze(), io);
                Box::pin(serve_http(TokioIo::new(io), peer, state, stop)).await;
                return;
            }
        }
    }
}

async fn serve_http<I>(
    io: TokioIo<I>,
    peer: SocketAddr,
    state: Arc<AppState>,
    stop: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let timeout = state.config.handshake_timeout;
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(crate::http::handle(req, state, peer).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(peer = %peer, error = %e, "http connection ended with an error");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

//! The admin listener (`PGWS_ADMIN_ADDRESS`): Prometheus `/metrics`, liveness `/health`, and
//! readiness `/ready` (the LISTEN connection is up and the NOTIFY pool can connect). It is a
//! separate socket so that it can stay on loopback or a private network.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::respond::{Body, full, text};
use crate::state::AppState;

/// Answers one admin request.
pub fn handle<B>(req: &Request<B>, state: &AppState) -> Response<Body> {
    match req.uri().path() {
        "/metrics" => {
            state.metrics.channels.set(state.hub.channel_count() as i64);
            let (messages, bytes) = state.hub.held();
            state.metrics.window_messages.set(messages as i64);
            state.metrics.window_bytes.set(bytes as i64);
            let mut r = Response::new(full(state.metrics.encode()));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/health" => text(StatusCode::OK, "ok"),
        "/ready" => match state.readiness() {
            Ok(()) if state.config.source == crate::pg::SourceKind::Wal => {
                let wal = &state.wal_metrics;
                text(
                    StatusCode::OK,
                    format!(
                        "ready: WAL slot {} bytes behind the current position",
                        wal.slot_lag_bytes.get()
                    ),
                )
            }
            Ok(()) => text(StatusCode::OK, "ready"),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "Not found: try /metrics, /health or /ready",
        ),
    }
}

/// Serves the admin endpoints until `stop` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let r = handle(&req, &state);
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

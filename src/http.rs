//! Request dispatch: any request with `Upgrade: websocket` is a websocket request, whatever its
//! path (spec §2.1); the token is checked before the handshake is accepted and a refusal is an
//! HTTP 400 whose body is the reason. Other requests go to [`crate::static_files`].
//!
//! pgws addition: a plain request carrying the header `pgws-check: 1` runs the same checks on
//! its path and answers `200` with the grant as JSON or `400` with the reason, because browsers
//! cannot read the body of a refused websocket handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::header::{
    CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    SERVER, UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::Instrument;

use crate::auth::{self, AuthError, Grant};
use crate::metrics::ReasonLabel;
use crate::session::Session;
use crate::state::AppState;
use crate::static_files::{self, Body, text};

/// The `Server` header value.
const SERVER_NAME: &str = concat!("pgws/", env!("CARGO_PKG_VERSION"));

/// Handles one HTTP request.
pub async fn handle(
    mut req: Request<hyper::body::Incoming>,
    state: Arc<AppState>,
    peer: SocketAddr,
) -> Response<Body> {
    let mut response = if is_websocket(&req) {
        websocket(&mut req, state, peer)
    } else if req
        .headers()
        .get("pgws-check")
        .is_some_and(|v| v.as_bytes() == b"1")
    {
        check(&req, &state)
    } else {
        let r = static_files::serve(&state.site, &req).await;
        tracing::info!(target: "pgws::access", peer = %peer, method = %req.method(),
            path = %redact(req.uri().path()), status = r.status().as_u16(), "http");
        r
    };
    response
        .headers_mut()
        .insert(SERVER, HeaderValue::from_static(SERVER_NAME));
    response
}

/// The path with every segment that looks like a JWT (three base64url parts) replaced, so that
/// tokens never reach the logs.
pub fn redact(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            let parts: Vec<&str> = seg.split('.').collect();
            let jwt_like = parts.len() == 3
                && parts[..2].iter().all(|p| {
                    !p.is_empty()
                        && p.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if jwt_like { "<token>" } else { seg }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn is_websocket<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Verifies the token in the request path (spec §2.2, §3).
fn authorize<B>(req: &Request<B>, state: &AppState) -> Result<Grant, AuthError> {
    let (channel, token) = auth::parse_path(req.uri().path())?;
    auth::resolve(&state.keys, channel.as_deref(), token, auth::now_seconds())
}

fn check<B>(req: &Request<B>, state: &AppState) -> Response<Body> {
    match authorize(req, state) {
        Ok(grant) => {
            let body = serde_json::json!({
                "mode": grant.mode.as_str(),
                "channels": grant.channels,
                "exp": grant.exp,
            });
            let mut r = Response::new(Body::new(body.to_string().into()));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

fn websocket(
    req: &mut Request<hyper::body::Incoming>,
    state: Arc<AppState>,
    peer: SocketAddr,
) -> Response<Body> {
    let refuse = |state: &AppState, reason: &'static str, status: StatusCode, body: String| {
        tracing::info!(peer = %peer, reason = %body, "Rejecting Request");
        state
            .metrics
            .refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
        text(status, body)
    };
    let grant = match authorize(req, &state) {
        Ok(g) => g,
        Err(e) => {
            let reason = match e {
                AuthError::Expired => "expired",
                AuthError::MissingMode => "missing_mode",
                AuthError::NoAllowedChannels => "no_allowed_channels",
                AuthError::Invalid(_) => "invalid_token",
            };
            return refuse(&state, reason, StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    if let Some(bad) = grant.channels.iter().find(|c| c.is_empty() || c.len() > 63) {
        let body = if bad.is_empty() {
            "Error: empty channel name".to_string()
        } else {
            format!(
                "Error: channel name longer than 63 bytes: {} bytes",
                bad.len()
            )
        };
        return refuse(&state, "bad_channel", StatusCode::BAD_REQUEST, body);
    }
    if grant.channels.len() > state.max_channels {
        let body = format!(
            "Error: too many channels: {} (at most {})",
            grant.channels.len(),
            state.max_channels
        );
        return refuse(&state, "too_many_channels", StatusCode::BAD_REQUEST, body);
    }
    if state.active.load(Ordering::Relaxed) >= state.max_connections {
        let body = format!(
            "Too many connections: this server accepts at most {}",
            state.max_connections
        );
        return refuse(
            &state,
            "too_many_connections",
            StatusCode::SERVICE_UNAVAILABLE,
            body,
        );
    }
    if req
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        tracing::info!(peer = %peer, "Rejecting Request: unsupported Sec-WebSocket-Version");
        let mut r = text(
            StatusCode::BAD_REQUEST,
            "Error: unsupported websocket version (Sec-WebSocket-Version must be 13)",
        );
        r.headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return r;
    }
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY) else {
        tracing::info!(peer = %peer, "Rejecting Request: no Sec-WebSocket-Key");
        return text(
            StatusCode::BAD_REQUEST,
            "Error: missing Sec-WebSocket-Key header",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(req);
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let sub = grant
        .claims
        .get("sub")
        .and_then(|s| s.as_str())
        .map(str::to_string);
    let span = tracing::info_span!("ws", id, peer = %peer, sub = sub.as_deref().unwrap_or(""));
    let config = state.ws_config;
    let tracker = state.sessions.clone();
    let session = Session::open(state, id, grant);
    tracker.spawn(
        async move {
            match upgrade.await {
                Ok(upgraded) => {
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(config),
                    )
                    .await;
                    session.run(ws).await;
                }
                Err(e) => tracing::info!(error = %e, "websocket upgrade failed"),
            }
        }
        .instrument(span),
    );
    let mut r = Response::new(Body::default());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn tokens_are_redacted_from_paths() {
        assert_eq!(redact("/chat/eyJhbGc.eyJtb2Rl.sig-_x"), "/chat/<token>");
        assert_eq!(redact("/eyJhbGc.eyJtb2Rl."), "/<token>");
        assert_eq!(redact("/index.html"), "/index.html");
        assert_eq!(redact("/a.b.c/x"), "/<token>/x");
        assert_eq!(redact("/"), "/");
    }
}

//! Request dispatch: any request with `Upgrade: websocket` is a websocket request, whatever its
//! path (spec §2.1); the token is checked before the handshake is accepted and a refusal is an
//! HTTP 400 whose body is the reason. Other requests go to [`crate::static_files`].
//!
//! pgws addition: a plain request carrying the header `pgws-check: 1` runs the same checks on
//! its path and answers `200` with the grant as JSON or `400` with the reason, because browsers
//! cannot read the body of a refused websocket handshake.

use std::net::{IpAddr, SocketAddr};
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

use crate::auth::{self, AuthError, Grant};
use crate::metrics::ReasonLabel;
use crate::session::Session;
use crate::state::AppState;
use crate::static_files::{self, Body, full, text};

/// The `Server` header value.
const SERVER_NAME: &str = concat!("pgws/", env!("CARGO_PKG_VERSION"));

/// Handles one HTTP request.
pub async fn handle(
    mut req: Request<hyper::body::Incoming>,
    state: Arc<AppState>,
    peer: SocketAddr,
) -> Response<Body> {
    let check = req
        .headers()
        .get("pgws-check")
        .is_some_and(|v| v.as_bytes() == b"1");
    let mut response = if is_websocket(&req) {
        websocket(&mut req, state, peer).await
    } else if check {
        if state
            .address_limiter
            .allow(client_ip(&req, peer, &state.trusted_proxies))
        {
            check_grant(&req, &state)
        } else {
            text(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests from this address",
            )
        }
    } else if let Some(upstream) = state.upstream.clone() {
        let (method, path) = (req.method().clone(), redact(req.uri().path()));
        let r = upstream.forward(req, peer).await;
        tracing::info!(target: "pgws::access", peer = %peer, method = %method,
            path = %path, status = r.status().as_u16(), "proxied");
        r
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

/// Why a channel name is refused, if it is: PostgreSQL's limits (empty, over 63 bytes, NUL) and
/// control characters, which have no use in a name and would let a client forge log lines.
pub fn channel_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("Error: empty channel name".into())
    } else if name.len() > 63 {
        Some(format!(
            "Error: channel name longer than 63 bytes: {} bytes",
            name.len()
        ))
    } else if name.chars().any(char::is_control) {
        Some("Error: channel name contains a control character".into())
    } else {
        None
    }
}

/// The subprotocol a browser offers next to `bearer.<token>`, and that pgws answers with.
pub const SUBPROTOCOL: &str = "pgws";

/// Where the token came from.
enum Carrier {
    /// The URL path (`/:channel/:token`, `/:token`), as the original.
    Path,
    /// `Authorization: Bearer <token>`; the path is `/:channel` or `/`.
    Header,
    /// `Sec-WebSocket-Protocol: pgws, bearer.<token>`; answered with `pgws`.
    Subprotocol,
}

/// Finds the token: the `Authorization` header, the subprotocol pair, or the URL path.
fn token_and_channel<B>(
    req: &Request<B>,
) -> Result<(Option<std::borrow::Cow<'_, str>>, String, Carrier), AuthError> {
    let path = req.uri().path();
    let header_token = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| (t.trim().to_string(), Carrier::Header));
    let protocol_token = || {
        let offered: Vec<&str> = req
            .headers()
            .get_all(hyper::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let token = offered.iter().find_map(|p| p.strip_prefix("bearer."))?;
        Some(if offered.contains(&SUBPROTOCOL) {
            Ok((token.to_string(), Carrier::Subprotocol))
        } else {
            Err(AuthError::Invalid(format!(
                "offer the subprotocol '{SUBPROTOCOL}' next to 'bearer.<token>'"
            )))
        })
    };
    let outside = match header_token {
        Some(t) => Some(t),
        None => protocol_token().transpose()?,
    };
    match outside {
        Some((token, carrier)) => {
            let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
            let channel = if first.is_empty() {
                None
            } else {
                Some(
                    percent_encoding::percent_decode_str(first)
                        .decode_utf8()
                        .map_err(|_| {
                            AuthError::Invalid(
                                "channel name is not valid percent-encoded UTF-8".into(),
                            )
                        })?,
                )
            };
            Ok((channel, token, carrier))
        }
        None => {
            let (channel, token) = auth::parse_path(path)?;
            Ok((channel, token.to_string(), Carrier::Path))
        }
    }
}

/// Verifies the token (spec §2.2, §3).
fn authorize<B>(req: &Request<B>, state: &AppState) -> Result<(Grant, Carrier), AuthError> {
    let (channel, token, carrier) = token_and_channel(req)?;
    let grant = auth::resolve(
        &state.keys(),
        &state.rules,
        channel.as_deref(),
        &token,
        auth::now_seconds(),
    )?;
    Ok((grant, carrier))
}

/// The client's address: the peer, or, behind a trusted proxy, the last untrusted address of
/// `X-Forwarded-For`.
fn client_ip<B>(req: &Request<B>, peer: SocketAddr, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer.ip()) {
        return peer.ip();
    }
    req.headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .rev()
        .find(|ip| !trusted.contains(ip))
        .unwrap_or(peer.ip())
}

/// `Err(origin)` when the request's Origin is not allowed.
fn check_origin<B>(req: &Request<B>, allowed: Option<&[String]>) -> Result<(), String> {
    let (Some(allowed), Some(origin)) = (allowed, req.headers().get(hyper::header::ORIGIN)) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        Ok(())
    } else {
        Err(origin.to_string())
    }
}

fn check_grant<B>(req: &Request<B>, state: &AppState) -> Response<Body> {
    if let Err(origin) = check_origin(req, state.allowed_origins.as_deref()) {
        return text(
            StatusCode::FORBIDDEN,
            format!("Origin not allowed: {origin}"),
        );
    }
    match authorize(req, state) {
        Ok((grant, _)) => {
            let body = serde_json::json!({
                "mode": grant.mode.as_str(),
                "channels": grant.channels,
                "exp": grant.exp,
            });
            let mut r = Response::new(full(body.to_string()));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn websocket(
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
    if let Err(origin) = check_origin(req, state.allowed_origins.as_deref()) {
        let body = format!("Origin not allowed: {origin}");
        return refuse(&state, "origin", StatusCode::FORBIDDEN, body);
    }
    let ip = client_ip(req, peer, &state.trusted_proxies);
    if !state.address_limiter.allow(ip) {
        let body = format!(
            "Too many connections from this address: at most {} per second",
            state.rates.connections
        );
        return refuse(&state, "rate_limited", StatusCode::TOO_MANY_REQUESTS, body);
    }
    let (grant, carrier) = match authorize(req, &state) {
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
    if let Some(body) = grant.channels.iter().find_map(|c| channel_problem(c)) {
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
    let slot = match grant.claims.get("sub").and_then(|s| s.as_str()) {
        Some(sub) => match state.subjects.acquire(sub) {
            Some(slot) => slot,
            None => {
                let body = format!(
                    "Too many connections for this token subject: at most {}",
                    state.rates.per_subject
                );
                return refuse(
                    &state,
                    "too_many_for_subject",
                    StatusCode::TOO_MANY_REQUESTS,
                    body,
                );
            }
        },
        None => None,
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(req);
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    // No span per socket (it would cost every idle socket ≈270 B): this line names the socket,
    // and every later line of it carries `conn`.
    tracing::info!(
        conn = id,
        peer = %ip,
        channels = %grant.channels.join(","),
        mode = grant.mode.as_str(),
        sub = grant.claims.get("sub").and_then(|s| s.as_str()).unwrap_or(""),
        "websocket open"
    );
    let config = state.ws_config;
    let tracker = state.sessions.clone();
    let session = Session::open(state, id, grant, slot);
    session.listening().await;
    tracker.spawn(async move {
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
            Err(e) => tracing::info!(conn = id, error = %e, "websocket upgrade failed"),
        }
    });
    let mut r = Response::new(full(bytes::Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    if matches!(carrier, Carrier::Subprotocol) {
        h.insert(
            hyper::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn channel_names() {
        use super::channel_problem;
        assert!(channel_problem("chat").is_none());
        assert!(channel_problem("my chan").is_none());
        assert!(channel_problem("").is_some());
        assert!(channel_problem(&"x".repeat(64)).is_some());
        assert!(channel_problem("a\0b").unwrap().contains("control"));
        assert!(channel_problem("x\n2026 ERROR forged").is_some());
    }

    #[test]
    fn tokens_are_redacted_from_paths() {
        assert_eq!(redact("/chat/eyJhbGc.eyJtb2Rl.sig-_x"), "/chat/<token>");
        assert_eq!(redact("/eyJhbGc.eyJtb2Rl."), "/<token>");
        assert_eq!(redact("/index.html"), "/index.html");
        assert_eq!(redact("/a.b.c/x"), "/<token>/x");
        assert_eq!(redact("/"), "/");
    }
}

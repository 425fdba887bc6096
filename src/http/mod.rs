//! The HTTP layer: one function per request decides what it is.
//!
//! - `Upgrade: websocket`, whatever its path (spec §2.1): [`admission`] first (the token is
//!   checked before the handshake is accepted, a refusal is an HTTP status whose body is the
//!   reason), then the websocket transport ([`crate::transport::ws`]).
//! - `GET` with `Accept: text/event-stream` and no `Upgrade`: the same admission, then the
//!   Server-Sent Events transport ([`crate::transport::sse`]). Most such requests never get here:
//!   the accept loop reads a connection's request heads itself ([`head`]) and serves event
//!   streams on the raw connection; this branch serves those that arrive on a connection hyper
//!   already serves.
//! - `POST` with `Content-Type: text/plain`: admission without the connection rules, then an
//!   HTTP publish ([`crate::transport::publish`]).
//! - `pgws-check: 1` (pgws addition): the same checks on the path, answered `200` with the grant
//!   as JSON or the handshake's refusal (`400` with the reason; `403`/`503` from authorization by
//!   the database, asked as the handshake asks it), because browsers cannot read the body of a
//!   refused websocket handshake; `pgws-check: v2` judges the token as a protocol v2 handshake
//!   would.
//! - anything else: the PostgREST upstream ([`proxy`]) when `PGWS_UPSTREAM` is set, else
//!   [`static_files`].
//!
//! A new transport (Server-Sent Events) adds one branch here that calls [`admission::admit`] and
//! renders its refusal with [`refuse`], exactly as the websocket branch does.

pub mod assets;
pub mod head;
pub mod proxy;
pub mod static_files;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::header::{HeaderValue, SERVER};
use hyper::{Request, Response, StatusCode};

use crate::admission::{self, Purpose, authorize, check_origin, refuse};
use crate::respond::{Body, SERVER_NAME, full, text};
use crate::state::AppState;
use crate::transport::{publish, sse, ws};

/// Handles one HTTP request.
pub async fn handle(
    mut req: Request<hyper::body::Incoming>,
    state: Arc<AppState>,
    peer: SocketAddr,
) -> Response<Body> {
    // `1`: judged as an original-protocol handshake on this path; `v2`: as a protocol v2
    // handshake (the grant is the token's alone, a channel in the path does not matter).
    let check = req
        .headers()
        .get("pgws-check")
        .and_then(|v| match v.as_bytes() {
            b"1" => Some(false),
            b"v2" => Some(true),
            _ => None,
        });
    let mut response = if check_preflight(&req) {
        preflight(&req, &state)
    } else if admission::is_upgrade(&req) {
        match admission::admit(&req, &state, peer, Purpose::Connect).await {
            Ok(admitted) => ws::accept(&mut req, state, admitted).await,
            Err(refusal) => refuse(&state, peer, refusal),
        }
    } else if sse::is_request(&req) {
        match admission::admit(&req, &state, peer, Purpose::Connect).await {
            Ok(admitted) => sse::accept(state, admitted).await,
            Err(refusal) => refuse(&state, peer, refusal),
        }
    } else if publish::is_request(&req) {
        match admission::admit(&req, &state, peer, Purpose::Publish).await {
            Ok(admitted) => publish::handle(req, state, admitted).await,
            Err(refusal) => refuse(&state, peer, refusal),
        }
    } else if let Some(v2) = check {
        if state
            .address_limiter
            .allow(admission::client_address(&req, &state, peer))
        {
            let mut r = check_grant(&req, &state, v2).await;
            allow_origin(&req, &state, &mut r);
            r
        } else {
            text(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests from this address",
            )
        }
    } else if let Some(upstream) = state.config.upstream.clone() {
        let (method, path) = (req.method().clone(), redact(req.uri().path()));
        let r = upstream.forward(req, peer).await;
        tracing::info!(target: "pgws::access", peer = %peer, method = %method,
            path = %path, status = r.status().as_u16(), "proxied");
        r
    } else {
        let r = static_files::serve(&state.config.site, &req).await;
        tracing::info!(target: "pgws::access", peer = %peer, method = %req.method(),
            path = %redact(req.uri().path()), status = r.status().as_u16(), "http");
        r
    };
    response
        .headers_mut()
        .insert(SERVER, HeaderValue::from_static(SERVER_NAME));
    response
}

/// Whether a request is a browser's CORS preflight for a `pgws-check` request (a page on
/// another origin asking why its handshake was refused: the JavaScript client does).
fn check_preflight<B>(req: &Request<B>) -> bool {
    req.method() == hyper::Method::OPTIONS
        && req
            .headers()
            .get("access-control-request-headers")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|h| h.trim().eq_ignore_ascii_case("pgws-check"))
            })
}

/// Answers a `pgws-check` preflight: the check may be sent, with its token in `Authorization`,
/// from an origin the server accepts (`PGWS_ALLOWED_ORIGINS`); from another origin the answer
/// names none, and the browser refuses the check (as the handshake would be refused).
fn preflight<B>(req: &Request<B>, state: &AppState) -> Response<Body> {
    let mut r = text(StatusCode::NO_CONTENT, "");
    let h = r.headers_mut();
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("GET"),
    );
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("pgws-check, authorization"),
    );
    h.insert("access-control-max-age", HeaderValue::from_static("600"));
    allow_origin(req, state, &mut r);
    r
}

/// Lets the requesting page read a `pgws-check` answer when its origin is one the server
/// accepts: the answer explains a refusal the page's own handshake got, nothing more.
fn allow_origin<B>(req: &Request<B>, state: &AppState, r: &mut Response<Body>) {
    r.headers_mut()
        .insert(hyper::header::VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = req.headers().get(hyper::header::ORIGIN) else {
        return;
    };
    if check_origin(req, state.config.allowed_origins.as_deref()).is_ok() {
        r.headers_mut()
            .insert(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    }
}

/// The path with every segment that looks like a JWT (three base64url parts) replaced, so that
/// tokens never reach the logs.
pub fn redact(path: &str) -> String {
    path.split('/')
        .map(|seg| if jwt_like(seg) { "<token>" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether a path segment looks like a JWT: three dot-separated parts, the first two non-empty
/// base64url.
pub(crate) fn jwt_like(seg: &str) -> bool {
    let parts: Vec<&str> = seg.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Answers a `pgws-check` request: what the handshake on this path (`v2`: a protocol v2
/// handshake) would answer about the request itself, without the server's state (a connected
/// source, capacity, the subject's slot).
async fn check_grant<B>(req: &Request<B>, state: &AppState, v2: bool) -> Response<Body> {
    if let Err(origin) = check_origin(req, state.config.allowed_origins.as_deref()) {
        return text(
            StatusCode::FORBIDDEN,
            format!("Origin not allowed: {origin}"),
        );
    }
    let grant = match authorize(req, state, v2) {
        Ok((grant, _)) => grant,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    // The rest of what the handshake checks about the request itself: its channels, and the
    // database's answer for them in the mode the handshake asks (a refusal as the handshake
    // renders it: 403, or 503 with `Retry-After` when the check cannot run).
    let checked = match admission::granted_channels(state, &grant, v2) {
        Ok(channels) => {
            let mode = admission::check_mode(Purpose::Connect, v2, false, &grant);
            admission::database_checks(state, &grant, &channels, mode).await
        }
        Err(refusal) => Err(refusal),
    };
    if let Err(refusal) = checked {
        let mut r = text(refusal.status(), refusal.to_string());
        if let Some(seconds) = refusal.retry_after() {
            r.headers_mut()
                .insert(hyper::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        return r;
    }
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

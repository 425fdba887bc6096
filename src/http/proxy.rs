//! The PostgREST companion: with `PGWS_UPSTREAM` set, every non-websocket request is forwarded to
//! that HTTP server (typically PostgREST), bodies streamed both ways, so one port serves the REST
//! API and the websockets, as postgrest-ws did.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::respond::{Body, text};

/// Headers that describe one connection, not the message: never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Why `PGWS_UPSTREAM` is unusable.
#[derive(Debug, thiserror::Error)]
#[error("PGWS_UPSTREAM: '{0}' is not an http:// URL with a host")]
pub struct UpstreamError(pub String);

/// A reverse proxy to one upstream.
#[derive(Clone)]
pub struct Upstream {
    base: Uri,
    client: Client<HttpConnector, Incoming>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base)
            .finish()
    }
}

impl Upstream {
    /// Parses `http://host:port[/base]`.
    pub fn new(url: &str) -> Result<Self, UpstreamError> {
        let base: Uri = url.parse().map_err(|_| UpstreamError(url.into()))?;
        if base.scheme_str() != Some("http") || base.authority().is_none() {
            return Err(UpstreamError(url.into()));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self { base, client })
    }

    fn target(&self, uri: &Uri) -> Result<Uri, hyper::http::Error> {
        let base_path = self.base.path().trim_end_matches('/');
        let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        Uri::builder()
            .scheme("http")
            .authority(self.base.authority().map(|a| a.as_str()).unwrap_or(""))
            .path_and_query(format!("{base_path}{path_and_query}"))
            .build()
    }

    /// Forwards the request and streams the answer back; `502` with a reason when the upstream
    /// cannot be reached.
    pub async fn forward(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let target = match self.target(req.uri()) {
            Ok(t) => t,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("Bad request path: {e}")),
        };
        let host = req.headers().get(hyper::header::HOST).cloned();
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prior) => format!("{prior}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
        if let Some(host) = host {
            headers.insert(HeaderName::from_static("x-forwarded-host"), host);
        }
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("http"),
        );
        headers.remove(hyper::header::HOST);
        *req.uri_mut() = target;
        match self.client.request(req).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, body.boxed())
            }
            Err(e) => {
                tracing::warn!(upstream = %self.base, error = %e, "upstream request failed");
                text(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "Bad Gateway: the upstream {} did not answer: {e}",
                        self.base
                    ),
                )
            }
        }
    }
}

fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    // Also the headers the Connection header names.
    let named: Vec<String> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    for name in HOP_BY_HOP.iter().map(|s| s.to_string()).chain(named) {
        headers.remove(name.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_keep_path_and_query_under_the_base() {
        let u = Upstream::new("http://127.0.0.1:3001/api/").unwrap();
        let t = u.target(&"/items?id=eq.1".parse().unwrap()).unwrap();
        assert_eq!(t.to_string(), "http://127.0.0.1:3001/api/items?id=eq.1");
        assert!(Upstream::new("https://x").is_err());
        assert!(Upstream::new("not a url").is_err());
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = hyper::HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("authorization", HeaderValue::from_static("Bearer t"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none() && h.get("connection").is_none());
        assert!(h.get("authorization").is_some());
    }
}

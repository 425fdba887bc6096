//! The response body type of every HTTP answer pgws writes, the helpers that build them, and the
//! `Server` header's value. A leaf: admission, the transports, the HTTP dispatcher and the admin
//! listener share it without importing each other.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::header::CONTENT_TYPE;
use hyper::{Response, StatusCode};

/// The `Server` header of every answer.
pub const SERVER_NAME: &str = concat!("pgws/", env!("CARGO_PKG_VERSION"));

/// The response body type used everywhere: whole bodies for pgws's own answers, streamed ones
/// for the reverse proxy.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// A body that is all there at once.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A short `text/plain` answer.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let body = body.into();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

//! Answers to plain (non-websocket) HTTP requests, with the original's statuses and texts:
//! `Hello, Web!` when no root is set; otherwise static files with `404 File not found` (with a
//! hint when the path holds a token: the request lacks `Accept: text/event-stream`),
//! `405 Only GET or HEAD is supported`, `403 Forbidden` for dot-segments, `index.html` /
//! `index.htm` for directories, `Last-Modified` and `304`.
//!
//! Differences from the original, on purpose: no HTML directory listings (a directory without an
//! index is `404`), a path that leaves the root through a symbolic link is `404`, and
//! `/pgws-client.js` is the built-in JavaScript client when the directory has no such file
//! ([`assets::library`]).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, IF_MODIFIED_SINCE, LAST_MODIFIED};
use hyper::{Method, Request, Response, StatusCode};

use super::assets;
use crate::respond::{Body, full, text};

/// What the server answers to plain HTTP requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Site {
    /// `200 Hello, Web!` for everything, as the original without `PGWS_ROOT_PATH`.
    Hello,
    /// Static files from a directory (`PGWS_ROOT_PATH`).
    Directory(PathBuf),
    /// The example page compiled into the binary (embedded mode).
    Builtin,
}

/// Serves a plain HTTP request according to the configured site.
pub async fn serve<B>(site: &Site, req: &Request<B>) -> Response<Body> {
    if *site == Site::Hello {
        return text(StatusCode::OK, "Hello, Web!");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "Only GET or HEAD is supported",
        );
    }
    let head = req.method() == Method::HEAD;
    let path = req.uri().path();
    let segments = match segments(path) {
        Ok(s) => s,
        Err(status) => return refusal(status),
    };
    let response = match site {
        Site::Hello => unreachable!("handled above"),
        Site::Builtin => match assets::get(&format!("/{}", segments.join("/"))) {
            Some(a) => file_response(Bytes::from_static(a.body), a.content_type, None),
            None => refusal(StatusCode::NOT_FOUND),
        },
        Site::Directory(root) => {
            let r = from_directory(root, &segments, req).await;
            match assets::library(path) {
                Some(a) if r.status() == StatusCode::NOT_FOUND => {
                    file_response(Bytes::from_static(a.body), a.content_type, None)
                }
                _ => r,
            }
        }
    };
    // `GET /<channel>/<token>` from a browser's address bar or a bare `curl`: the path is a
    // channel's, only the request lacks what makes it a stream or a websocket. Say what to add.
    let response =
        if response.status() == StatusCode::NOT_FOUND && path.split('/').any(super::jwt_like) {
            text(StatusCode::NOT_FOUND, TOKEN_PATH_HINT)
        } else {
            response
        };
    if head {
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, full(Bytes::new()));
    }
    response
}

/// The 404 text for a path that holds a token.
pub const TOKEN_PATH_HINT: &str = "File not found. This path holds a token: to follow the channel, send the header `Accept: text/event-stream` (Server-Sent Events, e.g. curl -N -H 'Accept: text/event-stream' URL) or open a websocket on it";

fn refusal(status: StatusCode) -> Response<Body> {
    match status {
        StatusCode::FORBIDDEN => text(status, "Forbidden"),
        _ => text(StatusCode::NOT_FOUND, "File not found"),
    }
}

/// Decoded, non-empty path segments; a segment starting with `.` or holding a separator is 403.
fn segments(path: &str) -> Result<Vec<String>, StatusCode> {
    let mut out = Vec::new();
    for raw in path.split('/').filter(|s| !s.is_empty()) {
        let seg = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| StatusCode::NOT_FOUND)?;
        if seg.starts_with('.') || seg.contains('/') || seg.contains('\\') || seg.contains('\0') {
            return Err(StatusCode::FORBIDDEN);
        }
        out.push(seg.into_owned());
    }
    Ok(out)
}

async fn from_directory<B>(root: &Path, segments: &[String], req: &Request<B>) -> Response<Body> {
    let mut path: PathBuf = root.to_path_buf();
    path.extend(segments);
    let Ok(meta) = tokio::fs::metadata(&path).await else {
        return refusal(StatusCode::NOT_FOUND);
    };
    if meta.is_dir() {
        let mut found = None;
        for index in ["index.html", "index.htm"] {
            let candidate = path.join(index);
            if tokio::fs::metadata(&candidate)
                .await
                .is_ok_and(|m| m.is_file())
            {
                found = Some(candidate);
                break;
            }
        }
        match found {
            Some(f) => path = f,
            None => return refusal(StatusCode::NOT_FOUND),
        }
    }
    // No escape through symbolic links.
    let (Ok(real), Ok(real_root)) = (
        tokio::fs::canonicalize(&path).await,
        tokio::fs::canonicalize(root).await,
    ) else {
        return refusal(StatusCode::NOT_FOUND);
    };
    if !real.starts_with(&real_root) {
        return refusal(StatusCode::NOT_FOUND);
    }
    let Ok(meta) = tokio::fs::metadata(&real).await else {
        return refusal(StatusCode::NOT_FOUND);
    };
    let modified = meta.modified().ok().map(httpdate::fmt_http_date);
    if let (Some(m), Some(since)) = (&modified, req.headers().get(IF_MODIFIED_SINCE))
        && since.as_bytes() == m.as_bytes()
    {
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        return r;
    }
    match tokio::fs::read(&real).await {
        Ok(body) => {
            let mime = mime_guess::from_path(&real).first_or_octet_stream();
            file_response(Bytes::from(body), mime.as_ref(), modified)
        }
        Err(_) => refusal(StatusCode::NOT_FOUND),
    }
}

fn file_response(body: Bytes, content_type: &str, modified: Option<String>) -> Response<Body> {
    let len = body.len();
    let mut r = Response::new(full(body));
    let h = r.headers_mut();
    if let Ok(v) = content_type.parse() {
        h.insert(CONTENT_TYPE, v);
    }
    h.insert(CONTENT_LENGTH, len.into());
    if let Some(m) = modified.and_then(|m| m.parse().ok()) {
        h.insert(LAST_MODIFIED, m);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_forbidden() {
        assert_eq!(segments("/.hidden"), Err(StatusCode::FORBIDDEN));
        assert_eq!(segments("/a/../b"), Err(StatusCode::FORBIDDEN));
        assert_eq!(segments("/a/%2e%2e/b"), Err(StatusCode::FORBIDDEN));
        assert_eq!(segments("/a/%2Fetc"), Err(StatusCode::FORBIDDEN));
        assert_eq!(segments("/a//b/").unwrap(), ["a", "b"]);
        assert_eq!(segments("/").unwrap(), Vec::<String>::new());
    }
}

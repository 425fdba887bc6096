//! The example page, compiled into the binary so that `pgws --embedded` serves it at `/` with no
//! files on disk. The same files live in `web/`, where `PGWS_ROOT_PATH=web` serves them as
//! ordinary static files.
//!
//! The page runs on the JavaScript client, `clients/js/src/index.js`, compiled in from that one
//! file and served as `/pgws-client.js`. A directory site (`PGWS_ROOT_PATH`) without a file of
//! that name gets the built-in one too ([`library`]), so `web/` needs no copy that could drift.

/// A compiled-in file.
pub struct Asset {
    /// `Content-Type` header value.
    pub content_type: &'static str,
    /// File contents.
    pub body: &'static [u8],
}

/// The path the JavaScript client (`pgws-client`, protocol v2) is served at.
pub const LIBRARY_PATH: &str = "/pgws-client.js";

/// The compiled-in file for a request path, if there is one.
pub fn get(path: &str) -> Option<Asset> {
    let (content_type, body): (&str, &[u8]) = match path {
        "/" | "/index.html" => (
            "text/html; charset=utf-8",
            include_bytes!("../../web/index.html"),
        ),
        "/app.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../../web/app.js"),
        ),
        "/live-table.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../../web/live-table.js"),
        ),
        "/style.css" => (
            "text/css; charset=utf-8",
            include_bytes!("../../web/style.css"),
        ),
        LIBRARY_PATH => return library(path),
        _ => return None,
    };
    Some(Asset { content_type, body })
}

/// The JavaScript client at [`LIBRARY_PATH`]: served by every site that serves files (the
/// built-in page, and a `PGWS_ROOT_PATH` directory that has no file of that name), so that a
/// page can `import { PgwsClient } from "/pgws-client.js"` without copying the library.
pub fn library(path: &str) -> Option<Asset> {
    (path == LIBRARY_PATH).then_some(Asset {
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../clients/js/src/index.js"),
    })
}

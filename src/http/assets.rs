//! The example page, compiled into the binary so that `pgws --embedded` serves it at `/` with no
//! files on disk. The same files live in `web/`, where `PGWS_ROOT_PATH=web` serves them as
//! ordinary static files.

/// A compiled-in file.
pub struct Asset {
    /// `Content-Type` header value.
    pub content_type: &'static str,
    /// File contents.
    pub body: &'static [u8],
}

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
        "/style.css" => (
            "text/css; charset=utf-8",
            include_bytes!("../../web/style.css"),
        ),
        _ => return None,
    };
    Some(Asset { content_type, body })
}

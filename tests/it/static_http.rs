//! Plain HTTP requests (spec §2.4; §13 scenarios 1 and 2).

use crate::common::*;

/// The JavaScript client the example page imports, served as `/pgws-client.js`.
const CLIENT_JS: &str = include_str!("../../clients/js/src/index.js");

#[tokio::test]
async fn hello_web_without_root() {
    let s = start(&[]).await;
    for (method, path) in [("GET", "/"), ("POST", "/anything"), ("GET", "/a/b?c")] {
        let (status, headers, body) = get(s.addr, method, path, "").await;
        assert_eq!((status, body.as_str()), (200, "Hello, Web!"));
        assert!(
            header(&headers, "content-type")
                .unwrap()
                .starts_with("text/plain")
        );
        assert!(header(&headers, "server").unwrap().starts_with("pgws/"));
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn static_files_with_the_originals_statuses() {
    let root = std::env::temp_dir().join(format!("pgws-static-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(
        root.join("index.html"),
        "<title>postgres-websockets example</title>",
    )
    .unwrap();
    std::fs::write(root.join("sub/index.htm"), "sub index").unwrap();
    std::fs::write(root.join("app.js"), "let x = 1;").unwrap();
    std::fs::write(root.join(".hidden"), "secret").unwrap();
    let outside = std::env::temp_dir().join(format!("pgws-outside-{}", std::process::id()));
    std::fs::write(&outside, "outside").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();

    let s = start(&["--root-path", root.to_str().unwrap()]).await;
    let (status, headers, body) = get(s.addr, "GET", "/", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("postgres-websockets example"));
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let modified = header(&headers, "last-modified")
        .expect("Last-Modified")
        .to_string();

    let (status, _, _) = get(
        s.addr,
        "GET",
        "/",
        &format!("If-Modified-Since: {modified}\r\n"),
    )
    .await;
    assert_eq!(status, 304);
    assert_eq!(get(s.addr, "GET", "/sub/", "").await.2, "sub index");
    assert_eq!(get(s.addr, "GET", "/sub", "").await.2, "sub index");
    let (status, headers, _) = get(s.addr, "GET", "/app.js", "").await;
    assert_eq!(status, 200);
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .contains("javascript")
    );
    let (status, headers, body) = get(s.addr, "HEAD", "/app.js", "").await;
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(header(&headers, "content-length"), Some("10"));

    assert_eq!(get(s.addr, "GET", "/nope", "").await.0, 404);
    assert_eq!(get(s.addr, "GET", "/nope", "").await.2, "File not found");
    assert_eq!(get(s.addr, "GET", "/empty/", "").await.0, 404);
    let (status, _, body) = get(s.addr, "POST", "/", "Content-Length: 0\r\n").await;
    assert_eq!(
        (status, body.as_str()),
        (405, "Only GET or HEAD is supported")
    );
    let (status, _, body) = get(s.addr, "GET", "/.hidden", "").await;
    assert_eq!((status, body.as_str()), (403, "Forbidden"));
    assert_eq!(get(s.addr, "GET", "/sub/../.hidden", "").await.0, 403);
    assert_eq!(get(s.addr, "GET", "/%2e%2e/etc/passwd", "").await.0, 403);
    assert_eq!(get(s.addr, "GET", "/link", "").await.0, 404);
    // A directory without the JavaScript client gets the built-in one (the page in web/ imports it).
    let (status, headers, body) = get(s.addr, "GET", "/pgws-client.js", "").await;
    assert_eq!(status, 200);
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .contains("javascript")
    );
    assert_eq!(body, CLIENT_JS);
    s.stop().await.unwrap();
    // One with a file of that name serves its own.
    std::fs::write(root.join("pgws-client.js"), "export const mine = 1;").unwrap();
    let s = start(&["--root-path", root.to_str().unwrap()]).await;
    let (status, _, body) = get(s.addr, "GET", "/pgws-client.js", "").await;
    assert_eq!((status, body.as_str()), (200, "export const mine = 1;"));
    s.stop().await.unwrap();
    std::fs::remove_dir_all(&root).ok();
    std::fs::remove_file(&outside).ok();
}

#[tokio::test]
async fn embedded_mode_serves_the_builtin_page() {
    let s = start(&["--embedded"]).await;
    let (status, headers, body) = get(s.addr, "GET", "/", "").await;
    assert_eq!(status, 200);
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(body.contains("<html") || body.contains("<!doctype") || body.contains("<!DOCTYPE"));
    assert_eq!(get(s.addr, "GET", "/app.js", "").await.0, 200);
    assert_eq!(get(s.addr, "GET", "/style.css", "").await.0, 200);
    assert_eq!(get(s.addr, "GET", "/live-table.js", "").await.0, 200);
    let (status, headers, body) = get(s.addr, "GET", "/pgws-client.js", "").await;
    assert_eq!(status, 200);
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(
        body, CLIENT_JS,
        "the library is compiled in from clients/js/src/index.js"
    );
    assert_eq!(get(s.addr, "GET", "/missing", "").await.0, 404);
    s.stop().await.unwrap();
}

// Issue 25 item 12: `GET /<channel>/<jwt>` without `Accept: text/event-stream` says what to add.
#[tokio::test]
async fn a_token_path_without_the_stream_header_says_what_to_add() {
    let s = start(&["--embedded"]).await;
    let t = token(serde_json::json!({"mode":"r"}));
    let (status, _, body) = get(s.addr, "GET", &format!("/chat/{t}"), "").await;
    assert_eq!(status, 404);
    assert!(body.starts_with("File not found. "), "{body}");
    assert!(body.contains("Accept: text/event-stream"), "{body}");
    assert!(!body.contains(&t), "{body}");
    // Other missing files keep the original's text.
    assert_eq!(get(s.addr, "GET", "/missing", "").await.2, "File not found");
    s.stop().await.unwrap();
}

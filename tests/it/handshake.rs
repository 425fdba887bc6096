//! Handshake outcomes (spec §2.2–§2.3, §3.4–§3.5, scenarios 3 and 4 of §13).

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn refusals_carry_the_originals_texts() {
    let s = start(&[]).await;
    let bad_sig = sign(json!({"mode":"r"}), b"wrongwrongwrongwrongwrongwrong!!");
    let (status, body) = refused(&s.url(&format!("/chat/{bad_sig}"))).await;
    assert_eq!(status, 400);
    assert!(body.starts_with("Error: "), "{body}");

    let expired = token(json!({"mode":"r","channel":"test","exp":1}));
    assert_eq!(
        refused(&s.url(&format!("/test/{expired}"))).await,
        (400, "Token expired".into())
    );

    let no_mode = token(json!({"channels":["test","test2"]}));
    assert_eq!(
        refused(&s.url(&format!("/test/{no_mode}"))).await,
        (400, "Missing mode".into())
    );

    let no_channels = token(json!({"mode":"rw"}));
    assert_eq!(
        refused(&s.url(&format!("/{no_channels}"))).await,
        (400, "No allowed channels".into())
    );
    assert_eq!(refused(&s.url("/")).await, (400, "Missing mode".into()));
    assert_eq!(
        refused(&s.url("/chat/")).await,
        (400, "Missing mode".into())
    );

    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJtb2RlIjoiciJ9.";
    assert_eq!(
        refused(&s.url(&format!("/chat/{none}"))).await,
        (400, "Error: JWSError JWSNoSignatures".into())
    );
    let (_, body) = refused(&s.url("/chat/not-a-token")).await;
    assert!(
        body.starts_with("Error: JWSError (CompactDecodeError"),
        "{body}"
    );

    let future_nbf = token(json!({"mode":"r","nbf": 4_000_000_000u64}));
    assert_eq!(
        refused(&s.url(&format!("/x/{future_nbf}"))).await,
        (400, "Error: JWTNotYetValid".into())
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn requested_channel_must_be_in_the_claims() {
    let s = start(&[]).await;
    let t = token(json!({"mode":"r","channels":["a"]}));
    assert_eq!(
        refused(&s.url(&format!("/chat/{t}"))).await,
        (400, "No allowed channels".into())
    );
    let _ws = connect(&s.url(&format!("/a/{t}"))).await;
    // Further path segments are ignored, as in the original; the query string is not the token.
    let _ws = connect(&s.url(&format!("/a/{t}/more/segments"))).await;
    let _ws = connect(&s.url(&format!("/a/{t}?since=1"))).await;
    s.stop().await.unwrap();
}

#[tokio::test]
async fn refused_handshake_is_a_plain_400_with_reason() {
    let s = start(&[]).await;
    let (status, headers, body) = get(
        s.addr,
        "GET",
        "/chat/",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body, "Missing mode");
    assert!(header(&headers, "server").unwrap().starts_with("pgws/"));

    // A valid token with an unsupported websocket version.
    let t = token(json!({"mode":"r"}));
    let (status, headers, _) = get(
        s.addr,
        "GET",
        &format!("/chat/{t}"),
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(header(&headers, "sec-websocket-version"), Some("13"));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn check_header_explains_a_handshake_to_browsers() {
    let s = start(&[]).await;
    let t = token(json!({"mode":"rw","channels":["a","b"]}));
    let (status, _, body) = get(s.addr, "GET", &format!("/{t}"), "pgws-check: 1\r\n").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["mode"], "rw");
    assert_eq!(v["channels"], json!(["a", "b"]));
    let (status, _, body) = get(s.addr, "GET", &format!("/zzz/{t}"), "pgws-check: 1\r\n").await;
    assert_eq!((status, body.as_str()), (400, "No allowed channels"));
    // As a v2 handshake: the grant is the token's, whatever channel the path names.
    let (status, _, body) = get(s.addr, "GET", &format!("/zzz/{t}"), "pgws-check: v2\r\n").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["channels"], json!(["a", "b"]));
    let (status, _, body) = get(s.addr, "GET", "/not.a.token", "pgws-check: v2\r\n").await;
    assert_eq!(status, 400);
    assert!(body.starts_with("Error: "), "{body}");
    s.stop().await.unwrap();
}

// The first hour: `/chanonly` (a channel, its token forgotten) says what is missing instead of
// a JWT decode error; a one-segment path that could be a JWT keeps the original's text.
#[tokio::test]
async fn a_channel_without_a_token_says_the_token_is_missing() {
    let s = start(&[]).await;
    let no_token = "Error: no token: expected /<channel>/<token> or /<token>, or an Authorization: Bearer header";
    assert_eq!(refused(&s.url("/chanonly")).await, (400, no_token.into()));
    let (status, _, body) = get(s.addr, "GET", "/chanonly", "pgws-check: 1\r\n").await;
    assert_eq!((status, body.as_str()), (400, no_token));
    let (_, body) = refused(&s.url("/not.a.token")).await;
    assert!(
        body.starts_with("Error: JWSError (CompactDecodeError"),
        "{body}"
    );
    s.stop().await.unwrap();
}

/// A page on another origin may ask `pgws-check` why its handshake was refused (the JavaScript
/// client does), when its origin is one the server accepts: the preflight and the answer name
/// it; for an origin the server refuses they name none, and the browser keeps the answer away.
#[tokio::test]
async fn pgws_check_answers_pages_of_accepted_origins_across_origins() {
    let s = start(&["--allowed-origins", "https://app.example.com"]).await;
    let path = format!("/a/{}", token(json!({"mode":"r","channels":["a"]})));
    let preflight = |origin: &str| {
        format!(
            "Origin: {origin}\r\nAccess-Control-Request-Method: GET\r\n\
             Access-Control-Request-Headers: pgws-check, authorization\r\n"
        )
    };
    let (status, headers, _) = get(
        s.addr,
        "OPTIONS",
        &path,
        &preflight("https://app.example.com"),
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(
        header(&headers, "access-control-allow-headers")
            .is_some_and(|h| h.contains("pgws-check") && h.contains("authorization"))
    );
    let (status, headers, body) = get(
        s.addr,
        "GET",
        &path,
        "Origin: https://app.example.com\r\npgws-check: 1\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    // An origin the server refuses: no permission to read, and the check says why.
    let (status, headers, _) =
        get(s.addr, "OPTIONS", &path, &preflight("https://evil.example")).await;
    assert_eq!(status, 204);
    assert_eq!(header(&headers, "access-control-allow-origin"), None);
    let (status, headers, _) = get(
        s.addr,
        "GET",
        &path,
        "Origin: https://evil.example\r\npgws-check: 1\r\n",
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(header(&headers, "access-control-allow-origin"), None);
    s.stop().await.unwrap();
}

//! Event streams served on the raw connection: the accept loop reads request heads itself, serves
//! event-stream requests outside hyper and hands everything else to hyper with the bytes it read.
//! What must hold: every other request is served as before (bodies, pipelining, keep-alive, bad
//! heads), a stream's connection serves the next request after the stream, TLS works the same, and
//! a reader too slow for its queue is closed with 4000 while the others keep receiving.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use crate::sse::{open, open_on};

/// Reads one response with a `content-length` body from `io`, keeping what follows in `buf`.
async fn read_response<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
) -> (u16, Vec<(String, String)>, String) {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let (status, headers, _) = parse_response(&buf[..end + 4]);
                let len: usize = header(&headers, "content-length")
                    .map(|v| v.parse().unwrap())
                    .expect("a content-length");
                if buf.len() >= end + 4 + len {
                    let body = String::from_utf8(buf[end + 4..end + 4 + len].to_vec()).unwrap();
                    buf.drain(..end + 4 + len);
                    return (status, headers, body);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = io.read(&mut chunk).await.expect("read");
            assert!(n > 0, "connection closed before a whole response: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("response in time")
}

/// Reads until `needle` has arrived; returns everything read up to and including it.
async fn read_until<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>, needle: &str) -> String {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(at) = buf
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
            {
                let upto: Vec<u8> = buf.drain(..at + needle.len()).collect();
                return String::from_utf8(upto).unwrap();
            }
            let mut chunk = [0u8; 4096];
            let n = io.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before {needle:?} arrived; read {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{needle:?} in time"))
}

/// Reads until the peer closes; returns what came.
async fn read_to_close<S: AsyncRead + Unpin>(io: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, io.read_to_end(&mut out))
        .await
        .expect("closed in time")
        .expect("read");
    out
}

async fn tcp(s: &TestServer) -> TcpStream {
    tokio::time::timeout(WAIT, TcpStream::connect(s.addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

fn stream_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n")
}

#[tokio::test]
async fn other_requests_are_served_as_before_with_bodies_pipelining_and_keep_alive() {
    let s = start(&[]).await;
    let mut listen = Listen::new(&s.db, LISTEN).await;
    let mut io = tcp(&s).await;
    let mut buf = Vec::new();

    // A publish with a body, the first request of the connection.
    let w = token(json!({"mode":"w"}));
    let body = "a body read by hyper";
    io.write_all(
        format!(
            "POST /chat/{w} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (status, _, _) = read_response(&mut io, &mut buf).await;
    assert_eq!(status, 202);
    let v = listen.next_json().await;
    assert_eq!(v["payload"], body);

    // Two pipelined requests in one write, on the same (kept-alive) connection.
    io.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\nGET /index.html HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (status, headers, body) = read_response(&mut io, &mut buf).await;
    assert_eq!((status, body.as_str()), (200, "Hello, Web!"));
    assert!(header(&headers, "server").unwrap().starts_with("pgws/"));
    let (status, _, body) = read_response(&mut io, &mut buf).await;
    assert_eq!((status, body.as_str()), (200, "Hello, Web!"));

    // An event stream on this connection, which hyper serves now: the same stream.
    let r = token(json!({"mode":"r"}));
    io.write_all(stream_request(&format!("/chat/{r}")).as_bytes())
        .await
        .unwrap();
    let head = read_until(&mut io, &mut buf, ": ok\n\n").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("content-type: text/event-stream\r\n"),
        "{head}"
    );
    let db = pg(&s.db).await;
    let text = json!({"channel":"chat","payload":"through hyper"}).to_string();
    notify(&db, LISTEN, &text).await;
    read_until(&mut io, &mut buf, &format!("data: {text}\n\n")).await;

    // The first request of a connection split into many small writes is read whole.
    let mut io = tcp(&s).await;
    for piece in ["G", "ET / HT", "TP/1.1\r\nHo", "st: localhost\r\n", "\r\n"] {
        io.write_all(piece.as_bytes()).await.unwrap();
        io.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    let mut buf = Vec::new();
    let (status, _, body) = read_response(&mut io, &mut buf).await;
    assert_eq!((status, body.as_str()), (200, "Hello, Web!"));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_stream_connection_serves_the_next_request_and_refusals_match_hyper() {
    let s = start(&["--sse-max-age", "1"]).await;
    let mut io = tcp(&s).await;
    let mut buf = Vec::new();
    let r = token(json!({"mode":"r"}));

    // A stream that ends by itself (lifetime): its close event, the end of the chunked body,
    // and the connection is ready for the next request.
    io.write_all(stream_request(&format!("/chat/{r}")).as_bytes())
        .await
        .unwrap();
    let head = read_until(&mut io, &mut buf, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    for h in [
        "content-type: text/event-stream",
        "cache-control: no-cache",
        "x-accel-buffering: no",
        "transfer-encoding: chunked",
    ] {
        assert!(head.contains(&format!("\r\n{h}\r\n")), "{h} in {head}");
    }
    let close = read_until(&mut io, &mut buf, "\r\n0\r\n\r\n").await;
    assert!(close.contains("retry: 250\nevent: close\n"), "{close}");
    assert!(close.contains("\"code\":4002"), "{close}");
    io.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = read_response(&mut io, &mut buf).await;
    assert_eq!((status, body.as_str()), (200, "Hello, Web!"));

    // A refused stream: the same answer as hyper gives on a connection it serves, and the
    // connection is kept for the next request.
    let bad = format!(
        "/chat/{}",
        sign(json!({"mode":"r"}), b"a-wrong-secret-that-is-long-enough!!")
    );
    let mut raw = tcp(&s).await;
    let mut raw_buf = Vec::new();
    raw.write_all(stream_request(&bad).as_bytes())
        .await
        .unwrap();
    let (raw_status, raw_headers, raw_body) = read_response(&mut raw, &mut raw_buf).await;
    // `io` is hyper's now (it served a plain request).
    io.write_all(stream_request(&bad).as_bytes()).await.unwrap();
    let (status, headers, body) = read_response(&mut io, &mut buf).await;
    assert_eq!((raw_status, raw_body.as_str()), (status, body.as_str()));
    assert_eq!(raw_status, 400);
    for name in ["content-type", "server"] {
        assert_eq!(header(&raw_headers, name), header(&headers, name), "{name}");
    }
    assert!(header(&raw_headers, "date").is_some());
    raw.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = read_response(&mut raw, &mut raw_buf).await;
    assert_eq!((status, body.as_str()), (200, "Hello, Web!"));

    // `Connection: close` on a refused stream: answered, then closed.
    let mut raw = tcp(&s).await;
    raw.write_all(
        format!(
            "GET {bad} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (status, headers, _) = parse_response(&read_to_close(&mut raw).await);
    assert_eq!(
        (status, header(&headers, "connection")),
        (400, Some("close"))
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_oversized_and_silent_heads() {
    let s = start(&["--handshake-timeout", "1"]).await;
    // A malformed head: hyper's own answer.
    let mut io = tcp(&s).await;
    io.write_all(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(parse_response(&read_to_close(&mut io).await).0, 400);
    // A head longer than what is read before hyper: still served (a big cookie).
    let cookie = "c".repeat(20 * 1024);
    let (status, _, body) = get(s.addr, "GET", "/", &format!("Cookie: {cookie}\r\n")).await;
    assert_eq!((status, body.as_str()), (200, "Hello, Web!"));
    // An event-stream request with such a head is a stream too (hyper carries it).
    let r = token(json!({"mode":"r"}));
    let mut sse = open(s.addr, &format!("/chat/{r}"), &[("cookie", &cookie)])
        .await
        .expect("stream opens");
    assert_eq!(sse.next().await.unwrap().comment.as_deref(), Some("ok"));
    // A head that stops half-way, and a connection that sends nothing: closed at the handshake
    // timeout without an answer.
    for start in ["GET /chat/x HTTP/1.1\r\nAccept: text/ev", ""] {
        let mut io = tcp(&s).await;
        io.write_all(start.as_bytes()).await.unwrap();
        let begun = tokio::time::Instant::now();
        assert!(read_to_close(&mut io).await.is_empty(), "{start:?}");
        assert!(begun.elapsed() >= Duration::from_millis(900), "{start:?}");
    }
    // The server serves on, and the stream opened above still receives.
    let db = pg(&s.db).await;
    let text = json!({"channel":"chat","payload":"still here"}).to_string();
    notify(&db, LISTEN, &text).await;
    assert_eq!(sse.next_event().await.data.as_deref(), Some(text.as_str()));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn event_streams_on_the_tls_listener() {
    let s = start(&[
        "--certificate-file",
        crate::tls::CERT,
        "--key-file",
        crate::tls::KEY,
    ])
    .await;
    let r = token(json!({"mode":"r"}));
    let mut sse = open_on(crate::tls::tls_stream(&s).await, &format!("/chat/{r}"), &[])
        .await
        .expect("stream opens over TLS");
    assert_eq!(sse.next().await.unwrap().comment.as_deref(), Some("ok"));
    let db = pg(&s.db).await;
    let text = json!({"channel":"chat","payload":"over tls"}).to_string();
    notify(&db, LISTEN, &text).await;
    let ev = sse.next_event().await;
    assert_eq!(ev.data.as_deref(), Some(text.as_str()));
    assert!(ev.id.is_some());
    // A refusal over TLS, then a plain request on the same TLS connection.
    let mut tls = crate::tls::tls_stream(&s).await;
    let mut buf = Vec::new();
    tls.write_all(stream_request("/chat/not-a-token").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_response(&mut tls, &mut buf).await.0, 400);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = read_response(&mut tls, &mut buf).await;
    assert_eq!((status, body.as_str()), (200, "Hello, Web!"));
    s.stop().await.unwrap();
}

/// A socket with a tiny receive buffer, through which the server's writes block fast.
fn small_socket(s: &TestServer) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.addr.into()).unwrap();
    sock.set_nonblocking(true).unwrap();
    TcpStream::from_std(sock.into()).unwrap()
}

#[tokio::test]
async fn a_slow_reader_is_closed_with_4000_while_others_keep_receiving() {
    let s = start(&[
        "--max-queue-messages",
        "100",
        "--max-queue-bytes",
        "1000000",
        "--admin-address",
        "127.0.0.1:0",
    ])
    .await;
    let r = token(json!({"mode":"r"}));
    let path = format!("/chat/{r}");
    let mut slow = open_on(small_socket(&s), &path, &[])
        .await
        .expect("slow stream opens");
    assert_eq!(slow.next().await.unwrap().comment.as_deref(), Some("ok"));
    let mut good = open(s.addr, &path, &[]).await.expect("stream opens");
    assert_eq!(good.next().await.unwrap().comment.as_deref(), Some("ok"));

    let db = pg(&s.db).await;
    let pad = "x".repeat(4000);
    let n = 1000;
    // 4 MB in batches of 50: the reading stream keeps up, the other falls behind by far more
    // than its 100 messages.
    let mut ids = Vec::new();
    for batch in 0..n / 50 {
        db.execute(
            "SELECT pg_notify($1, json_build_object('channel','chat','n',i,'pad',$2::text)::text) \
             FROM generate_series($3::int, $3::int + 49) AS i",
            &[&LISTEN, &pad, &(batch * 50 + 1)],
        )
        .await
        .unwrap();
        for i in 1..=50 {
            let ev = good.next_event().await;
            let v: Value = serde_json::from_str(ev.data.as_deref().unwrap()).unwrap();
            assert_eq!(
                v["n"],
                batch * 50 + i,
                "the reading stream gets every message in order"
            );
            ids.push(ev.id.unwrap());
        }
    }
    assert!(s.metric("pgws_drops_total{reason=\"slow_consumer\"}").await > 0.0);

    // The slow reader now reads: a prefix of the messages, in order, then the 4000 close event,
    // then the end of the stream.
    let mut got = 0;
    let close = loop {
        let ev = slow.next_event().await;
        if ev.event.as_deref() == Some("close") {
            break ev;
        }
        assert_eq!(
            ev.id.as_deref(),
            Some(ids[got].as_str()),
            "in order, none missing"
        );
        got += 1;
    };
    let v: Value = serde_json::from_str(close.data.as_deref().unwrap()).unwrap();
    assert_eq!(v["code"], 4000, "{v}");
    assert!(got < n as usize, "the slow reader fell behind");
    assert!(
        slow.next().await.is_none(),
        "the stream ends after its close event"
    );
    assert_eq!(
        s.metric("pgws_server_closes_total{reason=\"slow_consumer\"}")
            .await,
        1.0
    );
    // The other stream still receives.
    let text = json!({"channel":"chat","payload":"after"}).to_string();
    notify(&db, LISTEN, &text).await;
    assert_eq!(good.next_event().await.data.as_deref(), Some(text.as_str()));
    s.stop().await.unwrap();
}

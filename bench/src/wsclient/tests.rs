//! Tests of the WebSocket client against tokio-tungstenite's server side and
//! against a raw rejecting server.

use super::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

async fn listener() -> (TcpListener, Target) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    (l, Target::new("127.0.0.1", port, 2).unwrap())
}

#[tokio::test]
async fn talks_to_a_tungstenite_server() {
    let (l, target) = listener().await;
    let server = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
        ws.send(Message::text("hello")).await.unwrap();
        ws.send(Message::Ping(b"p1".to_vec().into())).await.unwrap();
        ws.send(Message::text("x".repeat(70_000))).await.unwrap();
        let mut got = Vec::new();
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Close(_) => break,
                other => got.push(other),
            }
        }
        got
    });
    let (mut rd, mut wr) = connect(&target, 1, "/chan/tok", Duration::from_secs(5), 128)
        .await
        .unwrap();
    let mut texts = Vec::new();
    while texts.len() < 2 {
        assert!(rd.fill().await.unwrap() > 0);
        while let Some(m) = rd.next_msg().unwrap() {
            match m {
                Msg::Text(t) => texts.push(t.len()),
                Msg::Ping(p) => wr.push_pong(p),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(texts, vec![5, 70_000]);
    wr.push_text(b"from client");
    wr.push_close(1000);
    wr.flush().await.unwrap();
    let got = server.await.unwrap();
    assert_eq!(
        got,
        vec![
            Message::Pong(b"p1".to_vec().into()),
            Message::text("from client")
        ]
    );
}

#[tokio::test]
async fn reports_rejections_with_their_body() {
    let (l, target) = listener().await;
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut b = [0u8; 1024];
        let _ = s.read(&mut b).await;
        s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\nMissing mode")
            .await
            .unwrap();
    });
    let err = connect(&target, 0, "/", Duration::from_secs(5), 128)
        .await
        .unwrap_err();
    assert_eq!(err.category(), "http 400: Missing mode");
}

#[tokio::test]
async fn reassembles_fragments_and_reads_close() {
    let mut wire = vec![0x01, 3];
    wire.extend_from_slice(b"abc");
    wire.extend_from_slice(&[0x89, 1, b'z']); // ping between fragments
    wire.extend_from_slice(&[0x80, 2]);
    wire.extend_from_slice(b"de");
    wire.extend_from_slice(&[0x88, 2, 0x0B, 0xB9]); // close 3001
    let mut rd = WsReader::new(&wire[..], &[], 4);
    let mut seen = Vec::new();
    loop {
        while let Some(m) = rd.next_msg().unwrap() {
            seen.push(format!("{m:?}"));
        }
        if rd.fill().await.unwrap() == 0 {
            break;
        }
    }
    assert_eq!(
        seen,
        vec![
            format!("{:?}", Msg::Ping(b"z")),
            format!("{:?}", Msg::Text(b"abcde")),
            format!("{:?}", Msg::Close(Some(3001))),
        ]
    );
}

/// Accepts one websocket, answering `Sec-WebSocket-Protocol: answer` when given.
// The callback's `Result` (with a whole HTTP response as its error) is tungstenite's signature.
#[allow(clippy::result_large_err)]
async fn accept_with_protocol(l: TcpListener, answer: Option<&'static str>) -> Option<String> {
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    let (s, _) = l.accept().await.unwrap();
    let mut offered = None;
    let callback = |req: &Request, mut resp: Response| {
        offered = req
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_string());
        if let Some(a) = answer {
            resp.headers_mut()
                .insert("sec-websocket-protocol", a.parse().unwrap());
        }
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async(s, callback).await;
    drop(ws);
    offered
}

#[tokio::test]
async fn offers_and_requires_a_subprotocol() {
    let (l, target) = listener().await;
    let server = tokio::spawn(accept_with_protocol(l, Some("pgws.v2")));
    let t = Duration::from_secs(5);
    connect_as(&target, 0, "/tok", t, 128, Some("pgws.v2"))
        .await
        .unwrap();
    assert_eq!(server.await.unwrap().as_deref(), Some("pgws.v2"));
    // A server that does not answer with it speaks another protocol: the attempt fails.
    let (l, target) = listener().await;
    let server = tokio::spawn(accept_with_protocol(l, None));
    let err = connect_as(&target, 0, "/tok", t, 128, Some("pgws.v2"))
        .await
        .unwrap_err();
    assert_eq!(err.category(), "protocol: subprotocol pgws.v2 not accepted");
    assert_eq!(server.await.unwrap().as_deref(), Some("pgws.v2"));
}

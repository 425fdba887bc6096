//! Server-Sent Events: the same URLs and admission as the websocket, events carrying exactly the
//! text a websocket client gets, heartbeats, and the `close` event at expiry and shutdown.

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::common::*;

/// One parsed event (or comment) of a stream.
#[derive(Debug, Default)]
pub(crate) struct Event {
    pub(crate) event: Option<String>,
    pub(crate) id: Option<String>,
    pub(crate) data: Option<String>,
    pub(crate) retry: Option<String>,
    pub(crate) comment: Option<String>,
}

/// A client reading an event stream.
pub(crate) struct Sse {
    body: Incoming,
    buf: String,
    _conn: tokio::task::JoinHandle<()>,
}

/// Opens `path` as an event stream; `Err((status, body))` when refused.
pub(crate) async fn open(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Sse, (u16, String)> {
    let stream = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    open_on(stream, path, headers).await
}

/// [`open`] over a connection of the caller's (TLS, a socket with small buffers).
pub(crate) async fn open_on<I>(
    stream: I,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Sse, (u16, String)>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http handshake");
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::get(path)
        .header("host", "localhost")
        .header("accept", "text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        WAIT,
        sender.send_request(
            req.body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        ),
    )
    .await
    .expect("answer in time")
    .expect("response");
    let status = resp.status().as_u16();
    if status != 200 {
        let body = tokio::time::timeout(WAIT, resp.into_body().collect())
            .await
            .expect("body in time")
            .expect("body")
            .to_bytes();
        return Err((status, String::from_utf8_lossy(&body).into_owned()));
    }
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    Ok(Sse {
        body: resp.into_body(),
        buf: String::new(),
        _conn: conn,
    })
}

impl Sse {
    /// The next event or comment block; `None` when the stream ended.
    pub(crate) async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Event::default();
                for line in block.trim_end_matches('\n').split('\n') {
                    if let Some(c) = line.strip_prefix(':') {
                        ev.comment = Some(c.trim().to_string());
                    } else if let Some((k, v)) = line.split_once(':') {
                        let v = v.strip_prefix(' ').unwrap_or(v).to_string();
                        match k {
                            "event" => ev.event = Some(v),
                            "id" => ev.id = Some(v),
                            "retry" => ev.retry = Some(v),
                            "data" => {
                                ev.data = Some(match ev.data.take() {
                                    Some(d) => format!("{d}\n{v}"),
                                    None => v,
                                })
                            }
                            _ => {}
                        }
                    }
                }
                return Some(ev);
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("event in time")?;
            let frame = frame.expect("body frame");
            if let Some(data) = frame.data_ref() {
                self.buf
                    .push_str(std::str::from_utf8(data).expect("UTF-8 stream"));
            }
        }
    }

    /// The next event that is not a comment.
    pub(crate) async fn next_event(&mut self) -> Event {
        loop {
            let ev = self.next().await.expect("stream still open");
            if ev.comment.is_none() {
                return ev;
            }
        }
    }
}

#[tokio::test]
async fn notifications_arrive_as_events_with_the_exact_text() {
    let s = start(&[]).await;
    let mut sse = open(
        s.addr,
        &format!("/chat/{}", token(json!({"mode":"r"}))),
        &[],
    )
    .await
    .expect("stream opens");
    assert_eq!(sse.next().await.unwrap().comment.as_deref(), Some("ok"));
    let db = pg(&s.db).await;
    let texts = [
        json!({"channel":"chat","payload":"one"}).to_string(),
        "{\"channel\":\"chat\",\n \"payload\":\"two lines\"}".to_string(),
    ];
    for t in &texts {
        notify(&db, LISTEN, t).await;
    }
    for t in &texts {
        let ev = sse.next_event().await;
        assert_eq!(ev.event, None, "messages are unnamed events");
        assert_eq!(ev.data.as_deref(), Some(t.as_str()));
    }
    // A websocket writer's message reaches the stream in the envelope a websocket reader gets.
    let mut writer = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"w"}))))).await;
    send(&mut writer, "from a socket").await;
    let v: Value = serde_json::from_str(&sse.next_event().await.data.unwrap()).unwrap();
    assert_eq!(v["payload"], "from a socket");
    assert_eq!(v["channel"], "chat");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn refusals_are_the_websocket_refusals() {
    let s = start(&[]).await;
    let bad = format!(
        "/chat/{}",
        sign(json!({"mode":"r"}), b"a-wrong-secret-that-is-long-enough!!")
    );
    let (sse_status, sse_body) = open(s.addr, &bad, &[]).await.err().expect("refused");
    let (ws_status, ws_body) = refused(&s.url(&bad)).await;
    assert_eq!(
        (sse_status, sse_body.as_str()),
        (ws_status, ws_body.as_str())
    );
    assert_eq!(sse_status, 400);
    let expired = format!("/chat/{}", token(json!({"mode":"r","exp":1})));
    assert_eq!(
        open(s.addr, &expired, &[]).await.err().unwrap(),
        (400, "Token expired".to_string())
    );
    // The token in the Authorization header, as for websockets.
    let auth = format!("Bearer {}", token(json!({"mode":"r"})));
    assert!(
        open(s.addr, "/chat", &[("authorization", &auth)])
            .await
            .is_ok()
    );
    // Without `Accept: text/event-stream` the same path is a plain request.
    let (status, _, body) = get(s.addr, "GET", "/", "").await;
    assert_eq!((status, body.as_str()), (200, "Hello, Web!"));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn heartbeats_then_a_close_event_at_expiry() {
    let s = start(&["--ping-interval", "1"]).await;
    let exp = pgws::auth::now_seconds() + 2.5;
    let mut sse = open(
        s.addr,
        &format!("/chat/{}", token(json!({"mode":"r","exp":exp}))),
        &[],
    )
    .await
    .expect("stream opens");
    let mut pings = 0;
    let close = loop {
        let ev = sse.next().await.expect("the stream ends with an event");
        match ev.comment.as_deref() {
            Some("ping") => pings += 1,
            Some(_) => {}
            None => break ev,
        }
    };
    assert!(pings >= 1, "a heartbeat comment every ping interval");
    assert_eq!(close.event.as_deref(), Some("close"));
    let v: Value = serde_json::from_str(&close.data.unwrap()).unwrap();
    assert_eq!(
        v,
        json!({"event":"Close","code":3001,"reason":"JWT expired"})
    );
    assert!(
        sse.next().await.is_none(),
        "the stream ends after the close event"
    );
    assert!(pgws::auth::now_seconds() >= exp);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_ends_the_stream_with_retry_advice() {
    let s = start(&[]).await;
    let mut sse = open(
        s.addr,
        &format!("/chat/{}", token(json!({"mode":"r"}))),
        &[],
    )
    .await
    .expect("stream opens");
    sse.next().await.expect("opening comment");
    let stop = tokio::spawn(s.stop());
    let close = sse.next_event().await;
    assert_eq!(close.event.as_deref(), Some("close"));
    assert!(close.retry.is_some(), "browsers are told when to come back");
    let v: Value = serde_json::from_str(&close.data.unwrap()).unwrap();
    assert_eq!(v["code"], 1001);
    assert!(sse.next().await.is_none());
    stop.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_client_that_goes_away_is_unsubscribed() {
    let s = start(&["--admin-address", "127.0.0.1:0"]).await;
    let sse = open(
        s.addr,
        &format!("/chat/{}", token(json!({"mode":"r"}))),
        &[],
    )
    .await
    .expect("stream opens");
    assert_eq!(s.metric("pgws_channels ").await, 1.0);
    assert_eq!(s.metric("pgws_connections{mode=\"r\"}").await, 1.0);
    drop(sse);
    // hyper notices the closed connection and drops the body; the client leaves its channel.
    let left = async {
        while s.metric("pgws_channels ").await != 0.0
            || s.metric("pgws_connections{mode=\"r\"}").await != 0.0
        {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(WAIT, left)
        .await
        .expect("the stream's client is gone within the wait");
    s.stop().await.unwrap();
}

//! Client side of protocol v2 (`pgws.v2`, docs/PROTOCOL.md) for the generator: the requests it
//! sends (`subscribe`, `unsubscribe`, `publish`, numeric ids) and a cheap reading of what the
//! server sends: the `type`, the numeric `id` of answers, and the compat text inside a `message`
//! (so that v2 deliveries go through the same sequence and latency tracking as compat ones).
//! The server writes `type` first and, in answers, `id` second; other layouts take a slower
//! path through `serde_json`.

use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;

/// The websocket subprotocol that selects protocol v2.
pub const SUBPROTOCOL: &str = "pgws.v2";

/// What a v2 frame from the server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `welcome` (the first frame).
    Welcome,
    /// `message` (a delivery).
    Message,
    /// `subscribed`.
    Subscribed,
    /// `unsubscribed`.
    Unsubscribed,
    /// `ack` (a publish PostgreSQL accepted).
    Ack,
    /// `nack` (a publish refused).
    Nack,
    /// `error` (a request refused, or a frame that is not a request).
    Error,
    /// `pong`.
    Pong,
    /// `gap`.
    Gap,
    /// `left`.
    Left,
    /// Any other type (later versions may add some).
    Other,
}

impl Kind {
    fn of(name: &[u8]) -> Self {
        match name {
            b"welcome" => Self::Welcome,
            b"message" => Self::Message,
            b"subscribed" => Self::Subscribed,
            b"unsubscribed" => Self::Unsubscribed,
            b"ack" => Self::Ack,
            b"nack" => Self::Nack,
            b"error" => Self::Error,
            b"pong" => Self::Pong,
            b"gap" => Self::Gap,
            b"left" => Self::Left,
            _ => Self::Other,
        }
    }

    /// Whether this answers a request successfully.
    pub fn is_success(self) -> bool {
        matches!(
            self,
            Self::Subscribed | Self::Unsubscribed | Self::Ack | Self::Pong
        )
    }

    /// Whether this answers a request (successfully or not).
    pub fn is_answer(self) -> bool {
        self.is_success() || matches!(self, Self::Nack | Self::Error)
    }
}

/// A v2 frame, read as far as the generator needs.
#[derive(Debug)]
pub struct Read<'a> {
    /// Its type.
    pub kind: Kind,
    /// The answer's id, when it is a number.
    pub id: Option<u64>,
    /// A `message`'s `data` (the compat text), unescaped.
    pub data: Option<Cow<'a, [u8]>>,
}

const PREFIX: &[u8] = b"{\"type\":\"";

/// Whether `text` looks like a v2 frame (compat texts never start with a `type` member in the
/// generator's traffic).
pub fn is_v2(text: &[u8]) -> bool {
    text.starts_with(PREFIX)
}

/// Reads a server frame; `None` when it is not a v2 frame at all.
pub fn read(text: &[u8]) -> Option<Read<'_>> {
    let rest = text.strip_prefix(PREFIX)?;
    let end = rest.iter().position(|&c| c == b'"')?;
    let kind = Kind::of(&rest[..end]);
    let rest = &rest[end + 1..];
    let mut r = Read {
        kind,
        id: None,
        data: None,
    };
    if kind == Kind::Message {
        r.data = Some(message_data(text)?);
    } else if kind.is_answer() {
        r.id = fast_id(rest).or_else(|| slow_id(text));
    }
    Some(r)
}

/// `,"id":N` right after the type.
fn fast_id(rest: &[u8]) -> Option<u64> {
    let digits = rest.strip_prefix(b",\"id\":")?;
    let n = digits.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 19 || !matches!(digits.get(n), Some(b',' | b'}')) {
        return None;
    }
    std::str::from_utf8(&digits[..n]).ok()?.parse().ok()
}

#[derive(Deserialize)]
struct Answer {
    id: Option<Value>,
}

fn slow_id(text: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Answer>(text).ok()?.id?.as_u64()
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    data: Cow<'a, str>,
}

/// The `data` of a `message`: the server writes it last, so it is the string between `"data":"`
/// and the closing `"}`; only `\"` and `\\` are unescaped here, anything else goes to serde.
fn message_data(text: &[u8]) -> Option<Cow<'_, [u8]>> {
    const KEY: &[u8] = b",\"data\":\"";
    let at = text.windows(KEY.len()).rposition(|w| w == KEY)?;
    let body = text.get(at + KEY.len()..text.len().checked_sub(2)?)?;
    if text.ends_with(b"\"}") {
        let mut out = Vec::with_capacity(body.len());
        let mut i = 0;
        let mut simple = true;
        while i < body.len() {
            match body[i] {
                b'\\' => match body.get(i + 1) {
                    Some(&c @ (b'"' | b'\\')) => {
                        out.push(c);
                        i += 2;
                    }
                    _ => {
                        simple = false;
                        break;
                    }
                },
                b'"' => {
                    simple = false;
                    break;
                }
                c => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        if simple {
            return Some(Cow::Owned(out));
        }
    }
    let m: Message<'_> = serde_json::from_slice(text).ok()?;
    Some(match m.data {
        Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
        Cow::Owned(s) => Cow::Owned(s.into_bytes()),
    })
}

/// Path and subprotocol of the sockets of a scenario run with `--v2` (`/<token>`, `pgws.v2`),
/// or its compat paths (one per channel) and no subprotocol.
pub fn paths(
    v2: bool,
    g: &crate::cli::Global,
    mode: &str,
    channels: &[String],
) -> anyhow::Result<(Vec<String>, Option<&'static str>)> {
    if v2 {
        Ok((
            vec![crate::token::v2_path(&g.secret, mode)?; channels.len()],
            Some(SUBPROTOCOL),
        ))
    } else {
        Ok((
            crate::token::channel_paths(&g.secret, mode, channels, g.token_url)?,
            None,
        ))
    }
}

/// Queues one `subscribe` request per channel on `wr` (the receiving task flushes them).
pub fn queue_subscriptions<'a, W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut crate::wsclient::WsWriter<W>,
    channels: impl IntoIterator<Item = &'a String>,
) {
    for (id, ch) in channels.into_iter().enumerate() {
        wr.push_text(subscribe(id as u64, ch).as_bytes());
    }
}

fn quoted(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// `{"type":"subscribe","id":id,"channel":channel}`.
pub fn subscribe(id: u64, channel: &str) -> String {
    format!(
        "{{\"type\":\"subscribe\",\"id\":{id},\"channel\":{}}}",
        quoted(channel)
    )
}

/// `{"type":"unsubscribe","id":id,"channel":channel}`.
pub fn unsubscribe(id: u64, channel: &str) -> String {
    format!(
        "{{\"type\":\"unsubscribe\",\"id\":{id},\"channel\":{}}}",
        quoted(channel)
    )
}

/// `{"type":"publish","id":id,"channel":channel,"data":data}`.
pub fn publish(id: u64, channel: &str, data: &str) -> String {
    format!(
        "{{\"type\":\"publish\",\"id\":{id},\"channel\":{},\"data\":{}}}",
        quoted(channel),
        quoted(data)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_server_writes() {
        let inner = crate::message::fanout("c1", 5, 0, 77, 100);
        let m = format!(
            "{{\"type\":\"message\",\"channel\":\"c1\",\"position\":\"ab-5\",\"data\":{}}}",
            quoted(&inner)
        );
        let r = read(m.as_bytes()).unwrap();
        assert_eq!(r.kind, Kind::Message);
        assert_eq!(r.data.unwrap().as_ref(), inner.as_bytes());
        // Escapes other than \" and \\ go through serde.
        let odd = r#"{"type":"message","channel":"c","position":"p","data":"a\nb\u00e9\"\\"}"#;
        assert_eq!(
            read(odd.as_bytes()).unwrap().data.unwrap().as_ref(),
            "a\nbé\"\\".as_bytes()
        );
        let ack = br#"{"type":"ack","id":42,"channel":"c","position":null}"#;
        let r = read(ack).unwrap();
        assert_eq!((r.kind, r.id), (Kind::Ack, Some(42)));
        assert!(r.kind.is_success());
        let err = br#"{"type":"error","id":7,"code":"not_granted","message":"no"}"#;
        let r = read(err).unwrap();
        assert_eq!((r.kind, r.id), (Kind::Error, Some(7)));
        assert!(r.kind.is_answer() && !r.kind.is_success());
        let moved = br#"{"type":"pong","x":1,"id":9}"#;
        assert_eq!(read(moved).unwrap().id, Some(9));
        assert_eq!(read(br#"{"type":"pong","id":"s"}"#).unwrap().id, None);
        assert_eq!(
            read(br#"{"type":"welcome","mode":"r"}"#).unwrap().kind,
            Kind::Welcome
        );
        assert_eq!(read(br#"{"type":"later"}"#).unwrap().kind, Kind::Other);
        assert!(read(b"{\"channel\":\"c1\"}").is_none());
    }

    #[test]
    fn requests_are_json() {
        let v: Value = serde_json::from_str(&publish(3, "c\"", "{\"a\":1}")).unwrap();
        assert_eq!(v["type"], "publish");
        assert_eq!(v["id"], 3);
        assert_eq!(v["channel"], "c\"");
        assert_eq!(v["data"], "{\"a\":1}");
        let v: Value = serde_json::from_str(&subscribe(1, "x")).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["channel"].as_str()),
            (Some("subscribe"), Some("x"))
        );
        let v: Value = serde_json::from_str(&unsubscribe(2, "x")).unwrap();
        assert_eq!(v["type"], "unsubscribe");
    }
}

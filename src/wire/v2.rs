//! The JSON of protocol v2 (docs/PROTOCOL.md), both ways: [`parse`] reads a client's request,
//! and the functions below write every frame the server sends. Nothing else in pgws writes v2
//! JSON, so the shapes are reviewed here, next to each other.
//!
//! Parsing is bounded: a frame is at most `PGWS_MAX_MESSAGE_SIZE` bytes (tungstenite enforces
//! it), and `serde_json` refuses nesting deeper than 128 levels with an error (it never
//! recurses further), so 1 MB of `[[[[…` is a `bad_json` answer, not a stack overflow.

use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::stream::{Frame, GapReason, Position, ResumeGap};

/// The websocket subprotocol that selects protocol v2 (answered as such).
pub const SUBPROTOCOL: &str = "pgws.v2";

/// Longest string id echoed back.
pub const MAX_ID_LEN: usize = 256;

/// A request's id, as the JSON text to echo (`null` when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Id(String);

impl Id {
    /// No id (frames that could not be read far enough, server-initiated events).
    pub fn none() -> Self {
        Self("null".into())
    }

    /// The JSON text.
    pub fn as_json(&self) -> &str {
        &self.0
    }
}

/// What a client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Join a channel, optionally resuming after a position.
    Subscribe {
        /// The channel's name (checked by the session).
        channel: String,
        /// `since`: the position to resume after, as sent.
        since: Option<String>,
        /// `presence`: send this socket the channel's presence and its changes.
        presence: bool,
        /// `filter`: a row subscription's filter in PostgREST's syntax (table channels only;
        /// checked by the session).
        filter: Option<String>,
        /// `snapshot`: start a row subscription with the table's current rows (when `since`
        /// cannot be resumed exactly, or without `since`).
        snapshot: bool,
    },
    /// Leave a channel.
    Unsubscribe {
        /// The channel's name.
        channel: String,
    },
    /// Publish `data` to `channel`.
    Publish {
        /// The channel's name.
        channel: String,
        /// The text (what a compat client would send).
        data: String,
    },
    /// Replace the token.
    Refresh {
        /// The new token.
        token: String,
    },
    /// Ask for a `pong`.
    Ping,
    /// Set this socket's member's state on a channel it follows.
    PresenceSet {
        /// The channel's name.
        channel: String,
        /// `state` as compact JSON (`null` when absent: clears it).
        state: String,
    },
}

/// A frame that is not a request: the answer's code and message, and the id when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The request's id, when it was valid.
    pub id: Id,
    /// `bad_json`, `bad_request` or `unknown_type`.
    pub code: &'static str,
    /// In words.
    pub message: String,
}

/// The members pgws reads; others are ignored (skipped without building them).
#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(rename = "type", default)]
    kind: Option<Value>,
    /// Kept as its text: a number is echoed exactly as written (a 30-digit integer, `1.50`,
    /// `-0`, `1e400`), which a parsed `f64` or `u64` could not do.
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    channel: Option<Value>,
    #[serde(default)]
    since: Option<Value>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    token: Option<Value>,
    #[serde(default)]
    presence: Option<Value>,
    #[serde(default)]
    state: Option<Value>,
    #[serde(default)]
    filter: Option<Value>,
    #[serde(default)]
    snapshot: Option<Value>,
}

/// Reads one text frame as a request.
pub fn parse(text: &str) -> Result<(Id, Request), Malformed> {
    // Serde would also read a struct from an array; a request is an object.
    if !text.trim_start().starts_with('{') {
        return Err(Malformed {
            id: Id::none(),
            code: "bad_json",
            message: "a request is a JSON object".into(),
        });
    }
    let raw: Raw = serde_json::from_str(text).map_err(|e| Malformed {
        id: Id::none(),
        code: "bad_json",
        message: format!("not a JSON object of protocol v2: {e}"),
    })?;
    let id = match raw.id.map(RawValue::get) {
        // `null` is read as absent.
        None => Some(Id::none()),
        // A number: its text as the client wrote it (serde_json checked its grammar).
        Some(text) if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
            Some(Id(text.to_string()))
        }
        Some(text) if text.starts_with('"') => serde_json::from_str::<String>(text)
            .ok()
            .filter(|s| s.len() <= MAX_ID_LEN)
            .map(|s| Id(Value::String(s).to_string())),
        // An array or object deeper than 128 levels is `bad_json`, as in every member pgws reads
        // (serde_json's limit; the raw text was skipped without recursion).
        Some(text) if serde_json::from_str::<Value>(text).is_err() => {
            return Err(Malformed {
                id: Id::none(),
                code: "bad_json",
                message: "\"id\" nests deeper than 128 levels".into(),
            });
        }
        Some(_) => None,
    };
    let Some(id) = id else {
        return Err(Malformed {
            id: Id::none(),
            code: "bad_request",
            message: format!("\"id\" must be a string of at most {MAX_ID_LEN} bytes or a number"),
        });
    };
    let bad = |message: String| Malformed {
        id: id.clone(),
        code: "bad_request",
        message,
    };
    let string = |field: &str, v: Option<Value>| match v {
        Some(Value::String(s)) => Ok(s),
        None => Err(bad(format!("\"{field}\" is missing"))),
        Some(_) => Err(bad(format!("\"{field}\" must be a string"))),
    };
    let kind = match raw.kind {
        Some(Value::String(k)) => k,
        None => return Err(bad("\"type\" is missing".into())),
        Some(_) => return Err(bad("\"type\" must be a string".into())),
    };
    let request = match kind.as_str() {
        "subscribe" => Request::Subscribe {
            channel: string("channel", raw.channel)?,
            since: match raw.since {
                None => None,
                Some(Value::String(s)) => Some(s),
                Some(_) => return Err(bad("\"since\" must be a string (a position)".into())),
            },
            presence: match raw.presence {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => b,
                Some(_) => return Err(bad("\"presence\" must be true or false".into())),
            },
            filter: match raw.filter {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s),
                Some(_) => {
                    return Err(bad(
                        "\"filter\" must be a string (PostgREST syntax, e.g. \"done=eq.false\")"
                            .into(),
                    ));
                }
            },
            snapshot: match raw.snapshot {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => b,
                Some(_) => return Err(bad("\"snapshot\" must be true or false".into())),
            },
        },
        "unsubscribe" => Request::Unsubscribe {
            channel: string("channel", raw.channel)?,
        },
        "publish" => Request::Publish {
            channel: string("channel", raw.channel)?,
            data: string("data", raw.data)?,
        },
        "refresh" => Request::Refresh {
            token: string("token", raw.token)?,
        },
        "ping" => Request::Ping,
        "presence_set" => Request::PresenceSet {
            channel: string("channel", raw.channel)?,
            state: raw.state.unwrap_or(Value::Null).to_string(),
        },
        _ => {
            let mut shown: String = kind.chars().take(64).collect();
            if shown.len() < kind.len() {
                shown.push('…');
            }
            return Err(Malformed {
                id,
                code: "unknown_type",
                message: format!(
                    "unknown request type {}; expected subscribe, unsubscribe, publish, refresh, ping or presence_set",
                    Value::String(shown)
                ),
            });
        }
    };
    Ok((id, request))
}

fn push_str(out: &mut String, s: &str) {
    // serde_json's string escaping; writing into a String cannot fail.
    let _ = write!(out, "{}", Value::String(s.to_string()));
}

fn push_json_str(out: &mut String, s: &str) {
    // Escapes without building a `Value` (the message text may be large).
    let mut buf = Vec::with_capacity(s.len() + 2);
    if serde_json::to_writer(&mut buf, s).is_ok() {
        out.push_str(std::str::from_utf8(&buf).unwrap_or("\"\""));
    }
}

/// A frame: `{"type":…` then the members in `body` (already JSON, each led by a comma).
fn frame(kind: &str, body: &str) -> Frame {
    let mut out = String::with_capacity(16 + kind.len() + body.len());
    out.push_str("{\"type\":\"");
    out.push_str(kind);
    out.push('"');
    out.push_str(body);
    out.push('}');
    Frame::from(out)
}

/// A stream message of `channel` for v2 sockets: its position and the exact text a compat
/// socket receives, as a JSON string (the [`super::V2`] encoding of a routed frame: made once
/// per message and shared by every v2 socket).
pub fn message(channel: &str, position: Position, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + channel.len() + 80);
    out.push_str("{\"type\":\"message\",\"channel\":");
    push_json_str(&mut out, channel);
    let _ = write!(out, ",\"position\":\"{position}\",\"data\":");
    push_json_str(&mut out, text);
    out.push('}');
    out
}

/// The first frame: what the socket may do.
pub fn welcome(
    mode: &str,
    channels: Option<&[String]>,
    exp: Option<f64>,
    max_subscriptions: usize,
    max_message_size: usize,
) -> Frame {
    let v = serde_json::json!({
        "protocol": SUBPROTOCOL,
        "mode": mode,
        "channels": channels,
        "exp": exp,
        "max_subscriptions": max_subscriptions,
        "max_message_size": max_message_size,
    });
    let inner = v.to_string();
    frame("welcome", &format!(",{}", &inner[1..inner.len() - 1]))
}

/// A resume of one channel that cannot be exact (see [`super::compat::resume_gap_event`]).
pub fn resume_gap(gap: &ResumeGap<'_>) -> Frame {
    let v = serde_json::json!({
        "channel": gap.channels.first(),
        "reason": gap.reason.as_str(),
        "message": gap.reason.message(),
        "after": gap.after.map(|p| p.to_string()),
        "through": gap.through.map(|p| p.to_string()),
        "resumes_at": gap.resumes_at.map(|p| p.to_string()),
    });
    let inner = v.to_string();
    frame("gap", &format!(",{}", &inner[1..inner.len() - 1]))
}

/// Messages of `channel` may have been lost while the source was down for `down_ms`.
pub fn outage_gap(channel: &str, down_ms: u64) -> Frame {
    let mut body = String::from(",\"channel\":");
    push_str(&mut body, channel);
    let _ = write!(
        body,
        ",\"reason\":\"source_outage\",\"message\":{},\"down_ms\":{down_ms}",
        Value::String(GapReason::SourceOutage.message().into())
    );
    frame("gap", &body)
}

/// The answer to `subscribe`: sent after the replay (if any), so everything up to `position`
/// of the channel was delivered before it, and everything after follows it.
pub fn subscribed(
    id: &Id,
    channel: &str,
    position: Position,
    replayed: usize,
    snapshot: Option<bool>,
) -> Frame {
    let mut body = format!(",\"id\":{},\"channel\":", id.as_json());
    push_str(&mut body, channel);
    let _ = write!(body, ",\"position\":\"{position}\",\"replayed\":{replayed}");
    if let Some(s) = snapshot {
        let _ = write!(body, ",\"snapshot\":{s}");
    }
    frame("subscribed", &body)
}

/// Changes of a row subscription were withheld because nobody could decide whether the
/// subscriber may see them (a policy failed or timed out): a `gap` with reason
/// `authorization_failed`.
pub fn authorization_gap(channel: &str, message: &str) -> Frame {
    let mut body = String::from(",\"channel\":");
    push_str(&mut body, channel);
    body.push_str(",\"reason\":\"authorization_failed\",\"message\":");
    push_str(&mut body, message);
    frame("gap", &body)
}

/// One page of a row subscription's snapshot: `rows` are JSON objects' texts.
pub fn snapshot(channel: &str, rows: &[String]) -> Frame {
    let mut body = String::from(",\"channel\":");
    push_str(&mut body, channel);
    body.push_str(",\"rows\":[");
    body.push_str(&rows.join(","));
    body.push(']');
    frame("snapshot", &body)
}

/// The snapshot is complete: `rows` were sent, the changes it did not contain came before this
/// frame, and `position` is where the subscription stands (resume from it).
pub fn snapshot_end(channel: &str, rows: usize, position: Position) -> Frame {
    let mut body = String::from(",\"channel\":");
    push_str(&mut body, channel);
    let _ = write!(body, ",\"rows\":{rows},\"position\":\"{position}\"");
    frame("snapshot_end", &body)
}

/// The snapshot could not be completed (`code`: `too_large`, `timeout`, `too_many_changes`,
/// `database_unavailable`); the subscription stays, live, without it.
pub fn snapshot_failed(channel: &str, code: &str, message: &str) -> Frame {
    let mut body = String::from(",\"channel\":");
    push_str(&mut body, channel);
    body.push_str(",\"code\":");
    push_str(&mut body, code);
    body.push_str(",\"message\":");
    push_str(&mut body, message);
    frame("snapshot_failed", &body)
}

/// The answer to `unsubscribe`: no message of the channel follows it.
pub fn unsubscribed(id: &Id, channel: &str) -> Frame {
    let mut body = format!(",\"id\":{},\"channel\":", id.as_json());
    push_str(&mut body, channel);
    frame("unsubscribed", &body)
}

/// The server removed the socket from `channel` (a refreshed token no longer grants it).
pub fn left(channel: &str, reason: &str, message: &str) -> Frame {
    let mut body = String::from(",\"channel\":");
    push_str(&mut body, channel);
    body.push_str(",\"reason\":");
    push_str(&mut body, reason);
    body.push_str(",\"message\":");
    push_str(&mut body, message);
    frame("left", &body)
}

/// A publish PostgreSQL accepted. `position` is `null` until the source can tell it.
pub fn ack(id: &Id, channel: &str, position: Option<Position>) -> Frame {
    let mut body = format!(",\"id\":{},\"channel\":", id.as_json());
    push_str(&mut body, channel);
    match position {
        Some(p) => {
            let _ = write!(body, ",\"position\":\"{p}\"");
        }
        None => body.push_str(",\"position\":null"),
    }
    frame("ack", &body)
}

/// A publish that was not published, and why.
pub fn nack(id: &Id, channel: &str, code: &str, message: &str) -> Frame {
    let mut body = format!(",\"id\":{},\"channel\":", id.as_json());
    push_str(&mut body, channel);
    body.push_str(",\"code\":");
    push_str(&mut body, code);
    body.push_str(",\"message\":");
    push_str(&mut body, message);
    frame("nack", &body)
}

/// A publish the database's write function refused (`PGWS_AUTHZ_WRITE_FUNCTION`): a `nack`
/// that also carries the SQLSTATE PostgreSQL gave, when it gave one.
pub fn nack_sql(
    id: &Id,
    channel: &str,
    code: &str,
    message: &str,
    sqlstate: Option<&str>,
) -> Frame {
    let mut body = format!(",\"id\":{},\"channel\":", id.as_json());
    push_str(&mut body, channel);
    body.push_str(",\"code\":");
    push_str(&mut body, code);
    body.push_str(",\"message\":");
    push_str(&mut body, message);
    body.push_str(",\"sqlstate\":");
    match sqlstate {
        Some(state) => push_str(&mut body, state),
        None => body.push_str("null"),
    }
    frame("nack", &body)
}

/// A request (other than publish) that failed, or a frame that is not a request.
pub fn error(id: &Id, code: &str, message: &str) -> Frame {
    let mut body = format!(",\"id\":{},\"code\":", id.as_json());
    push_str(&mut body, code);
    body.push_str(",\"message\":");
    push_str(&mut body, message);
    frame("error", &body)
}

/// The answer to `refresh`: the new grant.
pub fn refreshed(id: &Id, mode: &str, channels: Option<&[String]>, exp: Option<f64>) -> Frame {
    let v = serde_json::json!({"mode": mode, "channels": channels, "exp": exp});
    let inner = v.to_string();
    frame(
        "refreshed",
        &format!(",\"id\":{},{}", id.as_json(), &inner[1..inner.len() - 1]),
    )
}

/// A channel's presence now (after `subscribed` with `presence: true`, and again after this
/// node's source came back from an outage): named members → connections, anonymous
/// connections, and the total, over every node.
pub fn presence_snapshot(
    channel: &str,
    members: &std::collections::BTreeMap<&str, u32>,
    states: &std::collections::BTreeMap<&str, std::sync::Arc<str>>,
    anonymous: u32,
    count: u32,
) -> Frame {
    let mut body = String::from(",\"channel\":");
    push_str(&mut body, channel);
    body.push_str(",\"members\":{");
    for (i, (name, n)) in members.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        push_str(&mut body, name);
        let _ = write!(body, ":{n}");
    }
    body.push_str("},\"states\":{");
    for (i, (name, state)) in states.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        push_str(&mut body, name);
        body.push(':');
        // Compact JSON already (checked when set or read from the bus).
        body.push_str(state);
    }
    let _ = write!(body, "}},\"anonymous\":{anonymous},\"count\":{count}");
    frame("presence", &body)
}

/// `member`'s state on `channel` changed (`None`: it has none now; `null` on the wire).
pub fn presence_state(channel: &str, member: &str, state: Option<&str>) -> Frame {
    let mut body = String::from(",\"channel\":");
    push_str(&mut body, channel);
    body.push_str(",\"member\":");
    push_str(&mut body, member);
    body.push_str(",\"state\":");
    body.push_str(state.unwrap_or("null"));
    frame("presence_state", &body)
}

/// The answer to `presence_set`: the state is in place (and its `presence_state` event, if
/// the socket watches the channel's presence, came before it).
pub fn presence_set(id: &Id, channel: &str) -> Frame {
    let mut body = format!(",\"id\":{},\"channel\":", id.as_json());
    push_str(&mut body, channel);
    frame("presence_set", &body)
}

fn presence_change(channel: &str, member: Option<&str>, connections: u32, count: u32) -> String {
    let mut body = String::from(",\"channel\":");
    push_str(&mut body, channel);
    body.push_str(",\"member\":");
    match member {
        Some(m) => push_str(&mut body, m),
        None => body.push_str("null"),
    }
    let _ = write!(body, ",\"connections\":{connections},\"count\":{count}");
    body
}

/// `connections` of `member` (`None`: anonymous) joined `channel`, whose total is now `count`.
pub fn presence_join(channel: &str, member: Option<&str>, connections: u32, count: u32) -> Frame {
    frame(
        "join",
        &presence_change(channel, member, connections, count),
    )
}

/// `connections` of `member` left `channel` (`reason`: `left` or `node_lost`).
pub fn presence_leave(
    channel: &str,
    member: Option<&str>,
    connections: u32,
    count: u32,
    reason: &str,
) -> Frame {
    let mut body = presence_change(channel, member, connections, count);
    body.push_str(",\"reason\":");
    push_str(&mut body, reason);
    frame("leave", &body)
}

/// The answer to `ping`.
pub fn pong(id: &Id) -> Frame {
    frame("pong", &format!(",\"id\":{}", id.as_json()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::Seq;

    fn json(f: &Frame) -> Value {
        serde_json::from_str(f.as_str()).unwrap()
    }

    #[test]
    fn requests_and_their_refusals() {
        let (id, r) = parse(r#"{"type":"subscribe","id":7,"channel":"c","since":"x"}"#).unwrap();
        assert_eq!(id.as_json(), "7");
        assert_eq!(
            r,
            Request::Subscribe {
                channel: "c".into(),
                since: Some("x".into()),
                presence: false,
                filter: None,
                snapshot: false,
            }
        );
        let (_, r) =
            parse(r#"{"type":"subscribe","channel":"table:public.t","filter":"a=eq.1"}"#).unwrap();
        assert!(matches!(r, Request::Subscribe { filter: Some(f), .. } if f == "a=eq.1"));
        let bad = parse(r#"{"type":"subscribe","channel":"c","filter":1}"#).unwrap_err();
        assert_eq!(bad.code, "bad_request");
        let (_, r) = parse(r#"{"type":"subscribe","channel":"c","presence":true}"#).unwrap();
        assert!(matches!(r, Request::Subscribe { presence: true, .. }));
        let (_, r) =
            parse(r#"{"type":"presence_set","channel":"c","state":{"a": [1, 2]}}"#).unwrap();
        assert_eq!(
            r,
            Request::PresenceSet {
                channel: "c".into(),
                state: r#"{"a":[1,2]}"#.into(),
            }
        );
        let (_, r) = parse(r#"{"type":"presence_set","channel":"c"}"#).unwrap();
        assert!(matches!(r, Request::PresenceSet { state, .. } if state == "null"));
        let (id, _) = parse(r#"{"type":"ping","id":"a\"b"}"#).unwrap();
        assert_eq!(id.as_json(), r#""a\"b""#);
        assert_eq!(parse(r#"{"type":"ping","id":null}"#).unwrap().0, Id::none());
        // Numbers are echoed exactly as written, whatever f64 would make of them.
        for number in [
            "123456789012345678901234567890",
            "1.50",
            "-0",
            "1e400",
            "-1.5E-7",
        ] {
            let text = format!(r#"{{"type":"ping","id":{number}}}"#);
            assert_eq!(parse(&text).unwrap().0.as_json(), number);
        }
        let (id, _) = parse(r#"{"type":"ping", "id" :  "x" ,"x":1}"#).unwrap();
        assert_eq!(id.as_json(), r#""x""#);
        for (text, code) in [
            ("nope", "bad_json"),
            ("[1]", "bad_json"),
            ("{\"type\":\"ping\",\"type\":\"ping\"}", "bad_json"),
            (r#"{"type":"ping","id":{}}"#, "bad_request"),
            (r#"{"type":"ping","id":[1]}"#, "bad_request"),
            (r#"{"type":"ping","id":true}"#, "bad_request"),
            (r#"{"id":1}"#, "bad_request"),
            (r#"{"type":3}"#, "bad_request"),
            (r#"{"type":"subscribe"}"#, "bad_request"),
            (r#"{"type":"subscribe","channel":1}"#, "bad_request"),
            (
                r#"{"type":"subscribe","channel":"c","since":1}"#,
                "bad_request",
            ),
            (
                r#"{"type":"subscribe","channel":"c","presence":"yes"}"#,
                "bad_request",
            ),
            (
                r#"{"type":"subscribe","channel":"c","presence":1}"#,
                "bad_request",
            ),
            (r#"{"type":"publish","channel":"c"}"#, "bad_request"),
            (r#"{"type":"refresh"}"#, "bad_request"),
            (r#"{"type":"presence_set","state":1}"#, "bad_request"),
            (r#"{"type":"dance"}"#, "unknown_type"),
        ] {
            assert_eq!(parse(text).unwrap_err().code, code, "{text}");
        }
        let long_id = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(MAX_ID_LEN + 1));
        assert_eq!(parse(&long_id).unwrap_err().code, "bad_request");
        // Deep nesting, in a known member and in an ignored one: an error, never a crash.
        let deep = "[".repeat(1 << 20);
        for text in [
            format!(r#"{{"type":"ping","id":{deep}"#),
            format!(r#"{{"type":"ping","x":{deep}"#),
            format!(
                r#"{{"type":"ping","id":{}{}}}"#,
                "[".repeat(1000),
                "]".repeat(1000)
            ),
        ] {
            assert_eq!(parse(&text).unwrap_err().code, "bad_json");
        }
        // A well-formed deep value in an ignored member is skipped without recursion.
        let skipped = format!(
            r#"{{"type":"ping","x":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(parse(&skipped).unwrap().1, Request::Ping);
    }

    #[test]
    fn frames_are_json_with_their_type_first() {
        let p = Position {
            epoch: 1,
            seq: Seq::counter(5),
        };
        let compat = "{\"a\":\"é\\n\"}";
        let m = Frame::from(message("ch\"", p, compat));
        assert!(m.as_str().starts_with("{\"type\":\"message\""));
        let v = json(&m);
        assert_eq!(v["data"], compat);
        assert_eq!(v["channel"], "ch\"");
        assert_eq!(v["position"], p.to_string());
        let id = parse(r#"{"type":"ping","id":"q"}"#).unwrap().0;
        assert_eq!(json(&ack(&id, "c", None))["position"], Value::Null);
        assert_eq!(
            json(&nack(&id, "c", "read_only", "no"))["code"],
            "read_only"
        );
        assert_eq!(json(&subscribed(&id, "c", p, 2, None))["replayed"], 2);
        assert_eq!(
            json(&subscribed(&id, "c", p, 2, Some(true)))["snapshot"],
            true
        );
        assert_eq!(
            json(&error(&Id::none(), "bad_json", "x"))["id"],
            Value::Null
        );
        assert_eq!(json(&pong(&id))["id"], "q");
        assert_eq!(
            json(&welcome("rw", None, None, 3, 9))["protocol"],
            "pgws.v2"
        );
        assert_eq!(
            json(&refreshed(&id, "r", Some(&["a".into()]), Some(2.5)))["exp"],
            2.5
        );
        assert_eq!(json(&left("c", "not_granted", "m"))["type"], "left");
        assert_eq!(
            json(&presence_state("c", "m", None)),
            serde_json::json!({"type":"presence_state","channel":"c","member":"m","state":null})
        );
        assert_eq!(json(&presence_set(&id, "c"))["type"], "presence_set");
        assert_eq!(json(&outage_gap("c", 12))["down_ms"], 12);
        let g = json(&resume_gap(&ResumeGap {
            reason: GapReason::OtherEpoch,
            channels: &["c"],
            after: None,
            through: None,
            resumes_at: Some(p),
        }));
        assert_eq!(g["reason"], "other_epoch");
        assert_eq!(g["resumes_at"], p.to_string());
    }
}

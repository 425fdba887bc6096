//! The JSON that crosses PostgreSQL: client messages and meta events in the original's envelope,
//! pgws's own control events, and the routing rule for notifications.
//!
//! Client → database (spec §5.1):
//! `{"channel":"chat","event":"WebsocketMessage","payload":"hi","claims":{…,"message_delivered_at":1.7e9}}`.
//! Database → client (spec §5.2): the notification text, byte for byte, to the sockets of the
//! channel named by its string `channel` field (else of the PostgreSQL channel's own name).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Map, Value};

/// PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
pub const MAX_NOTIFY_PAYLOAD: usize = 7999;

/// The claims of one socket, serialised once: every message of the socket reuses the text.
#[derive(Debug, Clone)]
pub struct ClaimsText {
    /// `{"a":1,"b":2` — the object without its closing brace (and without `message_delivered_at`).
    open: String,
}

impl ClaimsText {
    /// Serialises the claims (minus any `message_delivered_at`, which each message sets).
    pub fn new(claims: &Map<String, Value>) -> Self {
        let mut claims = claims.clone();
        claims.remove("message_delivered_at");
        let mut open = Value::Object(claims).to_string();
        open.pop();
        Self { open }
    }

    fn write(&self, out: &mut String, delivered_at: f64) {
        out.push_str(&self.open);
        if self.open.len() > 1 {
            out.push(',');
        }
        out.push_str("\"message_delivered_at\":");
        out.push_str(&format_seconds(delivered_at));
        out.push('}');
    }
}

/// Seconds with their fraction, as a JSON number.
fn format_seconds(t: f64) -> String {
    if t.is_finite() {
        let s = format!("{t}");
        if s.contains('.') { s } else { format!("{s}.0") }
    } else {
        "0.0".into()
    }
}

fn push_json_str(out: &mut String, s: &str) {
    // serde_json's string escaping; writing into a String cannot fail.
    out.push_str(&Value::String(s.to_string()).to_string());
}

/// The envelope of a client message or a meta event.
pub fn envelope(
    event: &str,
    channel: &str,
    payload: &str,
    claims: &ClaimsText,
    delivered_at: f64,
) -> String {
    let mut out = String::with_capacity(64 + channel.len() + payload.len() + claims.open.len());
    out.push_str("{\"channel\":");
    push_json_str(&mut out, channel);
    out.push_str(",\"event\":");
    push_json_str(&mut out, event);
    out.push_str(",\"payload\":");
    push_json_str(&mut out, payload);
    out.push_str(",\"claims\":");
    claims.write(&mut out, delivered_at);
    out.push('}');
    out
}

/// The postgrest-ws shape, `{"claims":{…},"payload":"…"}` (`userClaims` in its first version),
/// NOTIFYed on the socket's channel itself.
pub fn postgrest_envelope(
    payload: &str,
    claims: &ClaimsText,
    delivered_at: f64,
    legacy: bool,
) -> String {
    let mut out = String::with_capacity(32 + payload.len() + claims.open.len());
    out.push_str(if legacy {
        "{\"userClaims\":"
    } else {
        "{\"claims\":"
    });
    claims.write(&mut out, delivered_at);
    out.push_str(",\"payload\":");
    push_json_str(&mut out, payload);
    out.push('}');
    out
}

/// A pgws control event sent to one socket only (never through PostgreSQL): an error about the
/// socket's own message. Clients of the original can ignore it: its `event` is `Error`.
pub fn error_event(code: &str, message: &str, channel: Option<&str>) -> String {
    serde_json::json!({
        "event": "Error",
        "code": code,
        "message": message,
        "channel": channel,
    })
    .to_string()
}

/// The `channel` member of a JSON object, read without building the object. Like the original's
/// JSON library, the last of duplicate keys wins; a non-string value means "no channel".
struct Route<'a> {
    channel: Option<Cow<'a, str>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Route<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Route<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Route<'a>, M::Error> {
                let mut channel = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "channel" {
                        channel = match map.next_value::<Value>()? {
                            Value::String(s) => Some(Cow::Owned(s)),
                            _ => None,
                        };
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(Route { channel })
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// The channel a notification goes to: the string `channel` field of a JSON object payload, or
/// `pg_channel` (the PostgreSQL channel it arrived on) for anything else.
pub fn route<'a>(payload: &'a str, pg_channel: &'a str) -> Cow<'a, str> {
    // serde would also read a struct from a JSON array; only objects route.
    if !payload
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return Cow::Borrowed(pg_channel);
    }
    match serde_json::from_str::<Route<'a>>(payload) {
        Ok(Route {
            channel: Some(channel),
        }) => channel,
        _ => Cow::Borrowed(pg_channel),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envelope_shape() {
        let claims = json!({"mode":"rw","user":"bob","message_delivered_at":5});
        let c = ClaimsText::new(claims.as_object().unwrap());
        let text = envelope("WebsocketMessage", "chat", "h\"i", &c, 1700000000.25);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            json!({"channel":"chat","event":"WebsocketMessage","payload":"h\"i",
                   "claims":{"mode":"rw","user":"bob","message_delivered_at":1700000000.25}})
        );
    }

    #[test]
    fn postgrest_shapes() {
        let c = ClaimsText::new(json!({"mode":"rw"}).as_object().unwrap());
        let v: Value = serde_json::from_str(&postgrest_envelope("hi", &c, 3.5, false)).unwrap();
        assert_eq!(
            v,
            json!({"claims":{"mode":"rw","message_delivered_at":3.5},"payload":"hi"})
        );
        let v: Value = serde_json::from_str(&postgrest_envelope("hi", &c, 3.5, true)).unwrap();
        assert_eq!(v["userClaims"]["mode"], "rw");
    }

    #[test]
    fn envelope_with_empty_claims() {
        let c = ClaimsText::new(&Map::new());
        let v: Value = serde_json::from_str(&envelope("E", "c", "p", &c, 2.0)).unwrap();
        assert_eq!(v["claims"], json!({"message_delivered_at": 2.0}));
    }

    #[test]
    fn routing_rule() {
        assert_eq!(route(r#"{"channel": "test", "payload": "x"}"#, "l"), "test");
        assert_eq!(route(r#"{"channel":"a\"b"}"#, "l"), "a\"b");
        assert_eq!(route("plain", "l"), "l");
        assert_eq!(route(r#"{"channel": 1}"#, "l"), "l");
        assert_eq!(route(r#"["channel"]"#, "l"), "l");
        assert_eq!(route(r#"{"payload": 1}"#, "l"), "l");
        assert_eq!(
            route(r#"{"channel":"c","nested":{"channel":"d"}}"#, "l"),
            "c"
        );
    }

    #[test]
    fn error_event_shape() {
        let v: Value = serde_json::from_str(&error_event("read_only", "nope", None)).unwrap();
        assert_eq!(
            v,
            json!({"event":"Error","code":"read_only","message":"nope","channel":null})
        );
    }
}

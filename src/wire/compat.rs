//! Every JSON text the server itself writes: the envelope of client messages and meta events
//! (the original's shapes, byte for byte), and pgws's own events to one socket (`Error`, `Gap`).
//!
//! Client → database (spec §5.1):
//! `{"channel":"chat","event":"WebsocketMessage","payload":"hi","claims":{…,"message_delivered_at":1.7e9}}`.
//! Database → client (spec §5.2) is not written here: the notification text goes out byte for
//! byte. Which channel a message goes to is [`crate::routing`]'s decision.
//!
//! Add a new server event here, next to its siblings, so that its shape is reviewed in one place.
//!
//! What it owns: the exact bytes of every compat-protocol text pgws makes. What it must never
//! do: import anything above the wire formats (it is a leaf: transports, the client core and
//! the sources call it, never the other way round), decide anything (who may publish, which
//! channel, when a gap happened: callers decide, this only words it), or change a shape that
//! clients of the original already parse (the envelope and meta events are compatibility
//! surface; new fields go into pgws's own events only).
//!
//! Why hand-written JSON for the envelope: it is built once per published message, with the
//! claims serialised once per socket ([`ClaimsText`]); pushing strings avoids building a
//! `serde_json::Value` tree per message. The rare events use `json!` for readability.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::stream::{Frame, Position, ResumeGap};

/// The claims of one socket, serialised once: every message of the socket reuses the text.
#[derive(Debug, Clone)]
pub struct ClaimsText {
    /// `{"a":1,"b":2` — the object without its closing brace (and without `message_delivered_at`).
    // Kept open so that each message appends its own `message_delivered_at` without parsing
    // or re-serialising the claims.
    open: String,
}

impl ClaimsText {
    /// Serialises the claims (minus any `message_delivered_at`, which each message sets).
    pub fn new(claims: &Map<String, Value>) -> Self {
        let mut claims = claims.clone();
        // The server stamps it per message; a token's own value must not be sent twice (or
        // spoofed).
        claims.remove("message_delivered_at");
        let mut open = Value::Object(claims).to_string();
        // `to_string` of an object always ends with `}`: drop it to keep the object open.
        open.pop();
        Self { open }
    }

    fn write(&self, out: &mut String, delivered_at: f64) {
        out.push_str(&self.open);
        // `{` alone: no claims, so no comma before the timestamp.
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
        // `Display` for `f64` is the shortest text that reads back as the same number.
        let s = format!("{t}");
        // Always a fraction, as the original writes it: `1700000000.0`, never `1700000000`, so
        // clients that check for a float keep working.
        if s.contains('.') { s } else { format!("{s}.0") }
    } else {
        // A clock that gives NaN or infinity must not produce invalid JSON.
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
    // Sized once for the usual case (64 covers the keys, the event name and the timestamp);
    // escapes in the payload may still grow it.
    let mut out = String::with_capacity(64 + channel.len() + payload.len() + claims.open.len());
    // Key order is the original's: some clients compare texts, not parsed objects.
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
///
/// `code` is a stable identifier a client can branch on; `message` is prose for people
/// and may change between versions.
pub fn error_event(code: &str, message: &str, channel: Option<&str>) -> String {
    serde_json::json!({
        "event": "Error",
        "code": code,
        "message": message,
        "channel": channel,
    })
    .to_string()
}

/// The `Error` event of a write the database answered (`PGWS_AUTHZ_WRITE_FUNCTION`): the
/// [`error_event`] shape plus the `sqlstate` PostgreSQL gave (`null` when it gave none). Also the
/// JSON body of an HTTP publish that failed so.
pub fn write_error_event(
    code: &str,
    message: &str,
    channel: Option<&str>,
    sqlstate: Option<&str>,
) -> String {
    serde_json::json!({
        "event": "Error",
        "code": code,
        "message": message,
        "channel": channel,
        "sqlstate": sqlstate,
    })
    .to_string()
}

/// Text sent to every subscribed socket after the LISTEN connection came back.
pub fn gap_event(down_for: Duration) -> String {
    serde_json::json!({
        "event": "Gap",
        "message": GAP_MESSAGE,
        // Milliseconds fit a `u64` for any outage a process can live through.
        "down_ms": down_for.as_millis() as u64,
    })
    .to_string()
}

/// The `Gap` event published on the meta channel (through PostgreSQL, like the other meta events).
pub fn meta_gap_event(meta_channel: &str, down_for: Duration) -> String {
    serde_json::json!({
        "channel": meta_channel,
        "event": "Gap",
        "payload": GAP_MESSAGE,
        "down_ms": down_for.as_millis() as u64,
    })
    .to_string()
}

/// The first event of a resume that cannot be exact: what could not be replayed. `after` is the
/// client's position when the server knows it, `through` the last position that may be lost
/// (when known), `resumes_at` the first position replayed next (`null`: nothing to replay).
pub fn resume_gap_event(gap: &ResumeGap<'_>) -> String {
    serde_json::json!({
        "event": "Gap",
        "reason": gap.reason.as_str(),
        "message": gap.reason.message(),
        "channels": gap.channels,
        "after": gap.after.map(|p| p.to_string()),
        "through": gap.through.map(|p| p.to_string()),
        "resumes_at": gap.resumes_at.map(|p| p.to_string()),
    })
    .to_string()
}

/// [`resume_gap_event`] as a frame named `gap` (an event stream sends it as `event: gap`).
pub fn resume_gap_frame(gap: &ResumeGap<'_>) -> Frame {
    // Named so an event stream can send it apart from `onmessage` (`event: gap`); a
    // websocket ignores the name and sends the same text.
    Frame::named("gap", resume_gap_event(gap))
}

/// [`gap_event`] as a frame named `gap`.
pub fn gap_frame(down_for: Duration) -> Frame {
    Frame::named("gap", gap_event(down_for))
}

/// A message for a client that asked for positions (websocket `?last-event-id`): its position
/// and the exact text a compat client gets, as a JSON string.
pub fn positioned_message(position: Position, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 48);
    // The position text is hex, digits, `-`, `/` and `.`: nothing to escape.
    out.push_str("{\"id\":\"");
    out.push_str(&position.to_string());
    out.push_str("\",\"data\":");
    push_json_str(&mut out, text);
    out.push('}');
    out
}

/// The last event of a stream the server ends (Server-Sent Events have no close frame): the
/// websocket close code and reason it stands for.
pub fn close_event(code: u16, reason: &str) -> String {
    serde_json::json!({
        "event": "Close",
        "code": code,
        "reason": reason,
    })
    .to_string()
}

/// What a source-outage `Gap` says, on sockets and on the meta channel alike: the server
/// cannot know what was lost, so it says only that something may have been.
const GAP_MESSAGE: &str = "the server's database connection was lost and restored; notifications sent meanwhile may have been lost";

/// A meta-channel event (`ConnectionOpen`, `ConnectionClose`): the client-message envelope with
/// the socket's channels as the payload.
pub fn meta_event(
    event: &str,
    meta_channel: &str,
    channels: &[String],
    claims: &ClaimsText,
    at: f64,
) -> String {
    // The original's shape: the channels as one comma-separated payload string.
    envelope(event, meta_channel, &channels.join(","), claims, at)
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
    fn error_event_shape() {
        let v: Value = serde_json::from_str(&error_event("read_only", "nope", None)).unwrap();
        assert_eq!(
            v,
            json!({"event":"Error","code":"read_only","message":"nope","channel":null})
        );
    }
}

//! Message formats: the JSON the generator publishes (with sequence number
//! and send timestamp, padded to a size) and the parsers for what comes back.

use serde::Deserialize;
use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch (wall clock, comparable across processes).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Closes `s` (an unterminated JSON object) with a `pad` field so the whole
/// text is `size` bytes long when possible.
fn pad_to(mut s: String, size: usize) -> String {
    const OVERHEAD: usize = ",\"pad\":\"\"}".len();
    if s.len() + OVERHEAD < size {
        let n = size - s.len() - OVERHEAD;
        s.push_str(",\"pad\":\"");
        s.extend(std::iter::repeat_n('x', n));
        s.push_str("\"}");
    } else {
        s.push('}');
    }
    s
}

/// Notification published by fanout publishers.
pub fn fanout(channel: &str, seq: u64, publisher: u32, t: u64, size: usize) -> String {
    pad_to(
        format!("{{\"channel\":\"{channel}\",\"seq\":{seq},\"pub\":{publisher},\"t\":{t}"),
        size,
    )
}

/// Warm-up probe published on a channel until every subscriber saw one.
pub fn probe(channel: &str, round: u64) -> String {
    format!("{{\"channel\":\"{channel}\",\"probe\":{round}}}")
}

/// Text sent by an ingest writer.
pub fn ingest(writer: u32, seq: u64, t: u64, size: usize) -> String {
    pad_to(format!("{{\"w\":{writer},\"seq\":{seq},\"t\":{t}"), size)
}

/// Server envelope of a client message NOTIFYed by the server
/// (`event` = `WebsocketMessage`, `payload` = client text).
#[derive(Debug, Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    payload: Option<Cow<'a, str>>,
}

/// Fields of an ingest client text.
#[derive(Debug, Deserialize)]
pub struct IngestMsg {
    /// Writer id.
    pub w: Option<u32>,
    /// Sequence number per writer.
    pub seq: Option<u64>,
    /// Send time, ns since the epoch.
    pub t: Option<u64>,
}

/// Writer id, sequence number and send time of a WebsocketMessage envelope.
pub fn parse_ingest_envelope(text: &[u8]) -> Option<(u32, u64, u64)> {
    let env: Envelope<'_> = serde_json::from_slice(text).ok()?;
    let inner: IngestMsg = serde_json::from_str(env.payload.as_deref()?).ok()?;
    Some((inner.w?, inner.seq?, inner.t?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn fanout_message_has_the_requested_size_and_fields() {
        for size in [100, 200, 1000] {
            let m = fanout("c17", 123, 4, 1_700_000_000_000_000_000, size);
            assert_eq!(m.len(), size);
            let v: Value = serde_json::from_str(&m).unwrap();
            assert_eq!(v["channel"], "c17");
            assert_eq!(v["seq"], 123);
            assert_eq!(v["pub"], 4);
            assert_eq!(v["t"], 1_700_000_000_000_000_000u64);
            assert!(v.get("probe").is_none());
        }
        let small = fanout("c1", 1, 0, 5, 10);
        assert!(serde_json::from_str::<Value>(&small).is_ok());
    }

    #[test]
    fn probe_parses() {
        let p = probe("c3", 7);
        let v: Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["probe"], 7);
        assert_eq!(v["channel"], "c3");
    }

    #[test]
    fn ingest_text_survives_the_server_envelope() {
        let text = ingest(3, 17, 99, 120);
        assert_eq!(text.len(), 120);
        let env = serde_json::json!({
            "channel": "ing0",
            "event": "WebsocketMessage",
            "payload": text,
            "claims": {"mode": "w", "message_delivered_at": 1.7e9},
        })
        .to_string();
        assert_eq!(parse_ingest_envelope(env.as_bytes()), Some((3, 17, 99)));
        assert_eq!(parse_ingest_envelope(b"not json"), None);
    }
}

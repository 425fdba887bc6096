//! Arbitrary bytes as a protocol v2 text frame: `v2_wire::parse`, the request parser every v2
//! socket runs on each frame a client sends (docs/PROTOCOL.md §2).
//!
//! Invariants: nothing panics; a refusal has one of the documented codes and a bounded message
//! (a huge `type` is not echoed whole); an accepted request carries exactly the members of the
//! JSON object it came from, and written back as JSON it parses to the same request and id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgws::internals::v2_wire::{self, Request};
use serde_json::{Map, Value, json};

fuzz_target!(|data: &[u8]| {
    // tungstenite hands pgws text frames as `&str` (it refuses frames that are not UTF-8).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match v2_wire::parse(text) {
        Err(bad) => {
            assert!(
                ["bad_json", "bad_request", "unknown_type"].contains(&bad.code),
                "undocumented code {:?}",
                bad.code
            );
            assert!(!bad.message.is_empty(), "empty message for {text:?}");
            assert!(
                bad.message.len() < 1024,
                "a {}-byte message echoes too much of the frame",
                bad.message.len()
            );
            check_id(bad.id.as_json());
        }
        Ok((id, request)) => {
            check_id(id.as_json());
            // What serde_json reads from the same text (duplicate unknown members keep the last;
            // the known ones cannot be duplicated, or parse would have refused the frame).
            if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(text) {
                let member = |k: &str| obj.get(k).and_then(Value::as_str);
                match &request {
                    Request::Subscribe {
                        channel,
                        since,
                        presence,
                        filter,
                        snapshot,
                    } => {
                        assert_eq!(
                            obj.get("snapshot").and_then(Value::as_bool) == Some(true),
                            *snapshot
                        );
                        assert_eq!(member("filter"), filter.as_deref());
                        assert_eq!(member("type"), Some("subscribe"));
                        assert_eq!(member("channel"), Some(channel.as_str()));
                        assert_eq!(member("since"), since.as_deref());
                        assert_eq!(
                            obj.get("presence").and_then(Value::as_bool) == Some(true),
                            *presence
                        );
                    }
                    Request::Unsubscribe { channel } => {
                        assert_eq!(member("type"), Some("unsubscribe"));
                        assert_eq!(member("channel"), Some(channel.as_str()));
                    }
                    Request::Publish { channel, data } => {
                        assert_eq!(member("type"), Some("publish"));
                        assert_eq!(member("channel"), Some(channel.as_str()));
                        assert_eq!(member("data"), Some(data.as_str()));
                    }
                    Request::Refresh { token } => {
                        assert_eq!(member("type"), Some("refresh"));
                        assert_eq!(member("token"), Some(token.as_str()));
                    }
                    Request::Ping => assert_eq!(member("type"), Some("ping")),
                    Request::PresenceSet { channel, state } => {
                        assert_eq!(member("type"), Some("presence_set"));
                        assert_eq!(member("channel"), Some(channel.as_str()));
                        // Compact JSON of what was sent (absent: null).
                        let sent = obj.get("state").cloned().unwrap_or(Value::Null);
                        assert_eq!(state, &sent.to_string());
                    }
                }
            }
            // Written back canonically, the request reads the same (the id as its JSON text).
            let mut obj = Map::new();
            match &request {
                Request::Subscribe {
                    channel,
                    since,
                    presence,
                    filter,
                    snapshot,
                } => {
                    obj.insert("snapshot".into(), json!(snapshot));
                    if let Some(f) = filter {
                        obj.insert("filter".into(), json!(f));
                    }
                    obj.insert("type".into(), json!("subscribe"));
                    obj.insert("channel".into(), json!(channel));
                    if let Some(s) = since {
                        obj.insert("since".into(), json!(s));
                    }
                    obj.insert("presence".into(), json!(presence));
                }
                Request::Unsubscribe { channel } => {
                    obj.insert("type".into(), json!("unsubscribe"));
                    obj.insert("channel".into(), json!(channel));
                }
                Request::Publish { channel, data } => {
                    obj.insert("type".into(), json!("publish"));
                    obj.insert("channel".into(), json!(channel));
                    obj.insert("data".into(), json!(data));
                }
                Request::Refresh { token } => {
                    obj.insert("type".into(), json!("refresh"));
                    obj.insert("token".into(), json!(token));
                }
                Request::Ping => {
                    obj.insert("type".into(), json!("ping"));
                }
                Request::PresenceSet { channel, state } => {
                    obj.insert("type".into(), json!("presence_set"));
                    obj.insert("channel".into(), json!(channel));
                    let value: Value =
                        serde_json::from_str(state).expect("a state is the JSON text of a value");
                    obj.insert("state".into(), value);
                }
            }
            let body = Value::Object(obj).to_string();
            let again = if id.as_json() == "null" {
                body
            } else {
                format!("{{\"id\":{},{}", id.as_json(), &body[1..])
            };
            match v2_wire::parse(&again) {
                Ok((id2, request2)) => {
                    // A numeric id goes through an f64 today, and serde_json's float reading and
                    // writing do not round-trip exactly (`1.2500000000000001e+32` comes back as
                    // `1.25e+32`): compare string and absent ids only, until numbers are echoed
                    // as written (PROTOCOL.md §2.1).
                    if id.as_json() == "null" || id.as_json().starts_with('"') {
                        assert_eq!(id2, id, "id changed when written back: {again}");
                    }
                    // (A state's numbers go through an f64 too: compare states without any.)
                    let floats = |r: &Request| matches!(r, Request::PresenceSet { state, .. } if state.contains(['.', 'e', 'E']));
                    if !floats(&request) {
                        assert_eq!(
                            request2, request,
                            "request changed when written back: {again}"
                        );
                    }
                }
                Err(e) => panic!("{again:?}, written back from {text:?}, is refused: {e:?}"),
            }
        }
    }
});

/// An id is echoed as JSON: `null`, a string, or a number's text; never anything that could
/// break out of the frame it is pasted into.
fn check_id(id: &str) {
    if id == "null" {
        return;
    }
    if id.starts_with('"') {
        let s: String = serde_json::from_str(id).expect("a string id is a JSON string");
        assert!(
            s.len() <= v2_wire::MAX_ID_LEN,
            "string id of {} bytes",
            s.len()
        );
    } else {
        assert!(
            !id.is_empty()
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)),
            "id {id:?} is not a number's text"
        );
    }
}

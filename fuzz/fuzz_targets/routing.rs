//! Notification routing and the client-message envelope.
//!
//! - `route(payload, "listen")`: if the payload parses as a JSON object with a string `channel`,
//!   the route is that string, else `listen`; and a route other than `listen` is always the
//!   payload's one top-level string `channel`.
//! - `envelope(event, channel, payload, claims, t)` parses as JSON with exactly those fields, and
//!   `claims` are the socket's claims with `message_delivered_at` set to `t`.
//! - `postgrest_envelope` (both shapes) parses as JSON with `claims`/`userClaims` and `payload`.
//! - `error_event` parses as JSON with its fields.
#![no_main]

#[path = "common.rs"]
mod common;

use arbitrary::Arbitrary;
use common::{Json, Text, json_eq};
use libfuzzer_sys::fuzz_target;
use pgws::internals::{ClaimsText, envelope, error_event, postgrest_envelope, route};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::borrow::Cow;

#[derive(Arbitrary, Debug)]
enum Claims {
    Built(Vec<(Text, Json)>),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// A notification payload as PostgreSQL delivers it (text).
    notification: String,
    event: Text,
    channel: Text,
    payload: String,
    claims: Claims,
    delivered_at: f64,
    code: Text,
    has_channel: bool,
}

/// The values of every top-level `channel` key of a JSON object, in order; other values are
/// skipped without being checked (as `route` skips them).
struct TopLevel {
    channels: Vec<Value>,
}

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevel;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
                let mut channels = Vec::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "channel" {
                        channels.push(map.next_value::<Value>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(TopLevel { channels })
            }
        }
        d.deserialize_map(V)
    }
}

fuzz_target!(|input: Input| {
    // Routing.
    let n = input.notification.as_str();
    let routed = route(n, "listen");
    let top = serde_json::from_str::<TopLevel>(n);
    // Sound: a route other than the fallback is the payload's one top-level string `channel`.
    if routed != "listen" {
        let top = top
            .as_ref()
            .expect("routed a payload that is not a JSON object");
        assert_eq!(
            top.channels,
            [Value::String(routed.to_string())],
            "route of {n:?}"
        );
    }
    // Complete: a valid JSON object with one string `channel` routes to it, with anything else
    // (or no `channel`) to the fallback. Known difference, not asserted: with the key twice
    // (`{"channel":"a","channel":"b"}`) pgws routes to the fallback while serde_json's Value,
    // PostgreSQL's jsonb and aeson keep the last one (docs/SECURITY.md, "Fuzzing").
    if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(n) {
        if top.as_ref().is_ok_and(|t| t.channels.len() <= 1) {
            let expected = match o.get("channel") {
                Some(Value::String(c)) => c.as_str(),
                _ => "listen",
            };
            assert_eq!(routed, expected, "route of {n:?}");
        }
    }

    // The envelope.
    let claims: Map<String, Value> = match &input.claims {
        Claims::Built(v) => v.iter().map(|(k, v)| (k.get(), v.get())).collect(),
        Claims::Raw(s) => match serde_json::from_str(s) {
            Ok(m) => m,
            Err(_) => return,
        },
    };
    let (event, channel) = (input.event.get(), input.channel.get());
    // A time in seconds, as pgws passes (the clock). Beyond 1e15 the number is written with all its
    // digits, which serde_json's default float parser may call out of range (-f64::MAX did).
    let delivered_at = if input.delivered_at.is_finite() {
        input.delivered_at % 1e15
    } else {
        input.delivered_at
    };
    let text = envelope(
        &event,
        &channel,
        &input.payload,
        &ClaimsText::new(&claims),
        delivered_at,
    );
    // Without serde_json's recursion limit: claims nested 127 levels deep are accepted in a token,
    // and the envelope adds one level, which serde_json's default limit (128) refuses (pgws's own
    // `route` skips the claims without that limit, see docs/SECURITY.md "Fuzzing").
    let mut de = serde_json::Deserializer::from_str(&text);
    de.disable_recursion_limit();
    let v = Value::deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .unwrap_or_else(|e| panic!("envelope is not JSON ({e}): {text:?}"));
    let o = v.as_object().expect("envelope is an object");
    assert_eq!(o.len(), 4, "envelope fields: {text}");
    assert_eq!(o["channel"], Value::String(channel));
    assert_eq!(o["event"], Value::String(event));
    assert_eq!(o["payload"], Value::String(input.payload.clone()));
    let mut want = claims.clone();
    let t = if delivered_at.is_finite() {
        delivered_at
    } else {
        0.0
    };
    want.insert(
        "message_delivered_at".into(),
        serde_json::Number::from_f64(t).unwrap().into(),
    );
    assert!(
        json_eq(&o["claims"], &Value::Object(want.clone())),
        "claims {:?} != {want:?}",
        o["claims"]
    );
    // The envelope's own route is its channel.
    assert_eq!(route(&text, "listen"), o["channel"].as_str().unwrap());

    // The postgrest-ws shapes: {"claims":…,"payload":…} and the legacy {"userClaims":…,"payload":…}.
    for legacy in [false, true] {
        let text = postgrest_envelope(
            &input.payload,
            &ClaimsText::new(&claims),
            delivered_at,
            legacy,
        );
        let mut de = serde_json::Deserializer::from_str(&text);
        de.disable_recursion_limit();
        let v = Value::deserialize(&mut de)
            .and_then(|v| de.end().map(|()| v))
            .unwrap_or_else(|e| panic!("postgrest envelope is not JSON ({e}): {text:?}"));
        let o = v.as_object().expect("postgrest envelope is an object");
        let key = if legacy { "userClaims" } else { "claims" };
        assert_eq!(o.len(), 2, "postgrest envelope fields: {text}");
        assert_eq!(o["payload"], Value::String(input.payload.clone()));
        assert!(
            json_eq(&o[key], &Value::Object(want.clone())),
            "postgrest claims of {text}"
        );
    }

    // Error events.
    let code = input.code.get();
    let ch = input.has_channel.then_some(input.payload.as_str());
    let e: Value = serde_json::from_str(&error_event(&code, &input.payload, ch)).unwrap();
    assert_eq!(e["event"], "Error");
    assert_eq!(e["code"], Value::String(code));
    assert_eq!(e["message"], Value::String(input.payload.clone()));
    assert_eq!(
        e["channel"],
        ch.map_or(Value::Null, |c| Value::String(c.into()))
    );
});

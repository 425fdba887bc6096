//! The control plane: messages pgws nodes (and operators) send each other on the listen channel,
//! beside the data, that are never delivered to clients.
//!
//! A control message is a JSON object with a `pgws_control` member naming its kind. Two kinds
//! exist: `presence` (nodes exchange their presence tables; pgws writes these itself, always
//! starting with exactly [`PRESENCE_PREFIX`]) and `revoke` (an operator or a trigger revokes
//! access, `{"pgws_control":"revoke","sub":…}`, with any member order and spacing).
//!
//! What this module owns: recognising a control message on the data path, decoding it once into
//! a [`Control`], and handing it to the handler its kind has. Features register their handlers
//! ([`Plane::on_presence`], [`Plane::on_revoke`]) when the server starts; sources and the sink
//! hold a [`Plane`] and know no feature. What it must never do: act on a message itself, or make
//! the data path pay for kinds nobody handles: a message on another channel costs one string
//! comparison, and without authorization by the database a message on the listen channel costs
//! one prefix comparison (presence's fixed prefix).
//!
//! Which messages are taken off the data path (no behaviour changed from before the plane):
//! - presence messages, always, also on a node with presence off (then they are dropped);
//! - with a revocation handler (authorization by the database on): every object on the listen
//!   channel with a `pgws_control` member: revocations go to the handler, unreadable ones and
//!   unknown kinds are dropped with a warning;
//! - without one, any other text is data, delivered as before.

use serde_json::Value;

/// How every presence message begins (pgws writes them, so this is exact).
pub const PRESENCE_PREFIX: &str = "{\"pgws_control\":\"presence\",";

/// Which clients a revocation names; every member given must match (authorization applies it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocation {
    /// The token's `sub`.
    pub sub: Option<String>,
    /// The token's `jti`.
    pub jti: Option<String>,
    /// One of the client's channels.
    pub channel: Option<String>,
    /// The role the client's checks run as.
    pub role: Option<String>,
}

/// A control message, decoded once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control<'a> {
    /// A presence bus message; the text, whose parts presence reads itself.
    Presence(&'a str),
    /// A revocation.
    Revoke(Revocation),
    /// A `pgws_control` message pgws cannot use: why.
    Unreadable(String),
}

/// Reads `payload` as a control message: `None` for data. Only objects whose `pgws_control`
/// member is a member (not text inside a string) count.
pub fn decode(payload: &str) -> Option<Control<'_>> {
    if payload.starts_with(PRESENCE_PREFIX) {
        return Some(Control::Presence(payload));
    }
    // Cheap tests first: almost every message is not a control message.
    if !payload.trim_start().starts_with('{') || !payload.contains("\"pgws_control\"") {
        return None;
    }
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(payload) else {
        return None;
    };
    let kind = map.get("pgws_control")?;
    if kind != "revoke" {
        return Some(Control::Unreadable(format!("unknown pgws_control {kind}")));
    }
    let mut revocation = Revocation::default();
    for (field, slot) in [
        ("sub", &mut revocation.sub),
        ("jti", &mut revocation.jti),
        ("channel", &mut revocation.channel),
        ("role", &mut revocation.role),
    ] {
        match map.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => *slot = Some(s.clone()),
            Some(other) => {
                return Some(Control::Unreadable(format!(
                    "{field} must be a string, got {other}"
                )));
            }
        }
    }
    Some(Control::Revoke(revocation))
}

type PresenceHandler = Box<dyn Fn(&str) + Send + Sync>;
type RevokeHandler = Box<dyn Fn(Revocation) + Send + Sync>;

/// The handlers of one server, by kind; built at start-up, then only read.
pub struct Plane {
    /// The PostgreSQL channel control messages travel on (`PGWS_LISTEN_CHANNEL`).
    listen_channel: String,
    presence: Option<PresenceHandler>,
    revoke: Option<RevokeHandler>,
}

impl Plane {
    /// A plane with no handlers: presence messages are dropped, everything else is data.
    pub fn new(listen_channel: &str) -> Self {
        Self {
            listen_channel: listen_channel.to_string(),
            presence: None,
            revoke: None,
        }
    }

    /// Presence messages go to `handler` (it must not wait: the source's loop calls it).
    pub fn on_presence(&mut self, handler: impl Fn(&str) + Send + Sync + 'static) {
        self.presence = Some(Box::new(handler));
    }

    /// Revocations go to `handler` (it must not wait), and every `pgws_control` object on the
    /// listen channel leaves the data path.
    pub fn on_revoke(&mut self, handler: impl Fn(Revocation) + Send + Sync + 'static) {
        self.revoke = Some(Box::new(handler));
    }

    /// Whether a handler needs the listen channel received even where the data does not
    /// (direct channel mode): presence, whose nodes talk there.
    pub fn needs_listen_channel(&self) -> bool {
        self.presence.is_some()
    }

    /// Whether a message received on `pg_channel` is a control message: then it was handed to
    /// its handler (or dropped) and must not be delivered.
    pub fn intercept(&self, pg_channel: &str, payload: &str) -> bool {
        if pg_channel != self.listen_channel {
            return false;
        }
        if self.revoke.is_none() {
            // Only presence's own messages leave the data path: a prefix comparison.
            if !payload.starts_with(PRESENCE_PREFIX) {
                return false;
            }
            if let Some(handler) = &self.presence {
                handler(payload);
            }
            return true;
        }
        match decode(payload) {
            None => false,
            Some(Control::Presence(text)) => {
                if let Some(handler) = &self.presence {
                    handler(text);
                }
                true
            }
            Some(Control::Revoke(revocation)) => {
                if let Some(handler) = &self.revoke {
                    handler(revocation);
                }
                true
            }
            Some(Control::Unreadable(why)) => {
                tracing::warn!(error = %why, "control message ignored");
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn control_messages_and_ordinary_ones() {
        assert_eq!(decode("{\"channel\":\"chat\",\"payload\":\"hi\"}"), None);
        assert_eq!(decode("pgws_control"), None);
        // A client's text inside an envelope is a string, not a member.
        let envelope = r#"{"channel":"c","event":"WebsocketMessage","payload":"{\"pgws_control\":\"revoke\"}","claims":{}}"#;
        assert_eq!(decode(envelope), None);
        assert_eq!(
            decode(r#"{"pgws_control" : "revoke", "sub": "alice", "role": "web"}"#),
            Some(Control::Revoke(Revocation {
                sub: Some("alice".into()),
                role: Some("web".into()),
                ..Revocation::default()
            }))
        );
        assert_eq!(
            decode(r#"{"pgws_control":"revoke"}"#),
            Some(Control::Revoke(Revocation::default()))
        );
        assert!(matches!(
            decode(r#"{"pgws_control":"grant"}"#),
            Some(Control::Unreadable(_))
        ));
        assert!(matches!(
            decode(r#"{"pgws_control":"revoke","sub":7}"#),
            Some(Control::Unreadable(_))
        ));
        let presence = format!("{PRESENCE_PREFIX}\"node\":\"n\"}}");
        assert_eq!(decode(&presence), Some(Control::Presence(&presence)));
    }

    /// Each kind reaches its handler only; without a revocation handler, revocations are data
    /// and presence messages are still taken off the data path.
    #[test]
    fn handlers_by_kind() {
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let presence = format!("{PRESENCE_PREFIX}\"op\":\"hello\"}}");
        let revoke = r#"{"pgws_control":"revoke","sub":"a"}"#;

        let bare = Plane::new("pgws");
        assert!(bare.intercept("pgws", &presence), "dropped, never data");
        assert!(
            !bare.intercept("pgws", revoke),
            "data without authorization"
        );
        assert!(
            !bare.intercept("other", &presence),
            "only the listen channel"
        );

        let mut plane = Plane::new("pgws");
        let s = seen.clone();
        plane.on_presence(move |p| s.lock().unwrap().push(format!("presence {}", p.len())));
        let s = seen.clone();
        plane.on_revoke(move |r| s.lock().unwrap().push(format!("revoke {:?}", r.sub)));
        assert!(plane.intercept("pgws", &presence));
        assert!(plane.intercept("pgws", revoke));
        assert!(plane.intercept("pgws", r#"{"pgws_control":"grant"}"#));
        assert!(!plane.intercept("pgws", "{\"hello\":1}"));
        assert_eq!(
            *seen.lock().unwrap(),
            [
                format!("presence {}", presence.len()),
                "revoke Some(\"a\")".to_string()
            ]
        );
    }
}

//! Where messages go, decided in one place.
//!
//! - Database → client: a notification on the listen channel goes to the pgws channel named by
//!   its string `channel` field (else to the listen channel's own name); a notification on any
//!   other PostgreSQL channel (direct mode) goes to the channel of that name ([`Router::target`]).
//! - Client → database: which PostgreSQL channel a client message or a server event is NOTIFYed
//!   on, and in which envelope ([`Router::client_message`], [`Router::server_event`]).
//!
//! The settings that decide it (`PGWS_CHANNEL_MODE`, `PGWS_MESSAGE_FORMAT`) are defined here, next
//! to the only code that reads them. Sources and clients ask the router; they never compare modes
//! themselves.

use std::borrow::Cow;

use serde::Deserialize;

use crate::wire::compat::{ClaimsText, envelope, postgrest_envelope};

/// Which PostgreSQL channels reach sockets (`PGWS_CHANNEL_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChannelMode {
    /// Everything through the listen channel, routed by the JSON `channel` field.
    ListenChannel,
    /// Each socket channel is a PostgreSQL channel, LISTENed on demand.
    Direct,
    /// Both at once.
    Both,
}

impl ChannelMode {
    /// Whether the listen channel is LISTENed and routed.
    pub fn uses_listen_channel(self) -> bool {
        self != Self::Direct
    }

    /// Whether socket channels are LISTENed directly.
    pub fn uses_direct(self) -> bool {
        self != Self::ListenChannel
    }
}

/// Shape of the JSON a client message becomes (`PGWS_MESSAGE_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MessageFormat {
    /// `{"channel","event":"WebsocketMessage","payload","claims"}`.
    PostgresWebsockets,
    /// postgrest-ws: `{"claims","payload"}` on the channel itself.
    PostgrestWs,
    /// The first postgrest-ws: `{"userClaims","payload"}` on the channel itself.
    PostgrestWsLegacy,
}

impl MessageFormat {
    /// The setting's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PostgresWebsockets => "postgres-websockets",
            Self::PostgrestWs => "postgrest-ws",
            Self::PostgrestWsLegacy => "postgrest-ws-legacy",
        }
    }
}

/// One message for PostgreSQL: its text and the PostgreSQL channel it goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The PostgreSQL channel; `None`: the listen channel.
    pub pg_channel: Option<String>,
    /// The notification text.
    pub payload: String,
}

/// The routing rules of one server.
#[derive(Debug, Clone)]
pub struct Router {
    mode: ChannelMode,
    format: MessageFormat,
    listen_channel: String,
}

impl Router {
    /// Rules for these settings.
    pub fn new(mode: ChannelMode, format: MessageFormat, listen_channel: &str) -> Self {
        Self {
            mode,
            format,
            listen_channel: listen_channel.to_string(),
        }
    }

    /// The channel mode (sources use it to know what to LISTEN on).
    pub fn mode(&self) -> ChannelMode {
        self.mode
    }

    /// What a client's text sent to `channel` becomes. postgres-websockets: the envelope through
    /// the listen channel; direct mode and the postgrest-ws formats: on the channel itself.
    pub fn client_message(
        &self,
        channel: &str,
        text: &str,
        claims: &ClaimsText,
        at: f64,
    ) -> Outgoing {
        let payload = match self.format {
            MessageFormat::PostgresWebsockets => {
                envelope("WebsocketMessage", channel, text, claims, at)
            }
            MessageFormat::PostgrestWs => postgrest_envelope(text, claims, at, false),
            MessageFormat::PostgrestWsLegacy => postgrest_envelope(text, claims, at, true),
        };
        let on_channel =
            self.mode == ChannelMode::Direct || self.format != MessageFormat::PostgresWebsockets;
        Outgoing {
            pg_channel: on_channel.then(|| channel.to_string()),
            payload,
        }
    }

    /// The PostgreSQL channel for a server event on `channel` (meta events, the meta channel's
    /// `Gap`): the listen channel while it is routed, else the channel itself.
    pub fn server_event(&self, channel: &str) -> Option<String> {
        (!self.mode.uses_listen_channel()).then(|| channel.to_string())
    }

    /// The pgws channel a notification received on `pg_channel` goes to.
    pub fn target<'a>(&self, pg_channel: &'a str, payload: &'a str) -> Cow<'a, str> {
        if self.mode.uses_listen_channel() && pg_channel == self.listen_channel {
            route(payload, pg_channel)
        } else {
            Cow::Borrowed(pg_channel)
        }
    }
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
                        channel = map.next_value::<MaybeStr<'de>>()?.0;
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

/// A JSON value read only for whether it is a string: the string (borrowed from the input when it
/// has no escapes), or `None` for any other value, which is skipped without being built.
struct MaybeStr<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for MaybeStr<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = MaybeStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v))))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(MaybeStr(None))
            }
        }
        d.deserialize_any(Visit)
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
        // Non-string values are skipped whole, whatever their shape; the last key wins.
        for other in [
            r#"{"channel":{"channel":"x"},"payload":1}"#,
            r#"{"channel":[1,"x",{"a":[]}]}"#,
            r#"{"channel":null}"#,
            r#"{"channel":true}"#,
            r#"{"channel":-1.5e3}"#,
            r#"{"channel":"a","channel":{"x":1}}"#,
            r#"{"channel":"a", bad"#,
        ] {
            assert_eq!(route(other, "l"), "l", "{other}");
        }
        assert_eq!(route(r#"{"channel":{"x":1},"channel":"b"}"#, "l"), "b");
        assert!(matches!(
            route(r#"{"channel":"plain"}"#, "l"),
            Cow::Borrowed("plain")
        ));
    }

    #[test]
    fn pg_channel_choice() {
        let claims = ClaimsText::new(&serde_json::Map::new());
        let listen = Router::new(
            ChannelMode::ListenChannel,
            MessageFormat::PostgresWebsockets,
            "l",
        );
        assert_eq!(
            listen.client_message("c", "t", &claims, 1.0).pg_channel,
            None
        );
        assert_eq!(listen.server_event("meta"), None);
        assert_eq!(listen.target("l", r#"{"channel":"c"}"#), "c");
        assert_eq!(listen.target("other", r#"{"channel":"c"}"#), "other");

        let direct = Router::new(ChannelMode::Direct, MessageFormat::PostgresWebsockets, "l");
        assert_eq!(
            direct
                .client_message("c", "t", &claims, 1.0)
                .pg_channel
                .as_deref(),
            Some("c")
        );
        assert_eq!(direct.server_event("meta").as_deref(), Some("meta"));
        // Direct mode does not route the listen channel by its field.
        assert_eq!(direct.target("l", r#"{"channel":"c"}"#), "l");

        let both = Router::new(ChannelMode::Both, MessageFormat::PostgrestWs, "l");
        let out = both.client_message("c", "t", &claims, 1.0);
        assert_eq!(out.pg_channel.as_deref(), Some("c"));
        assert!(out.payload.starts_with("{\"claims\":"));
        assert_eq!(both.server_event("meta"), None);
    }
}

//! Why a v2 request was not done: a [`Code`] (the `code` a client reads and may branch on) and a
//! message in words. Every operation returns it, so a code is one of a closed list, written in
//! one place, and rendered as an `error` (most requests) or a `nack` (publish).

use crate::stream::Frame;
use crate::wire::v2::{self as wire, Id};

/// The codes of refused requests (docs/PROTOCOL.md lists them with their meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The channel's name is not one (empty, too long, control characters).
    BadChannel,
    /// The socket follows the channel already.
    AlreadySubscribed,
    /// `PGWS_MAX_CHANNELS` reached.
    TooManySubscriptions,
    /// Presence asked for while it is off.
    PresenceDisabled,
    /// Unsubscribe from a channel the socket does not follow.
    NotSubscribed,
    /// The token does not allow reading.
    WriteOnly,
    /// The token does not allow writing.
    ReadOnly,
    /// The token does not name the channel.
    NotGranted,
    /// The database refused (authorization by the database).
    NotAuthorized,
    /// The database could not answer.
    DatabaseUnavailable,
    /// Too many requests, bytes or publishes in flight.
    RateLimited,
    /// The message would not fit PostgreSQL's limit (or a presence state its bound).
    TooLarge,
    /// A presence state asked for by a member without a name.
    Anonymous,
    /// A request malformed in a way only the session can see (a `filter` on a channel that is
    /// not a table's).
    BadRequest,
    /// A row subscription to a table that is not in pgws's publication (or no WAL source).
    UnknownTable,
    /// A row subscription whose filter does not parse or does not fit the table's columns.
    BadFilter,
}

impl Code {
    /// The code as clients read it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadChannel => "bad_channel",
            Self::AlreadySubscribed => "already_subscribed",
            Self::TooManySubscriptions => "too_many_subscriptions",
            Self::PresenceDisabled => "presence_disabled",
            Self::NotSubscribed => "not_subscribed",
            Self::WriteOnly => "write_only",
            Self::ReadOnly => "read_only",
            Self::NotGranted => "not_granted",
            Self::NotAuthorized => "not_authorized",
            Self::DatabaseUnavailable => "database_unavailable",
            Self::RateLimited => "rate_limited",
            Self::TooLarge => "too_large",
            Self::Anonymous => "anonymous",
            Self::BadRequest => "bad_request",
            Self::UnknownTable => "unknown_table",
            Self::BadFilter => "bad_filter",
        }
    }
}

/// A refused request: its code and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    /// What kind of refusal.
    pub code: Code,
    /// In words.
    pub message: String,
}

impl Refused {
    /// A refusal with its words.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// As the `error` answer to request `id`.
    pub fn error(&self, id: &Id) -> Frame {
        wire::error(id, self.code.as_str(), &self.message)
    }

    /// As the `nack` of a publish to `channel`.
    pub fn nack(&self, id: &Id, channel: &str) -> Frame {
        wire::nack(id, channel, self.code.as_str(), &self.message)
    }
}

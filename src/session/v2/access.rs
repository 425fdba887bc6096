//! What a v2 socket's token grants, and the one place every channel of a request is checked.
//!
//! A v2 grant comes from the token alone ([`crate::auth::verify`]): its mode, and the channels
//! its claims name, or any channel when they name none (as the original lets such a token open
//! any URL channel). [`check`] is the only function a subscribe or publish goes through: the
//! token's own rules, then database authorization (`src/authz/`, when it is on) for the subject
//! admitted at connection time.
//!
//! What it must never do: let a request reach the hub or the publisher without passing
//! [`check`], or ask the database before the token's own rules (a request the token refuses
//! costs no round trip).

use serde_json::Value;

use crate::auth::{Grant, Mode};
use crate::channel::ChannelName;
use crate::state::AppState;

use super::{Code, Refused};

/// What the socket's current token allows.
#[derive(Debug, Clone)]
pub struct Access {
    /// Read (subscribe) and write (publish).
    pub mode: Mode,
    /// The channels named by the token; `None`: any channel.
    pub channels: Option<Vec<String>>,
    /// `exp` (Unix seconds).
    pub exp: Option<f64>,
    /// The token's `sub` claim. Only it is kept: the claims for envelopes live in the
    /// [`crate::client::Client`] (as text), and a copy of the whole map here cost every idle v2
    /// socket ≈600 B (a B-tree leaf).
    sub: Option<Box<Value>>,
    /// The name presence knows the socket by (the `PGWS_PRESENCE_CLAIM` claim, when presence is
    /// on and the claim is a string): kept alone for the same reason.
    member: Option<Box<str>>,
}

impl Access {
    /// The grant of a v2 token; `presence_claim` names the claim presence reads (`None`:
    /// presence is off).
    pub fn new(grant: &Grant, presence_claim: Option<&str>) -> Self {
        Self {
            mode: grant.mode,
            channels: (!grant.channels.is_empty()).then(|| grant.channels.clone()),
            exp: grant.exp,
            sub: grant.claims.get("sub").cloned().map(Box::new),
            member: presence_claim
                .and_then(|claim| grant.claims.get(claim))
                .and_then(Value::as_str)
                .map(Into::into),
        }
    }

    /// Whether the token names `channel` (or names none).
    pub fn names(&self, channel: &str) -> bool {
        match &self.channels {
            Some(list) => list.iter().any(|c| c == channel),
            // "Any channel" never includes a table's channel: the token must name it.
            None => !crate::channel::is_table(channel),
        }
    }

    /// The token's subject (refreshes must keep it: the per-subject slot is held for it).
    pub fn sub(&self) -> Option<&Value> {
        self.sub.as_deref()
    }

    /// The socket's name in presence (`None`: anonymous).
    pub fn member(&self) -> Option<&str> {
        self.member.as_deref()
    }
}

/// What a request wants to do with a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Receive its messages.
    Subscribe,
    /// Send to it.
    Publish,
}

/// May the socket do `action` with `channel`? The token's mode and channels first, then (when
/// it is wired) the database's answer for this token and channel.
pub async fn check(
    _state: &AppState,
    authz: Option<&crate::authz::Attached>,
    access: &Access,
    channel: &ChannelName,
    action: Action,
) -> Result<(), Refused> {
    match action {
        Action::Subscribe if !access.mode.read => {
            return Err(Refused::new(
                Code::WriteOnly,
                "this token does not allow reading (mode is not 'r' or 'rw')",
            ));
        }
        Action::Publish if !access.mode.write => {
            return Err(Refused::new(
                Code::ReadOnly,
                "this token does not allow writing (mode is not 'w' or 'rw')",
            ));
        }
        _ => {}
    }
    // A table's channel carries its table's changes, decoded from the WAL, and nothing else:
    // a published message there could pass for a row change.
    if action == Action::Publish && crate::channel::is_table(channel) {
        return Err(Refused::new(
            Code::NotGranted,
            "a table's channel carries its table's changes only: it cannot be published to",
        ));
    }
    if !access.names(channel) {
        return Err(Refused::new(
            Code::NotGranted,
            format!(
                "this token does not grant the channel {}",
                Value::String(channel.to_string())
            ),
        ));
    }
    // Database authorization (src/authz/), when it is on: the subject is the one admitted at
    // connection time (a refresh does not change it: `sub` must stay the same).
    if let Some(a) = authz {
        let mode = match action {
            // The mode of this one request, not the token's: a `rw` token that subscribes is
            // checked for reading only.
            Action::Subscribe => "r",
            Action::Publish => "w",
        };
        a.authorizer()
            .check(a.subject(), channel, mode)
            .await
            .map_err(|e| match e {
                crate::authz::AuthzRefusal::Forbidden(reason) => {
                    Refused::new(Code::NotAuthorized, reason)
                }
                other => Refused::new(Code::DatabaseUnavailable, other.to_string()),
            })?;
    }
    Ok(())
}

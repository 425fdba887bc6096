//! Protocol v2's handler (`pgws.v2`, docs/PROTOCOL.md): a socket that negotiated it speaks JSON
//! requests and events instead of the original's bare texts. It subscribes and unsubscribes at
//! run time (each checked against its token's grant by [`access::check`]), resumes each channel
//! from a position, publishes with an acknowledgement, and replaces its token in band before
//! `exp`. The session loop ([`super::serve`]) carries it; answers to publishes in flight arrive
//! through [`Handler::next_answer`], in the order the publishes were sent.
//!
//! Every request is answered exactly once: by its success frame, or by `nack` (publish) or
//! `error` (the others and frames that are not requests). A bad frame costs only its own
//! answer: nothing in it can end the socket except what ends any websocket (a frame over
//! `PGWS_MAX_MESSAGE_SIZE`: 1009; invalid UTF-8: 1007).

use std::future::Future;
use std::pin::Pin;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;

pub mod access;
mod ping;
mod presence;
mod publish;
mod refresh;
mod refused;
mod rows;
mod subscribe;
mod unsubscribe;

pub use refused::{Code, Refused};

use super::Handler;
use crate::client::Client;
use crate::presence::Membership;
use crate::stream::Frame;
use crate::wire::v2::{self as wire, Id, Request};
use access::Access;

/// A publish's answer, owed until PostgreSQL (or the write function) answered.
type Answer = Pin<Box<dyn Future<Output = Option<Frame>> + Send>>;

/// What one v2 socket holds beyond its [`Client`].
pub struct Session {
    /// Boxed: moved from the accept path through two async fns, an inline `Access` would sit in
    /// each of their states (every idle v2 socket holds them).
    access: Box<Access>,
    /// Publishes awaiting PostgreSQL, in the order sent; made at the first publish and dropped
    /// once all are answered (an empty `FuturesOrdered` still holds ≈150 B of heap, on every
    /// idle socket).
    pending: Option<Box<FuturesOrdered<Answer>>>,
    /// Each subscription's place in its channel's presence (dropped: it leaves). A list, not a
    /// map keyed by channel: a membership names its channel already, and a map entry per
    /// subscription cost ≈100 B more (a key's copy and the table's spare room); looked up only
    /// when a channel is left. Boxed, and made at the first membership, so that an idle socket
    /// holds one pointer for it.
    #[allow(clippy::box_collection)]
    presence: Option<Box<Vec<Membership>>>,
    /// The allowance of `presence_set` (made at the first one: boxed, one pointer when idle).
    state_rate: Option<Box<presence::Bucket>>,
}

impl Session {
    /// The handler of a socket that negotiated `pgws.v2`, with what its token grants.
    pub fn new(access: Box<Access>) -> Self {
        Self {
            access,
            pending: None,
            presence: None,
            state_rate: None,
        }
    }
}

impl Handler for Session {
    fn greet(&mut self, client: &Client) {
        client.outbox().push(wire::welcome(
            self.access.mode.as_str(),
            self.access.channels.as_deref(),
            self.access.exp,
            client.state().config.max_channels,
            client.state().config.max_message_size,
        ));
    }

    async fn text(&mut self, client: &mut Client, text: &str) {
        self.handle(client, text).await;
    }

    async fn binary(&mut self, client: &mut Client, _bytes: &[u8]) {
        tracing::info!(conn = client.id(), "v2: binary frame refused");
        client.outbox().push(wire::error(
            &Id::none(),
            "bad_request",
            "pgws.v2 requests are text frames; a binary frame is not read",
        ));
    }

    fn awaiting(&self) -> bool {
        self.pending.is_some()
    }

    async fn next_answer(&mut self) -> Option<Frame> {
        let answer = match &mut self.pending {
            Some(p) => p.next().await.flatten(),
            None => None,
        };
        if self.pending.as_ref().is_some_and(|p| p.is_empty()) {
            self.pending = None;
        }
        answer
    }
}

impl Session {
    /// Drops the presence membership of `channel` (it leaves the channel's presence).
    fn leave_presence(&mut self, channel: &str) {
        if let Some(presence) = &mut self.presence {
            presence.retain(|m| m.channel() != channel);
        }
    }

    /// Answers one text frame.
    async fn handle(&mut self, client: &mut Client, text: &str) {
        let (id, request) = match wire::parse(text) {
            Ok(r) => r,
            Err(bad) => {
                tracing::info!(conn = client.id(), code = bad.code, error = %bad.message, "v2: malformed frame");
                client
                    .outbox()
                    .push(wire::error(&bad.id, bad.code, &bad.message));
                return;
            }
        };
        if let Err(message) = client.check_rate(text.len()) {
            let refused = Refused::new(Code::RateLimited, message);
            let frame = match &request {
                Request::Publish { channel, .. } => refused.nack(&id, channel),
                _ => refused.error(&id),
            };
            client.outbox().push(frame);
            return;
        }
        match request {
            Request::Subscribe {
                channel,
                since,
                presence,
                filter,
                snapshot,
            } => {
                if let Err(refused) = self
                    .subscribe(client, &id, &channel, since, presence, filter, snapshot)
                    .await
                {
                    client.outbox().push(refused.error(&id));
                }
            }
            Request::Unsubscribe { channel } => {
                let frame = match self.unsubscribe(client, &id, &channel) {
                    Ok(frame) => frame,
                    Err(refused) => refused.error(&id),
                };
                client.outbox().push(frame);
            }
            Request::Publish { channel, data } => {
                if let Err(refused) = self.publish(client, &id, &channel, &data).await {
                    client.outbox().push(refused.nack(&id, &channel));
                }
            }
            Request::Refresh { token } => {
                let frame = self.refresh(client, &id, &token).await;
                client.outbox().push(frame);
            }
            Request::Ping => {
                client.outbox().push(ping::answer(&id));
            }
            Request::PresenceSet { channel, state } => {
                let frame = match self.presence_set(client, &id, &channel, &state) {
                    Ok(frame) => frame,
                    Err(refused) => refused.error(&id),
                };
                client.outbox().push(frame);
            }
        }
    }
}

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
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use serde_json::Value;

pub mod access;

use super::Handler;
use crate::auth::{self, AuthError};
use crate::channel::ChannelName;
use crate::client::Client;
use crate::presence::Membership;
use crate::publish::{Outcome, Publish, PublishError};
use crate::stream::{Frame, ResumeFrom};
use crate::wire::v2::{self as wire, Id, Request};
use access::{Access, Action};

/// How long a publish waits for PostgreSQL before it is answered `database_unavailable`.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Publishes awaiting PostgreSQL on one socket; more are answered `rate_limited`.
const MAX_PENDING: usize = 1024;
/// How long a subscribe from a position this node has not read yet waits for it (WAL source).
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);
/// Longest `since` read (longer is not a position: a `gap` with `unknown_position`).
const MAX_SINCE: usize = 256;

type Answer = Pin<Box<dyn Future<Output = Frame> + Send>>;

/// A publish's outcome as its `ack` or `nack`: the write function's refusal with its code and
/// SQLSTATE; `too_large` when PostgreSQL found the notification too long, `shutting_down` when
/// the pool is closed, `database_unavailable` for any other failure (no connection, the
/// statement failed, no answer in time).
fn render(id: &Id, channel: &str, outcome: Outcome) -> Frame {
    match outcome {
        Ok(_) => wire::ack(id, channel, None),
        Err(PublishError::Refused(e)) => wire::nack_sql(
            id,
            channel,
            e.code.as_str(),
            &e.message,
            e.sqlstate.as_deref(),
        ),
        Err(e) => {
            let code = match e {
                PublishError::TooLarge(_) => "too_large",
                PublishError::ShuttingDown => "shutting_down",
                _ => "database_unavailable",
            };
            wire::nack(id, channel, code, &e.to_string())
        }
    }
}

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
}

impl Session {
    /// The handler of a socket that negotiated `pgws.v2`, with what its token grants.
    pub fn new(access: Box<Access>) -> Self {
        Self {
            access,
            pending: None,
            presence: None,
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
            Some(p) => p.next().await,
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
            let frame = match &request {
                Request::Publish { channel, .. } => {
                    wire::nack(&id, channel, "rate_limited", &message)
                }
                _ => wire::error(&id, "rate_limited", &message),
            };
            client.outbox().push(frame);
            return;
        }
        match request {
            Request::Subscribe {
                channel,
                since,
                presence,
            } => {
                if let Err((code, message)) =
                    self.subscribe(client, &id, &channel, since, presence).await
                {
                    client.outbox().push(wire::error(&id, code, &message));
                }
            }
            Request::Unsubscribe { channel } => {
                let frame = if client.part(&channel) {
                    self.leave_presence(&channel);
                    wire::unsubscribed(&id, &channel)
                } else {
                    wire::error(
                        &id,
                        "not_subscribed",
                        &format!(
                            "this socket does not follow the channel {}",
                            Value::String(channel.clone())
                        ),
                    )
                };
                client.outbox().push(frame);
            }
            Request::Publish { channel, data } => {
                if let Err((code, message)) = self.publish(client, &id, &channel, &data).await {
                    client
                        .outbox()
                        .push(wire::nack(&id, &channel, code, &message));
                }
            }
            Request::Refresh { token } => {
                let frame = self.refresh(client, &id, &token).await;
                client.outbox().push(frame);
            }
            Request::Ping => {
                client.outbox().push(wire::pong(&id));
            }
        }
    }

    async fn subscribe(
        &mut self,
        client: &mut Client,
        id: &Id,
        channel: &str,
        since: Option<String>,
        presence: bool,
    ) -> Result<(), (&'static str, String)> {
        if presence && client.state().presence.is_none() {
            return Err((
                "presence_disabled",
                "presence is off on this server (PGWS_PRESENCE=false)".into(),
            ));
        }
        let name = ChannelName::new(channel).map_err(|e| ("bad_channel", e.client_text()))?;
        if client.channels().contains(&name) {
            return Err((
                "already_subscribed",
                "this socket already follows that channel".into(),
            ));
        }
        let max = client.state().config.max_channels;
        if client.channels().len() >= max {
            return Err((
                "too_many_subscriptions",
                format!("a socket follows at most {max} channels (PGWS_MAX_CHANNELS)"),
            ));
        }
        access::check(
            client.state(),
            client.authz(),
            &self.access,
            &name,
            Action::Subscribe,
        )
        .await
        .map_err(|d| (d.code, d.message))?;
        let from = since.filter(|s| !s.trim().is_empty()).map(|s| {
            if s.len() > MAX_SINCE {
                ResumeFrom::Unknown
            } else {
                ResumeFrom::parse(&s)
            }
        });
        if let Some(ResumeFrom::At(p)) = from {
            client.state().hub.wait_for(p, CATCH_UP_WAIT).await;
        }
        // In direct mode the source LISTENs first, so that "subscribed" means everything sent
        // from then on arrives.
        if !client
            .state()
            .source
            .follow(std::slice::from_ref(&name))
            .await
        {
            tracing::warn!(
                conn = client.id(),
                "LISTEN not confirmed within 5 s; subscribed anyway"
            );
        }
        // Presence joins right after the answer is queued, under the hub's lock: the snapshot
        // (if asked for) is the frame after `subscribed`.
        let hub_presence = client.state().presence.clone();
        let outbox = client.outbox_handle().clone();
        let conn = client.id();
        let member = self.access.member();
        let mut membership = None;
        let resumed = client.join(
            name.clone(),
            from,
            wire::resume_gap,
            |position, resumed| wire::subscribed(id, channel, position, resumed.replayed),
            || {
                membership = hub_presence
                    .map(|p| p.join(channel, member, presence.then_some((conn, &outbox))));
            },
        );
        if let Some(m) = membership {
            self.presence.get_or_insert_default().push(m);
        }
        if from.is_some() {
            tracing::info!(
                conn = client.id(),
                channel,
                replayed = resumed.replayed,
                gap = resumed.gap,
                "v2: resumed"
            );
        }
        Ok(())
    }

    async fn publish(
        &mut self,
        client: &mut Client,
        id: &Id,
        channel: &str,
        data: &str,
    ) -> Result<(), (&'static str, String)> {
        let name = ChannelName::new(channel).map_err(|e| ("bad_channel", e.client_text()))?;
        access::check(
            client.state(),
            client.authz(),
            &self.access,
            &name,
            Action::Publish,
        )
        .await
        .map_err(|d| (d.code, d.message))?;
        if self.pending.as_ref().map_or(0, |p| p.len()) >= MAX_PENDING {
            return Err((
                "rate_limited",
                format!("{MAX_PENDING} publishes of this socket already await PostgreSQL"),
            ));
        }
        // The write permission was checked above (`access::check`), once. With a write function
        // (authorization by the database), the database answers instead of a NOTIFY: its
        // refusal is the nack, with its SQLSTATE.
        let request = client
            .publish_request(&name, data)
            .map_err(|too_large| ("too_large", too_large.message(data.len())))?;
        let (id, channel) = (id.clone(), channel.to_string());
        let answer: Answer = if matches!(request, Publish::Write { .. }) {
            // Waiting for a write slot happens in the answer, not here: the socket keeps
            // serving its other requests meanwhile.
            let publisher = client.state().publisher.clone();
            let key = client.id();
            Box::pin(async move {
                let outcome = publisher.publish(key, request).await.await;
                render(&id, &channel, outcome)
            })
        } else {
            let pending = client.state().publisher.publish(client.id(), request).await;
            Box::pin(async move { render(&id, &channel, pending.within(ANSWER_TIMEOUT).await) })
        };
        self.pending.get_or_insert_default().push_back(answer);
        Ok(())
    }

    /// Replaces the token: re-checks every subscription under the new grant (leaving, with a
    /// `left` event, those it no longer allows), then answers `refreshed`. A token that does not
    /// verify is answered with an error and changes nothing.
    async fn refresh(&mut self, client: &mut Client, id: &Id, token: &str) -> Frame {
        let state = client.state();
        let grant = match auth::verify(
            &state.keys(),
            &state.config.rules,
            token,
            auth::now_seconds(),
        ) {
            Ok(g) => g,
            Err(AuthError::Expired) => {
                return wire::error(
                    id,
                    "token_expired",
                    "the new token has expired already; the current one stays until its exp",
                );
            }
            Err(e) => {
                tracing::info!(conn = client.id(), error = %e, "v2: refresh refused");
                return wire::error(
                    id,
                    "bad_token",
                    &format!("{e}; the current token stays until its exp"),
                );
            }
        };
        let access = Access::new(&grant, state.presence.as_ref().map(|p| p.claim()));
        if access.sub() != self.access.sub() {
            return wire::error(
                id,
                "subject_changed",
                "the new token's sub differs from the current one's; open a new socket for another subject",
            );
        }
        let mut gone = Vec::new();
        for channel in client.channels().to_vec() {
            if let Err(denied) = access::check(
                client.state(),
                client.authz(),
                &access,
                &channel,
                Action::Subscribe,
            )
            .await
            {
                gone.push((channel, denied));
            }
        }
        for (channel, denied) in gone {
            client.part(&channel);
            self.leave_presence(&channel);
            client
                .outbox()
                .push(wire::left(&channel, denied.code, &denied.message));
        }
        client.regrant(access.mode, access.exp, &grant.claims);
        *self.access = access;
        wire::refreshed(
            id,
            self.access.mode.as_str(),
            self.access.channels.as_deref(),
            self.access.exp,
        )
    }
}

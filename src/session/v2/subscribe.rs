//! `subscribe`: join a channel, optionally resuming after a position, optionally watching its
//! presence. Checked against the token (and the database) first; answered `subscribed` after
//! the replay, with the snapshot of presence right after it when asked for.

use std::time::Duration;

use super::access::{self, Action};
use super::{Code, Refused, Session};
use crate::channel::ChannelName;
use crate::client::Client;
use crate::stream::ResumeFrom;
use crate::wire::v2::{self as wire, Id};

/// How long a subscribe from a position this node has not read yet waits for it (WAL source).
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);
/// Longest `since` read (longer is not a position: a `gap` with `unknown_position`).
const MAX_SINCE: usize = 256;

impl Session {
    /// Joins `channel` for the client (see the module header); `Err`: the `error` to answer.
    pub(super) async fn subscribe(
        &mut self,
        client: &mut Client,
        id: &Id,
        channel: &str,
        since: Option<String>,
        presence: bool,
    ) -> Result<(), Refused> {
        if presence && client.state().presence.is_none() {
            return Err(Refused::new(
                Code::PresenceDisabled,
                "presence is off on this server (PGWS_PRESENCE=false)",
            ));
        }
        let name = ChannelName::new(channel)
            .map_err(|e| Refused::new(Code::BadChannel, e.client_text()))?;
        if client.channels().contains(&name) {
            return Err(Refused::new(
                Code::AlreadySubscribed,
                "this socket already follows that channel",
            ));
        }
        let max = client.state().config.max_channels;
        if client.channels().len() >= max {
            return Err(Refused::new(
                Code::TooManySubscriptions,
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
        .await?;
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
}

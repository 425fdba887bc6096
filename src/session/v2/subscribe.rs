//! `subscribe`: join a channel, optionally resuming after a position, optionally watching its
//! presence. Checked against the token (and the database) first; answered `subscribed` after
//! the replay, with the snapshot of presence right after it when asked for.
//!
//! What it owns: the order of the steps of one subscribe, from the request's fields to the
//! `subscribed` answer. What it must never do: answer before the replay is queued (the answer's
//! position is what the client resumes from next), subscribe a channel the token or the
//! database does not allow (every check runs before the hub is touched), or leave the socket
//! half-subscribed (a refusal returns before any state changes).
//!
//! Why the checks come in this order: the cheap, local refusals first (presence off, a bad
//! name, already subscribed, too many), then [`access::check`], which may ask the database;
//! only then the waits (catching up to `since`, the source's LISTEN) that a refused request
//! should never cost.

use std::time::Duration;

use super::access::{self, Action};
use super::{Code, Refused, Session, rows};
use crate::channel::ChannelName;
use crate::client::Client;
use crate::stream::ResumeFrom;
use crate::wire::v2::{self as wire, Id};

/// How long a subscribe from a position this node has not read yet waits for it (WAL source).
///
/// The same wait as a resume at the handshake (`admission`): after it, a position still
/// ahead is answered as a `gap`, not waited for.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);
/// Longest `since` read (longer is not a position: a `gap` with `unknown_position`).
///
/// The same bound as the handshake's `Last-Event-ID`, far above a valid position's length.
const MAX_SINCE: usize = 256;

impl Session {
    /// Joins `channel` for the client (see the module header); `Err`: the `error` to answer.
    // The request's members one by one: each is read at its own step below.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn subscribe(
        &mut self,
        client: &mut Client,
        id: &Id,
        channel: &str,
        since: Option<String>,
        presence: bool,
        filter: Option<String>,
        snapshot: bool,
    ) -> Result<(), Refused> {
        if presence && client.state().presence.is_none() {
            return Err(Refused::new(
                Code::PresenceDisabled,
                "presence is off on this server (PGWS_PRESENCE=false)",
            ));
        }
        let name = ChannelName::new(channel)
            .map_err(|e| Refused::new(Code::BadChannel, e.client_text()))?;
        // Refused rather than ignored: a second join would put the outbox in the channel twice
        // (every message delivered twice), and the client's state would disagree with ours.
        if client.channels().contains(&name) {
            return Err(Refused::new(
                Code::AlreadySubscribed,
                "this socket already follows that channel",
            ));
        }
        // The same limit as a compat socket's granted channels, counted over the live set.
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
        // A table's channel is followed through a row subscription (filter, columns, key);
        // bound before anything is joined, so a bad filter changes nothing.
        let (view, pending) = if crate::channel::is_table(channel) {
            let prepared =
                rows::subscription(client.state(), channel, filter.as_deref().unwrap_or(""))
                    .await?;
            let (view, pending) = rows::split(client, prepared, snapshot);
            (Some(view), pending)
        } else if filter.is_some() || snapshot {
            return Err(Refused::new(
                Code::BadRequest,
                "\"filter\" and \"snapshot\" apply to table channels only (table:<schema>.<table>)",
            ));
        } else {
            (None, None)
        };
        // An empty `since` means "no resume", as an empty `Last-Event-ID` does.
        let from = since.filter(|s| !s.trim().is_empty()).map(|s| {
            if s.len() > MAX_SINCE {
                ResumeFrom::Unknown
            } else {
                ResumeFrom::parse(&s)
            }
        });
        // Under per-row authorization a resume is not exact: the kept changes were decided for
        // the cohorts of their time, which may not include this subscriber's. Said with a gap
        // (before anything else of the channel); a snapshot heals it.
        let rls = view.is_some() && client.state().rls.is_some() && client.authz().is_some();
        let from = if rls && from.is_some() {
            client.outbox().push(wire::authorization_gap(
                channel,
                "a resume under per-row authorization is not exact: changes since the position are not replayed (subscribe with \"snapshot\": true)",
            ));
            None
        } else {
            from
        };
        if let Some(ResumeFrom::At(p)) = from {
            // Only a WAL source can be behind a position it will reach (see `Hub::wait_for`); for
            // NOTIFY this returns at once.
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
        // Cloned out of the client before `join` borrows it mutably; the closure below runs
        // under the hub's write lock, so it only records the membership (no await, no I/O).
        let hub_presence = client.state().presence.clone();
        let outbox = client.outbox_handle().clone();
        let conn = client.id();
        let member = self.access.member();
        // Every socket with presence on joins the channel's member list (it is counted); only
        // one that asked (`presence: true`) gets the snapshot and the join/leave events.
        let mut membership = None;
        let resumed = client.join(
            name.clone(),
            view,
            from,
            wire::resume_gap,
            |position, resumed| {
                // A snapshot comes unless the resume was exact.
                let snapshot = snapshot.then_some(from.is_none() || resumed.gap);
                wire::subscribed(id, channel, position, resumed.replayed, snapshot)
            },
            || {
                membership = hub_presence
                    .map(|p| p.join(channel, member, presence.then_some((conn, &outbox))));
            },
        );
        // Kept by the session so that unsubscribe, a refresh that revokes the channel, or the
        // end of the socket leaves presence too.
        if let Some(m) = membership {
            self.presence.get_or_insert_default().push(m);
        }
        if let Some(pending) = pending {
            if from.is_some() && !resumed.gap {
                rows::release_now(client, channel);
            } else {
                self.pending
                    .get_or_insert_default()
                    .push_back(rows::read(client, channel, pending));
            }
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

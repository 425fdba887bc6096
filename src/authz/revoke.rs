//! Live revocation: control messages, the registry of open clients, and re-checks.
//!
//! A control message is a JSON object on the listen channel (`pg_notify(<listen channel>, …)`),
//! or a logical message with the listen channel as prefix (`pg_logical_emit_message(true,
//! <listen channel>, …)`, WAL source), with a member `"pgws_control": "revoke"` and any of `sub`,
//! `jti`, `channel`, `role` (strings; all that are present must match; none: every client):
//!
//! ```json
//! {"pgws_control": "revoke", "sub": "alice"}
//! ```
//!
//! It cannot be confused with an ordinary message: pgws's own envelopes (client messages, meta
//! events) never have a `pgws_control` member, and a message with one is never delivered to
//! clients (when authorization is on). Anyone who can NOTIFY the listen channel can send one, but
//! a revocation only ever takes access away: it makes pgws ask the database again.
//!
//! On receipt every node drops the matching cache entries and re-checks the matching open
//! clients against the check function (each distinct (claims, channel, mode) once); a client
//! refused now is closed with [`super::CLOSE_REVOKED`] (websocket close frame, SSE `close`
//! event). A check that cannot run (database down) keeps the client open and is logged: the next
//! revocation or periodic re-check asks again. Without a check function there is nothing to ask,
//! and every matching client is closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::Semaphore;

use super::{Authorizer, AuthzRefusal, CLOSE_REVOKED, REVOKED_REASON, Subject};
use crate::channel::ChannelName;
use crate::stream::Outbox;

/// Which clients a revocation names (every member given must match): the control plane's
/// [`crate::control::Revocation`], matched against subjects here.
pub use crate::control::Revocation as Selector;

impl Selector {
    /// Whether a subject (and, when given, a channel) matches.
    pub fn matches(&self, s: &Subject, channel: Option<&str>) -> bool {
        let same = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        same(&self.sub, s.sub.as_deref())
            && same(&self.jti, s.jti.as_deref())
            && same(&self.role, Some(&s.role))
            && (channel.is_none() || same(&self.channel, channel))
    }
}

/// One open client, as re-checks need it.
struct Watched {
    subject: Arc<Subject>,
    channels: Box<[ChannelName]>,
    /// The mode admission checked the channels in (`r` for streams and v2 subscriptions, the
    /// token's mode for original-protocol websockets): re-checks ask the same question.
    mode: &'static str,
    outbox: Weak<Outbox>,
}

/// The open clients of this node, by client id.
#[derive(Default)]
pub struct Registry {
    clients: Mutex<HashMap<u64, Watched>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Watched>> {
        // Inserts and removals only: a poisoned lock is still consistent.
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A client's part of authorization: its subject (for writes and run-time checks) and its
/// registration, removed when this is dropped.
pub struct Attached {
    authorizer: Arc<Authorizer>,
    id: u64,
    subject: Arc<Subject>,
    /// Bounds the client's writes in flight; made at its first write.
    pub(super) write_slots: OnceLock<Arc<Semaphore>>,
}

pub(super) fn attach(
    authorizer: &Arc<Authorizer>,
    id: u64,
    subject: Arc<Subject>,
    channels: &[ChannelName],
    mode: &'static str,
    outbox: &Arc<Outbox>,
) -> Attached {
    authorizer.registry.lock().insert(
        id,
        Watched {
            subject: subject.clone(),
            channels: channels.into(),
            mode,
            outbox: Arc::downgrade(outbox),
        },
    );
    Attached {
        authorizer: authorizer.clone(),
        id,
        subject,
        write_slots: OnceLock::new(),
    }
}

impl Attached {
    /// Who the client is.
    pub fn subject(&self) -> &Arc<Subject> {
        &self.subject
    }

    /// The authorizer (run-time checks, writes).
    pub fn authorizer(&self) -> &Arc<Authorizer> {
        &self.authorizer
    }

    /// Replaces the channels re-checks look at (run-time subscribes and unsubscribes).
    pub fn set_channels(&self, channels: &[ChannelName]) {
        if let Some(w) = self.authorizer.registry.lock().get_mut(&self.id) {
            w.channels = channels.into();
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.authorizer.registry.lock().remove(&self.id);
    }
}

/// Re-checks the open clients `selector` matches; closes those refused.
pub(super) async fn recheck(authorizer: &Arc<Authorizer>, selector: &Selector) {
    // One database check per distinct (claims, channel, mode), however many sockets share it.
    type Key = (Arc<str>, ChannelName, &'static str);
    let mut groups: HashMap<Key, (Arc<Subject>, Vec<Weak<Outbox>>)> = HashMap::new();
    {
        let clients = authorizer.registry.lock();
        for w in clients.values() {
            if !selector.matches(&w.subject, None) {
                continue;
            }
            for channel in w.channels.iter() {
                if selector
                    .channel
                    .as_deref()
                    .is_some_and(|c| c != channel.as_str())
                {
                    continue;
                }
                groups
                    .entry((w.subject.claims.clone(), channel.clone(), w.mode))
                    .or_insert_with(|| (w.subject.clone(), Vec::new()))
                    .1
                    .push(w.outbox.clone());
            }
        }
    }
    if groups.is_empty() {
        return;
    }
    let parallel = authorizer.settings.pool_size.max(1) * 2;
    let mut work = Vec::with_capacity(groups.len());
    for ((_, channel, mode), (subject, outboxes)) in groups {
        work.push(recheck_group(
            authorizer.clone(),
            channel,
            mode,
            subject,
            outboxes,
        ));
    }
    let closed: Vec<usize> = futures_util::stream::iter(work)
        .buffer_unordered(parallel)
        .collect()
        .await;
    let closed: usize = closed.iter().sum();
    authorizer.metrics.revoked.inc_by(closed as u64);
}

/// Re-checks one (claims, channel, mode) and closes its clients when refused; how many closed.
async fn recheck_group(
    authorizer: Arc<Authorizer>,
    channel: ChannelName,
    mode: &'static str,
    subject: Arc<Subject>,
    outboxes: Vec<Weak<Outbox>>,
) -> usize {
    let verdict = if authorizer.settings.check_function.is_none() {
        Err(AuthzRefusal::Forbidden("revoked".into()))
    } else {
        authorizer
            .check_uncached(&subject, channel.as_str(), mode)
            .await
    };
    match verdict {
        Ok(()) => 0,
        Err(AuthzRefusal::Forbidden(reason)) => {
            let mut n = 0;
            for outbox in outboxes.iter().filter_map(Weak::upgrade) {
                if outbox.end(CLOSE_REVOKED, REVOKED_REASON) {
                    n += 1;
                }
            }
            tracing::info!(
                channel = %channel,
                sub = subject.sub.as_deref().unwrap_or(""),
                clients = n,
                reason = %reason,
                "access revoked"
            );
            n
        }
        Err(e @ AuthzRefusal::Unavailable(_)) => {
            tracing::warn!(channel = %channel, error = %e, "re-check could not run; the clients stay open");
            0
        }
    }
}

/// Re-checks every open client every `every` (`PGWS_AUTHZ_RECHECK_INTERVAL`), starting from an
/// empty cache each time.
pub(super) async fn periodic(
    authorizer: Weak<Authorizer>,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(authorizer) = authorizer.upgrade() else {
            return;
        };
        authorizer.cache.clear();
        recheck(&authorizer, &Selector::default()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_every_field_given() {
        let s = Subject {
            claims: "{}".into(),
            role: "web".into(),
            sub: Some("alice".into()),
            jti: Some("t1".into()),
            exp: None,
        };
        let sel = |sub: Option<&str>, channel: Option<&str>| Selector {
            sub: sub.map(Into::into),
            channel: channel.map(Into::into),
            ..Selector::default()
        };
        assert!(Selector::default().matches(&s, Some("chat")));
        assert!(sel(Some("alice"), None).matches(&s, Some("chat")));
        assert!(!sel(Some("bob"), None).matches(&s, Some("chat")));
        assert!(sel(Some("alice"), Some("chat")).matches(&s, Some("chat")));
        assert!(!sel(Some("alice"), Some("chat")).matches(&s, Some("other")));
        assert!(
            !Selector {
                role: Some("anon".into()),
                ..Selector::default()
            }
            .matches(&s, None)
        );
    }
}

//! The client core: what every connected client is and does, whatever carries it.
//!
//! A [`Client`] owns its subscriptions (hub entries and, in direct mode, the source's interest),
//! its outbox, its token's grant and expiry, its publishing (envelope, size check, rate limits,
//! answers for what it could not publish) and its meta events. A transport (the websocket today;
//! Server-Sent Events beside it) owns only the wire: it accepts the connection, drains the
//! outbox into frames of its own encoding, reads what the client sends and hands text to
//! [`Client::publish`], and decides how to say goodbye.
//!
//! What a client must never do: block the hub (it is fed through its bounded outbox only), talk
//! to PostgreSQL except through the publisher, or know about websocket frames or HTTP.
//!
//! Lifecycle: [`Client::open`] subscribes before the transport completes its handshake (so that
//! everything routed after the client sees the handshake complete is delivered), [`Client::start`]
//! publishes `ConnectionOpen`, and [`Client::finish`] unsubscribes and publishes
//! `ConnectionClose`. Dropping a client also unsubscribes (idempotent), so a transport that fails
//! half-way cannot leave a subscription behind.
//!
//! Who calls what: the session loop (`session/`) owns the `Client` and calls it from its one
//! task; the hub, presence and authorization only ever reach the client through its shared
//! outbox ([`Client::outbox_handle`]), never through the `Client` itself. So nothing here needs
//! a lock: every field but the outbox is touched by the session task alone.
//!
//! What it does not decide: whether a v2 request is allowed (the v2 handlers check the token
//! and the database first, then call [`Client::join`], [`Client::part`] or
//! [`Client::publish_request`]), nor how a refusal is worded beyond the compat `Error` event.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::admission::Admitted;
use crate::auth::{Mode, now_seconds};
use crate::channel::ChannelName;
use crate::ops::limits::{Bucket, SubjectSlot};
use crate::ops::metrics::{ModeLabel, ReasonLabel};
use crate::pg::MAX_NOTIFY_PAYLOAD;
use crate::publish::{Pending, Publish, PublishError};
use crate::routing::Outgoing;
use crate::state::AppState;
use crate::stream::{Encoding, Frame, Outbox, Position, ResumeGap, Resumed};
use crate::wire::compat::{ClaimsText, error_event, meta_event, resume_gap_frame};

/// One connected client.
pub struct Client {
    /// The server's shared parts (hub, source, publisher, metrics, settings).
    state: Arc<AppState>,
    /// A number unique in this process, for log lines and the publisher's ordering per socket.
    id: u64,
    /// Read and/or write, from the token; replaced by [`Client::regrant`].
    mode: Mode,
    /// The channels followed, in the order joined. A `Vec`: a client follows a handful, and
    /// [`Client::part`] is a linear search over them.
    channels: Vec<ChannelName>,
    /// The token's `exp` (Unix seconds).
    exp: Option<f64>,
    /// The claims, serialised once; the parsed claims are not kept (memory per idle client).
    claims: ClaimsText,
    /// The one queue every frame for this client goes through, whoever makes it.
    outbox: Arc<Outbox>,
    /// What the client may still publish this second.
    rates: Rates,
    /// Held while the client is connected (per-subject limit).
    _slot: Option<SubjectSlot>,
    /// Authorization by the database: the client's subject and registration (re-checks,
    /// revocations, writes through the write function). `None` when off.
    authz: Option<crate::authz::Attached>,
    /// The compat socket's publishes in flight, whose failures become `Error` events in the
    /// order the messages were sent (see [`Client::answer`]). Made at the first publish.
    answers: Option<tokio::sync::mpsc::UnboundedSender<(Pending, ChannelName)>>,
}

impl Client {
    /// Counts the client and subscribes its channels (read mode); its transport sends frames in
    /// `encoding`.
    pub fn open(state: Arc<AppState>, id: u64, admitted: Admitted, encoding: Encoding) -> Self {
        let Admitted {
            grant,
            channels,
            slot,
            resume,
            subject,
            authz_mode,
            views,
            ..
        } = admitted;
        // The claims go into every envelope this client publishes; serialising them once here
        // keeps each publish to a copy of this text.
        let claims = ClaimsText::new(&grant.claims);
        // Counted before anything can fail: `Drop` uncounts, so every early return stays even.
        state.active.fetch_add(1, Ordering::Relaxed);
        state.metrics.accepted.inc();
        state
            .metrics
            .connections
            .get_or_create(&ModeLabel {
                mode: grant.mode.as_str(),
            })
            .inc();
        let outbox = Arc::new(Outbox::new(state.outbox_limits, encoding));
        // Subscribed here, before the transport answers the handshake: a message routed after
        // the client sees the handshake complete is then certain to reach its outbox. A compat
        // resume answers nothing (`|_, _| None`): the replay itself is the answer.
        if grant.mode.read {
            let mut views = views;
            let resumed = state.hub.subscribe_with(
                &channels,
                &outbox,
                |c| {
                    views
                        .iter()
                        .position(|(v, _)| v.as_str() == c)
                        .map(|i| views.swap_remove(i).1)
                },
                resume,
                resume_gap_frame,
                |_, _| None,
                || {},
            );
            if resume.is_some() {
                tracing::info!(
                    conn = id,
                    replayed = resumed.replayed,
                    gap = resumed.gap,
                    "resumed"
                );
            }
        }
        let rates = Rates::new(&state);
        // Attached after the subscription so that a revocation found by the first re-check
        // already has the outbox to end.
        let authz = state
            .authz
            .as_ref()
            .zip(subject)
            .map(|(a, s)| a.attach(id, s, &channels, authz_mode, &outbox));
        Self {
            authz,
            answers: None,
            state,
            id,
            mode: grant.mode,
            channels,
            exp: grant.exp,
            claims,
            outbox,
            rates,
            _slot: slot,
        }
    }

    /// In direct mode, waits (at most 5 s) until the source receives the client's channels, so
    /// that the client misses nothing sent after its handshake completes.
    pub async fn following(&self) {
        if !self.mode.read {
            return;
        }
        // Only direct mode has anything to wait for (LISTEN per channel); opening anyway
        // is the lesser harm: the client may miss a message, but it is not refused.
        if !self.state.source.follow(&self.channels).await {
            tracing::warn!(
                conn = self.id,
                "LISTEN not confirmed within 5 s; the socket opens anyway"
            );
        }
    }

    /// The client's id (log lines carry it as `conn`).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The queue the transport drains.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The queue, shared (presence events reach it from other sockets' tasks).
    pub fn outbox_handle(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Authorization by the database (the subject for run-time checks: protocol v2).
    pub fn authz(&self) -> Option<&crate::authz::Attached> {
        self.authz.as_ref()
    }

    /// The server state, shared (for work that outlives a request: a snapshot's read).
    pub fn state_arc(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// The server state (settings the transport needs: pings, shutdown, metrics).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// When the token expires, as a timer deadline.
    pub fn expiry(&self) -> Option<tokio::time::Instant> {
        self.exp.map(|exp| {
            // Clamped: an `exp` in the past expires now, a huge one (~31 years) must not overflow
            // the timer's `Instant` arithmetic.
            let left = (exp - now_seconds()).max(0.0);
            tokio::time::Instant::now() + Duration::from_secs_f64(left.min(1e9))
        })
    }

    /// The transport is open: publishes `ConnectionOpen`.
    pub async fn start(&self) {
        self.meta("ConnectionOpen").await;
    }

    /// The transport is done: leaves the channels, frees the queue, publishes `ConnectionClose`.
    pub async fn finish(&self) {
        // Leave before `ConnectionClose` is published, so the client does not get its own
        // goodbye; close the outbox so nothing queued meanwhile holds memory.
        self.leave();
        self.outbox.close();
        self.meta("ConnectionClose").await;
    }

    /// Tells the client about something it sent that was not published.
    pub fn refuse(&self, code: &str, message: &str, channel: Option<&str>) {
        self.outbox
            .push(Frame::from(error_event(code, message, channel)));
    }

    /// Publishes one client message to every channel of the client (spec §5.1), or says why not.
    pub async fn publish(&mut self, text: &str) {
        // Rates first, before any work or metric: a flooding client costs as little as possible.
        if !self.rates.allow(text.len(), &self.outbox, &self.state) {
            return;
        }
        let state = &self.state;
        state.metrics.messages_in.inc();
        if !self.mode.write {
            self.refuse(
                "read_only",
                "this socket's token does not allow writing (mode is not 'w' or 'rw'); the message was not published",
                None,
            );
            return;
        }
        // A table's channel carries its table's changes only: a message published there could
        // pass for a row change. Said once per such channel; the others still get the message.
        for channel in self.channels.iter().filter(|c| crate::channel::is_table(c)) {
            self.outbox.push(Frame::from(error_event(
                "table_channel",
                "a table's channel carries its table's changes only: the message was not published to it",
                Some(channel),
            )));
        }
        if self.writes() {
            // The database answers instead of a NOTIFY (`PGWS_AUTHZ_WRITE_FUNCTION`).
            for i in 0..self.channels.len() {
                let channel = self.channels[i].clone();
                if crate::channel::is_table(&channel) {
                    continue;
                }
                if let Some(request) = self.write_request(&channel, text) {
                    let pending = self.state.publisher.publish(self.id, request).await;
                    self.answer(pending, channel);
                }
            }
            return;
        }
        // Every channel's publish is handed to the pool first, then the answers are awaited in
        // order: one message to many channels costs one round trip's wait, not one per channel.
        let mut sent = Vec::new();
        let writable: Vec<ChannelName> = self
            .channels
            .iter()
            .filter(|c| !crate::channel::is_table(c))
            .cloned()
            .collect();
        for prepared in prepare(state, &writable, &self.claims, text) {
            match prepared {
                Err(refusal) => {
                    tracing::warn!(conn = self.id, channel = %refusal.channel, bytes = refusal.size, "message too large for NOTIFY");
                    self.refuse(
                        "payload_too_large",
                        &refusal.message(text.len()),
                        Some(&refusal.channel),
                    );
                }
                Ok((channel, out)) => {
                    // `publish` only queues on the pool (it waits for room, not for PostgreSQL):
                    // the outcome comes back on `pending`.
                    let pending = state
                        .publisher
                        .publish(
                            self.id,
                            Publish::Notify {
                                pg_channel: out.pg_channel,
                                payload: out.payload,
                                channel: Some(channel.to_string()),
                            },
                        )
                        .await;
                    sent.push((pending, channel.clone()));
                }
            }
        }
        for (pending, channel) in sent {
            self.answer(pending, channel);
        }
    }

    /// Whether client messages go to the write function instead of the NOTIFY pool.
    fn writes(&self) -> bool {
        self.authz.as_ref().is_some_and(|a| a.authorizer().writes())
    }

    /// The write function's request for `text` on `channel`, with the socket's write slots;
    /// `None` when no write function is set.
    fn write_request(&self, channel: &ChannelName, text: &str) -> Option<Publish> {
        let authz = self.authz.as_ref()?;
        let call = authz.write_call(channel, text)?;
        Some(Publish::Write {
            slots: Some(authz.write_slots()),
            call: Box::pin(call),
        })
    }

    /// Renders a compat publish's outcome into the outbox: nothing when it was published, the
    /// `Error` event when not. The answers go through one task per socket (made at the first
    /// publish, ended with the client), which awaits them in the order they were queued, so
    /// that they reach the client in the order its messages were sent; the socket does not wait.
    fn answer(&mut self, pending: Pending, channel: ChannelName) {
        let answers = self.answers.get_or_insert_with(|| {
            // Unbounded on purpose: a send must never make the socket loop wait. Its length is
            // what this client published and the pool has not answered yet, which the pool's own
            // queue and the client's rates bound.
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Pending, ChannelName)>();
            let outbox = self.outbox.clone();
            tokio::spawn(async move {
                while let Some((pending, channel)) = rx.recv().await {
                    // Published: nothing to say (compat has no acknowledgement). Failed: an
                    // `Error` event, in the order the client sent its messages.
                    if let Err(e) = pending.await {
                        outbox.push(Frame::from(compat_error(&e, channel.as_str())));
                    }
                }
            });
            tx
        });
        // The task ends only once this sender is dropped, with the client.
        let _ = answers.send((pending, channel));
    }

    /// Publishes a meta-channel event. Its failure is logged and counted (by the pool), not
    /// sent to the client: the client did not send it.
    async fn meta(&self, event: &str) {
        let Some(meta) = &self.state.config.meta_channel else {
            return;
        };
        let names: Vec<String> = self.channels.iter().map(|c| c.to_string()).collect();
        let payload = meta_event(event, meta, &names, &self.claims, now_seconds());
        let pending = self
            .state
            .publisher
            .publish(
                self.id,
                Publish::Notify {
                    pg_channel: self.state.router.server_event(meta),
                    payload,
                    channel: Some(meta.to_string()),
                },
            )
            .await;
        // Nobody waits for the outcome: the pool logs and counts a failed meta event itself.
        drop(pending);
    }

    /// Removes the client from its channels; tells the source about channels it was the last
    /// subscriber of. Idempotent.
    fn leave(&self) {
        if !self.mode.read {
            return;
        }
        for channel in &self.channels {
            // Only the last subscriber tells the source: in direct mode that is an UNLISTEN;
            // otherwise `unfollow` does nothing.
            if self.state.hub.unsubscribe(channel, &self.outbox) {
                self.state.source.unfollow(channel);
            }
        }
    }
}

/// Protocol v2 ([`crate::session::v2`]): subscriptions at run time, publishing to one channel with
/// an answer, and a token replaced in band. The v2 session decides what is allowed; these only do.
impl Client {
    /// The channels the client follows now.
    pub fn channels(&self) -> &[ChannelName] {
        &self.channels
    }

    /// The token's `exp`.
    pub fn exp(&self) -> Option<f64> {
        self.exp
    }

    /// The message and byte rates, for any request: `Err` says which was exceeded (counted).
    pub fn check_rate(&mut self, len: usize) -> Result<(), String> {
        self.rates.check(len, &self.state)
    }

    /// Follows `channel` (resuming after `from`), queuing the replay and then `answer` (see
    /// [`crate::stream::Hub::subscribe_with`]; `then` runs right after the answer is queued).
    /// The caller checked that it may, and that the source follows the channel. With a `view`
    /// (a row subscription's filter) the client receives what the view makes of each message.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &mut self,
        channel: ChannelName,
        view: Option<crate::stream::View>,
        from: Option<crate::stream::ResumeFrom>,
        gap: impl FnOnce(&ResumeGap<'_>) -> Frame,
        answer: impl FnOnce(Position, Resumed) -> Frame,
        then: impl FnOnce(),
    ) -> Resumed {
        let mut view = view;
        let resumed = self.state.hub.subscribe_with(
            std::slice::from_ref(&channel),
            &self.outbox,
            |_| view.take(),
            from,
            gap,
            |position, resumed| Some(answer(position, resumed)),
            then,
        );
        // Kept in step with the hub and with authorization's re-checks, which must know every
        // channel the client follows now to revoke the right ones.
        self.channels.push(channel);
        if let Some(a) = self.authz() {
            a.set_channels(&self.channels);
        }
        resumed
    }

    /// Stops following `channel`; `false` when the client did not follow it.
    pub fn part(&mut self, channel: &str) -> bool {
        let Some(i) = self.channels.iter().position(|c| c.as_str() == channel) else {
            return false;
        };
        let channel = self.channels.swap_remove(i);
        if self.state.hub.unsubscribe(&channel, &self.outbox) {
            self.state.source.unfollow(&channel);
        }
        if let Some(a) = self.authz() {
            a.set_channels(&self.channels);
        }
        true
    }

    /// A refreshed token: its mode, expiry and claims (for the envelopes of later messages).
    pub fn regrant(
        &mut self,
        mode: Mode,
        exp: Option<f64>,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) {
        // Subscriptions are left as they are: the v2 refresh handler checked (or ended) them
        // against the new token before calling this.
        self.mode = mode;
        self.exp = exp;
        self.claims = ClaimsText::new(claims);
    }

    /// What `text` published to `channel` becomes (the envelope and size rules of
    /// [`Client::publish`], or the write function's call when one is set), for the one publish
    /// call; `Err`: too large for NOTIFY. The caller checked that the socket may write.
    pub fn publish_request(&self, channel: &ChannelName, text: &str) -> Result<Publish, TooLarge> {
        self.state.metrics.messages_in.inc();
        if let Some(request) = self.write_request(channel, text) {
            return Ok(request);
        }
        let prepared = prepare(
            &self.state,
            std::slice::from_ref(channel),
            &self.claims,
            text,
        )
        .next()
        // `prepare` yields exactly one item per channel given, and one was given.
        .expect("one channel, one envelope");
        let (channel, out) = prepared?;
        Ok(Publish::Notify {
            pg_channel: out.pg_channel,
            payload: out.payload,
            channel: Some(channel.to_string()),
        })
    }
}

/// A compat socket's `Error` event for a message that was not published: the write function's
/// refusal with its SQLSTATE, or the pool's failure (`payload_too_large` when PostgreSQL found
/// the notification too long, `notify_failed` otherwise), with the outcome's text.
fn compat_error(e: &PublishError, channel: &str) -> String {
    match e {
        // The write function's own code and text reach the client: the database said no,
        // and its reason is meant for the client (see authz).
        PublishError::Refused(write) => write.event(channel),
        PublishError::TooLarge(_) => {
            error_event("payload_too_large", &e.to_string(), Some(channel))
        }
        _ => error_event("notify_failed", &e.to_string(), Some(channel)),
    }
}

impl Drop for Client {
    // The safety net for a transport that failed half-way: `finish` may not have run.
    // Everything here is idempotent, so running after `finish` is harmless.
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::Relaxed);
        self.state
            .metrics
            .connections
            .get_or_create(&ModeLabel {
                mode: self.mode.as_str(),
            })
            .dec();
        self.leave();
        self.outbox.close();
    }
}

/// A message whose notification would not fit NOTIFY.
pub struct TooLarge {
    /// The channel it was for.
    pub channel: ChannelName,
    /// The notification's size.
    pub size: usize,
}

impl TooLarge {
    /// In words, for the client (`text_len`: the client's own text).
    pub fn message(&self, text_len: usize) -> String {
        format!(
            "message too large: its notification would be {} bytes and PostgreSQL accepts at most {} (the envelope and your token's claims take {} of them)",
            self.size,
            MAX_NOTIFY_PAYLOAD,
            self.size.saturating_sub(text_len)
        )
    }
}

/// What a client's text becomes on each of its channels (spec §5.1): the envelope and the
/// PostgreSQL channel, or why it cannot be sent. Shared by sockets and HTTP publish.
pub fn prepare<'a>(
    state: &'a AppState,
    channels: &'a [ChannelName],
    claims: &'a ClaimsText,
    text: &'a str,
) -> impl Iterator<Item = Result<(&'a ChannelName, Outgoing), TooLarge>> + 'a {
    // Lazy: nothing is built for channels after the caller stops pulling (a v2 publish
    // takes one item), and each envelope is checked against the limit as it is made.
    let at = now_seconds();
    // The limit depends on the source: NOTIFY's payload limit (7999 bytes), or none when the WAL
    // carries messages. One timestamp for all channels: they are one message.
    let limit = state.config.source.payload_limit();
    channels.iter().map(move |channel| {
        let out = state.router.client_message(channel, text, claims, at);
        if limit.is_some_and(|max| out.payload.len() > max) {
            Err(TooLarge {
                channel: channel.clone(),
                size: out.payload.len(),
            })
        } else {
            Ok((channel, out))
        }
    })
}

/// Per-client message and byte rates (`PGWS_RATE_MESSAGES`, `PGWS_RATE_BYTES`).
struct Rates {
    /// Messages per second; `None` when `PGWS_RATE_MESSAGES` is 0 (no limit).
    messages: Option<Bucket>,
    /// Bytes per second; `None` when `PGWS_RATE_BYTES` is 0 (no limit).
    bytes: Option<Bucket>,
}

impl Rates {
    fn new(state: &AppState) -> Self {
        // A bucket holds two seconds' worth (see `Bucket`): a client may burst up to twice its
        // rate, then is held to it on average.
        let bucket = |rate: u32| (rate > 0).then(|| Bucket::new(rate));
        Self {
            messages: bucket(state.config.rates.messages),
            bytes: bucket(state.config.rates.bytes),
        }
    }

    /// Whether a message of `len` bytes may be published; tells the client (and the metrics)
    /// when not.
    fn allow(&mut self, len: usize, outbox: &Outbox, state: &AppState) -> bool {
        let Err(message) = self.check(len, state) else {
            return true;
        };
        outbox.push(Frame::from(error_event("rate_limited", &message, None)));
        false
    }

    /// Takes `len` bytes and one message from the buckets; `Err` says which ran out (counted).
    fn check(&mut self, len: usize, state: &AppState) -> Result<(), String> {
        let now = std::time::Instant::now();
        let messages_ok = self.messages.as_mut().is_none_or(|b| b.take(1.0, now));
        // Bytes are taken only when the message is allowed, so a refused message does not
        // spend the byte budget too.
        let bytes_ok = messages_ok && self.bytes.as_mut().is_none_or(|b| b.take(len as f64, now));
        if messages_ok && bytes_ok {
            return Ok(());
        }
        let what = if messages_ok { "bytes" } else { "messages" };
        state
            .metrics
            .drops
            .get_or_create(&ReasonLabel {
                reason: "rate_limited",
            })
            .inc();
        Err(format!(
            "too many {what} per second from this socket; the message was not published"
        ))
    }
}

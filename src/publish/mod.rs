//! The publish plane's one call and its typed outcome.
//!
//! Every way a message enters PostgreSQL goes through [`crate::pg::publisher::Publisher::publish`]
//! with a [`Publish`]: a compat socket's message, a protocol v2 `publish`, an HTTP publish, a
//! meta event (`ConnectionOpen`, gaps), a presence message. What it becomes is decided by the
//! request, not by the caller's code path: an envelope goes to the NOTIFY pool (`pg_notify`, or
//! `pg_logical_emit_message` with the WAL source), a client's own text goes to the write function
//! (`PGWS_AUTHZ_WRITE_FUNCTION`) when one is set. Either way the answer is one
//! `Result<Ack, PublishError>` on one oneshot ([`Pending`]).
//!
//! What this module owns: the request and outcome types, and nothing that writes to a client.
//! Each front end *renders* the outcome in its own wire format (compat `Error` events in
//! `client.rs`, v2 `ack`/`nack` in `session/v2/publish.rs`, HTTP statuses in `transport/publish.rs`);
//! the pool never writes a client frame. Fire-and-forget callers (meta events, presence) drop
//! the [`Pending`]: the pool still logs and counts the failure.
//!
//! Errors are classified where they happen, by PostgreSQL's SQLSTATE or the kind of failure
//! (no connection, closed queue), never by reading an error's text: renderers match on
//! [`PublishError`]'s variants.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};

use crate::authz::write::{WriteCode, WriteError};

/// What PostgreSQL did with a published message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ack {
    /// The write function's result, cast to text (`None`: SQL NULL, or a NOTIFY, which gives
    /// nothing back). HTTP publish returns it; sockets ignore it.
    pub result: Option<String>,
}

/// Why a message was not published. The `Display` text is what clients read (compat `Error`
/// events, v2 `nack` messages, HTTP publish bodies), so it must stay stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// PostgreSQL refused the notification as too long (SQLSTATE 22023 from `pg_notify`: channel
    /// names are checked before, so the payload is the only invalid parameter left). Carries
    /// PostgreSQL's message.
    #[error("NOTIFY failed: {0}")]
    TooLarge(String),
    /// No connection to PostgreSQL (it could not be opened, or failed less than a second ago).
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(String),
    /// The statement failed for another reason (the connection broke during it, or another
    /// SQLSTATE): PostgreSQL's message, and its SQLSTATE when it gave one.
    #[error("NOTIFY failed: {message}")]
    Failed {
        /// The SQLSTATE (`None`: not an error PostgreSQL sent, e.g. a broken connection).
        sqlstate: Option<String>,
        /// PostgreSQL's message, or the connection's error.
        message: String,
    },
    /// The pool is closed (shutdown): the message was never sent.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// No answer within the waiter's limit ([`Pending::within`]); the message may still be
    /// published.
    #[error("no answer from PostgreSQL within {0:?}")]
    Timeout(Duration),
    /// The write function did not publish: it raised, timed out, or the database failed. Its
    /// code, SQLSTATE and message are what the client is told.
    #[error("{}", .0.message)]
    Refused(#[from] WriteError),
}

impl PublishError {
    /// A write whose socket closed its write slots before it could start (`write_failed`, as
    /// the write function's own failures are told).
    pub fn socket_closing() -> Self {
        Self::Refused(WriteError {
            code: WriteCode::Failed,
            sqlstate: None,
            message: "the socket is closing".into(),
        })
    }
}

/// The outcome of one publish.
pub type Outcome = Result<Ack, PublishError>;

/// The write function's call for one message, made by `authz` (the subject, channel and text
/// are inside); it answers the function's result.
pub type WriteCall = Pin<Box<dyn Future<Output = Result<Option<String>, WriteError>> + Send>>;

/// One message to publish.
pub enum Publish {
    /// An envelope for the NOTIFY pool: `pg_notify`, or the WAL's logical message, as the
    /// server's source kind says.
    Notify {
        /// The PostgreSQL channel; `None`: the listen channel.
        pg_channel: Option<String>,
        /// The notification text (an envelope).
        payload: String,
        /// The pgws channel it is for (log lines only).
        channel: Option<String>,
    },
    /// A client's own text for the write function, which publishes (or refuses) instead of
    /// the pool.
    Write {
        /// The socket's write slots (`PGWS_AUTHZ_WRITE_CONCURRENCY`): the publish call waits
        /// for one, as it waits for room in the pool's queue. `None`: no limit (HTTP publish,
        /// whose request waits for each answer anyway).
        slots: Option<Arc<Semaphore>>,
        /// The call.
        call: WriteCall,
    },
}

/// The answer to one publish, once PostgreSQL (or the write function) gave it. Dropping it is
/// fine: nobody is told, the pool still logs and counts a failure.
#[must_use = "drop it explicitly when nobody waits for the outcome"]
pub struct Pending(Inner);

enum Inner {
    Waiting(oneshot::Receiver<Outcome>),
    Ready(Option<Outcome>),
}

impl Pending {
    /// A pending answer and the sender that gives it.
    pub fn channel() -> (oneshot::Sender<Outcome>, Self) {
        let (tx, rx) = oneshot::channel();
        (tx, Self(Inner::Waiting(rx)))
    }

    /// An answer known at once (the queue was closed, the socket is closing).
    pub fn ready(outcome: Outcome) -> Self {
        Self(Inner::Ready(Some(outcome)))
    }

    /// The outcome, or [`PublishError::Timeout`] after `limit`.
    pub async fn within(self, limit: Duration) -> Outcome {
        tokio::time::timeout(limit, self)
            .await
            .unwrap_or(Err(PublishError::Timeout(limit)))
    }
}

impl Future for Pending {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        match &mut self.0 {
            // A sender dropped unanswered: the worker or task that held it is gone, which only
            // happens when the runtime stops.
            Inner::Waiting(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(PublishError::ShuttingDown))),
            Inner::Ready(outcome) => Poll::Ready(
                outcome
                    .take()
                    .expect("a Pending is not polled after it answered"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_texts_are_the_ones_clients_read() {
        assert_eq!(
            PublishError::TooLarge("payload string too long".into()).to_string(),
            "NOTIFY failed: payload string too long"
        );
        assert_eq!(
            PublishError::DatabaseUnavailable("refused".into()).to_string(),
            "database unavailable: refused"
        );
        assert_eq!(
            PublishError::ShuttingDown.to_string(),
            "the server is shutting down"
        );
        assert_eq!(
            PublishError::Timeout(Duration::from_secs(10)).to_string(),
            "no answer from PostgreSQL within 10s"
        );
    }

    #[tokio::test]
    async fn a_dropped_sender_reads_as_shutting_down() {
        let (tx, pending) = Pending::channel();
        drop(tx);
        assert_eq!(pending.await, Err(PublishError::ShuttingDown));
        let (_tx, pending) = Pending::channel();
        assert_eq!(
            pending.within(Duration::from_millis(1)).await,
            Err(PublishError::Timeout(Duration::from_millis(1)))
        );
        assert_eq!(Pending::ready(Ok(Ack::default())).await, Ok(Ack::default()));
    }
}

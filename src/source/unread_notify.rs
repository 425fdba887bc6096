//! The WAL source reads `pg_logical_emit_message` only: a `pg_notify` on the listen channel is
//! not in the WAL and never reaches a client. An application switching to `PGWS_SOURCE=wal`
//! would lose every trigger that still NOTIFYs without a sound, so this task LISTENs on the
//! listen channel and, at the first notification, logs one warning naming the channel and what
//! to call instead, then closes its connection (one warning per node and channel, not one per
//! message).
//!
//! Why not deliver them: WAL positions are (commit LSN, index) and survive restarts, while a
//! notification has no place in that order; mixing them would give positions that mean nothing
//! to a resuming client.

use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::channel::ChannelName;
use crate::pg::{Database, backoff, describe, with_defaults};

/// Watches `channel` until its first notification (then warns once and returns) or `shutdown`.
/// A connection that cannot be made or is lost is tried again with back-off (logged at debug:
/// the WAL source reports the database's state).
pub async fn watch(db: Database, channel: ChannelName, shutdown: CancellationToken) {
    let db = with_defaults(&db);
    let mut attempt = 0u32;
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = first_notification(&db, &channel) => outcome,
        };
        match outcome {
            Ok(()) => {
                tracing::warn!(
                    channel = %channel,
                    "a pg_notify on the listen channel \"{channel}\" was not delivered: \
                     PGWS_SOURCE=wal reads only the WAL; call \
                     pg_logical_emit_message(true, '{channel}', payload) instead of \
                     pg_notify('{channel}', payload) (this warning is logged once)"
                );
                return;
            }
            Err(e) => {
                attempt = attempt.saturating_add(1);
                tracing::debug!(channel = %channel, error = %e,
                    "cannot watch the listen channel for stray NOTIFYs; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff(attempt)) => {}
                }
            }
        }
    }
}

/// Connects, LISTENs on `channel` and returns at the first notification; `Err` when the
/// connection fails or ends first.
async fn first_notification(db: &Database, channel: &ChannelName) -> Result<(), String> {
    let (client, mut connection) = db.connect().await.map_err(|e| describe(&e))?;
    // The connection is polled here, in the same task, while the LISTEN runs: it carries both
    // the LISTEN's answer and the notifications.
    let notified = async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(describe(&e)),
                None => return Err("the server closed the connection".to_string()),
            }
        }
    };
    let listening = async {
        client
            .batch_execute(&format!("LISTEN {}", channel.quoted()))
            .await
            .map_err(|e| describe(&e))?;
        tracing::debug!(channel = %channel, "watching the listen channel for NOTIFYs");
        std::future::pending::<Result<(), String>>().await
    };
    tokio::select! {
        outcome = notified => outcome,
        outcome = listening => outcome,
    }
}

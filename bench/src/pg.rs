//! Direct PostgreSQL connections: plain clients for publishing with
//! `pg_notify`, and a LISTEN connection whose driver task hands every
//! notification to a handler.

use anyhow::{Context, Result, anyhow};
use futures_util::StreamExt;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls, Notification};

/// SQL of a single notification.
pub const NOTIFY_ONE: &str = "SELECT pg_notify($1, $2)";
/// SQL of many notifications in one transaction, in array order.
pub const NOTIFY_MANY: &str = "SELECT pg_notify($1, x) FROM unnest($2::text[]) AS u(x)";
/// SQL of a single logical message (a server with `PGWS_SOURCE=wal`; prefix, text).
pub const EMIT_ONE: &str = "SELECT pg_logical_emit_message(true, $1::text, $2::text)";
/// SQL of many logical messages in one transaction, in array order.
pub const EMIT_MANY: &str = "SELECT pg_logical_emit_message(true, $1::text, x) FROM unnest($2::text[]) WITH ORDINALITY AS u(x, n) ORDER BY n";

/// The single-message SQL for the server's source (`--source`).
pub fn one(wal: bool) -> &'static str {
    if wal { EMIT_ONE } else { NOTIFY_ONE }
}

/// The many-messages SQL for the server's source.
pub fn many(wal: bool) -> &'static str {
    if wal { EMIT_MANY } else { NOTIFY_MANY }
}

/// Quotes an identifier for SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Opens a client whose connection is driven by a background task.
pub async fn connect(conninfo: &str, timeout: Duration) -> Result<Client> {
    let (client, conn) = tokio::time::timeout(timeout, tokio_postgres::connect(conninfo, NoTls))
        .await
        .map_err(|_| anyhow!("timeout connecting to PostgreSQL"))?
        .context("connecting to PostgreSQL")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Opens a connection that LISTENs on `channel` and calls `handler` for each
/// notification until `stop` changes or the connection ends; the task
/// returns the handler so its state can be read afterwards.
pub async fn listen<H>(
    conninfo: &str,
    channel: &str,
    mut handler: H,
    mut stop: watch::Receiver<bool>,
    timeout: Duration,
) -> Result<(Client, JoinHandle<H>)>
where
    H: FnMut(&Notification) + Send + 'static,
{
    let (client, mut conn) =
        tokio::time::timeout(timeout, tokio_postgres::connect(conninfo, NoTls))
            .await
            .map_err(|_| anyhow!("timeout connecting to PostgreSQL"))?
            .context("connecting to PostgreSQL")?;
    let task = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        loop {
            tokio::select! {
                m = messages.next() => match m {
                    Some(Ok(AsyncMessage::Notification(n))) => handler(&n),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                },
                _ = stop.changed() => break,
            }
        }
        handler
    });
    tokio::time::timeout(
        timeout,
        client.batch_execute(&format!("LISTEN {}", quote_ident(channel))),
    )
    .await
    .map_err(|_| anyhow!("timeout issuing LISTEN"))?
    .context("LISTEN")?;
    Ok((client, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers() {
        assert_eq!(
            quote_ident("postgres-websockets-listener"),
            "\"postgres-websockets-listener\""
        );
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}

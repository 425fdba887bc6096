//! Writes the database answers (`PGWS_AUTHZ_WRITE_FUNCTION`): a client message (websocket) or an
//! HTTP publish calls `fn(channel text, message text)` as the client's role, with its claims, in
//! a transaction of its own under `PGWS_AUTHZ_WRITE_TIMEOUT`, instead of the NOTIFY. The function
//! may refuse (raise: the client is told the SQLSTATE and message), transform, store, and
//! publish (`pg_notify`, `pg_logical_emit_message`) itself; its result, cast to text, is the HTTP
//! publish's answer.
//!
//! A socket's writes run in tasks of their own, at most `PGWS_AUTHZ_WRITE_CONCURRENCY` at a time
//! (the socket waits for a slot, so only a socket that keeps its slots busy slows down, and
//! only itself); with the default of 1 a socket's writes run one after another, in order. The
//! pool (`PGWS_AUTHZ_WRITE_POOL_SIZE`) is shared by every socket: when it stays busy for the
//! whole time limit, the write fails with `write_busy` rather than waiting for ever.

use std::sync::Arc;
use std::time::Instant;

use hyper::StatusCode;
use tokio::sync::Semaphore;
use tokio_postgres::types::Type;

use super::check::{End, Session, TxError, transaction};
use super::pool::PoolError;
use super::{Attached, Authorizer, AuthzMetrics, Subject};
use crate::channel::ChannelName;
use crate::stream::{Frame, Outbox};
use crate::wire::compat::write_error_event;

/// Why a write was not done, as the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteError {
    /// `write_refused` (the function raised, or the role may not be used), `write_timeout`,
    /// `write_busy` (no pool connection in time), `write_failed` (the database failed).
    pub code: &'static str,
    /// The SQLSTATE, when PostgreSQL gave one.
    pub sqlstate: Option<String>,
    /// The message.
    pub message: String,
}

impl WriteError {
    fn from_tx(e: TxError) -> Self {
        let (code, sqlstate, message) = match e {
            TxError::Call(db) if db.is_server_side() => {
                ("write_failed", Some(db.sqlstate), db.message)
            }
            TxError::Call(db) => ("write_refused", Some(db.sqlstate), db.message),
            TxError::Role(db) => (
                "write_refused",
                Some(db.sqlstate),
                format!("the token's role cannot be used: {}", db.message),
            ),
            TxError::Timeout(t) => (
                "write_timeout",
                Some("57014".into()),
                format!(
                    "the write function did not answer within {} ms",
                    t.as_millis()
                ),
            ),
            TxError::Pool(e @ PoolError::Busy(_)) => ("write_busy", None, e.to_string()),
            TxError::Pool(e) => ("write_failed", None, e.to_string()),
            TxError::Connection(e) => ("write_failed", None, e),
        };
        Self {
            code,
            sqlstate,
            message,
        }
    }

    /// The HTTP status of an HTTP publish that failed so.
    pub fn status(&self) -> StatusCode {
        match (self.code, self.sqlstate.as_deref()) {
            ("write_refused", Some("42501")) => StatusCode::FORBIDDEN,
            ("write_refused", Some("22023")) => StatusCode::FORBIDDEN,
            ("write_refused", _) => StatusCode::BAD_REQUEST,
            ("write_timeout", _) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `Error` event (websocket) or JSON body (HTTP publish) that says it.
    pub fn event(&self, channel: &str) -> String {
        write_error_event(
            self.code,
            &self.message,
            Some(channel),
            self.sqlstate.as_deref(),
        )
    }

    fn label(&self) -> &'static str {
        match self.code {
            "write_refused" => "refused",
            "write_timeout" => "timeout",
            "write_busy" => "busy",
            _ => "error",
        }
    }
}

impl Authorizer {
    /// Calls the write function for `text` on `channel` as `subject`; the function's result as
    /// text (`None`: SQL NULL, or no write function).
    pub async fn call(
        &self,
        subject: &Subject,
        channel: &str,
        text: &str,
    ) -> Result<Option<String>, WriteError> {
        let Some(function) = &self.settings.write_function else {
            return Ok(None);
        };
        let sql = format!("SELECT ({}($1, $2))::text", function.quoted());
        let session = Session {
            subject,
            channel,
            mode: "w",
            timeout: self.settings.write_timeout,
        };
        let started = Instant::now();
        let result = transaction(
            &self.writes,
            &session,
            &sql,
            &[(&channel, Type::TEXT), (&text, Type::TEXT)],
            End::Commit,
        )
        .await;
        self.metrics
            .write_latency
            .observe(started.elapsed().as_secs_f64());
        let result = result.map_err(WriteError::from_tx).map(|rows| {
            rows.first()
                .and_then(|r| r.try_get::<_, Option<String>>(0).ok())
                .flatten()
        });
        match &result {
            Ok(_) => AuthzMetrics::outcome(&self.metrics.writes, "ok"),
            Err(e) => {
                AuthzMetrics::outcome(&self.metrics.writes, e.label());
                tracing::info!(
                    role = %subject.role,
                    channel,
                    code = e.code,
                    sqlstate = e.sqlstate.as_deref().unwrap_or(""),
                    error = %e.message,
                    "write refused"
                );
            }
        }
        result
    }
}

impl Attached {
    /// The socket's write slots (`PGWS_AUTHZ_WRITE_CONCURRENCY`), shared by its compat messages
    /// and its v2 publishes.
    fn slots(&self) -> Arc<Semaphore> {
        self.write_slots
            .get_or_init(|| {
                Arc::new(Semaphore::new(
                    self.authorizer().settings.write_concurrency.max(1),
                ))
            })
            .clone()
    }

    /// A v2 publish: the write function called once a write slot is free, as a future the
    /// session answers (`ack` or `nack`) when it completes. `None` when no write function is set.
    pub fn publish(
        &self,
        channel: &ChannelName,
        text: &str,
    ) -> Option<impl std::future::Future<Output = Result<(), WriteError>> + Send + 'static> {
        if !self.authorizer().writes() {
            return None;
        }
        let slots = self.slots();
        let authorizer = self.authorizer().clone();
        let subject = self.subject().clone();
        let channel = channel.clone();
        let text = text.to_string();
        Some(async move {
            let _permit = slots.acquire_owned().await.map_err(|_| WriteError {
                code: "write_failed",
                sqlstate: None,
                message: "the socket is closing".into(),
            })?;
            authorizer
                .call(&subject, channel.as_str(), &text)
                .await
                .map(|_| ())
        })
    }

    /// A socket's message: one call per channel, each in a task of its own once the socket has
    /// a free write slot; a failure is answered to the socket as an `Error` event.
    pub async fn write(&self, channels: &[ChannelName], text: &str, outbox: &Arc<Outbox>) {
        let slots = self.slots();
        for channel in channels {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let authorizer = self.authorizer().clone();
            let subject = self.subject().clone();
            let outbox = outbox.clone();
            let channel = channel.clone();
            let text = text.to_string();
            tokio::spawn(async move {
                if let Err(e) = authorizer.call(&subject, channel.as_str(), &text).await {
                    outbox.push(Frame::from(e.event(channel.as_str())));
                }
                drop(permit);
            });
        }
    }
}

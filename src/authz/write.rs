//! Writes the database answers (`PGWS_AUTHZ_WRITE_FUNCTION`): a client message (websocket) or an
//! HTTP publish calls `fn(channel text, message text)` as the client's role, with its claims, in
//! a transaction of its own under `PGWS_AUTHZ_WRITE_TIMEOUT`, instead of the NOTIFY. The function
//! may refuse (raise: the client is told the SQLSTATE and message), transform, store, and
//! publish (`pg_notify`, `pg_logical_emit_message`) itself; its result, cast to text, is the HTTP
//! publish's answer.
//!
//! The calls are made here, but sent through the one publish call (`crate::publish`), which runs
//! each in a task of its own and answers its outcome like a NOTIFY's. A socket's writes run at
//! most `PGWS_AUTHZ_WRITE_CONCURRENCY` at a time (the publish call waits for a slot, so only a
//! socket that keeps its slots busy slows down, and only itself); with the default of 1 a
//! socket's writes run one after another, in order. The
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
use crate::wire::compat::write_error_event;

/// What kind of failure a write was, as the client's `code` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteCode {
    /// `write_refused`: the function raised, or the token's role may not be used.
    Refused,
    /// `write_timeout`: no answer within `PGWS_AUTHZ_WRITE_TIMEOUT`.
    Timeout,
    /// `write_busy`: no pool connection in time.
    Busy,
    /// `write_failed`: the database failed (or the socket is closing).
    Failed,
}

impl WriteCode {
    /// The code clients read.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "write_refused",
            Self::Timeout => "write_timeout",
            Self::Busy => "write_busy",
            Self::Failed => "write_failed",
        }
    }
}

/// Why a write was not done, as the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct WriteError {
    /// What kind of failure.
    pub code: WriteCode,
    /// The SQLSTATE, when PostgreSQL gave one.
    pub sqlstate: Option<String>,
    /// The message.
    pub message: String,
}

impl WriteError {
    fn from_tx(e: TxError) -> Self {
        let (code, sqlstate, message) = match e {
            TxError::Call(db) if db.is_server_side() => {
                (WriteCode::Failed, Some(db.sqlstate), db.message)
            }
            TxError::Call(db) => (WriteCode::Refused, Some(db.sqlstate), db.message),
            TxError::Role(db) => (
                WriteCode::Refused,
                Some(db.sqlstate),
                format!("the token's role cannot be used: {}", db.message),
            ),
            TxError::Timeout(t) => (
                WriteCode::Timeout,
                Some("57014".into()),
                format!(
                    "the write function did not answer within {} ms",
                    t.as_millis()
                ),
            ),
            TxError::Pool(e @ PoolError::Busy(_)) => (WriteCode::Busy, None, e.to_string()),
            TxError::Pool(e) => (WriteCode::Failed, None, e.to_string()),
            TxError::Connection(e) => (WriteCode::Failed, None, e),
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
            (WriteCode::Refused, Some("42501")) => StatusCode::FORBIDDEN,
            (WriteCode::Refused, Some("22023")) => StatusCode::FORBIDDEN,
            (WriteCode::Refused, _) => StatusCode::BAD_REQUEST,
            (WriteCode::Timeout, _) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `Error` event (websocket) or JSON body (HTTP publish) that says it.
    pub fn event(&self, channel: &str) -> String {
        write_error_event(
            self.code.as_str(),
            &self.message,
            Some(channel),
            self.sqlstate.as_deref(),
        )
    }

    fn label(&self) -> &'static str {
        match self.code {
            WriteCode::Refused => "refused",
            WriteCode::Timeout => "timeout",
            WriteCode::Busy => "busy",
            WriteCode::Failed => "error",
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
                    code = e.code.as_str(),
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
    /// and its v2 publishes; the publish call waits for one before it calls.
    pub fn write_slots(&self) -> Arc<Semaphore> {
        self.write_slots
            .get_or_init(|| {
                Arc::new(Semaphore::new(
                    self.authorizer().settings.write_concurrency.max(1),
                ))
            })
            .clone()
    }

    /// The write function's call for `text` on `channel` as this socket's subject, to hand to
    /// the publish call (`crate::publish::Publish::Write`). `None` when no write function is set:
    /// the message goes to the NOTIFY pool.
    pub fn write_call(
        &self,
        channel: &ChannelName,
        text: &str,
    ) -> Option<
        impl std::future::Future<Output = Result<Option<String>, WriteError>> + Send + 'static,
    > {
        self.authorizer()
            .write_call(self.subject().clone(), channel.as_str(), text)
    }
}

impl Authorizer {
    /// The write function's call for `text` on `channel` as `subject`, owning what it needs (it
    /// runs in a task of its own). `None` when no write function is set.
    pub fn write_call(
        self: &Arc<Self>,
        subject: Arc<Subject>,
        channel: &str,
        text: &str,
    ) -> Option<
        impl std::future::Future<Output = Result<Option<String>, WriteError>> + Send + 'static,
    > {
        if !self.writes() {
            return None;
        }
        let authorizer = self.clone();
        let (channel, text) = (channel.to_string(), text.to_string());
        Some(async move { authorizer.call(&subject, &channel, &text).await })
    }
}

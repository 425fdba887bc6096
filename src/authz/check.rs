//! One transaction as the client's role, and the channel check built on it.
//!
//! Every check and write is one pipelined round trip on a pool connection:
//!
//! ```sql
//! BEGIN;
//! SELECT set_config('role', $1, true),              -- SET LOCAL ROLE, with a bound name
//!        set_config('request.jwt.claims', $2, true), -- PostgREST's claims setting
//!        set_config('pgws.channel', $3, true),
//!        set_config('pgws.mode', $4, true),
//!        set_config('statement_timeout', $5, true);
//! SELECT "schema"."check"();                         -- or the write function
//! ROLLBACK;                                          -- COMMIT for writes
//! RESET ALL; RESET ROLE;                             -- what a function set for the session
//! SELECT current_user = session_user;                -- proven clean, else discarded
//! ```
//!
//! Everything set with `set_config(…, true)` ends with the transaction, on every exit path: an
//! exception aborts the transaction and `ROLLBACK`/`COMMIT` ends it; a time-out (the server's
//! `statement_timeout`, or ours a little later) or any unexpected answer drops the connection
//! instead of returning it ([`super::pool`]). The role name and the claims are bound parameters;
//! the function name is a quoted identifier fixed at start-up.

use std::time::Duration;

use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use super::pool::{Pool, PoolError};
use super::{FunctionName, Subject};

/// How much longer than the statement timeout pgws waits before it gives up on a connection.
const GRACE: Duration = Duration::from_millis(500);

const SETUP: &str = "SELECT set_config('role', $1, true), set_config('request.jwt.claims', $2, true), \
     set_config('pgws.channel', $3, true), set_config('pgws.mode', $4, true), \
     set_config('statement_timeout', $5, true)";
const CLEAN: &str = "SELECT current_user = session_user";

/// Why a check did not allow a channel. `Display` is the reason the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzRefusal {
    /// The database (or the token's role) does not allow it: `403`, or a refused subscribe.
    #[error("Forbidden: {0}")]
    Forbidden(String),
    /// The check could not be run (database down, pool busy, time-out, misconfiguration):
    /// `503` with `Retry-After`.
    #[error("Service unavailable: the authorization check could not run: {0}")]
    Unavailable(String),
}

/// How a transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Checks: nothing they did stays.
    Rollback,
    /// Writes: what the function did stays (an aborted transaction is rolled back anyway).
    Commit,
}

/// What went wrong in a transaction.
#[derive(Debug, Clone)]
pub enum TxError {
    /// No connection.
    Pool(PoolError),
    /// Setting the role (or the other settings) failed: the role is unknown or not allowed.
    Role(DbError),
    /// The function raised, or PostgreSQL refused the call.
    Call(DbError),
    /// No answer within the time limit (the server's `statement_timeout` or ours).
    Timeout(Duration),
    /// The connection failed (no SQLSTATE).
    Connection(String),
}

/// An error PostgreSQL reported, as a client may read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError {
    /// The SQLSTATE (`P0001` for a plain `RAISE`).
    pub sqlstate: String,
    /// The message.
    pub message: String,
}

impl DbError {
    fn of(e: &tokio_postgres::Error) -> Option<Self> {
        e.as_db_error().map(|d| Self {
            sqlstate: d.code().code().to_string(),
            message: d.message().to_string(),
        })
    }

    /// Whether the error says the server or the setup failed rather than the function refusing:
    /// a cancelled statement (time-out), resources, the server's state, a missing function or
    /// schema (misconfiguration).
    pub fn is_server_side(&self) -> bool {
        let class = &self.sqlstate[..self.sqlstate.len().min(2)];
        matches!(class, "08" | "53" | "57" | "58" | "XX" | "3F")
            || matches!(self.sqlstate.as_str(), "42883" | "42P01")
    }
}

/// The settings of one transaction.
pub(crate) struct Session<'a> {
    pub subject: &'a Subject,
    pub channel: &'a str,
    pub mode: &'a str,
    pub timeout: Duration,
}

/// Runs `call` (one statement with `params`) in a transaction as the session's role, ending it
/// with `end`. Returns the call's rows.
pub(crate) async fn transaction(
    pool: &Pool,
    session: &Session<'_>,
    call: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
    end: End,
) -> Result<Vec<Row>, TxError> {
    let lease = pool.get(session.timeout).await.map_err(TxError::Pool)?;
    let timeout_ms = session.timeout.as_millis().max(1).to_string();
    let role: &str = &session.subject.role;
    let claims: &str = &session.subject.claims;
    let setup: [(&(dyn ToSql + Sync), Type); 5] = [
        (&role, Type::TEXT),
        (&claims, Type::TEXT),
        (&session.channel, Type::TEXT),
        (&session.mode, Type::TEXT),
        (&timeout_ms, Type::TEXT),
    ];
    let end_sql = match end {
        End::Rollback => "ROLLBACK",
        End::Commit => "COMMIT",
    };
    let outcome = {
        let c = lease.client();
        // Polled together: every statement is sent at once, in this order (one round trip).
        let work = async {
            futures_util::join!(
                c.query_typed("BEGIN", &[]),
                c.query_typed(SETUP, &setup),
                c.query_typed(call, params),
                c.query_typed(end_sql, &[]),
                c.query_typed("RESET ALL", &[]),
                c.query_typed("RESET ROLE", &[]),
                c.query_typed(CLEAN, &[]),
            )
        };
        tokio::time::timeout(session.timeout + GRACE, work).await
    };
    let Ok((begin, setup, called, ended, reset_all, reset_role, clean)) = outcome else {
        lease.cancel();
        return Err(TxError::Timeout(session.timeout));
    };
    let clean = matches!(&clean, Ok(rows) if rows.first().and_then(|r| r.try_get::<_, bool>(0).ok()) == Some(true));
    let tidy = begin.is_ok() && ended.is_ok() && reset_all.is_ok() && reset_role.is_ok() && clean;
    let result = match (setup, called) {
        (Err(e), _) => Err(classify(&e, TxError::Role, session.timeout)),
        (Ok(_), Err(e)) => Err(classify(&e, TxError::Call, session.timeout)),
        (Ok(_), Ok(rows)) => Ok(rows),
    };
    if tidy {
        lease.release();
    } else {
        tracing::warn!("authorization transaction did not end cleanly; connection discarded");
        drop(lease);
    }
    result
}

fn classify(e: &tokio_postgres::Error, wrap: fn(DbError) -> TxError, timeout: Duration) -> TxError {
    match DbError::of(e) {
        Some(db) if db.sqlstate == "57014" => TxError::Timeout(timeout),
        Some(db) => wrap(db),
        None => TxError::Connection(crate::pg::describe(e)),
    }
}

/// Runs the check function for `channel` in `mode` as the subject's role.
pub(super) async fn run(
    pool: &Pool,
    function: &FunctionName,
    subject: &Subject,
    channel: &str,
    mode: &str,
    timeout: Duration,
) -> Result<(), AuthzRefusal> {
    let sql = format!("SELECT {}()", function.quoted());
    let session = Session {
        subject,
        channel,
        mode,
        timeout,
    };
    let what = || format!("channel '{channel}' (mode {mode})");
    match transaction(pool, &session, &sql, &[], End::Rollback).await {
        Ok(rows) => match rows.first().map(|r| r.try_get::<_, Option<bool>>(0)) {
            Some(Ok(Some(true))) => Ok(()),
            Some(Ok(_)) => Err(AuthzRefusal::Forbidden(format!(
                "the database does not allow {}",
                what()
            ))),
            Some(Err(_)) | None => Err(AuthzRefusal::Unavailable(format!(
                "the check function {function} must return one boolean"
            ))),
        },
        Err(TxError::Role(db)) => Err(AuthzRefusal::Forbidden(format!(
            "the role '{}' cannot be used: {} (SQLSTATE {})",
            subject.role.escape_debug(),
            db.message,
            db.sqlstate
        ))),
        Err(TxError::Call(db)) if db.is_server_side() => {
            tracing::warn!(sqlstate = %db.sqlstate, error = %db.message, "the check function failed");
            Err(AuthzRefusal::Unavailable(format!(
                "{} (SQLSTATE {})",
                db.message, db.sqlstate
            )))
        }
        Err(TxError::Call(db)) => Err(AuthzRefusal::Forbidden(format!(
            "the database refused {}: {} (SQLSTATE {})",
            what(),
            db.message,
            db.sqlstate
        ))),
        Err(TxError::Timeout(t)) => Err(AuthzRefusal::Unavailable(format!(
            "no answer within {} ms",
            t.as_millis()
        ))),
        Err(TxError::Pool(e)) => Err(AuthzRefusal::Unavailable(e.to_string())),
        Err(TxError::Connection(e)) => Err(AuthzRefusal::Unavailable(e)),
    }
}

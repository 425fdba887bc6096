//! The connection pools of checks and writes: separate from the NOTIFY pool (a slow check or write
//! function never delays a NOTIFY, and each is sized by its own setting), at most `size`
//! connections, opened on demand.
//!
//! Safety rule: a connection goes back to the pool only through [`Lease::release`], which the
//! caller reaches only after the whole transaction (and its `ROLLBACK`/`COMMIT` and the checks
//! after it) answered as expected. Every other way out (an error whose state is unknown, a
//! time-out, a panic, a cancelled future) drops the lease, and a dropped lease discards its
//! connection: a connection whose transaction state is not known is never reused.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::pg::{Database, describe, with_defaults};

/// Why no connection was had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    /// Every connection stayed busy for the whole wait.
    #[error("every authorization connection is busy (waited {0:?})")]
    Busy(Duration),
    /// A new connection could not be opened.
    #[error("cannot connect to the database: {0}")]
    Connect(String),
}

/// One open connection and the task that drives it.
struct Conn {
    client: tokio_postgres::Client,
    driver: tokio::task::JoinHandle<()>,
}

/// A pool of at most `size` connections.
pub struct Pool {
    db: Database,
    idle: Mutex<Vec<Conn>>,
    permits: Semaphore,
    discarded: Counter,
}

impl Pool {
    /// A pool that connects lazily.
    pub fn new(db: &Database, size: usize, discarded: Counter) -> Self {
        Self {
            db: with_defaults(db),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1)),
            discarded,
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        // The critical sections are a push or a pop: a poisoned lock is still consistent.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection, waiting at most `wait` for one to be free.
    pub async fn get(&self, wait: Duration) -> Result<Lease<'_>, PoolError> {
        let permit = tokio::time::timeout(wait, self.permits.acquire())
            .await
            .map_err(|_| PoolError::Busy(wait))?
            .map_err(|_| PoolError::Connect("the server is shutting down".into()))?;
        let reused = loop {
            let Some(conn) = self.idle().pop() else {
                break None;
            };
            if !conn.client.is_closed() {
                break Some(conn);
            }
        };
        let conn = match reused {
            Some(conn) => conn,
            None => self.open().await?,
        };
        Ok(Lease {
            conn: Some(conn),
            pool: self,
            _permit: permit,
        })
    }

    async fn open(&self) -> Result<Conn, PoolError> {
        let (client, connection) = self
            .db
            .connect()
            .await
            .map_err(|e| PoolError::Connect(describe(&e)))?;
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %describe(&e), "authorization connection ended");
            }
        });
        Ok(Conn { client, driver })
    }

    /// Closes the idle connections and refuses new leases (at shutdown).
    pub async fn close(&self) {
        self.permits.close();
        let conns: Vec<Conn> = std::mem::take(&mut *self.idle());
        for Conn { client, driver } in conns {
            drop(client);
            let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
        }
    }
}

/// A connection lent out; discarded when dropped unless [`Lease::release`]d.
pub struct Lease<'a> {
    conn: Option<Conn>,
    pool: &'a Pool,
    _permit: SemaphorePermit<'a>,
}

impl Lease<'_> {
    /// The connection.
    pub fn client(&self) -> &tokio_postgres::Client {
        // `conn` is `Some` until `release` or drop, which both consume the lease.
        &self
            .conn
            .as_ref()
            .expect("a lease holds its connection")
            .client
    }

    /// Gives the connection back: only when its transaction ended as expected.
    pub fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.idle().push(conn);
        }
    }

    /// Asks PostgreSQL to cancel what the connection runs (after a time-out), then discards it.
    pub fn cancel(self) {
        if let Some(conn) = &self.conn {
            let token = conn.client.cancel_token();
            let tls = self.pool.db.tls.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), token.cancel_query(tls)).await;
            });
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.discarded.inc();
            tracing::debug!("authorization connection discarded (state unknown)");
            conn.driver.abort();
        }
    }
}

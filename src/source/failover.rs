//! Whether the WAL source's slot survives a failover (PostgreSQL 17 and later), checked where
//! pgws can see it: on the primary it reads from, and on every standby its connection string
//! names.
//!
//! pgws creates its slot as a failover slot ([`super::wal`]); PostgreSQL keeps a copy on a
//! standby only when the operator has set it up (docs/SCALING.md, "Failover"):
//! - on each standby: `sync_replication_slots = on`, `hot_standby_feedback = on`,
//!   `primary_slot_name` (a physical slot on the primary), a `dbname` in `primary_conninfo`, and
//!   `wal_level = logical`;
//! - on the primary: `synchronized_standby_slots` naming those physical slots, so that no logical
//!   reader (pgws) receives a transaction before the standbys have it. Without it, pgws may
//!   deliver messages that a promoted standby never received, and after the failover the new
//!   timeline writes other messages at the same positions.
//!
//! A new synchronised slot stays temporary on the standby (dropped at promotion) until the
//! primary's slot has advanced past the standby's starting point; pgws says so, asks the primary
//! for a standby snapshot record (`pg_log_standby_snapshot()`, which lets the copy catch up),
//! and checks again until every standby it can see holds a persistent copy.
//!
//! Everything here only logs: a missing setting is the operator's to fix, and pgws keeps
//! running meanwhile (a failover then loses the slot, which pgws announces as a `Gap`).

use std::time::Duration;

use crate::pg::hosts::{self, Endpoint};
use crate::pg::{Database, describe};

/// How often the standbys are looked at again while the slot is not yet failover-safe.
const RECHECK: Duration = Duration::from_secs(10);
/// How many times before giving up (a few minutes: the state is logged each time it changes).
const CHECKS: u32 = 30;
/// Time limit for one server's checks.
const SERVER_TIMEOUT: Duration = Duration::from_secs(15);

/// What one standby says about the slot.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Copy {
    /// A persistent synchronised copy: a failover now keeps the slot.
    Ready,
    /// Settings missing for slot synchronisation (what to set).
    Misconfigured(Vec<String>),
    /// Synchronisation is set up; the copy is missing or still temporary (why).
    NotYet(String),
    /// The server could not be asked.
    Unreachable(String),
}

/// Checks the primary once and the standbys until the slot is safe on all of them (or after
/// [`CHECKS`] rounds); logs what is missing, and when the slot becomes failover-safe.
///
/// `hurry` is set while a standby's copy exists but is still temporary: the WAL source then
/// confirms everything it received at once (rather than what no replay window holds), because a
/// temporary copy becomes persistent only once the primary's slot is confirmed past a standby
/// snapshot written after the copy, and the windows would hold confirmation back for minutes.
/// The price is a shorter replay window across a restart meanwhile (announced as a `Gap`).
pub async fn check(
    db: Database,
    primary: Endpoint,
    slot: String,
    hurry: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let _done = Unhurry(hurry.clone());
    let primary_ok = tokio::time::timeout(SERVER_TIMEOUT, check_primary(&db, &primary))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {SERVER_TIMEOUT:?}")));
    if let Err(why) = primary_ok {
        tracing::warn!(server = %primary, error = %why, "cannot check the primary's failover settings");
    }
    let standbys: Vec<Endpoint> = hosts::endpoints(&db.config)
        .into_iter()
        .filter(|e| *e != primary)
        .collect();
    if standbys.is_empty() {
        tracing::info!(slot = %slot,
            "PGWS_DB_URI names no standby: pgws cannot tell whether its failover slot is synchronised \
             (name the standbys after the primary, host=primary,standby; see docs/SCALING.md)");
        return;
    }
    let mut last: Vec<Option<Copy>> = vec![None; standbys.len()];
    for round in 0..CHECKS {
        let mut all_ready = true;
        let mut nudge = false;
        for (i, server) in standbys.iter().enumerate() {
            let copy = tokio::time::timeout(SERVER_TIMEOUT, check_standby(&db, server, &slot))
                .await
                .unwrap_or_else(|_| {
                    Copy::Unreachable(format!("no answer within {SERVER_TIMEOUT:?}"))
                });
            all_ready &= copy == Copy::Ready;
            nudge |= matches!(copy, Copy::NotYet(_));
            if last[i].as_ref() != Some(&copy) {
                report(server, &slot, &copy);
            }
            last[i] = Some(copy);
        }
        hurry.store(nudge, std::sync::atomic::Ordering::Relaxed);
        if all_ready {
            return;
        }
        if nudge {
            snapshot(&db, &primary).await;
        }
        if round + 1 < CHECKS {
            tokio::time::sleep(RECHECK).await;
        }
    }
    tracing::warn!(slot = %slot,
        "the replication slot is still not failover-safe on every standby; no further checks (see the lines above)");
}

/// Clears `hurry` when the checks end, however they end.
struct Unhurry(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for Unhurry {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

fn report(server: &Endpoint, slot: &str, copy: &Copy) {
    match copy {
        Copy::Ready => tracing::info!(server = %server, slot = %slot,
            "the standby holds a synchronised copy of the replication slot: a failover to it keeps every position"),
        Copy::Misconfigured(missing) => tracing::warn!(server = %server, slot = %slot,
            "the standby does not synchronise replication slots: a failover to it loses pgws's slot \
             (clients get a Gap). Set on the standby: {}", missing.join("; ")),
        Copy::NotYet(why) => tracing::warn!(server = %server, slot = %slot,
            "the replication slot is not yet failover-safe on the standby ({why}): a failover now \
             loses it (clients get a Gap)"),
        Copy::Unreachable(why) => tracing::info!(server = %server, error = %why,
            "cannot check the standby's copy of the replication slot"),
    }
}

/// `synchronized_standby_slots` on the primary: set, and naming physical slots that exist.
async fn check_primary(db: &Database, server: &Endpoint) -> Result<(), String> {
    let (client, connection) = hosts::connect_one(db, server)
        .await
        .map_err(|e| describe(&e))?;
    let driver = tokio::spawn(connection);
    let result = async {
        let row = client
            .query_one(
                "SELECT current_setting('synchronized_standby_slots'), \
                 ARRAY(SELECT slot_name::text FROM pg_replication_slots WHERE slot_type = 'physical')",
                &[],
            )
            .await
            .map_err(|e| describe(&e))?;
        let (listed, physical): (String, Vec<String>) = (row.get(0), row.get(1));
        let listed: Vec<&str> = listed
            .split(',')
            .map(|s| s.trim().trim_matches('"'))
            .filter(|s| !s.is_empty())
            .collect();
        if listed.is_empty() {
            tracing::warn!(server = %server, physical_slots = ?physical,
                "synchronized_standby_slots is empty on the primary: pgws may receive (and deliver) \
                 transactions a standby does not have yet, which a failover to it would take back. \
                 Set it to the standbys' physical slots: ALTER SYSTEM SET synchronized_standby_slots = \
                 '<primary_slot_name of each standby>'; SELECT pg_reload_conf();");
        } else if let Some(missing) = listed.iter().find(|s| !physical.iter().any(|p| p == *s)) {
            tracing::warn!(server = %server, slot = %missing,
                "synchronized_standby_slots names a slot that is not a physical slot of the primary: \
                 logical readers (pgws) wait for it for ever");
        }
        Ok(())
    }
    .await;
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
    result
}

/// What one server of the list says: settings for slot sync, then the slot's copy.
async fn check_standby(db: &Database, server: &Endpoint, slot: &str) -> Copy {
    let (client, connection) = match hosts::connect_one(db, server).await {
        Ok(c) => c,
        Err(e) => return Copy::Unreachable(describe(&e)),
    };
    let driver = tokio::spawn(connection);
    let copy = standby_copy(&client, slot).await;
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
    copy.unwrap_or_else(|e| Copy::Unreachable(describe(&e)))
}

async fn standby_copy(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<Copy, tokio_postgres::Error> {
    // primary_conninfo is visible to superusers and pg_read_all_settings only: NULL otherwise.
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('hot_standby_feedback'), \
             current_setting('sync_replication_slots'), current_setting('primary_slot_name'), \
             current_setting('wal_level'), \
             (SELECT setting FROM pg_settings WHERE name = 'primary_conninfo')",
            &[],
        )
        .await?;
    let in_recovery: bool = row.get(0);
    if !in_recovery {
        return Ok(Copy::Unreachable(
            "not a standby (a second primary in the connection string?)".into(),
        ));
    }
    let missing = missing_settings(
        &row.get::<_, String>(1),
        &row.get::<_, String>(2),
        &row.get::<_, String>(3),
        &row.get::<_, String>(4),
        row.get::<_, Option<String>>(5).as_deref(),
    );
    if !missing.is_empty() {
        return Ok(Copy::Misconfigured(missing));
    }
    let copy = client
        .query_opt(
            "SELECT synced, temporary, invalidation_reason FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(match copy {
        None => Copy::NotYet("no copy yet".into()),
        Some(row) => {
            let (synced, temporary, invalid): (bool, bool, Option<String>) =
                (row.get(0), row.get(1), row.get(2));
            if let Some(reason) = invalid {
                Copy::NotYet(format!("the copy is invalidated: {reason}"))
            } else if !synced {
                Copy::NotYet(
                    "a slot of the same name exists there but is not a synchronised copy".into(),
                )
            } else if temporary {
                Copy::NotYet(
                    "the copy is still temporary: it becomes persistent once pgws's position on the \
                     primary passes the standby's starting point"
                        .into(),
                )
            } else {
                Copy::Ready
            }
        }
    })
}

/// What a standby lacks for slot synchronisation, each as the setting to write.
fn missing_settings(
    feedback: &str,
    sync: &str,
    primary_slot: &str,
    wal_level: &str,
    conninfo: Option<&str>,
) -> Vec<String> {
    let mut missing = Vec::new();
    if sync != "on" {
        missing.push("sync_replication_slots = on".to_string());
    }
    if feedback != "on" {
        missing.push("hot_standby_feedback = on".to_string());
    }
    if primary_slot.is_empty() {
        missing.push(
            "primary_slot_name = '<a physical slot on the primary>' (and list it in the primary's synchronized_standby_slots)"
                .to_string(),
        );
    }
    if wal_level != "logical" {
        missing.push("wal_level = logical".to_string());
    }
    match conninfo {
        Some(info) if !names_dbname(info) => {
            missing.push("a dbname in primary_conninfo (… dbname=<any database>)".to_string())
        }
        _ => {}
    }
    missing
}

/// Whether a key=value connection string has a `dbname` key.
fn names_dbname(conninfo: &str) -> bool {
    conninfo
        .split_whitespace()
        .any(|part| part.split('=').next().map(str::trim) == Some("dbname"))
}

/// Asks the primary for a standby snapshot record: the standby's copy of a new slot can become
/// persistent only after one (PostgreSQL writes one every 15 s on its own; this saves the wait).
async fn snapshot(db: &Database, primary: &Endpoint) {
    let Ok(Ok((client, connection))) =
        tokio::time::timeout(SERVER_TIMEOUT, hosts::connect_one(db, primary)).await
    else {
        return;
    };
    let driver = tokio::spawn(connection);
    if let Err(e) = client
        .batch_execute("SELECT pg_log_standby_snapshot()")
        .await
    {
        tracing::debug!(error = %describe(&e), "pg_log_standby_snapshot() refused");
    }
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_a_standby_lacks() {
        let ok = missing_settings(
            "on",
            "on",
            "standby1",
            "logical",
            Some("host=p port=5432 user=u dbname=postgres"),
        );
        assert!(ok.is_empty(), "{ok:?}");
        let all = missing_settings("off", "off", "", "replica", Some("host=p port=5432 user=u"));
        assert_eq!(all.len(), 5, "{all:?}");
        assert!(all[0].contains("sync_replication_slots"));
        assert!(all[4].contains("dbname"));
        // primary_conninfo unreadable (no pg_read_all_settings): not reported as missing.
        assert!(missing_settings("on", "on", "s", "logical", None).is_empty());
        assert!(names_dbname("user=u dbname = x"));
        assert!(!names_dbname("user=u application_name=dbname"));
    }
}

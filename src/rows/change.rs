//! A table change as the text clients receive: one JSON object per `INSERT`, `UPDATE`, `DELETE`
//! or `TRUNCATE` of a table in pgws's publication, delivered on the channel
//! `table:<schema>.<table>` (docs/ROWS.md, "Table changes on channels").
//!
//! What it owns: turning a decoded pgoutput change (with the relation it belongs to and its
//! transaction's commit time) into that object, with typed values (`crate::rows::value`, what
//! `to_jsonb` gives) and unchanged TOASTed values filled from the old row when it carries them
//! (`REPLICA IDENTITY FULL`) or named in `unchanged_toast` otherwise. What it must never do:
//! decide who receives a change (the hub and the grants do) or hold more than one change.
//!
//! ```json
//! {"schema":"public","table":"todos","op":"UPDATE","commit_time":"2026-12-07T21:00:00.123456Z",
//!  "new":{"id":1,"done":true},"old":{"id":1},"unchanged_toast":[]}
//! ```

use serde_json::{Map, Value};

use super::pgoutput::{DecodeError, Message, OldTuple, Relation, RelationCache};
use crate::channel::TABLE_PREFIX as CHANNEL_PREFIX;

/// The channel a table's changes are delivered on.
pub fn channel_of(schema: &str, table: &str) -> String {
    format!("{CHANNEL_PREFIX}{schema}.{table}")
}

/// What a change did to its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    /// The name clients receive (`"op"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
            Op::Truncate => "TRUNCATE",
        }
    }
}

/// One table change, ready to deliver: where it goes, what clients receive, and what the
/// source needs to count it. A struct rather than a tuple so that later stages (row
/// subscriptions, per-row authorization) can carry more of the change without touching every
/// caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The channel it is delivered on (`table:<schema>.<table>`).
    pub channel: String,
    /// The JSON text clients receive.
    pub text: String,
    /// What it did.
    pub op: Op,
    /// Its transaction's commit time (microseconds since 2000-01-01 UTC).
    pub commit_micros: i64,
}

impl Change {
    /// The table as `schema.name` (the channel without its prefix).
    pub fn table(&self) -> &str {
        &self.channel[CHANNEL_PREFIX.len()..]
    }
}

/// How many changes a pgoutput message carries (what [`changes`] returns for it when it can be
/// read): one per row change, one per table of a `TRUNCATE`, none otherwise. The WAL source
/// gives an unreadable change its positions anyway, so later positions never shift.
pub fn count(msg: &Message) -> u64 {
    match msg {
        Message::Insert { .. } | Message::Update { .. } | Message::Delete { .. } => 1,
        Message::Truncate { relations, .. } => relations.len() as u64,
        _ => 0,
    }
}

/// The changes one pgoutput message carries (none for Relation and the others), in the order
/// PostgreSQL sent them (a `TRUNCATE` of several tables gives one change per table).
pub fn changes(
    msg: &Message,
    relations: &RelationCache,
    commit_micros: i64,
    xid: u32,
) -> Result<Vec<Change>, DecodeError> {
    let commit_time = format_pg_micros(commit_micros);
    let one = |rel: &Relation, op: Op, new: Option<Map<String, Value>>, old, unchanged| {
        let mut obj = Map::new();
        obj.insert("schema".into(), Value::String(rel.namespace.clone()));
        obj.insert("table".into(), Value::String(rel.name.clone()));
        obj.insert("op".into(), Value::String(op.as_str().into()));
        obj.insert("commit_time".into(), Value::String(commit_time.clone()));
        obj.insert("new".into(), new.map_or(Value::Null, Value::Object));
        obj.insert("old".into(), old);
        obj.insert("unchanged_toast".into(), unchanged);
        // The transaction's id: what tells a change already in a snapshot from one after it
        // (docs/ROWS.md, "Snapshots"), and groups the changes of one transaction.
        obj.insert("xid".into(), Value::from(xid));
        Change {
            channel: channel_of(&rel.namespace, &rel.name),
            text: Value::Object(obj).to_string(),
            op,
            commit_micros,
        }
    };
    let old_of = |rel: &Relation, old: &OldTuple| -> Result<Map<String, Value>, DecodeError> {
        Ok(rel.row(old.values(), old.is_key_only())?.values)
    };
    Ok(match msg {
        Message::Insert { relation, new } => {
            let rel = relations.get(*relation)?;
            let row = rel.row(new, false)?;
            vec![one(
                rel,
                Op::Insert,
                Some(row.values),
                Value::Null,
                Value::Array(vec![]),
            )]
        }
        Message::Update { relation, old, new } => {
            let rel = relations.get(*relation)?;
            let mut row = rel.row(new, false)?;
            let old = old.as_ref().map(|o| old_of(rel, o)).transpose()?;
            // Unchanged TOASTed values are not sent; a whole old row has them.
            let mut missing = Vec::new();
            for name in std::mem::take(&mut row.unchanged) {
                match old.as_ref().and_then(|o| o.get(&name)) {
                    Some(v) => {
                        row.values.insert(name, v.clone());
                    }
                    None => missing.push(Value::String(name)),
                }
            }
            vec![one(
                rel,
                Op::Update,
                Some(row.values),
                old.map_or(Value::Null, Value::Object),
                Value::Array(missing),
            )]
        }
        Message::Delete { relation, old } => {
            let rel = relations.get(*relation)?;
            let old = old_of(rel, old)?;
            vec![one(
                rel,
                Op::Delete,
                None,
                Value::Object(old),
                Value::Array(vec![]),
            )]
        }
        Message::Truncate {
            relations: oids, ..
        } => oids
            .iter()
            .map(|oid| {
                relations
                    .get(*oid)
                    .map(|rel| one(rel, Op::Truncate, None, Value::Null, Value::Array(vec![])))
            })
            .collect::<Result<_, _>>()?,
        _ => Vec::new(),
    })
}

/// Microseconds since 2000-01-01 00:00 UTC (PostgreSQL's epoch) as ISO 8601 in UTC, with the
/// microseconds (`2026-12-07T21:00:00.123456Z`).
pub fn format_pg_micros(micros: i64) -> String {
    const PG_EPOCH_DAYS: i64 = 10_957; // 1970-01-01 to 2000-01-01
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400) + PG_EPOCH_DAYS;
    let tod = secs.rem_euclid(86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        tod / 3_600,
        tod % 3_600 / 60,
        tod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_times_in_iso_8601() {
        assert_eq!(format_pg_micros(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(format_pg_micros(-1), "1999-12-31T23:59:59.999999Z");
        // 2024-02-29 12:34:56.789012 UTC: 8,825 days and 45,296.789012 s after the epoch.
        assert_eq!(
            format_pg_micros((8_825 * 86_400 + 45_296) * 1_000_000 + 789_012),
            "2024-02-29T12:34:56.789012Z"
        );
    }
}

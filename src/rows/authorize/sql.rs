//! The one statement that decides a batch of a table's changes for a cohort, and the bound
//! parameter it reads (docs/ROWS.md, "Per-row authorization").
//!
//! ```sql
//! SELECT x.i
//! FROM jsonb_to_recordset($1::jsonb) AS x(i int4, op text, u int4[], r jsonb)
//! CROSS JOIN LATERAL jsonb_populate_record(NULL::"s"."t", x.r) AS p
//! WHERE CASE x.op
//!   WHEN 'T' THEN true                                    -- no row values: the grant decides
//!   WHEN 'D' THEN NOT row_security_active($2::oid::regclass)
//!   ELSE EXISTS (SELECT 1 FROM "s"."t" AS t
//!                WHERE t."id" = p."id"                    -- the key: an index lookup
//!                  AND (0 = ANY (x.u) OR t."id" IS NOT DISTINCT FROM p."id")
//!                  AND (1 = ANY (x.u) OR t."title"::text COLLATE "C" IS NOT DISTINCT FROM p."title"::text COLLATE "C")
//!                  AND ...)                  -- every column the change carries (`same`)
//! END
//! ```
//!
//! Run as the cohort's role, so the table's grants (checked for every column when the statement
//! starts, whatever the batch holds) and its RLS policies apply to `t` exactly as to the
//! client's own `SELECT`. Only identifiers (quoted by [`quote_ident`]) and integers pgws makes
//! are written into the text; row values travel in `$1`, the table's OID in `$2`.

use serde_json::{Map, Value};

use super::{AuthorizeError, Op, RowChange};
use crate::rows::pgoutput::{Relation, ReplicaIdentity};
use crate::rows::value::{ColumnType, Scalar};

/// `name` as a quoted SQL identifier (`"` doubled). Names with NUL cannot be quoted (nor
/// exist in PostgreSQL): refused.
pub fn quote_ident(name: &str) -> Result<String, AuthorizeError> {
    if name.contains('\0') {
        return Err(AuthorizeError::Name(name.escape_debug().to_string()));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// What the decision needs of a table, from its Relation message, with the statement built
/// once (rebuild it after a schema change: a new Relation).
#[derive(Debug, Clone)]
pub struct TableShape {
    /// The table's OID (for `row_security_active`).
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// Column names, in the Relation's order (a column's ordinal is its index here).
    pub columns: Vec<String>,
    /// Their types (from the type OIDs): they choose how a value is compared.
    pub types: Vec<ColumnType>,
    /// Ordinals of the columns matched with `=` to find the row (the replica identity's key).
    pub key: Vec<usize>,
    sql: String,
}

impl TableShape {
    /// The shape of a table as its latest Relation message describes it. The key is the
    /// replica identity's columns; with `REPLICA IDENTITY FULL` (every column flagged, NULLs
    /// allowed) no column is matched with `=` unless [`TableShape::with_key`] names the primary
    /// key: the decision stays exact, only slower on large tables.
    pub fn of(rel: &Relation) -> Result<Self, AuthorizeError> {
        let columns: Vec<String> = rel.columns.iter().map(|c| c.name.clone()).collect();
        let types = rel
            .columns
            .iter()
            .map(|c| ColumnType::of(c.type_oid))
            .collect();
        let key = if rel.replica_identity == ReplicaIdentity::Full {
            Vec::new()
        } else {
            (0..rel.columns.len())
                .filter(|i| rel.columns[*i].key)
                .collect()
        };
        Self::build(rel.oid, &rel.namespace, &rel.name, columns, types, key)
    }

    /// The same shape with these columns matched with `=` (they must be NOT NULL and unique
    /// together, like a primary key); unknown names are refused.
    pub fn with_key(self, names: &[&str]) -> Result<Self, AuthorizeError> {
        let key = names
            .iter()
            .map(|n| {
                self.columns
                    .iter()
                    .position(|c| c == n)
                    .ok_or_else(|| AuthorizeError::Name(n.escape_debug().to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::build(
            self.oid,
            &self.schema,
            &self.name,
            self.columns,
            self.types,
            key,
        )
    }

    fn build(
        oid: u32,
        schema: &str,
        name: &str,
        columns: Vec<String>,
        types: Vec<ColumnType>,
        key: Vec<usize>,
    ) -> Result<Self, AuthorizeError> {
        let table = format!("{}.{}", quote_ident(schema)?, quote_ident(name)?);
        let mut conditions = Vec::new();
        for k in &key {
            let c = quote_ident(&columns[*k])?;
            conditions.push(format!("t.{c} = p.{c}"));
        }
        for (i, (column, ty)) in columns.iter().zip(&types).enumerate() {
            let c = quote_ident(column)?;
            conditions.push(format!("({i} = ANY (x.u) OR {})", same(&c, *ty)));
        }
        if conditions.is_empty() {
            conditions.push("true".into());
        }
        let sql = format!(
            "SELECT x.i FROM jsonb_to_recordset($1::jsonb) AS x(i int4, op text, u int4[], r jsonb) \
             CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, x.r) AS p \
             WHERE CASE x.op WHEN 'T' THEN true \
             WHEN 'D' THEN NOT row_security_active($2::oid::regclass) \
             ELSE EXISTS (SELECT 1 FROM {table} AS t WHERE {}) END",
            conditions.join(" AND ")
        );
        Ok(Self {
            oid,
            schema: schema.to_owned(),
            name: name.to_owned(),
            columns,
            types,
            key,
            sql,
        })
    }

    /// The statement.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The batch as the `$1` text: per change its index, operation, the ordinals of the columns
    /// it does not carry, and its row (the new row; the old one for a `DELETE`).
    pub(super) fn batch_param(&self, changes: &[RowChange<'_>]) -> String {
        let empty = Map::new();
        let items: Vec<Value> = changes
            .iter()
            .enumerate()
            .map(|(i, ch)| {
                let row = ch.row.unwrap_or(&empty);
                let absent: Vec<Value> = self
                    .columns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| !row.contains_key(c.as_str()))
                    .map(|(n, _)| Value::from(n))
                    .collect();
                let op = match ch.op {
                    Op::Insert => "I",
                    Op::Update => "U",
                    Op::Delete => "D",
                    Op::Truncate => "T",
                };
                let mut item = Map::new();
                item.insert("i".into(), Value::from(i));
                item.insert("op".into(), Value::from(op));
                item.insert("u".into(), Value::Array(absent));
                item.insert("r".into(), Value::Object(row.clone()));
                Value::Object(item)
            })
            .collect();
        Value::Array(items).to_string()
    }
}

/// SQL saying that column `c` (quoted) holds the same value in the table's row `t` and in the
/// change's row `p`. Equal means identical as a value of the type, never merely alike: types
/// whose `=` is exact (numbers by value, so `1.50` is `1.5` as in `to_jsonb`; times as instants)
/// use it; text compares byte-wise (`COLLATE "C"`: a nondeterministic collation's `=` would make
/// `'A'` equal `'a'`); every other type (json, arrays, enums, intervals, geometry, ...) compares
/// `to_jsonb` of both sides, which needs no `=` and tells `'1 day'` from `'24 hours'`.
fn same(c: &str, ty: ColumnType) -> String {
    use Scalar::*;
    match ty {
        ColumnType::Scalar(
            Bool | Int | Float | Numeric | Uuid | Bytea | Date | Time | Timestamp | TimestampTz,
        ) => format!("t.{c} IS NOT DISTINCT FROM p.{c}"),
        ColumnType::Scalar(Text) => {
            format!("t.{c}::text COLLATE \"C\" IS NOT DISTINCT FROM p.{c}::text COLLATE \"C\"")
        }
        _ => format!(
            "coalesce(to_jsonb(t.{c}), 'null'::jsonb) = coalesce(to_jsonb(p.{c}), 'null'::jsonb)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_whatever_they_hold() {
        assert_eq!(quote_ident("todos").unwrap(), "\"todos\"");
        assert_eq!(
            quote_ident("x\"; DROP TABLE y; --").unwrap(),
            "\"x\"\"; DROP TABLE y; --\""
        );
        assert_eq!(quote_ident("").unwrap(), "\"\"");
        assert_eq!(quote_ident("Ünï \\ '").unwrap(), "\"Ünï \\ '\"");
        assert!(quote_ident("a\0b").is_err());
    }
}

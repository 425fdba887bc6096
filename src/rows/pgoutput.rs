//! Decoder of pgoutput (logical replication protocol version 1) messages: the bytes of one
//! `XLogData` payload (pgwire-replication's `ReplicationEvent::XLogData { data, .. }`, or one
//! row of `pg_logical_slot_peek_binary_changes`) to a typed message, plus the relation cache
//! that gives row changes their column names and types.
//!
//! Why hand-written: the messages are small and fixed (PostgreSQL's "Logical Replication Message
//! Formats"), and the decoder must be bounded and total: a malformed or unexpected message is a
//! typed error for the caller to log, never a panic and never an allocation sized by a length
//! field that the message does not back with bytes.
//!
//! Begin, Commit and logical decoding messages are decoded by pgwire-replication already; they
//! are decoded here too so that the same code reads a slot peeked from SQL (tests, tools).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use thiserror::Error;

use super::value::{self, ColumnType, ValueError};

/// PostgreSQL's limit on columns in a tuple (`MaxTupleAttributeNumber`); more is malformed.
pub const MAX_COLUMNS: usize = 1664;

/// Why a message could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("unknown message type {0:?}")]
    UnknownTag(char),
    #[error("{what}: message ends early (byte {at})")]
    Truncated { what: &'static str, at: usize },
    #[error("{what}: unexpected byte {found:?} at byte {at}")]
    Unexpected {
        what: &'static str,
        found: char,
        at: usize,
    },
    #[error("{what}: {count} columns, more than PostgreSQL allows")]
    TooManyColumns { what: &'static str, count: usize },
    #[error("{what}: text is not UTF-8")]
    NotUtf8 { what: &'static str },
    #[error("{0} bytes left over after the message")]
    Trailing(usize),
    #[error("change for relation {0} before its Relation message")]
    UnknownRelation(u32),
    #[error("relation {relation}: tuple has {got} columns, the relation {want}")]
    ColumnCount {
        relation: u32,
        got: usize,
        want: usize,
    },
    #[error("relation {relation}, column {column:?}: {source}")]
    Value {
        relation: u32,
        column: String,
        source: ValueError,
    },
    #[error("relation {relation}, column {column:?}: binary values are not supported")]
    Binary { relation: u32, column: String },
}

/// `REPLICA IDENTITY` of a table: what an UPDATE's and a DELETE's old row carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `d`: the primary key columns.
    Default,
    /// `n`: nothing (UPDATE and DELETE are not even published).
    Nothing,
    /// `f`: every column.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

/// A column of a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity key (flag 1).
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// A Relation message: the table's schema as of the changes that follow it. PostgreSQL sends
/// it before a table's first change in a session and again after every schema change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<Column>,
}

/// One column of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    Null,
    /// An unchanged TOASTed value: the UPDATE did not touch it and PostgreSQL did not send it.
    UnchangedToast,
    Text(String),
    /// Only with the `binary` option, which pgws does not ask for.
    Binary(Vec<u8>),
}

/// An old row as sent with an UPDATE or DELETE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: the replica identity key columns only (the others are `Null` placeholders).
    Key(Vec<TupleValue>),
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(Vec<TupleValue>),
}

/// A decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: u64,
        commit_time: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        lsn: u64,
        end_lsn: u64,
        commit_time: i64,
    },
    /// `pg_logical_emit_message` (pgws's own message path).
    Logical {
        transactional: bool,
        lsn: u64,
        prefix: String,
        content: Vec<u8>,
    },
    Origin {
        lsn: u64,
        name: String,
    },
    Relation(Relation),
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: Vec<TupleValue>,
    },
    Update {
        relation: u32,
        /// Absent when the key did not change and the identity is not FULL.
        old: Option<OldTuple>,
        new: Vec<TupleValue>,
    },
    Delete {
        relation: u32,
        old: OldTuple,
    },
    Truncate {
        cascade: bool,
        restart_identity: bool,
        relations: Vec<u32>,
    },
}

/// A cursor over a message's bytes; every read checks the length first.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() - self.at < n {
            return Err(DecodeError::Truncated {
                what: self.what,
                at: self.at,
            });
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_be_bytes(a))
    }
    /// A NUL-terminated string.
    fn cstr(&mut self) -> Result<String, DecodeError> {
        let rest = &self.b[self.at..];
        let end = rest
            .iter()
            .position(|&c| c == 0)
            .ok_or(DecodeError::Truncated {
                what: self.what,
                at: self.b.len(),
            })?;
        let s = std::str::from_utf8(&rest[..end])
            .map_err(|_| DecodeError::NotUtf8 { what: self.what })?
            .to_owned();
        self.at += end + 1;
        Ok(s)
    }
    fn remaining(&self) -> usize {
        self.b.len() - self.at
    }
    fn unexpected(&self, found: u8) -> DecodeError {
        DecodeError::Unexpected {
            what: self.what,
            found: char::from(found),
            at: self.at.saturating_sub(1),
        }
    }

    /// TupleData: Int16 count, then per column `n`, `u`, `t` + Int32 length + text, or `b`.
    fn tuple(&mut self) -> Result<Vec<TupleValue>, DecodeError> {
        let n = usize::from(self.u16()?);
        if n > MAX_COLUMNS {
            return Err(DecodeError::TooManyColumns {
                what: self.what,
                count: n,
            });
        }
        // Each column takes at least one byte: never reserve more than the message holds.
        let mut out = Vec::with_capacity(n.min(self.remaining()));
        for _ in 0..n {
            let kind = self.u8()?;
            out.push(match kind {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' | b'b' => {
                    let len = self.u32()? as usize;
                    let bytes = self.take(len)?;
                    if kind == b't' {
                        TupleValue::Text(
                            std::str::from_utf8(bytes)
                                .map_err(|_| DecodeError::NotUtf8 { what: self.what })?
                                .to_owned(),
                        )
                    } else {
                        TupleValue::Binary(bytes.to_vec())
                    }
                }
                other => return Err(self.unexpected(other)),
            });
        }
        Ok(out)
    }

    fn end(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

/// Decodes one pgoutput message (protocol version 1, no `binary`, no `streaming`).
pub fn decode(data: &[u8]) -> Result<Message, DecodeError> {
    let (&tag, _) = data.split_first().ok_or(DecodeError::Empty)?;
    let what = match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'M' => "Message",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        other => return Err(DecodeError::UnknownTag(char::from(other))),
    };
    let mut r = Reader {
        b: data,
        at: 1,
        what,
    };
    let msg = match tag {
        b'B' => Message::Begin {
            final_lsn: r.u64()?,
            commit_time: r.u64()? as i64,
            xid: r.u32()?,
        },
        b'C' => Message::Commit {
            flags: r.u8()?,
            lsn: r.u64()?,
            end_lsn: r.u64()?,
            commit_time: r.u64()? as i64,
        },
        b'M' => {
            let flags = r.u8()?;
            let lsn = r.u64()?;
            let prefix = r.cstr()?;
            let len = r.u32()? as usize;
            Message::Logical {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.take(len)?.to_vec(),
            }
        }
        b'O' => Message::Origin {
            lsn: r.u64()?,
            name: r.cstr()?,
        },
        b'R' => {
            let oid = r.u32()?;
            let namespace = r.cstr()?;
            let name = r.cstr()?;
            let replica_identity = match r.u8()? {
                b'd' => ReplicaIdentity::Default,
                b'n' => ReplicaIdentity::Nothing,
                b'f' => ReplicaIdentity::Full,
                b'i' => ReplicaIdentity::Index,
                other => return Err(r.unexpected(other)),
            };
            let n = usize::from(r.u16()?);
            if n > MAX_COLUMNS {
                return Err(DecodeError::TooManyColumns { what, count: n });
            }
            let mut columns = Vec::with_capacity(n.min(r.remaining()));
            for _ in 0..n {
                let flags = r.u8()?;
                columns.push(Column {
                    key: flags & 1 != 0,
                    name: r.cstr()?,
                    type_oid: r.u32()?,
                    type_modifier: r.u32()? as i32,
                });
            }
            Message::Relation(Relation {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: r.u32()?,
            namespace: r.cstr()?,
            name: r.cstr()?,
        },
        b'I' => {
            let relation = r.u32()?;
            match r.u8()? {
                b'N' => Message::Insert {
                    relation,
                    new: r.tuple()?,
                },
                other => return Err(r.unexpected(other)),
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let old = match r.u8()? {
                b'K' => Some(OldTuple::Key(r.tuple()?)),
                b'O' => Some(OldTuple::Full(r.tuple()?)),
                b'N' => None,
                other => return Err(r.unexpected(other)),
            };
            if old.is_some() {
                match r.u8()? {
                    b'N' => {}
                    other => return Err(r.unexpected(other)),
                }
            }
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            let old = match r.u8()? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                other => return Err(r.unexpected(other)),
            };
            Message::Delete { relation, old }
        }
        _ => {
            // 'T'
            let n = r.u32()? as usize;
            let options = r.u8()?;
            if n > r.remaining() / 4 {
                return Err(DecodeError::Truncated { what, at: r.at });
            }
            let mut relations = Vec::with_capacity(n);
            for _ in 0..n {
                relations.push(r.u32()?);
            }
            Message::Truncate {
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
                relations,
            }
        }
    };
    r.end()?;
    Ok(msg)
}

/// A tuple as JSON: the columns PostgreSQL sent, by name, with typed values; `unchanged` lists
/// the columns left out because they are unchanged TOASTed values (for the caller to fill from
/// the old row or to mark).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JsonRow {
    pub values: Map<String, Value>,
    pub unchanged: Vec<String>,
}

impl Relation {
    /// Decodes a tuple of this relation. With `key_only`, non-key columns are left out (a `K`
    /// old tuple carries nulls in their place, which are not the row's values).
    pub fn row(&self, tuple: &[TupleValue], key_only: bool) -> Result<JsonRow, DecodeError> {
        if tuple.len() != self.columns.len() {
            return Err(DecodeError::ColumnCount {
                relation: self.oid,
                got: tuple.len(),
                want: self.columns.len(),
            });
        }
        let mut out = JsonRow::default();
        for (col, v) in self.columns.iter().zip(tuple) {
            if key_only && !col.key {
                continue;
            }
            match v {
                TupleValue::Null => {
                    out.values.insert(col.name.clone(), Value::Null);
                }
                TupleValue::UnchangedToast => out.unchanged.push(col.name.clone()),
                TupleValue::Text(t) => {
                    let j = value::to_json(ColumnType::of(col.type_oid), t).map_err(|e| {
                        DecodeError::Value {
                            relation: self.oid,
                            column: col.name.clone(),
                            source: e,
                        }
                    })?;
                    out.values.insert(col.name.clone(), j);
                }
                TupleValue::Binary(_) => {
                    return Err(DecodeError::Binary {
                        relation: self.oid,
                        column: col.name.clone(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// The column names and types, as a filter binds to them.
    pub fn column_types(&self) -> Vec<(String, ColumnType)> {
        self.columns
            .iter()
            .map(|c| (c.name.clone(), ColumnType::of(c.type_oid)))
            .collect()
    }
}

impl OldTuple {
    pub fn values(&self) -> &[TupleValue] {
        match self {
            OldTuple::Key(v) | OldTuple::Full(v) => v,
        }
    }
    pub fn is_key_only(&self) -> bool {
        matches!(self, OldTuple::Key(_))
    }
}

/// The relations seen on a replication session, by OID. A new Relation message for a known OID
/// replaces the old entry (a schema change mid-stream): changes that follow it use the new
/// columns, and holders of the previous `Arc` (a change being delivered) keep theirs.
#[derive(Debug, Default)]
pub struct RelationCache {
    by_oid: HashMap<u32, Arc<Relation>>,
}

impl RelationCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a Relation message; returns the previous version if the schema changed.
    pub fn insert(&mut self, rel: Relation) -> Option<Arc<Relation>> {
        let old = self.by_oid.insert(rel.oid, Arc::new(rel.clone()));
        old.filter(|o| **o != rel)
    }

    pub fn get(&self, oid: u32) -> Result<&Arc<Relation>, DecodeError> {
        self.by_oid
            .get(&oid)
            .ok_or(DecodeError::UnknownRelation(oid))
    }

    /// Feeds every message: Relation messages update the cache.
    pub fn observe(&mut self, msg: &Message) {
        if let Message::Relation(r) = msg {
            self.insert(r.clone());
        }
    }

    pub fn len(&self) -> usize {
        self.by_oid.len()
    }

    /// The relation named `namespace.name` (a linear scan: a session sees few tables).
    pub fn find(&self, namespace: &str, name: &str) -> Option<&Arc<Relation>> {
        self.by_oid
            .values()
            .find(|r| r.namespace == namespace && r.name == name)
    }

    pub fn is_empty(&self) -> bool {
        self.by_oid.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::value::oid;
    use serde_json::json;

    fn relation_bytes() -> Vec<u8> {
        let mut b = vec![b'R'];
        b.extend(16_384u32.to_be_bytes());
        b.extend(b"public\0todos\0");
        b.push(b'd');
        b.extend(3u16.to_be_bytes());
        for (flags, name, ty) in [
            (1u8, "id", oid::INT8),
            (0, "title", oid::TEXT),
            (0, "body", oid::TEXT),
        ] {
            b.push(flags);
            b.extend(name.as_bytes());
            b.push(0);
            b.extend(ty.to_be_bytes());
            b.extend((-1i32).to_be_bytes());
        }
        b
    }

    fn tuple(cols: &[Option<&str>]) -> Vec<u8> {
        let mut b = (cols.len() as u16).to_be_bytes().to_vec();
        for c in cols {
            match c {
                None => b.push(b'n'),
                Some("<toast>") => b.push(b'u'),
                Some(t) => {
                    b.push(b't');
                    b.extend((t.len() as u32).to_be_bytes());
                    b.extend(t.as_bytes());
                }
            }
        }
        b
    }

    #[test]
    fn relation_and_changes() {
        let mut cache = RelationCache::new();
        let m = decode(&relation_bytes()).unwrap();
        cache.observe(&m);
        let rel = cache.get(16_384).unwrap().clone();
        assert_eq!(rel.name, "todos");
        assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
        assert!(rel.columns[0].key && !rel.columns[1].key);

        let mut ins = vec![b'I'];
        ins.extend(16_384u32.to_be_bytes());
        ins.push(b'N');
        ins.extend(tuple(&[Some("1"), Some("hi"), None]));
        let Message::Insert { new, .. } = decode(&ins).unwrap() else {
            panic!("insert")
        };
        let row = rel.row(&new, false).unwrap();
        assert_eq!(
            Value::Object(row.values),
            json!({"id": 1, "title": "hi", "body": null})
        );

        let mut upd = vec![b'U'];
        upd.extend(16_384u32.to_be_bytes());
        upd.push(b'K');
        upd.extend(tuple(&[Some("1"), None, None]));
        upd.push(b'N');
        upd.extend(tuple(&[Some("2"), Some("x"), Some("<toast>")]));
        let Message::Update {
            old: Some(old),
            new,
            ..
        } = decode(&upd).unwrap()
        else {
            panic!("update")
        };
        assert!(old.is_key_only());
        assert_eq!(
            Value::Object(rel.row(old.values(), true).unwrap().values),
            json!({"id": 1})
        );
        let new = rel.row(&new, false).unwrap();
        assert_eq!(new.unchanged, vec!["body".to_owned()]);
        assert_eq!(Value::Object(new.values), json!({"id": 2, "title": "x"}));

        let mut del = vec![b'D'];
        del.extend(16_384u32.to_be_bytes());
        del.push(b'O');
        del.extend(tuple(&[Some("2"), Some("x"), Some("y")]));
        assert!(matches!(
            decode(&del).unwrap(),
            Message::Delete {
                old: OldTuple::Full(_),
                ..
            }
        ));

        let mut tr = vec![b'T'];
        tr.extend(2u32.to_be_bytes());
        tr.push(3);
        tr.extend(1u32.to_be_bytes());
        tr.extend(2u32.to_be_bytes());
        assert_eq!(
            decode(&tr).unwrap(),
            Message::Truncate {
                cascade: true,
                restart_identity: true,
                relations: vec![1, 2]
            }
        );

        // A schema change replaces the entry.
        let mut changed = relation_bytes();
        let at = changed.len() - 10; // the "y" of "body", before its NUL and two Int32s
        changed[at] = b'X';
        let Message::Relation(r2) = decode(&changed).unwrap() else {
            panic!("relation")
        };
        assert!(cache.insert(r2).is_some());
        assert_eq!(cache.get(16_384).unwrap().columns[2].name, "bodX");
        assert!(matches!(cache.get(1), Err(DecodeError::UnknownRelation(1))));
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let mut ins = vec![b'I'];
        ins.extend(16_384u32.to_be_bytes());
        ins.push(b'N');
        ins.extend(tuple(&[Some("1"), Some("hi"), None]));
        let samples = [relation_bytes(), ins.clone()];
        // Every prefix of a valid message is truncated (or, for the empty one, empty).
        for s in &samples {
            for n in 0..s.len() {
                assert!(decode(&s[..n]).is_err(), "prefix {n} of {:?}", s[0] as char);
            }
            let mut longer = s.clone();
            longer.push(0);
            assert_eq!(decode(&longer), Err(DecodeError::Trailing(1)));
        }
        // Huge declared counts and lengths do not allocate.
        let mut t = vec![b'T'];
        t.extend(u32::MAX.to_be_bytes());
        t.push(0);
        assert!(matches!(decode(&t), Err(DecodeError::Truncated { .. })));
        let mut i = vec![b'I', 0, 0, 0, 1, b'N'];
        i.extend(1u16.to_be_bytes());
        i.push(b't');
        i.extend(u32::MAX.to_be_bytes());
        assert!(matches!(decode(&i), Err(DecodeError::Truncated { .. })));
        let mut i = vec![b'I', 0, 0, 0, 1, b'N'];
        i.extend(u16::MAX.to_be_bytes());
        assert!(matches!(
            decode(&i),
            Err(DecodeError::TooManyColumns { .. })
        ));
        assert_eq!(decode(b"Z"), Err(DecodeError::UnknownTag('Z')));
        assert!(matches!(
            decode(b"I\0\0\0\x01X"),
            Err(DecodeError::Unexpected { found: 'X', .. })
        ));
        // Pseudo-random bytes behind every tag.
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for round in 0..20_000 {
            let mut b = vec![b"BCMORYIUDT"[round % 10]];
            let len = (round % 40) + 1;
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.push((x & 0xff) as u8);
            }
            let _ = decode(&b);
        }
        // A tuple whose width does not match the relation.
        let Message::Relation(rel) = decode(&relation_bytes()).unwrap() else {
            panic!("relation")
        };
        assert!(matches!(
            rel.row(&[TupleValue::Null], false),
            Err(DecodeError::ColumnCount {
                got: 1,
                want: 3,
                ..
            })
        ));
        let bad = [
            TupleValue::Text("x".into()),
            TupleValue::Null,
            TupleValue::Null,
        ];
        assert!(matches!(
            rel.row(&bad, false),
            Err(DecodeError::Value { .. })
        ));
    }
}

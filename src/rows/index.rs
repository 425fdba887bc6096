//! Per-table index of row subscriptions, so that matching a change costs about the same with
//! 100 or 10,000 subscriptions that filter on equality (`user_id=eq.42`, the common case).
//!
//! A subscription whose filter has a top-level conjunct `column=eq.value` can only match rows
//! whose `column` equals `value`, so it is filed under (column, value's index key) and looked
//! up by the row's value: one hash lookup per indexed column instead of one evaluation per
//! subscription. Subscriptions without such a conjunct are scanned. [`TableIndex::candidates`]
//! is a superset of the matching subscriptions (the full filter still confirms each), never a
//! subset: a row that lacks the indexed column (a key-only old row) yields every subscription
//! filed under that column.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use serde_json::Value;

use super::filter::{Filter, Row, row_index_key};
use super::value::ColumnType;

/// The subscriptions filed under one column.
#[derive(Debug)]
struct ColumnIndex<Id> {
    ty: ColumnType,
    by_key: HashMap<String, HashSet<Id>>,
    len: usize,
}

/// Where a subscription is filed, to remove it again.
#[derive(Debug, Clone)]
enum Slot {
    Eq { column: String, key: String },
    Scan,
}

/// The subscriptions of one table.
#[derive(Debug)]
pub struct TableIndex<Id> {
    columns: HashMap<String, ColumnIndex<Id>>,
    scanned: HashSet<Id>,
    slots: HashMap<Id, Slot>,
}

impl<Id> Default for TableIndex<Id> {
    fn default() -> Self {
        TableIndex {
            columns: HashMap::new(),
            scanned: HashSet::new(),
            slots: HashMap::new(),
        }
    }
}

impl<Id: Copy + Eq + Hash> TableIndex<Id> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Subscriptions that are scanned (no indexable equality), for metrics.
    pub fn scanned_len(&self) -> usize {
        self.scanned.len()
    }

    /// Files a subscription (replacing an earlier filing of the same id). Of several equality
    /// conjuncts the first is used.
    pub fn add(&mut self, id: Id, filter: &Filter) {
        self.remove(id);
        let slot = match filter.equalities().next() {
            Some((column, ty, key)) => {
                let ci = self
                    .columns
                    .entry(column.to_owned())
                    .or_insert_with(|| ColumnIndex {
                        ty,
                        by_key: HashMap::new(),
                        len: 0,
                    });
                ci.by_key.entry(key.clone()).or_default().insert(id);
                ci.len += 1;
                Slot::Eq {
                    column: column.to_owned(),
                    key,
                }
            }
            None => {
                self.scanned.insert(id);
                Slot::Scan
            }
        };
        self.slots.insert(id, slot);
    }

    /// Removes a subscription; `false` if it was not there.
    pub fn remove(&mut self, id: Id) -> bool {
        match self.slots.remove(&id) {
            None => false,
            Some(Slot::Scan) => {
                self.scanned.remove(&id);
                true
            }
            Some(Slot::Eq { column, key }) => {
                if let Some(ci) = self.columns.get_mut(&column) {
                    if let Some(set) = ci.by_key.get_mut(&key) {
                        set.remove(&id);
                        if set.is_empty() {
                            ci.by_key.remove(&key);
                        }
                    }
                    ci.len -= 1;
                    if ci.len == 0 {
                        self.columns.remove(&column);
                    }
                }
                true
            }
        }
    }

    /// The subscriptions that may match `row` (each id once): the ones filed under the row's
    /// value of each indexed column, all filed under a column the row lacks, and the scanned
    /// ones. For an `UPDATE`, ask with the old and with the new row.
    pub fn candidates<'a, R: Row>(&'a self, row: &'a R) -> impl Iterator<Item = Id> + 'a {
        self.columns
            .iter()
            .flat_map(move |(column, ci)| -> Box<dyn Iterator<Item = Id> + 'a> {
                match row.get(column) {
                    None => Box::new(ci.by_key.values().flatten().copied()),
                    Some(Value::Null) => Box::new(std::iter::empty()),
                    Some(v) => match row_index_key(ci.ty, v).and_then(|k| ci.by_key.get(&k)) {
                        Some(set) => Box::new(set.iter().copied()),
                        None => Box::new(std::iter::empty()),
                    },
                }
            })
            .chain(self.scanned.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::filter::{Limits, Verdict};
    use crate::rows::value::oid;
    use serde_json::json;

    /// A small deterministic generator (xorshift64*), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn cols() -> Vec<(String, ColumnType)> {
        [
            ("a", oid::INT4),
            ("b", oid::TEXT),
            ("c", oid::BOOL),
            ("d", oid::NUMERIC),
        ]
        .into_iter()
        .map(|(n, o)| (n.to_owned(), ColumnType::of(o)))
        .collect()
    }

    fn random_filter(r: &mut Rng) -> String {
        let n = r.below(5);
        let s = ["x", "y", "z"][r.below(3) as usize];
        let dec = ["1", "1.0", "2.50", "2.5"][r.below(4) as usize];
        match r.below(10) {
            0 => format!("a=eq.{n}"),
            1 => format!("b=eq.{s}"),
            2 => format!("b=eq.{s}&a=eq.{n}"),
            3 => format!("or=(a.eq.{n},b.eq.{s})"),
            4 => format!("a=gt.{n}"),
            5 => format!("c=is.true&a=eq.{n}"),
            6 => format!("a=not.eq.{n}"),
            7 => format!("d=eq.{dec}&b=in.({s},x)"),
            8 => "c=eq.true".to_owned(),
            _ => String::new(),
        }
    }

    fn random_row(r: &mut Rng) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        let mut put = |r: &mut Rng, k: &str, v: Value| match r.below(8) {
            0 => {}
            1 => {
                m.insert(k.into(), Value::Null);
            }
            _ => {
                m.insert(k.into(), v);
            }
        };
        let a = json!(r.below(5));
        put(r, "a", a);
        let b = json!(["x", "y", "z"][r.below(3) as usize]);
        put(r, "b", b);
        let c = json!(r.below(2) == 0);
        put(r, "c", c);
        let d = [json!(1), json!(2.5), json!(3)][r.below(3) as usize].clone();
        put(r, "d", d);
        m
    }

    #[test]
    fn candidates_cover_exactly_the_matches() {
        let cols = cols();
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let mut index = TableIndex::new();
        let mut filters = HashMap::new();
        for id in 0..400u32 {
            let f =
                Filter::new(&random_filter(&mut r), &Limits::default(), cols.as_slice()).unwrap();
            index.add(id, &f);
            filters.insert(id, f);
        }
        // Remove a quarter again, re-add some with new filters.
        for id in (0..400u32).step_by(4) {
            assert!(index.remove(id));
            filters.remove(&id);
        }
        assert!(!index.remove(0));
        for id in (0..400u32).step_by(8) {
            let f =
                Filter::new(&random_filter(&mut r), &Limits::default(), cols.as_slice()).unwrap();
            index.add(id, &f);
            filters.insert(id, f);
        }
        assert_eq!(index.len(), filters.len());
        let mut scanned_total = 0;
        for _ in 0..2000 {
            let row = random_row(&mut r);
            let cands: Vec<u32> = index.candidates(&row).collect();
            let unique: HashSet<u32> = cands.iter().copied().collect();
            assert_eq!(unique.len(), cands.len(), "an id twice");
            scanned_total += cands.len();
            for (id, f) in &filters {
                let v = f.eval(&row);
                if v != Verdict::NoMatch {
                    assert!(unique.contains(id), "{id} missing for {row:?}");
                }
            }
            let brute: HashSet<u32> = filters
                .iter()
                .filter(|(_, f)| f.eval(&row) == Verdict::Match)
                .map(|(id, _)| *id)
                .collect();
            let via: HashSet<u32> = unique
                .into_iter()
                .filter(|id| filters[id].eval(&row) == Verdict::Match)
                .collect();
            assert_eq!(via, brute);
        }
        // The index must actually prune.
        assert!(
            scanned_total < 2000 * filters.len() * 3 / 4,
            "{scanned_total}"
        );
    }

    #[test]
    fn equality_subscriptions_are_not_scanned() {
        let cols = cols();
        let mut index = TableIndex::new();
        for id in 0..10_000u32 {
            let f =
                Filter::new(&format!("a=eq.{id}"), &Limits::default(), cols.as_slice()).unwrap();
            index.add(id, &f);
        }
        assert_eq!(index.scanned_len(), 0);
        let row = json!({"a": 42, "b": "x"}).as_object().cloned().unwrap();
        assert_eq!(index.candidates(&row).collect::<Vec<_>>(), vec![42]);
        let key_only = json!({"b": "x"}).as_object().cloned().unwrap();
        assert_eq!(index.candidates(&key_only).count(), 10_000);
    }

    /// Cost per change with 100, 1,000 and 10,000 equality subscriptions, index versus
    /// evaluating every filter (`cargo test --lib rows::index -- --ignored --nocapture`);
    /// figures in docs/ROWS.md.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn cost_per_change_stays_flat() {
        let cols = cols();
        for n in [100u32, 1_000, 10_000] {
            let mut index = TableIndex::new();
            let mut filters = Vec::new();
            for id in 0..n {
                let f = Filter::new(
                    &format!("a=eq.{id}&b=eq.x"),
                    &Limits::default(),
                    cols.as_slice(),
                )
                .unwrap();
                index.add(id, &f);
                filters.push(f);
            }
            let rows: Vec<_> = (0..2_000u32)
                .map(|i| {
                    json!({"a": i % n, "b": "x", "c": true})
                        .as_object()
                        .cloned()
                        .unwrap()
                })
                .collect();
            let t = std::time::Instant::now();
            let mut hits = 0;
            for row in &rows {
                hits += index
                    .candidates(row)
                    .filter(|id| filters[*id as usize].eval(row) == Verdict::Match)
                    .count();
            }
            let indexed = t.elapsed() / rows.len() as u32;
            let t = std::time::Instant::now();
            let mut brute = 0;
            for row in rows.iter().take(200) {
                brute += filters
                    .iter()
                    .filter(|f| f.eval(row) == Verdict::Match)
                    .count();
            }
            let scanned = t.elapsed() / 200;
            assert_eq!(hits, rows.len());
            assert_eq!(brute, 200);
            println!(
                "{n} subscriptions: indexed {indexed:?}/change, all filters {scanned:?}/change"
            );
        }
    }
}

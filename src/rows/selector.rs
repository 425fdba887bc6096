//! Row subscriptions on a table's channel: which subscribers a change concerns, and what each
//! of them receives (the change as it is, or projected to its columns and marked as a row
//! moving in or out of its filter).
//!
//! What it owns: [`RowSubscription`] (a bound filter, the columns to send, the table's key) and
//! [`TableSelector`], the hub's [`Selector`] for a table channel, which files subscriptions in
//! the equality index ([`TableIndex`]) and evaluates the candidates' filters on the change's old
//! and new rows (docs/ROWS.md §4). What it must never do: reach the database, or block: it runs
//! under the hub's read lock on the WAL source's task.
//!
//! Why it reads the change back from the frame's text instead of receiving typed rows: the text
//! is what the window keeps for replay, so live delivery and replay decide from the very same
//! bytes; a parse costs a few microseconds per change, once per table and frame, not per
//! subscriber. Derived frames are written from the original's raw JSON values (never through
//! `f64`), so a projection changes no digit.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::filter::{Filter, UpdateDelivery, Verdict, classify_update};
use super::index::TableIndex;
use crate::stream::{Frame, Kept, Outbox, Selector, View};

/// One socket's subscription to a table: its filter (bound to the table's columns), the columns
/// it is sent, and the table's key columns (always sent, so a client can keep rows by key).
#[derive(Debug)]
pub struct RowSubscription {
    filter: Filter,
    /// `None`: every column. Otherwise the `select=` columns and the key columns, once each.
    columns: Option<Arc<[String]>>,
    /// The table's key (primary key, else replica identity) columns.
    key: Arc<[String]>,
    /// No filter and no projection: the change is sent as it is, to this subscriber always.
    passthrough: bool,
    /// While its snapshot is read: what it receives is kept here (at most the cap), to be sent
    /// after the snapshot ([`Selector::release`]).
    holding: Option<Mutex<Holding>>,
    /// Per-row authorization: its cohort, and how its protocol words a withheld change.
    rls: Option<RlsSub>,
    /// Under per-row authorization: the keys of the rows this subscriber has been sent and not
    /// told to remove (its snapshot's rows included: shared with the snapshot's reader). A
    /// change it may not see removes the row by key when, and only when, the key is here: the
    /// subscriber's view stays right without learning anything it had not seen.
    known: Option<Arc<Mutex<HashSet<String>>>>,
    /// A subscription that started from a snapshot: the snapshot's seam (shared with the
    /// snapshot's reader, which sets it), so that a change the snapshot contains is never sent,
    /// including one the source routes only after the snapshot ended (a lagging source). Cleared
    /// by the first change past the seam's LSN: every later one is past it too.
    seam: Option<Arc<Mutex<Option<super::seam::Seam>>>>,
}

/// A subscription's part in per-row authorization.
#[derive(Debug)]
struct RlsSub {
    membership: super::rls::Membership,
    /// The notice a subscriber gets when changes are withheld because nobody could decide
    /// (channel, reason): its protocol's `gap`.
    notice: fn(&str, &str) -> Frame,
}

/// What a subscription keeps aside while its snapshot is read.
#[derive(Debug)]
struct Holding {
    frames: Vec<Frame>,
    cap: usize,
    overflowed: bool,
}

impl RowSubscription {
    /// A subscription with `filter` (already bound) on a table whose key columns are `key`.
    pub fn new(filter: Filter, key: Vec<String>) -> Self {
        let columns = filter.select().map(|sel| {
            let mut cols: Vec<String> = key.clone();
            for c in sel {
                if !cols.contains(c) {
                    cols.push(c.clone());
                }
            }
            Arc::from(cols)
        });
        let passthrough = filter.is_empty() && columns.is_none();
        Self {
            filter,
            columns,
            key: key.into(),
            passthrough,
            holding: None,
            rls: None,
            known: None,
            seam: None,
        }
    }

    /// The same subscription under per-row authorization: it receives a change only if its
    /// cohort's decision (attached to the frame by the WAL source) allows it; an `UPDATE`'s old
    /// row is never sent (its version was not authorized); a change nobody could decide is
    /// withheld and `notice` tells the subscriber (once per transaction).
    pub fn with_rls(
        mut self,
        membership: super::rls::Membership,
        notice: fn(&str, &str) -> Frame,
    ) -> Self {
        self.passthrough = false;
        self.rls = Some(RlsSub { membership, notice });
        self.known = Some(Arc::default());
        self
    }

    /// The same subscription, keeping what it receives aside (at most `cap` changes) until it
    /// is released: a snapshot is read meanwhile, and the changes must follow it, not overtake it.
    pub fn holding(mut self, cap: usize) -> Self {
        self.holding = Some(Mutex::new(Holding {
            frames: Vec::new(),
            cap,
            overflowed: false,
        }));
        self.seam = Some(Arc::default());
        self.passthrough = false;
        self
    }

    /// The same subscription, not holding (the copy a snapshot reads with, while the hub has
    /// the original).
    pub fn twin(&self) -> Self {
        Self {
            filter: self.filter.clone(),
            columns: self.columns.clone(),
            key: self.key.clone(),
            passthrough: self.passthrough && self.rls.is_none(),
            holding: None,
            rls: None,
            known: self.known.clone(),
            seam: self.seam.clone(),
        }
    }

    /// Sets the seam of the snapshot this subscription starts from (see `seam`).
    pub fn set_seam(&self, seam: super::seam::Seam) {
        if let Some(s) = &self.seam {
            *s.lock().unwrap_or_else(|p| p.into_inner()) = Some(seam);
        }
    }

    /// Whether `frame`'s change is already in the snapshot this subscription started from.
    fn in_snapshot(&self, change: &Change, frame: &Frame) -> bool {
        let Some(shared) = &self.seam else {
            return false;
        };
        let mut seam = shared.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = seam.as_ref() else {
            return false;
        };
        let lsn = frame.seq().major;
        if s.is_before(lsn) {
            *seam = None;
            return false;
        }
        change.xid.is_some_and(|xid| s.contains(lsn, xid))
    }

    /// Notes that the subscriber was sent `row` (a snapshot's row), under per-row authorization.
    pub fn note_sent(&self, row: &Map<String, Value>) {
        if let (Some(known), Some(key)) = (&self.known, self.key_of(row)) {
            known.lock().unwrap_or_else(|p| p.into_inner()).insert(key);
        }
    }

    /// The key columns' values of `row` as one text (`None`: a key column is missing).
    fn key_of(&self, row: &Map<String, Value>) -> Option<String> {
        if self.key.is_empty() {
            return None;
        }
        let values: Option<Vec<&Value>> = self.key.iter().map(|k| row.get(k)).collect();
        serde_json::to_string(&values?).ok()
    }

    /// The filter (what a snapshot applies to the table's rows too).
    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// The columns sent (`None`: all), the key's included.
    pub fn columns(&self) -> Option<&[String]> {
        self.columns.as_deref()
    }

    /// The table's key columns.
    pub fn key(&self) -> &[String] {
        &self.key
    }

    /// The subscription as the hub takes it.
    pub fn into_view(self) -> View {
        View {
            subscription: Box::new(self),
            selector: TableSelector::boxed,
        }
    }

    /// What this subscriber receives of `frame` (whose change is `change`): the frame, a
    /// frame derived from it, a notice, or nothing.
    fn outcome(&self, change: &Change, frame: &Frame, made: &mut Made<'_>) -> Option<Frame> {
        if self.in_snapshot(change, frame) {
            return None;
        }
        let Some(rls) = &self.rls else {
            let mv = self.decide(change, false)?;
            return made.frame_for(&self.columns, mv, false);
        };
        let verdict = frame
            .detail()
            .and_then(|d| d.downcast_ref::<super::rls::Decision>())
            .map(|d| d.verdict(rls.membership.cohort()));
        let known = self.known.as_ref()?;
        match verdict {
            Some(Ok(true)) => {}
            Some(Ok(false)) => {
                // A version it may not see. If it holds the row (it was sent it), the row has
                // left its view: remove it by key. While a snapshot is read the holding cannot
                // be known yet: the removal is sent (a no-op for a row it does not get).
                if !matches!(change.op.as_str(), "UPDATE" | "DELETE") {
                    return None;
                }
                let row = change.old.as_ref().or(change.new.as_ref())?;
                let key = self.key_of(row)?;
                let held = known.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                if !held && self.holding.is_none() {
                    return None;
                }
                return made.removal(&self.key, change.op == "UPDATE");
            }
            Some(Err(why)) => {
                return rls
                    .membership
                    .notice_due(frame.seq().major)
                    .then(|| (rls.notice)(frame.channel().unwrap_or(""), why));
            }
            None => {
                return rls.membership.notice_due(frame.seq().major).then(|| {
                    (rls.notice)(
                        frame.channel().unwrap_or(""),
                        "a change was not authorized for this subscription",
                    )
                });
            }
        }
        let Some(mv) = self.decide(change, true) else {
            // Judged on its new row alone, an UPDATE that no longer matches the filter is
            // skipped; if the subscriber holds the row, it left its filter: remove it by key.
            let key = change.new.as_ref().and_then(|r| self.key_of(r))?;
            let held = change.op == "UPDATE"
                && known.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
            return if held {
                made.removal(&self.key, true)
            } else {
                None
            };
        };
        let frame = made.frame_for(&self.columns, mv, change.op == "UPDATE")?;
        let mut known = known.lock().unwrap_or_else(|p| p.into_inner());
        match (change.op.as_str(), mv) {
            ("TRUNCATE", _) => known.clear(),
            ("DELETE", _) | (_, Move::Out) => {
                if let Some(k) = change
                    .old
                    .as_ref()
                    .or(change.new.as_ref())
                    .and_then(|r| self.key_of(r))
                {
                    known.remove(&k);
                }
            }
            _ => {
                if let Some(k) = change.new.as_ref().and_then(|r| self.key_of(r)) {
                    known.insert(k);
                }
            }
        }
        Some(frame)
    }

    /// What this subscription receives of `change`: `None` nothing, else the move it is.
    /// `no_old`: judge an `UPDATE` by its new row alone (per-row authorization: the old
    /// version was not authorized, so it decides nothing and is not sent).
    fn decide(&self, change: &Change, no_old: bool) -> Option<Move> {
        if self.passthrough {
            return Some(Move::None);
        }
        let matches = |row: &Map<String, Value>| self.filter.eval(row);
        match change.op.as_str() {
            "INSERT" => {
                (change.new.as_ref().map(matches) == Some(Verdict::Match)).then_some(Move::None)
            }
            "UPDATE" => {
                let new = change.new.as_ref().map_or(Verdict::Unknown, matches);
                let old = match change.old.as_ref().filter(|_| !no_old) {
                    Some(old) => matches(old),
                    // No old row: the key did not change and the identity is not FULL. The key
                    // columns of the new row are the old row's; the rest is unknown.
                    None => {
                        let keys: Map<String, Value> = change
                            .new
                            .iter()
                            .flat_map(|n| n.iter())
                            .filter(|(k, _)| self.key.contains(k))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        matches(&keys)
                    }
                };
                match classify_update(old, new) {
                    UpdateDelivery::Update => Some(Move::None),
                    UpdateDelivery::Enter => Some(Move::In),
                    UpdateDelivery::Leave => Some(Move::Out),
                    UpdateDelivery::Skip => None,
                }
            }
            // A key-only old row that the filter cannot decide is sent too: the client removes
            // the row if it has it (docs/ROWS.md §4).
            "DELETE" => (change.old.as_ref().map_or(Verdict::Unknown, matches) != Verdict::NoMatch)
                .then_some(Move::None),
            "TRUNCATE" => Some(Move::None),
            _ => None,
        }
    }
}

/// How an `UPDATE` relates to a subscription's filter (`move` in the change sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    None,
    In,
    Out,
}

/// The members of a change the filters read.
#[derive(Debug, Deserialize)]
struct Change {
    op: String,
    new: Option<Map<String, Value>>,
    old: Option<Map<String, Value>>,
    #[serde(default)]
    xid: Option<u32>,
}

/// A change with its values as raw JSON text, to write derived frames without re-encoding
/// values.
#[derive(Deserialize)]
struct RawChange<'a> {
    #[serde(borrow)]
    schema: &'a RawValue,
    #[serde(borrow)]
    table: &'a RawValue,
    #[serde(borrow)]
    op: &'a RawValue,
    #[serde(borrow)]
    commit_time: &'a RawValue,
    #[serde(borrow)]
    new: Option<BTreeMap<Cow<'a, str>, &'a RawValue>>,
    #[serde(borrow)]
    old: Option<BTreeMap<Cow<'a, str>, &'a RawValue>>,
    #[serde(borrow, default)]
    unchanged_toast: Vec<Cow<'a, str>>,
    #[serde(borrow, default)]
    xid: Option<&'a RawValue>,
}

impl RawChange<'_> {
    /// The change's text for a subscriber sent `columns` (`None`: all), with `move` when it
    /// moved a row in or out of the subscriber's filter.
    fn write(&self, columns: Option<&[String]>, mv: Move, no_old: bool) -> String {
        let keep = |name: &str| columns.is_none_or(|c| c.iter().any(|c| c == name));
        let row = |out: &mut String, row: &Option<BTreeMap<Cow<'_, str>, &RawValue>>| match row {
            None => out.push_str("null"),
            Some(row) => {
                out.push('{');
                let mut first = true;
                for (name, value) in row.iter().filter(|(n, _)| keep(n)) {
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    out.push_str(&Value::String(name.to_string()).to_string());
                    out.push(':');
                    out.push_str(value.get());
                }
                out.push('}');
            }
        };
        let mut out = String::with_capacity(256);
        out.push_str("{\"schema\":");
        out.push_str(self.schema.get());
        out.push_str(",\"table\":");
        out.push_str(self.table.get());
        out.push_str(",\"op\":");
        out.push_str(self.op.get());
        out.push_str(",\"commit_time\":");
        out.push_str(self.commit_time.get());
        out.push_str(",\"new\":");
        row(&mut out, &self.new);
        out.push_str(",\"old\":");
        row(&mut out, if no_old { &None } else { &self.old });
        out.push_str(",\"unchanged_toast\":");
        let unchanged: Vec<&str> = self
            .unchanged_toast
            .iter()
            .map(|c| c.as_ref())
            .filter(|c| keep(c))
            .collect();
        out.push_str(&serde_json::to_string(&unchanged).unwrap_or_else(|_| "[]".into()));
        if let Some(xid) = self.xid {
            out.push_str(",\"xid\":");
            out.push_str(xid.get());
        }
        match mv {
            Move::None => {}
            Move::In => out.push_str(",\"move\":\"in\""),
            Move::Out => out.push_str(",\"move\":\"out\""),
        }
        out.push('}');
        out
    }
}

/// A frame made for the subscribers sent these columns, with this move.
type Derived = (Option<Arc<[String]>>, Move, bool, Frame);

/// The frames made for one change so far, shared by the subscribers that receive the same
/// text (same columns, same move).
struct Made<'f> {
    frame: &'f Frame,
    raw: Option<Option<RawChange<'f>>>,
    made: Vec<Derived>,
}

impl<'f> Made<'f> {
    fn new(frame: &'f Frame) -> Self {
        Self {
            frame,
            raw: None,
            made: Vec::new(),
        }
    }

    /// What a subscriber sent `columns` receives for a change that is `mv` to it.
    /// The key-only removal of a row that left a subscriber's view under per-row authorization:
    /// a `DELETE` with the key as `old`, or an `UPDATE` with `"move":"out"` and the key as `new`
    /// and `old`. Nothing but the key columns is sent.
    fn removal(&mut self, key: &[String], update: bool) -> Option<Frame> {
        let frame = self.frame;
        let raw = self
            .raw
            .get_or_insert_with(|| serde_json::from_str::<RawChange<'f>>(frame.as_str()).ok())
            .as_ref()?;
        let key_only = |row: &Option<BTreeMap<Cow<'f, str>, &'f RawValue>>| {
            row.as_ref().map(|r| {
                r.iter()
                    .filter(|(n, _)| key.iter().any(|k| k == n.as_ref()))
                    .map(|(n, v)| (n.clone(), *v))
                    .collect::<BTreeMap<_, _>>()
            })
        };
        let keyed = key_only(&raw.old).or_else(|| key_only(&raw.new));
        let removal = RawChange {
            schema: raw.schema,
            table: raw.table,
            op: raw.op,
            commit_time: raw.commit_time,
            new: if update { keyed.clone() } else { None },
            old: keyed,
            unchanged_toast: Vec::new(),
            xid: raw.xid,
        };
        let mv = if update { Move::Out } else { Move::None };
        Some(frame.derived(removal.write(None, mv, false)))
    }

    /// `no_old`: without the old row (per-row authorization of an `UPDATE`).
    fn frame_for(
        &mut self,
        columns: &Option<Arc<[String]>>,
        mv: Move,
        no_old: bool,
    ) -> Option<Frame> {
        if columns.is_none() && mv == Move::None && !no_old {
            return Some(self.frame.clone());
        }
        if let Some((_, _, _, f)) = self
            .made
            .iter()
            .find(|(c, m, o, _)| *m == mv && *o == no_old && c.as_deref() == columns.as_deref())
        {
            return Some(f.clone());
        }
        let frame = self.frame;
        let raw = self
            .raw
            .get_or_insert_with(|| serde_json::from_str::<RawChange<'f>>(frame.as_str()).ok())
            .as_ref()?;
        let derived = frame.derived(raw.write(columns.as_deref(), mv, no_old));
        self.made
            .push((columns.clone(), mv, no_old, derived.clone()));
        Some(derived)
    }
}

/// The row subscriptions of one table channel, filed in the equality index.
#[derive(Default)]
pub struct TableSelector {
    /// Slots of subscriptions; `None`: free (its index is in `free`).
    subs: Vec<Option<(Arc<Outbox>, RowSubscription)>>,
    free: Vec<usize>,
    /// Outbox (by address, compared only, never dereferenced) → slot.
    by_outbox: HashMap<usize, usize>,
    index: TableIndex<usize>,
}

impl TableSelector {
    /// An empty selector, as [`View::selector`] makes it.
    pub fn boxed() -> Box<dyn Selector> {
        Box::<TableSelector>::default()
    }

    fn key(outbox: &Arc<Outbox>) -> usize {
        Arc::as_ptr(outbox) as usize
    }
}

impl Selector for TableSelector {
    fn add(&mut self, outbox: &Arc<Outbox>, sub: Box<dyn std::any::Any + Send + Sync>) -> bool {
        let Ok(sub) = sub.downcast::<RowSubscription>() else {
            return false;
        };
        self.remove(outbox);
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.subs.push(None);
                self.subs.len() - 1
            }
        };
        self.index.add(slot, &sub.filter);
        self.subs[slot] = Some((outbox.clone(), *sub));
        self.by_outbox.insert(Self::key(outbox), slot);
        true
    }

    fn remove(&mut self, outbox: &Arc<Outbox>) -> bool {
        let Some(slot) = self.by_outbox.remove(&Self::key(outbox)) else {
            return false;
        };
        self.index.remove(slot);
        self.subs[slot] = None;
        self.free.push(slot);
        true
    }

    fn is_empty(&self) -> bool {
        self.by_outbox.is_empty()
    }

    fn for_each(&self, each: &mut dyn FnMut(&Arc<Outbox>)) {
        self.subs.iter().flatten().for_each(|(o, _)| each(o));
    }

    fn route(&self, frame: &Frame, deliver: &mut dyn FnMut(&Arc<Outbox>, Frame)) -> usize {
        let Ok(change) = serde_json::from_str::<Change>(frame.as_str()) else {
            tracing::warn!(
                channel = frame.channel(),
                "a message on a table channel is not a change; row subscriptions skip it"
            );
            return 0;
        };
        // Candidates of the new and of the old row (an UPDATE can concern a subscription
        // through either: moving in or moving out). Each slot once.
        let mut seen: HashSet<usize> = HashSet::new();
        let empty = Map::new();
        let rows = [change.new.as_ref(), change.old.as_ref()];
        let mut made = Made::new(frame);
        for row in rows.into_iter().flatten().chain(
            // A TRUNCATE has no rows: every subscription gets it.
            (change.new.is_none() && change.old.is_none()).then_some(&empty),
        ) {
            for slot in self.index.candidates(row) {
                if !seen.insert(slot) {
                    continue;
                }
                let Some((outbox, sub)) = &self.subs[slot] else {
                    continue;
                };
                if let Some(f) = sub.outcome(&change, frame, &mut made) {
                    match &sub.holding {
                        None => deliver(outbox, f),
                        Some(holding) => {
                            let mut h = holding.lock().unwrap_or_else(|p| p.into_inner());
                            if h.frames.len() >= h.cap {
                                h.overflowed = true;
                                h.frames = Vec::new();
                            } else if !h.overflowed {
                                h.frames.push(f);
                            }
                        }
                    }
                }
            }
        }
        seen.len()
    }

    fn release(&mut self, outbox: &Arc<Outbox>) -> Option<Kept> {
        let slot = *self.by_outbox.get(&Self::key(outbox))?;
        let (_, sub) = self.subs[slot].as_mut()?;
        let h = sub
            .holding
            .take()?
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        Some(if h.overflowed {
            Kept::Overflowed
        } else {
            Kept::Frames(h.frames)
        })
    }

    fn view(&self, outbox: &Arc<Outbox>, frame: &Frame) -> Option<Frame> {
        let (_, sub) = self.subs[*self.by_outbox.get(&Self::key(outbox))?].as_ref()?;
        let change = serde_json::from_str::<Change>(frame.as_str()).ok()?;
        sub.outcome(&change, frame, &mut Made::new(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::filter::Limits;
    use crate::rows::value::ColumnType;
    use crate::stream::{Encoding, Hub, Limits as QueueLimits};

    fn sub(filter: &str) -> View {
        let cols = [
            (
                "id".to_string(),
                ColumnType::of(crate::rows::value::oid::INT4),
            ),
            (
                "s".to_string(),
                ColumnType::of(crate::rows::value::oid::TEXT),
            ),
        ];
        let f = Filter::new(filter, &Limits::default(), cols.as_slice()).unwrap();
        RowSubscription::new(f, vec!["id".into()]).into_view()
    }

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(
            QueueLimits {
                messages: 64,
                bytes: 1 << 16,
            },
            Encoding::slot(0),
        ))
    }

    fn drained(o: &Outbox) -> Vec<String> {
        let mut v = Vec::new();
        o.drain_into(&mut v);
        v.into_iter().map(|f| f.as_str().to_string()).collect()
    }

    fn change(op: &str, new: &str, old: &str) -> Frame {
        Frame::text(&format!(
            r#"{{"schema":"public","table":"t","op":"{op}","commit_time":"x","new":{new},"old":{old},"unchanged_toast":[]}}"#
        ))
    }

    // The hub's fan-out through the selector: each subscription receives what its filter lets
    // through (indexed equality and scanned filters alike), moves marked, `select` projected
    // with the key, and nothing after it leaves.
    #[test]
    fn each_view_gets_what_its_filter_lets_through() {
        let hub = Hub::new();
        let (eq, scan, all, proj) = (outbox(), outbox(), outbox(), outbox());
        let join = |o: &Arc<Outbox>, f: &'static str| {
            let mut v = Some(sub(f));
            hub.subscribe_with(
                &["table:public.t"],
                o,
                |_| v.take(),
                None,
                |_| unreachable!(),
                |_, _| None,
                || {},
            );
        };
        join(&eq, "s=eq.a");
        join(&scan, "id=gt.1");
        join(&all, "");
        join(&proj, "s=eq.a&select=s");
        let mut run = [
            change("INSERT", r#"{"id":1,"s":"a"}"#, "null"),
            change("UPDATE", r#"{"id":1,"s":"b"}"#, r#"{"id":1,"s":"a"}"#),
            change("INSERT", r#"{"id":2,"s":"b"}"#, "null"),
            change("DELETE", "null", r#"{"id":2,"s":"b"}"#),
            change("TRUNCATE", "null", "null"),
        ];
        hub.publish_run("table:public.t", &mut run);
        // 3 + 3 + 5 + 3 deliveries; the index asked fewer than every subscription of each change.
        assert_eq!(hub.stats.row_deliveries.get(), 14);
        assert!(
            hub.stats.row_evaluations.get() < 4 * 5,
            "the index skipped some"
        );
        assert!(hub.stats.row_evaluations.get() >= 14);
        let shape = |texts: Vec<String>| -> Vec<(String, String)> {
            texts
                .iter()
                .map(|t| {
                    let v: Value = serde_json::from_str(t).unwrap();
                    (
                        v["op"].as_str().unwrap().into(),
                        v["move"].as_str().unwrap_or("").into(),
                    )
                })
                .collect()
        };
        let s = |op: &str, mv: &str| (op.to_string(), mv.to_string());
        assert_eq!(
            shape(drained(&eq)),
            [s("INSERT", ""), s("UPDATE", "out"), s("TRUNCATE", "")]
        );
        assert_eq!(
            shape(drained(&scan)),
            [s("INSERT", ""), s("DELETE", ""), s("TRUNCATE", "")]
        );
        assert_eq!(drained(&all).len(), 5);
        let p = drained(&proj);
        assert!(p[0].contains(r#""new":{"id":1,"s":"a"}"#), "{}", p[0]);
        hub.unsubscribe("table:public.t", &eq);
        hub.publish(
            "table:public.t",
            change("INSERT", r#"{"id":3,"s":"a"}"#, "null"),
        );
        assert!(drained(&eq).is_empty());
        assert_eq!(drained(&proj).len(), 1);
        assert_eq!(hub.channel_count(), 1);
        for o in [&scan, &all, &proj] {
            hub.unsubscribe("table:public.t", o);
        }
        assert_eq!(hub.channel_count(), 0);
    }
}

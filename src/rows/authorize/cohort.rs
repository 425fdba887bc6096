//! Cohorts: row subscribers that the table's policies cannot tell apart, so that one query
//! decides a batch of changes for all of them (docs/ROWS.md, "Per-row authorization").
//!
//! A cohort is a role plus the claims the policies may read ([`CohortKey`]). The registry
//! ([`Cohorts`]) gives each key a small [`CohortId`], counts members per table, and reuses an id
//! only after the caller said that no decision naming it is still kept (a frame in the replay
//! window carries the ids of the cohorts that may see it: reusing an id too early would hand an
//! old decision to a different cohort).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value};

/// Which claims make up a cohort, and are the only ones the policies see in
/// `request.jwt.claims` (setting `PGWS_ROWS_COHORT_CLAIMS`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CohortClaims {
    /// Every claim except those that differ from token to token of the same user and that
    /// policies have no business reading (`exp`, `iat`, `nbf`, `jti`): without this, every token
    /// would be a cohort of its own. The default.
    #[default]
    AllButPerToken,
    /// Only these claims (`PGWS_ROWS_COHORT_CLAIMS=sub,team`): the fewest cohorts. A policy that
    /// reads another claim sees it missing (NULL): it can only hide rows, never show more.
    Only(Vec<String>),
}

/// Claims that change with every token of the same user.
const PER_TOKEN: [&str; 4] = ["exp", "iat", "nbf", "jti"];

impl CohortClaims {
    /// From the setting's text: unset or empty means [`CohortClaims::AllButPerToken`], else a
    /// comma-separated list of claim names (spaces around names ignored, empty names dropped).
    pub fn from_setting(text: Option<&str>) -> Self {
        let names: Vec<String> = text
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        if names.is_empty() {
            Self::AllButPerToken
        } else {
            Self::Only(names)
        }
    }

    fn keeps(&self, name: &str) -> bool {
        match self {
            Self::AllButPerToken => !PER_TOKEN.contains(&name),
            Self::Only(names) => names.iter().any(|n| n == name),
        }
    }
}

/// What tells cohorts apart: the role and the canonical JSON text of the kept claims (object
/// keys sorted at every depth, no spaces), which is also the exact `request.jwt.claims` text the
/// cohort's queries run with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CohortKey {
    role: Box<str>,
    claims: Box<str>,
}

impl CohortKey {
    /// The key of a subscriber with `role` and verified `claims`.
    pub fn new(role: &str, claims: &Map<String, Value>, which: &CohortClaims) -> Self {
        let mut kept: Vec<(&String, &Value)> =
            claims.iter().filter(|(k, _)| which.keeps(k)).collect();
        kept.sort_by(|a, b| a.0.cmp(b.0));
        let mut text = String::from("{");
        for (i, (k, v)) in kept.into_iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&Value::String(k.clone()).to_string());
            text.push(':');
            canonical(v, &mut text);
        }
        text.push('}');
        Self {
            role: role.into(),
            claims: text.into(),
        }
    }

    /// The key of an authorization subject (its claims are a JSON object text).
    pub fn of_subject(subject: &crate::authz::Subject, which: &CohortClaims) -> Self {
        let claims =
            serde_json::from_str::<Map<String, Value>>(&subject.claims).unwrap_or_default();
        Self::new(&subject.role, &claims, which)
    }

    /// The role the cohort's queries run as.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// The claims text set as `request.jwt.claims`.
    pub fn claims(&self) -> &str {
        &self.claims
    }
}

/// JSON text with object keys sorted at every depth (serde_json's map order depends on a
/// feature another crate may turn on, so the order is made explicit here).
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A cohort's number: small, dense, reused only when safe ([`Cohorts::recycle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CohortId(pub u32);

/// The cohorts that may see one change: sorted ids, no duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct CohortSet(Box<[CohortId]>);

impl CohortSet {
    /// The set of these ids.
    pub fn from_ids(mut ids: Vec<CohortId>) -> Self {
        ids.sort_unstable();
        ids.dedup();
        Self(ids.into_boxed_slice())
    }

    /// Whether the cohort may see the change.
    pub fn contains(&self, id: CohortId) -> bool {
        self.0.binary_search(&id).is_ok()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = CohortId> + '_ {
        self.0.iter().copied()
    }
}

struct Entry {
    key: Arc<CohortKey>,
    /// Members over every table.
    members: usize,
}

/// The registry of cohorts with row subscribers, per table. Not thread-safe by itself: the
/// caller keeps it under its lock (the hub's).
#[derive(Default)]
pub struct Cohorts {
    by_key: HashMap<Arc<CohortKey>, CohortId>,
    /// Indexed by id; `None` once the id was recycled and not given out again.
    entries: Vec<Option<Entry>>,
    /// Table (any name the caller chooses, e.g. its channel) → cohort → members there.
    tables: HashMap<Box<str>, BTreeMap<CohortId, usize>>,
    /// Ids free for reuse.
    free: Vec<CohortId>,
    /// Ids whose last member left at the epoch given: not reusable yet.
    quarantine: Vec<(CohortId, u64)>,
    epoch: u64,
}

impl Cohorts {
    pub fn new() -> Self {
        Self::default()
    }

    /// A member with `key` subscribes to rows of `table`: its cohort's id (the same id for the
    /// same key on every table).
    pub fn join(&mut self, table: &str, key: CohortKey) -> CohortId {
        let id = match self.by_key.get(&key) {
            Some(id) => *id,
            None => {
                let key = Arc::new(key);
                let id = match self.free.pop() {
                    Some(id) => id,
                    None => {
                        self.entries.push(None);
                        CohortId((self.entries.len() - 1) as u32)
                    }
                };
                self.entries[id.0 as usize] = Some(Entry {
                    key: key.clone(),
                    members: 0,
                });
                self.by_key.insert(key, id);
                id
            }
        };
        if let Some(entry) = self.entries[id.0 as usize].as_mut() {
            if entry.members == 0 {
                // Back before its id was recycled: it keeps the id.
                self.quarantine.retain(|(q, _)| *q != id);
            }
            entry.members += 1;
        }
        *self
            .tables
            .entry(table.into())
            .or_default()
            .entry(id)
            .or_insert(0) += 1;
        id
    }

    /// A member of cohort `id` leaves `table`. An id whose last member left is quarantined
    /// until [`Cohorts::recycle`] says no decision of its epoch is kept any more.
    pub fn leave(&mut self, table: &str, id: CohortId) {
        let Some(per_table) = self.tables.get_mut(table) else {
            return;
        };
        let Some(n) = per_table.get_mut(&id) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            per_table.remove(&id);
            if per_table.is_empty() {
                self.tables.remove(table);
            }
        }
        if let Some(entry) = self.entries.get_mut(id.0 as usize).and_then(Option::as_mut) {
            entry.members = entry.members.saturating_sub(1);
            if entry.members == 0 {
                self.quarantine.push((id, self.epoch));
            }
        }
    }

    /// The cohorts with members on `table` and their keys, by id.
    pub fn on_table(&self, table: &str) -> Vec<(CohortId, Arc<CohortKey>)> {
        self.tables
            .get(table)
            .into_iter()
            .flat_map(|m| m.keys())
            .filter_map(|id| Some((*id, self.key(*id)?.clone())))
            .collect()
    }

    /// The key of a cohort with members (or quarantined).
    pub fn key(&self, id: CohortId) -> Option<&Arc<CohortKey>> {
        self.entries
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .map(|e| &e.key)
    }

    /// The current epoch: stamp it on the decisions of a batch (with the frames that keep
    /// them), then [`Cohorts::advance`].
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Starts a new epoch (after a batch was decided); returns it.
    pub fn advance(&mut self) -> u64 {
        self.epoch += 1;
        self.epoch
    }

    /// Frees the quarantined ids whose last member left before `oldest_kept`, the oldest epoch
    /// still stamped on a kept decision (the replay window's oldest frame): no kept decision can
    /// name them for their old cohort any more.
    pub fn recycle(&mut self, oldest_kept: u64) {
        let mut i = 0;
        while i < self.quarantine.len() {
            let (id, left_at) = self.quarantine[i];
            if left_at < oldest_kept {
                self.quarantine.swap_remove(i);
                if let Some(entry) = self.entries[id.0 as usize].take() {
                    self.by_key.remove(&entry.key);
                }
                self.free.push(id);
            } else {
                i += 1;
            }
        }
    }

    /// Cohorts with members, or quarantined.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn keys_are_canonical_and_drop_per_token_claims() {
        let all = CohortClaims::default();
        let a = CohortKey::new(
            "authenticated",
            &claims(json!({"sub": "u1", "exp": 1, "app": {"z": 1, "a": [2, {"y": 1, "b": 2}]}})),
            &all,
        );
        let b = CohortKey::new(
            "authenticated",
            &claims(json!({"app": {"a": [2, {"b": 2, "y": 1}], "z": 1}, "jti": "x", "sub": "u1"})),
            &all,
        );
        assert_eq!(a, b);
        assert_eq!(
            a.claims(),
            r#"{"app":{"a":[2,{"b":2,"y":1}],"z":1},"sub":"u1"}"#
        );
        let c = CohortKey::new("anon", &claims(json!({"sub": "u1"})), &all);
        assert_ne!(a.role(), c.role());
        let only = CohortClaims::from_setting(Some(" team , ,sub"));
        assert_eq!(only, CohortClaims::Only(vec!["team".into(), "sub".into()]));
        let d = CohortKey::new(
            "authenticated",
            &claims(json!({"sub": "u1", "team": "t", "email": "x@y"})),
            &only,
        );
        assert_eq!(d.claims(), r#"{"sub":"u1","team":"t"}"#);
        assert_eq!(
            CohortClaims::from_setting(Some("")),
            CohortClaims::default()
        );
        // Hostile claim names stay inside a JSON string.
        let e = CohortKey::new("r", &claims(json!({"a\"}": "\u{0}'"})), &all);
        let back: Value = serde_json::from_str(e.claims()).unwrap();
        assert_eq!(back, json!({"a\"}": "\u{0}'"}));
    }

    #[test]
    fn registry_counts_members_and_reuses_ids_only_after_recycle() {
        let all = CohortClaims::default();
        let key = |sub: &str| CohortKey::new("authenticated", &claims(json!({"sub": sub})), &all);
        let mut c = Cohorts::new();
        let a = c.join("t1", key("a"));
        let a2 = c.join("t2", key("a"));
        let b = c.join("t1", key("b"));
        assert_eq!(a, a2);
        assert_ne!(a, b);
        assert_eq!(c.on_table("t1").len(), 2);
        assert_eq!(c.on_table("t2").len(), 1);
        c.leave("t1", a);
        assert_eq!(c.on_table("t1").len(), 1);
        c.leave("t2", a);
        assert!(c.on_table("t2").is_empty());
        // Quarantined: a new key does not get a's id, and a key coming back keeps it.
        let epoch = c.advance();
        let d = c.join("t1", key("d"));
        assert_ne!(d, a);
        assert_eq!(c.join("t1", key("a")), a);
        c.leave("t1", a);
        c.recycle(epoch); // a left at `epoch`: a decision of that epoch may still be kept
        assert_ne!(c.join("t1", key("e")), a);
        c.advance();
        c.recycle(c.epoch());
        assert!(c.key(a).is_none());
        assert_eq!(
            c.join("t3", key("f")),
            a,
            "reused once no kept decision names it"
        );
        let set = CohortSet::from_ids(vec![b, a, b]);
        assert_eq!(set.len(), 2);
        assert!(set.contains(a) && set.contains(b) && !set.contains(d));
    }
}

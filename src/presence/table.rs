//! The presence numbers, without I/O: per channel, how many connections each member has on this
//! node and on every other node heard from, and the sum over all of them. Every change returns
//! the [`Change`]s clients are told about, so the caller (which holds the lock) can queue the
//! events in the same order the numbers changed.
//!
//! Bounds (hostile or buggy tokens and bus messages cannot grow it without limit): names longer
//! than [`MAX_NAME`] bytes count as anonymous; a channel names at most [`MAX_NAMED`] members
//! (further local connections of new names count as anonymous); remote nodes hold at most
//! [`MAX_REMOTE_ENTRIES`] (node, channel, member) entries together and at most [`MAX_NODES`]
//! nodes; what does not fit is not counted (and logged), and the next heartbeat of that node is
//! again checked against the bounds.
//!
//! Member states (`presence_set`): each node holds, per (channel, named member) it has
//! connections of, the last state set on it with a stamp (the setting node's clock in ms, made
//! larger than any stamp it has seen for that member, so a new write wins over every write it
//! knew of). A member's state is the one with the largest (stamp, node id) over all nodes that
//! hold one: last writer wins, and every node picks the same. A node's entry goes when its last
//! connection of the member leaves (or the node goes), so a member that left has no state. The
//! state changes clients are told of are collected beside the count changes
//! ([`Table::take_state_changes`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest member name, in bytes (longer: anonymous).
pub const MAX_NAME: usize = 128;
/// Most named members of one channel (per node for what it announces; over all nodes for new
/// local names).
pub const MAX_NAMED: usize = 1000;
/// Most (node, channel, member) entries held for other nodes together.
pub const MAX_REMOTE_ENTRIES: usize = 100_000;
/// Most other nodes.
pub const MAX_NODES: usize = 256;
/// Largest member state, in bytes of compact JSON (`presence_set` refuses more, and a bus
/// message carrying more is not read).
pub const MAX_STATE: usize = 1024;

/// A member: its name, or `None` (anonymous).
pub type Member = Option<Box<str>>;

/// Why connections left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Unsubscribed, closed, or no longer granted (also a node that said goodbye).
    Left,
    /// The node holding them stopped answering.
    NodeLost,
}

impl Reason {
    /// The wire text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Left => "left",
            Self::NodeLost => "node_lost",
        }
    }
}

/// One change of a channel's presence: `connections` of `member` joined (or left, with a
/// reason), and the channel's total after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The channel.
    pub channel: Box<str>,
    /// Who.
    pub member: Member,
    /// Joined (`None`) or left (`Some(reason)`).
    pub left: Option<Reason>,
    /// How many connections (≥ 1).
    pub connections: u32,
    /// The channel's total after the change.
    pub count: u32,
}

/// The connections of one channel, by member.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Named members → connections (never 0).
    pub members: HashMap<Box<str>, u32>,
    /// Connections without a name.
    pub anonymous: u32,
}

impl Counts {
    /// All connections.
    pub fn total(&self) -> u32 {
        self.anonymous.saturating_add(
            self.members
                .values()
                .fold(0u32, |a, b| a.saturating_add(*b)),
        )
    }

    fn get(&self, member: &Member) -> u32 {
        match member {
            None => self.anonymous,
            Some(m) => self.members.get(m).copied().unwrap_or(0),
        }
    }

    /// Adds `delta` (may be negative; never below 0). Returns the change actually applied.
    fn add(&mut self, member: &Member, delta: i64) -> i64 {
        let slot = match member {
            None => &mut self.anonymous,
            Some(m) => {
                if delta > 0 {
                    self.members.entry(m.clone()).or_insert(0)
                } else {
                    match self.members.get_mut(m) {
                        Some(v) => v,
                        None => return 0,
                    }
                }
            }
        };
        let old = i64::from(*slot);
        let new = (old + delta).clamp(0, i64::from(u32::MAX));
        *slot = new as u32;
        if new == 0
            && let Some(m) = member
        {
            self.members.remove(m);
        }
        new - old
    }

    fn entries(&self) -> usize {
        self.members.len() + usize::from(self.anonymous > 0)
    }
}

/// Channel → counts.
pub type Channels = HashMap<Box<str>, Counts>;

/// A member's state as one node holds it: compact JSON text, and when it was set (the setting
/// node's clock, ms, larger than every stamp that node had seen for the member).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamped {
    /// The setting node's stamp.
    pub ts: u64,
    /// The state, compact JSON (`null`: cleared by its member).
    pub json: Arc<str>,
}

/// Channel → named member → its state on one node.
pub type States = HashMap<Box<str>, HashMap<Box<str>, Stamped>>;

/// A member's state as clients see it changed (`None`: it has none now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// The channel.
    pub channel: Box<str>,
    /// The member.
    pub member: Box<str>,
    /// Its state now (`None` when no node holds one, or the last one was `null`).
    pub state: Option<Arc<str>>,
}

/// Another node, as last heard.
#[derive(Debug)]
struct Node {
    channels: Channels,
    states: States,
    last_seen: Instant,
    /// Its heartbeat interval (it announces it): silence longer than 3 of them drops it.
    interval: Duration,
}

/// The numbers of this node, of every other node heard from, and their sums.
#[derive(Debug, Default)]
pub struct Table {
    /// This node's id (it breaks ties between equal stamps).
    me: Box<str>,
    local: Channels,
    local_states: States,
    remote: HashMap<Box<str>, Node>,
    total: Channels,
    remote_entries: usize,
    state_changes: Vec<StateChange>,
}

impl Table {
    /// The table of node `me` (its id breaks ties between equal state stamps).
    pub fn new(me: &str) -> Self {
        Self {
            me: me.into(),
            ..Self::default()
        }
    }

    /// The total of a channel now.
    #[cfg(test)]
    pub fn count(&self, channel: &str) -> u32 {
        self.total.get(channel).map_or(0, Counts::total)
    }

    /// A channel's presence: named members (sorted) → connections, anonymous connections, total.
    pub fn snapshot(&self, channel: &str) -> (BTreeMap<&str, u32>, u32, u32) {
        match self.total.get(channel) {
            None => (BTreeMap::new(), 0, 0),
            Some(c) => (
                c.members.iter().map(|(k, v)| (&**k, *v)).collect(),
                c.anonymous,
                c.total(),
            ),
        }
    }

    /// This node's own numbers (its heartbeat).
    pub fn local(&self) -> &Channels {
        &self.local
    }

    /// The member a new local connection counts as: its name, unless the name is too long or
    /// the channel names [`MAX_NAMED`] others already (then anonymous).
    pub fn admit(&self, channel: &str, name: Option<&str>) -> Member {
        let name = name.filter(|n| n.len() <= MAX_NAME && !n.is_empty())?;
        let full = self
            .total
            .get(channel)
            .is_some_and(|c| c.members.len() >= MAX_NAMED && !c.members.contains_key(name));
        (!full).then(|| name.into())
    }

    /// A connection of this node joined (`+1`) or left (`-1`).
    pub fn local_add(&mut self, channel: &str, member: &Member, delta: i64) -> Option<Change> {
        let counts = entry(&mut self.local, channel);
        let applied = counts.add(member, delta);
        let gone = counts.get(member) == 0;
        prune(&mut self.local, channel);
        let change = self.apply_total(channel, member, applied, Reason::Left);
        if gone && let Some(m) = member {
            self.watch_state(channel, m, |t| {
                remove_state(&mut t.local_states, channel, m);
            });
        }
        change
    }

    /// A local connection of `member` (named, connected here) sets its state: stamped later
    /// than any state of the member known here. Returns the stamp to tell the other nodes.
    pub fn local_set(
        &mut self,
        channel: &str,
        member: &str,
        json: Arc<str>,
        now_ms: u64,
    ) -> Stamped {
        let after = self
            .state_of(channel, member)
            .map_or(0, |(s, _)| s.ts.saturating_add(1));
        let stamped = Stamped {
            ts: now_ms.max(after),
            json,
        };
        let value = stamped.clone();
        self.watch_state(channel, member, |t| {
            t.local_states
                .entry(channel.into())
                .or_default()
                .insert(member.into(), value);
        });
        stamped
    }

    /// Another node says its member set a state. Ignored unless that node holds connections of
    /// the member (a set read before its join, or after its leave, says nothing) and the stamp
    /// is newer than what it said before.
    pub fn remote_set(
        &mut self,
        node: &str,
        interval: Duration,
        now: Instant,
        channel: &str,
        member: &str,
        stamped: Stamped,
    ) {
        if !self.ensure(node, interval, now) {
            return;
        }
        let Some(n) = self.remote.get(node) else {
            return;
        };
        let holds = n
            .channels
            .get(channel)
            .is_some_and(|c| c.members.contains_key(member));
        let newer = n
            .states
            .get(channel)
            .and_then(|m| m.get(member))
            .is_none_or(|old| stamped.ts > old.ts);
        if !(holds && newer) {
            return;
        }
        self.watch_state(channel, member, |t| {
            if let Some(n) = t.remote.get_mut(node) {
                n.states
                    .entry(channel.into())
                    .or_default()
                    .insert(member.into(), stamped);
            }
        });
    }

    /// This node's own states (its heartbeat).
    pub fn local_states(&self) -> &States {
        &self.local_states
    }

    /// The state changes since the last call, in the order they happened.
    pub fn take_state_changes(&mut self) -> Vec<StateChange> {
        std::mem::take(&mut self.state_changes)
    }

    /// A member's state over all nodes (the largest (stamp, node id)), and the node holding it.
    fn state_of(&self, channel: &str, member: &str) -> Option<(&Stamped, &str)> {
        let mut best: Option<(&Stamped, &str)> = None;
        let held = std::iter::once((&*self.me, &self.local_states))
            .chain(self.remote.iter().map(|(k, n)| (&**k, &n.states)));
        for (node, states) in held {
            if let Some(s) = states.get(channel).and_then(|m| m.get(member))
                && best.is_none_or(|(b, bn)| (s.ts, node) > (b.ts, bn))
            {
                best = Some((s, node));
            }
        }
        best
    }

    /// A member's state as clients see it (`null` counts as none).
    fn visible_state(&self, channel: &str, member: &str) -> Option<Arc<str>> {
        self.state_of(channel, member)
            .map(|(s, _)| s.json.clone())
            .filter(|j| &**j != "null")
    }

    /// Runs `f`, and records a [`StateChange`] when it changed what clients see of the member's
    /// state while the member is still present (its leave says that its state went).
    fn watch_state(&mut self, channel: &str, member: &str, f: impl FnOnce(&mut Self)) {
        let before = self.visible_state(channel, member);
        f(self);
        let after = self.visible_state(channel, member);
        let present = self
            .total
            .get(channel)
            .is_some_and(|c| c.members.contains_key(member));
        if before != after && present {
            self.state_changes.push(StateChange {
                channel: channel.into(),
                member: member.into(),
                state: after,
            });
        }
    }

    /// The visible states of a channel's named members (sorted).
    pub fn snapshot_states(&self, channel: &str) -> BTreeMap<&str, Arc<str>> {
        let Some(c) = self.total.get(channel) else {
            return BTreeMap::new();
        };
        c.members
            .keys()
            .filter_map(|m| self.visible_state(channel, m).map(|s| (&**m, s)))
            .collect()
    }

    /// Another node says `delta` connections of `member` joined or left `channel`.
    pub fn remote_add(
        &mut self,
        node: &str,
        interval: Duration,
        now: Instant,
        channel: &str,
        member: &Member,
        delta: i64,
    ) -> Option<Change> {
        if !self.ensure(node, interval, now) {
            return None;
        }
        let n = self.remote.get_mut(node)?;
        let counts = entry(&mut n.channels, channel);
        let before = counts.entries();
        if delta > 0 && counts.get(member) == 0 {
            let named_full = member.is_some() && counts.members.len() >= MAX_NAMED;
            if named_full || self.remote_entries >= MAX_REMOTE_ENTRIES {
                prune(&mut n.channels, channel);
                tracing::warn!(node, channel, "presence: over the bounds; not counted");
                return None;
            }
        }
        let applied = counts.add(member, delta);
        let gone = counts.get(member) == 0;
        let after = counts.entries();
        prune(&mut n.channels, channel);
        self.remote_entries = (self.remote_entries + after).saturating_sub(before);
        let change = self.apply_total(channel, member, applied, Reason::Left);
        if gone && let Some(m) = member {
            self.watch_state(channel, m, |t| {
                if let Some(n) = t.remote.get_mut(node) {
                    remove_state(&mut n.states, channel, m);
                }
            });
        }
        change
    }

    /// Another node's full state (its heartbeat): replaces what was known of it; the
    /// differences are the changes (leaves with `left`).
    pub fn remote_state(
        &mut self,
        node: &str,
        interval: Duration,
        now: Instant,
        state: Channels,
        states: States,
    ) -> Vec<Change> {
        if !self.ensure(node, interval, now) {
            return Vec::new();
        }
        let Some(n) = self.remote.get_mut(node) else {
            return Vec::new();
        };
        // Its states are replaced after the counts, so that a state change is told after the
        // join of its member; kept only for members the node holds connections of.
        let old_states = std::mem::take(&mut n.states);
        let old = std::mem::take(&mut n.channels);
        let old_entries: usize = old.values().map(Counts::entries).sum();
        self.remote_entries = self.remote_entries.saturating_sub(old_entries);
        let mut changes = Vec::new();
        // Removals first, then the new state entry by entry (bounded like deltas).
        for (channel, counts) in &old {
            let fresh = state.get(channel);
            for (member, n) in counts.iter() {
                let keep = fresh.map_or(0, |f| f.get(&member));
                if keep < n {
                    changes.extend(self.apply_total(
                        channel,
                        &member,
                        -i64::from(n - keep),
                        Reason::Left,
                    ));
                }
            }
        }
        for (channel, counts) in state {
            for (member, n) in counts.iter() {
                let had = old.get(&channel).map_or(0, |o| o.get(&member));
                let Some(held) = self.remote.get_mut(node) else {
                    continue;
                };
                let c = entry(&mut held.channels, &channel);
                let is_new = c.get(&member) == 0;
                if is_new
                    && ((member.is_some() && c.members.len() >= MAX_NAMED)
                        || self.remote_entries >= MAX_REMOTE_ENTRIES)
                {
                    prune(&mut held.channels, &channel);
                    // What it had before stays subtracted from the total: keep nothing of it.
                    if had.min(n) > 0 {
                        changes.extend(self.apply_total(
                            &channel,
                            &member,
                            -i64::from(had.min(n)),
                            Reason::Left,
                        ));
                    }
                    continue;
                }
                c.add(&member, i64::from(n));
                if is_new {
                    self.remote_entries += 1;
                }
                if n > had {
                    changes.extend(self.apply_total(
                        &channel,
                        &member,
                        i64::from(n - had),
                        Reason::Left,
                    ));
                }
                // A smaller number was handled by the removals above.
            }
        }
        self.replace_states(node, old_states, states);
        changes
    }

    /// Puts a node's new states in place of `old` (already taken out of it), telling what
    /// changed.
    fn replace_states(&mut self, node: &str, old: States, new: States) {
        let mut keys: Vec<(Box<str>, Box<str>)> = old
            .iter()
            .chain(new.iter())
            .flat_map(|(c, m)| m.keys().map(move |k| (c.clone(), k.clone())))
            .collect();
        keys.sort();
        keys.dedup();
        // Held as before while each member is looked at, so that only real changes are told.
        if let Some(n) = self.remote.get_mut(node) {
            n.states = old;
        }
        for (channel, member) in keys {
            let fresh = new.get(&channel).and_then(|m| m.get(&member)).cloned();
            self.watch_state(&channel, &member, |t| {
                let Some(n) = t.remote.get_mut(node) else {
                    return;
                };
                let holds = n
                    .channels
                    .get(&channel)
                    .is_some_and(|c| c.members.contains_key(&member));
                match fresh.filter(|_| holds) {
                    Some(s) => {
                        n.states
                            .entry(channel.clone())
                            .or_default()
                            .insert(member.clone(), s);
                    }
                    None => remove_state(&mut n.states, &channel, &member),
                }
            });
        }
    }

    /// A node was heard from (any message); `false` when it cannot be held (too many nodes).
    pub fn touch(&mut self, node: &str, interval: Duration, now: Instant) -> bool {
        self.ensure(node, interval, now)
    }

    /// Other nodes known now.
    pub fn nodes(&self) -> usize {
        self.remote.len()
    }

    /// Treats every node as heard from now (after this node's own outage, when nothing could be
    /// heard: they get 3 intervals again to speak).
    pub fn touch_all(&mut self, now: Instant) {
        for n in self.remote.values_mut() {
            n.last_seen = now;
        }
    }

    /// Drops the nodes silent for more than 3 of their intervals: their members leave with
    /// `node_lost`. Returns the changes and the nodes dropped.
    pub fn expire(&mut self, now: Instant) -> (Vec<Change>, Vec<Box<str>>) {
        let lost: Vec<Box<str>> = self
            .remote
            .iter()
            .filter(|(_, n)| now.saturating_duration_since(n.last_seen) > n.interval * 3)
            .map(|(k, _)| k.clone())
            .collect();
        let mut changes = Vec::new();
        for node in &lost {
            changes.extend(self.drop_node(node, Reason::NodeLost));
        }
        (changes, lost)
    }

    /// Forgets a node (it said goodbye, or was lost): its members leave with `reason`.
    pub fn drop_node(&mut self, node: &str, reason: Reason) -> Vec<Change> {
        let Some(mut n) = self.remote.remove(node) else {
            return Vec::new();
        };
        let mut changes = Vec::new();
        for (channel, counts) in &n.channels {
            self.remote_entries = self.remote_entries.saturating_sub(counts.entries());
            for (member, k) in counts.iter() {
                changes.extend(self.apply_total(channel, &member, -i64::from(k), reason));
            }
        }
        // Its states go with it: held back in for a moment so that what changes is told (for
        // members still present through other nodes).
        let states = std::mem::take(&mut n.states);
        if !states.is_empty() {
            n.channels.clear();
            self.remote.insert(node.into(), n);
            self.replace_states(node, states, States::new());
            self.remote.remove(node);
        }
        changes
    }

    /// Makes sure `node` is known (false: too many nodes), and marks it heard from.
    fn ensure(&mut self, node: &str, interval: Duration, now: Instant) -> bool {
        if !self.remote.contains_key(node) {
            if self.remote.len() >= MAX_NODES {
                tracing::warn!(node, "presence: too many nodes; this one is not counted");
                return false;
            }
            self.remote.insert(
                node.into(),
                Node {
                    channels: Channels::new(),
                    states: States::new(),
                    last_seen: now,
                    interval,
                },
            );
        }
        if let Some(n) = self.remote.get_mut(node) {
            n.last_seen = now;
            n.interval = interval;
        }
        true
    }

    fn apply_total(
        &mut self,
        channel: &str,
        member: &Member,
        delta: i64,
        reason: Reason,
    ) -> Option<Change> {
        if delta == 0 {
            return None;
        }
        let counts = entry(&mut self.total, channel);
        let applied = counts.add(member, delta);
        let count = counts.total();
        prune(&mut self.total, channel);
        (applied != 0).then(|| Change {
            channel: channel.into(),
            member: member.clone(),
            left: (applied < 0).then_some(reason),
            connections: applied.unsigned_abs().min(u64::from(u32::MAX)) as u32,
            count,
        })
    }
}

impl Counts {
    /// Every (member, connections), anonymous included.
    fn iter(&self) -> impl Iterator<Item = (Member, u32)> + '_ {
        self.members
            .iter()
            .map(|(k, v)| (Some(k.clone()), *v))
            .chain((self.anonymous > 0).then_some((None, self.anonymous)))
    }
}

fn entry<'a>(map: &'a mut Channels, channel: &str) -> &'a mut Counts {
    if !map.contains_key(channel) {
        map.insert(channel.into(), Counts::default());
    }
    map.get_mut(channel).expect("inserted")
}

fn remove_state(states: &mut States, channel: &str, member: &str) {
    if let Some(m) = states.get_mut(channel) {
        m.remove(member);
        if m.is_empty() {
            states.remove(channel);
        }
    }
}

fn prune(map: &mut Channels, channel: &str) {
    if map
        .get(channel)
        .is_some_and(|c| c.anonymous == 0 && c.members.is_empty())
    {
        map.remove(channel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Member {
        Some(s.into())
    }

    const I: Duration = Duration::from_millis(100);

    #[test]
    fn local_and_remote_connections_add_up() {
        let mut t = Table::default();
        let now = Instant::now();
        let c = t.local_add("chat", &m("alice"), 1).unwrap();
        assert_eq!((c.connections, c.count, c.left), (1, 1, None));
        t.local_add("chat", &None, 1);
        let c = t.remote_add("b", I, now, "chat", &m("alice"), 2).unwrap();
        assert_eq!((c.connections, c.count), (2, 4));
        let (members, anon, count) = t.snapshot("chat");
        assert_eq!(members.get("alice"), Some(&3));
        assert_eq!((anon, count), (1, 4));
        // A leave of more than the node has is clamped.
        let c = t.remote_add("b", I, now, "chat", &m("alice"), -5).unwrap();
        assert_eq!((c.connections, c.count, c.left), (2, 2, Some(Reason::Left)));
        assert_eq!(t.remote_add("b", I, now, "chat", &m("zed"), -1), None);
    }

    #[test]
    fn heartbeats_replace_a_node_and_silence_drops_it() {
        let mut t = Table::default();
        let now = Instant::now();
        t.remote_add("b", I, now, "chat", &m("alice"), 1);
        t.remote_add("b", I, now, "chat", &m("bob"), 1);
        let mut state = Channels::new();
        let mut counts = Counts::default();
        counts.members.insert("alice".into(), 3);
        counts.anonymous = 1;
        state.insert("chat".into(), counts);
        let changes = t.remote_state("b", I, now, state, States::new());
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert_eq!(t.count("chat"), 4);
        assert_eq!(t.remote_entries, 2);
        let (changes, lost) = t.expire(now + I * 3);
        assert!(changes.is_empty() && lost.is_empty());
        let (changes, lost) = t.expire(now + I * 3 + Duration::from_millis(1));
        assert_eq!(lost, vec![Box::<str>::from("b")]);
        assert!(changes.iter().all(|c| c.left == Some(Reason::NodeLost)));
        assert_eq!(changes.last().unwrap().count, 0);
        assert_eq!(t.count("chat"), 0);
        assert_eq!(t.remote_entries, 0);
        assert!(t.total.is_empty());
    }

    #[test]
    fn names_are_bounded() {
        let mut t = Table::default();
        assert_eq!(t.admit("c", Some(&"x".repeat(MAX_NAME + 1))), None);
        assert_eq!(t.admit("c", Some("")), None);
        for i in 0..MAX_NAMED {
            let member = t.admit("c", Some(&i.to_string()));
            assert!(member.is_some());
            t.local_add("c", &member, 1);
        }
        assert_eq!(t.admit("c", Some("new")), None);
        assert_eq!(t.admit("c", Some("7")), m("7"));
        let now = Instant::now();
        for i in 0..MAX_NAMED + 5 {
            t.remote_add("b", I, now, "d", &m(&i.to_string()), 1);
        }
        assert_eq!(t.count("d"), MAX_NAMED as u32);
        assert_eq!(t.remote_entries, MAX_NAMED);
    }
}

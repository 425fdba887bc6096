//! The presence control messages nodes send each other on the bus (NOTIFY on the listen
//! channel, or `pg_logical_emit_message` with the listen channel as prefix), and their reading.
//!
//! Every one starts with exactly [`PREFIX`] (pgws writes them; a message that does not is not
//! one, so the hot path pays one short prefix comparison per message), is a JSON object, and
//! carries the sending node's id, a counter (two equal NOTIFYs in one transaction would be
//! merged by PostgreSQL), its wall clock (`ts`, Unix ms), its heartbeat interval (`i`, ms) and
//! an operation:
//!
//! ```json
//! {"pgws_control":"presence","node":"a1","n":7,"ts":1765000000000,"i":5000,"op":"hello"}
//! {"pgws_control":"presence","node":"a1","n":8,"ts":…,"i":5000,"op":"delta","d":[["chat","alice",1],["chat",null,-1]]}
//! {"pgws_control":"presence","node":"a1","n":9,"ts":…,"i":5000,"op":"state","seq":3,"part":0,"parts":1,"s":[["chat",[["alice",2],[null,1]]]]}
//! {"pgws_control":"presence","node":"a1","n":10,"ts":…,"i":5000,"op":"set","d":[["chat","alice",1765000000123,{"typing":true}]]}
//! {"pgws_control":"presence","node":"a1","n":11,"ts":…,"i":5000,"op":"state","seq":4,"part":1,"parts":2,"s":[],"st":[["chat","alice",1765000000123,{"typing":true}]]}
//! {"pgws_control":"presence","node":"a1","n":12,"ts":…,"i":5000,"op":"bye"}
//! ```
//!
//! `set` carries member states set on the node (channel, member, stamp, state as JSON); a
//! state's `st` carries all of them (in parts of their own, after the counts: a node of an
//! older version reads such a part as an empty one, and ignores `set` as unknown).
//!
//! Each encoded message stays under [`MAX_PAYLOAD`] bytes (below NOTIFY's 8000): deltas and
//! states are split into as many messages as needed (a state's parts share its `seq`).

use std::fmt::Write as _;

use serde_json::Value;

use super::table::{Channels, MAX_NAME, MAX_STATE, Member, Stamped, States};
use crate::channel::ChannelName;

/// How every presence control message starts.
pub use crate::control::PRESENCE_PREFIX as PREFIX;
/// Largest encoded message (NOTIFY refuses 8000 bytes and more).
pub const MAX_PAYLOAD: usize = 7000;
/// Largest message read (a WAL message may be longer than NOTIFY's; pgws never sends one).
const MAX_READ: usize = 16 * 1024;
/// Longest node id read.
pub const MAX_NODE: usize = 128;
/// Largest delta read (connections of one member in one message).
const MAX_DELTA: i64 = 1_000_000;

/// Who sends, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The sending node.
    pub node: Box<str>,
    /// Its message counter.
    pub n: u64,
    /// Its clock (Unix ms).
    pub ts: u64,
    /// Its heartbeat interval (ms).
    pub interval_ms: u64,
}

/// What a message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A node started (or reconnected): others send their state.
    Hello,
    /// A node stops: its members left.
    Bye,
    /// Connections joined (> 0) or left (< 0).
    Delta(Vec<(Box<str>, Member, i64)>),
    /// Members set their states (channel, member, stamped state).
    Set(Vec<StateItem>),
    /// One part of a node's full state.
    State {
        /// Which state (parts of one share it).
        seq: u64,
        /// This part (from 0).
        part: u32,
        /// How many parts.
        parts: u32,
        /// Channel → members.
        channels: Channels,
        /// The member states in this part.
        states: Vec<StateItem>,
    },
}

/// One member's state on the bus: channel, member, stamped state.
pub type StateItem = (Box<str>, Box<str>, Stamped);

/// `[channel,member,ts,state]`.
fn state_item(channel: &str, member: &str, s: &Stamped) -> String {
    let mut item = String::with_capacity(s.json.len() + channel.len() + member.len() + 32);
    item.push('[');
    push_str(&mut item, channel);
    item.push(',');
    push_str(&mut item, member);
    let _ = write!(item, ",{},{}]", s.ts, s.json);
    item
}

/// Member states set since the last message, in as many `set` messages as needed.
pub fn encode_sets(sets: &[StateItem], mut next: impl FnMut() -> Header) -> Vec<String> {
    let items: Vec<String> = sets.iter().map(|(c, m, s)| state_item(c, m, s)).collect();
    pack(&items)
        .into_iter()
        .map(|body| {
            let mut msg = String::with_capacity(body.len() + 200);
            head(&mut msg, &next(), "set");
            let _ = write!(msg, ",\"d\":[{body}]}}");
            msg
        })
        .collect()
}

/// Joins items with commas into bodies that each fit a message (an item is at most ~3 KiB:
/// a state ≤ [`MAX_STATE`], names escaped).
fn pack(items: &[String]) -> Vec<String> {
    let budget = MAX_PAYLOAD - 300;
    let mut out = Vec::new();
    let mut body = String::new();
    for item in items {
        if !body.is_empty() && body.len() + item.len() + 1 > budget {
            out.push(std::mem::take(&mut body));
        }
        if !body.is_empty() {
            body.push(',');
        }
        body.push_str(item);
    }
    if !body.is_empty() {
        out.push(body);
    }
    out
}

/// Whether a bus message is a presence control message (never delivered to clients).
#[cfg(test)]
fn is_control(payload: &str) -> bool {
    payload.starts_with(PREFIX)
}

fn head(out: &mut String, h: &Header, op: &str) {
    out.push_str(PREFIX);
    out.push_str("\"node\":");
    push_str(out, &h.node);
    let _ = write!(
        out,
        ",\"n\":{},\"ts\":{},\"i\":{},\"op\":\"{op}\"",
        h.n, h.ts, h.interval_ms
    );
}

fn push_str(out: &mut String, s: &str) {
    let _ = write!(out, "{}", Value::String(s.to_string()));
}

fn push_member(out: &mut String, m: &Member) {
    match m {
        None => out.push_str("null"),
        Some(m) => push_str(out, m),
    }
}

/// `hello` or `bye`.
pub fn encode_plain(h: &Header, op: &Op) -> String {
    let mut out = String::with_capacity(128);
    head(
        &mut out,
        h,
        if matches!(op, Op::Bye) {
            "bye"
        } else {
            "hello"
        },
    );
    out.push('}');
    out
}

/// Deltas, in as many messages as needed; `next` gives each message its header.
pub fn encode_deltas(
    deltas: &[(Box<str>, Member, i64)],
    mut next: impl FnMut() -> Header,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut items: Vec<String> = Vec::new();
    let mut size = 0;
    let flush = |items: &mut Vec<String>, out: &mut Vec<String>, h: Header| {
        let mut msg = String::with_capacity(MAX_PAYLOAD);
        head(&mut msg, &h, "delta");
        msg.push_str(",\"d\":[");
        msg.push_str(&items.join(","));
        msg.push_str("]}");
        out.push(msg);
        items.clear();
    };
    for (channel, member, delta) in deltas {
        let mut item = String::from("[");
        push_str(&mut item, channel);
        item.push(',');
        push_member(&mut item, member);
        let _ = write!(item, ",{delta}]");
        if size + item.len() + 1 > MAX_PAYLOAD - 200 && !items.is_empty() {
            flush(&mut items, &mut out, next());
            size = 0;
        }
        size += item.len() + 1;
        items.push(item);
    }
    if !items.is_empty() {
        flush(&mut items, &mut out, next());
    }
    out
}

/// A node's full state as numbered parts (at least one, empty when it has no member: a
/// heartbeat says the node is alive).
pub fn encode_state(
    state: &Channels,
    states: &States,
    seq: u64,
    mut next: impl FnMut() -> Header,
) -> Vec<String> {
    // Each part: channel → its members' items, each item at most ~800 bytes (names ≤ 128 bytes,
    // escaped at most 6 times longer), so a part never exceeds the budget.
    let budget = MAX_PAYLOAD - 300;
    let mut parts: Vec<String> = Vec::new();
    let mut part = String::new();
    let mut channels = state.iter().collect::<Vec<_>>();
    channels.sort_by(|a, b| a.0.cmp(b.0));
    for (channel, counts) in channels {
        let mut open = false;
        let mut items = counts
            .members
            .iter()
            .map(|(k, v)| (Some(k.clone()), *v))
            .collect::<Vec<_>>();
        if counts.anonymous > 0 {
            items.push((None, counts.anonymous));
        }
        for (member, n) in items {
            let mut item = String::from("[");
            push_member(&mut item, &member);
            let _ = write!(item, ",{n}]");
            let head_len = if open { 1 } else { channel.len() * 6 + 8 };
            if part.len() + head_len + item.len() + 3 > budget && !part.is_empty() {
                if open {
                    part.push_str("]]");
                }
                parts.push(std::mem::take(&mut part));
                open = false;
            }
            if !open {
                if !part.is_empty() {
                    part.push(',');
                }
                part.push('[');
                push_str(&mut part, channel);
                part.push_str(",[");
                open = true;
            } else {
                part.push(',');
            }
            part.push_str(&item);
        }
        if open {
            part.push_str("]]");
        }
    }
    if !part.is_empty() || parts.is_empty() {
        parts.push(part);
    }
    // The states, in parts of their own after the counts.
    let mut items: Vec<(&Box<str>, &Box<str>, &Stamped)> = states
        .iter()
        .flat_map(|(c, m)| m.iter().map(move |(k, s)| (c, k, s)))
        .collect();
    items.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let items: Vec<String> = items
        .into_iter()
        .map(|(c, m, s)| state_item(c, m, s))
        .collect();
    let bodies: Vec<(String, String)> = parts
        .into_iter()
        .map(|p| (p, String::new()))
        .chain(pack(&items).into_iter().map(|st| (String::new(), st)))
        .collect();
    let total = bodies.len();
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, (body, st))| {
            let mut msg = String::with_capacity(body.len() + st.len() + 200);
            head(&mut msg, &next(), "state");
            let _ = write!(
                msg,
                ",\"seq\":{seq},\"part\":{i},\"parts\":{total},\"s\":[{body}]"
            );
            if !st.is_empty() {
                let _ = write!(msg, ",\"st\":[{st}]");
            }
            msg.push('}');
            msg
        })
        .collect()
}

/// Reads a presence control message; `Err` says why it is not usable (it is dropped).
pub fn decode(payload: &str) -> Result<(Header, Op), String> {
    if payload.len() > MAX_READ {
        return Err(format!("longer than {MAX_READ} bytes"));
    }
    let Value::Object(map) = serde_json::from_str::<Value>(payload).map_err(|e| e.to_string())?
    else {
        return Err("not an object".into());
    };
    let node = match map.get("node") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_NODE => s.as_str().into(),
        _ => return Err("\"node\" must be a string of 1 to 128 bytes".into()),
    };
    let number = |k: &str| map.get(k).and_then(Value::as_u64);
    let header = Header {
        node,
        n: number("n").unwrap_or(0),
        ts: number("ts").ok_or("\"ts\" is missing")?,
        interval_ms: number("i")
            .filter(|i| (10..=3_600_000).contains(i))
            .ok_or("\"i\" must be 10 to 3600000 ms")?,
    };
    let op = match map.get("op").and_then(Value::as_str) {
        Some("hello") => Op::Hello,
        Some("bye") => Op::Bye,
        Some("delta") => {
            let list = map
                .get("d")
                .and_then(Value::as_array)
                .ok_or("\"d\" must be an array")?;
            let mut deltas = Vec::with_capacity(list.len());
            for item in list {
                let (channel, member, delta) = match item.as_array().map(Vec::as_slice) {
                    Some([c, m, d]) => (c, m, d),
                    _ => return Err("a delta is [channel, member, number]".into()),
                };
                let delta = d_int(delta)?;
                deltas.push((channel_of(channel)?, member_of(member)?, delta));
            }
            Op::Delta(deltas)
        }
        Some("set") => Op::Set(states_of(map.get("d"), "\"d\"")?),
        Some("state") => {
            let seq = number("seq").ok_or("\"seq\" is missing")?;
            let part = number("part").ok_or("\"part\" is missing")?;
            let parts = number("parts")
                .filter(|p| (1..=100_000).contains(p))
                .ok_or("\"parts\" must be 1 to 100000")?;
            if part >= parts {
                return Err("\"part\" must be below \"parts\"".into());
            }
            let list = map
                .get("s")
                .and_then(Value::as_array)
                .ok_or("\"s\" must be an array")?;
            let mut channels = Channels::new();
            for item in list {
                let (channel, members) = match item.as_array().map(Vec::as_slice) {
                    Some([c, Value::Array(m)]) => (channel_of(c)?, m),
                    _ => return Err("a state entry is [channel, [[member, n], …]]".into()),
                };
                let counts = channels.entry(channel).or_default();
                for pair in members {
                    let (member, n) = match pair.as_array().map(Vec::as_slice) {
                        Some([m, n]) => (member_of(m)?, n),
                        _ => return Err("a member entry is [member, n]".into()),
                    };
                    let n = n
                        .as_u64()
                        .filter(|n| (1..=MAX_DELTA as u64).contains(n))
                        .ok_or("a member's connections must be 1 to 1000000")?
                        as u32;
                    match member {
                        None => counts.anonymous = counts.anonymous.saturating_add(n),
                        Some(m) => {
                            let slot = counts.members.entry(m).or_insert(0);
                            *slot = slot.saturating_add(n);
                        }
                    }
                }
            }
            let states = match map.get("st") {
                None => Vec::new(),
                st => states_of(st, "\"st\"")?,
            };
            Op::State {
                seq,
                part: part as u32,
                parts: parts as u32,
                channels,
                states,
            }
        }
        _ => return Err("unknown \"op\"".into()),
    };
    Ok((header, op))
}

/// `[[channel, member, ts, state], …]` (named members only; a state of at most [`MAX_STATE`]
/// bytes as compact JSON).
fn states_of(v: Option<&Value>, what: &str) -> Result<Vec<StateItem>, String> {
    let list = v
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{what} must be an array"))?;
    let mut out = Vec::with_capacity(list.len());
    for item in list {
        let (channel, member, ts, state) = match item.as_array().map(Vec::as_slice) {
            Some([c, m, t, s]) => (c, m, t, s),
            _ => return Err("a member state is [channel, member, stamp, state]".into()),
        };
        let Some(member) = member_of(member)? else {
            return Err("an anonymous member has no state".into());
        };
        let ts = ts.as_u64().ok_or("a state's stamp is a whole number")?;
        let json = state.to_string();
        if json.len() > MAX_STATE {
            return Err(format!("a member state is longer than {MAX_STATE} bytes"));
        }
        out.push((
            channel_of(channel)?,
            member,
            Stamped {
                ts,
                json: json.into(),
            },
        ));
    }
    Ok(out)
}

fn d_int(v: &Value) -> Result<i64, String> {
    v.as_i64()
        .filter(|d| *d != 0 && d.abs() <= MAX_DELTA)
        .ok_or_else(|| "a delta is a non-zero integer of at most 1000000".into())
}

fn channel_of(v: &Value) -> Result<Box<str>, String> {
    let s = v.as_str().ok_or("a channel is a string")?;
    ChannelName::new(s).map_err(|e| e.to_string())?;
    Ok(s.into())
}

fn member_of(v: &Value) -> Result<Member, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if !s.is_empty() && s.len() <= MAX_NAME => Ok(Some(s.as_str().into())),
        _ => Err("a member is null or a string of 1 to 128 bytes".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::table::Counts;
    use super::*;

    fn header() -> impl FnMut() -> Header {
        let mut n = 0;
        move || {
            n += 1;
            Header {
                node: "a\"1".into(),
                n,
                ts: 42,
                interval_ms: 500,
            }
        }
    }

    #[test]
    fn messages_round_trip_and_stay_small() {
        let hello = encode_plain(&header()(), &Op::Hello);
        assert!(is_control(&hello));
        assert_eq!(decode(&hello).unwrap().1, Op::Hello);
        assert_eq!(
            decode(&encode_plain(&header()(), &Op::Bye)).unwrap().1,
            Op::Bye
        );
        let deltas: Vec<(Box<str>, Member, i64)> = (0..500)
            .map(|i| ("chat".into(), Some(format!("user-{i}").into()), 1))
            .chain([("chat".into(), None, -1)])
            .collect();
        let msgs = encode_deltas(&deltas, header());
        assert!(msgs.len() > 1);
        let mut back = Vec::new();
        for m in &msgs {
            assert!(m.len() <= MAX_PAYLOAD && is_control(m), "{}", m.len());
            let (h, op) = decode(m).unwrap();
            assert_eq!(&*h.node, "a\"1");
            let Op::Delta(d) = op else { panic!() };
            back.extend(d);
        }
        assert_eq!(back, deltas);

        let mut state = Channels::new();
        for c in 0..30 {
            let mut counts = Counts::default();
            for i in 0..100 {
                // Names of the longest kind, escaped six times longer.
                let name = format!("{i}{}", "\u{1}".repeat(MAX_NAME - 3));
                counts.members.insert(name.into(), i + 1);
            }
            counts.anonymous = 3;
            state.insert(format!("channel-{c}").into(), counts);
        }
        let msgs = encode_state(&state, &States::new(), 9, header());
        let mut merged = Channels::new();
        for (i, m) in msgs.iter().enumerate() {
            assert!(m.len() <= MAX_PAYLOAD, "{}", m.len());
            let Op::State {
                seq,
                part,
                parts,
                channels,
                ..
            } = decode(m).unwrap().1
            else {
                panic!()
            };
            assert_eq!((seq, part as usize, parts as usize), (9, i, msgs.len()));
            for (c, counts) in channels {
                let into = merged.entry(c).or_default();
                into.anonymous += counts.anonymous;
                into.members.extend(counts.members);
            }
        }
        assert_eq!(merged, state);
        // States ride in parts of their own, each within the payload bound.
        let mut states = States::new();
        for i in 0..40 {
            states.entry("chat".into()).or_default().insert(
                format!("user-{i}").into(),
                Stamped {
                    ts: i,
                    json: format!("\"{}\"", "s".repeat(MAX_STATE - 2)).into(),
                },
            );
        }
        let msgs = encode_state(&Channels::new(), &states, 2, header());
        assert!(msgs.len() > 5);
        let mut back = States::new();
        for m in &msgs {
            assert!(m.len() <= MAX_PAYLOAD, "{}", m.len());
            let Op::State { states, .. } = decode(m).unwrap().1 else {
                panic!()
            };
            for (c, mm, s) in states {
                back.entry(c).or_default().insert(mm, s);
            }
        }
        assert_eq!(back, states);
        let sets: Vec<StateItem> = states["chat"]
            .iter()
            .map(|(m, s)| ("chat".into(), m.clone(), s.clone()))
            .collect();
        let msgs = encode_sets(&sets, header());
        let mut n = 0;
        for m in &msgs {
            assert!(m.len() <= MAX_PAYLOAD, "{}", m.len());
            let Op::Set(d) = decode(m).unwrap().1 else {
                panic!()
            };
            n += d.len();
        }
        assert_eq!(n, 40);
        let empty = encode_state(&Channels::new(), &States::new(), 1, header());
        assert_eq!(empty.len(), 1);
        assert!(matches!(
            decode(&empty[0]).unwrap().1,
            Op::State { parts: 1, .. }
        ));
    }

    #[test]
    fn bad_messages_are_refused() {
        let base = r#"{"pgws_control":"presence","node":"a","ts":1,"i":500,"#;
        for body in [
            r#""op":"dance"}"#,
            r#""op":"delta","d":[["chat","alice",0]]}"#,
            r#""op":"delta","d":[["bad channel\u0000","alice",1]]}"#,
            r#""op":"delta","d":[["chat",7,1]]}"#,
            r#""op":"state","seq":1,"part":1,"parts":1,"s":[]}"#,
            r#""op":"state","seq":1,"part":0,"parts":1,"s":[["chat",[["a",0]]]]}"#,
            r#""op":"set","d":[["chat",null,1,{}]]}"#,
            r#""op":"set","d":[["chat","a",-1,{}]]}"#,
            r#""op":"set","d":[["chat","a",1]]}"#,
            r#""op":"state","seq":1,"part":0,"parts":1,"s":[],"st":[["chat","a",1]]}"#,
        ] {
            assert!(decode(&format!("{base}{body}")).is_err(), "{body}");
        }
        let big = format!(
            "{base}\"op\":\"set\",\"d\":[[\"chat\",\"a\",1,\"{}\"]]}}",
            "x".repeat(MAX_STATE)
        );
        assert!(decode(&big).is_err(), "a state over the bound");
        let long = format!(
            "{base}\"op\":\"hello\",\"x\":\"{}\"}}",
            "x".repeat(MAX_READ)
        );
        assert!(decode(&long).is_err());
        assert!(
            decode(r#"{"pgws_control":"presence","node":"a","ts":1,"i":1,"op":"hello"}"#).is_err()
        );
    }
}

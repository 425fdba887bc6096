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
//! {"pgws_control":"presence","node":"a1","n":10,"ts":…,"i":5000,"op":"bye"}
//! ```
//!
//! Each encoded message stays under [`MAX_PAYLOAD`] bytes (below NOTIFY's 8000): deltas and
//! states are split into as many messages as needed (a state's parts share its `seq`).

use std::fmt::Write as _;

use serde_json::Value;

use super::table::{Channels, MAX_NAME, Member};
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
    },
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
pub fn encode_state(state: &Channels, seq: u64, mut next: impl FnMut() -> Header) -> Vec<String> {
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
    let total = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let mut msg = String::with_capacity(body.len() + 200);
            head(&mut msg, &next(), "state");
            let _ = write!(
                msg,
                ",\"seq\":{seq},\"part\":{i},\"parts\":{total},\"s\":[{body}]}}"
            );
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
            Op::State {
                seq,
                part: part as u32,
                parts: parts as u32,
                channels,
            }
        }
        _ => return Err("unknown \"op\"".into()),
    };
    Ok((header, op))
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
        let msgs = encode_state(&state, 9, header());
        let mut merged = Channels::new();
        for (i, m) in msgs.iter().enumerate() {
            assert!(m.len() <= MAX_PAYLOAD, "{}", m.len());
            let Op::State {
                seq,
                part,
                parts,
                channels,
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
        let empty = encode_state(&Channels::new(), 1, header());
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
        ] {
            assert!(decode(&format!("{base}{body}")).is_err(), "{body}");
        }
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

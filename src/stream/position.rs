//! Stream positions: where a message stands, so that a client that comes back can say where it
//! stopped.
//!
//! A position is `(epoch, seq)`. `seq` is one counter for the whole server, given to each message
//! as the hub routes it, so it orders messages within a channel and also across the channels of
//! a multi-channel client (one number resumes them all: what `Last-Event-ID` carries). The epoch
//! names the process that numbered it (random at start-up): a position from another process, or
//! from before a restart, is recognised as such and answered with a `Gap`, never mistaken for a
//! place in this process's numbering.
//!
//! On the wire a position is opaque text, `<epoch as 16 hex digits>-<seq in decimal>`.

use std::fmt;
use std::hash::{BuildHasher, Hasher};

/// Longest text accepted as a position (anything longer is malformed without being read).
const MAX_TEXT: usize = 40;

/// A message's place in this server's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The numbering's process.
    pub epoch: u64,
    /// The message's number (from 1; 0 means "before every message").
    pub seq: u64,
}

impl Position {
    /// Parses the wire form; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() > MAX_TEXT {
            return None;
        }
        let (epoch, seq) = text.split_once('-')?;
        if epoch.len() != 16 || seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Self {
            epoch: u64::from_str_radix(epoch, 16).ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.epoch, self.seq)
    }
}

/// A fresh epoch: random, different for every process (std's `RandomState` is seeded from the
/// operating system's randomness).
pub fn new_epoch() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// What a client asked to resume from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeFrom {
    /// A position this server may know.
    At(Position),
    /// Something that is not a position (garbage, too long): answered with a `Gap`.
    Unknown,
}

impl ResumeFrom {
    /// Reads a client's `Last-Event-ID` (or `last-event-id` query parameter).
    pub fn parse(text: &str) -> Self {
        Position::parse(text.trim()).map_or(Self::Unknown, Self::At)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let p = Position {
            epoch: 0xdead_beef_0000_0001,
            seq: 42,
        };
        assert_eq!(p.to_string(), "deadbeef00000001-42");
        assert_eq!(Position::parse(&p.to_string()), Some(p));
        for bad in [
            "",
            "42",
            "deadbeef-42",
            "deadbeef00000001-",
            "deadbeef00000001--1",
            "deadbeef00000001-4a",
            "zzzzzzzzzzzzzzzz-1",
            "deadbeef00000001-99999999999999999999999",
        ] {
            assert_eq!(Position::parse(bad), None, "{bad}");
        }
        assert_eq!(ResumeFrom::parse(&"9".repeat(10_000)), ResumeFrom::Unknown);
        assert_ne!(new_epoch(), new_epoch());
    }
}

//! Stream positions: where a message stands, so that a client that comes back can say where it
//! stopped.
//!
//! A position is `(epoch, seq)`. `seq` ([`Seq`]) orders messages within a channel and also across
//! the channels of a multi-channel client (one position resumes them all: what `Last-Event-ID`
//! carries). Who numbers, and what the epoch names, depends on the source:
//! - NOTIFY: `seq` is one counter for the whole server, given to each message as the hub routes
//!   it; the epoch names the process (random at start-up), so a position from another process,
//!   or from before a restart, is recognised as such and answered with a `Gap`.
//! - WAL: `seq` is the message's place in the decoded WAL, `(commit LSN, index in the
//!   transaction)`, the same on every node reading the same database; the epoch names the
//!   database and the stream (system identifier, database, prefix), so positions survive restarts
//!   and move between nodes.
//!
//! On the wire a position is opaque text: `<epoch as 16 hex digits>-<counter in decimal>` (NOTIFY)
//! or `<epoch>-<commit LSN as PostgreSQL writes it>.<index>` (WAL), e.g. `…-0/16B3748.2`.
//!
//! What it owns: the type of a position, its wire text both ways, and how epochs are made.
//! What it must never do: trust a client's text (every parse is bounded and total: anything
//! odd is `None`, never a panic or an allocation proportional to the input), or depend on
//! anything that changes between builds (a WAL epoch must be the same on every node and
//! version, so it is a fixed hash, not std's randomised one).

use std::fmt;
use std::hash::{BuildHasher, Hasher};

/// Longest text accepted as a position (anything longer is malformed without being read).
///
/// 64: the longest valid form is 16 + 1 + 8 + 1 + 8 + 1 + 20 = 55 characters (epoch, LSN
/// halves, index); a little slack, and a header of any length costs one comparison.
const MAX_TEXT: usize = 64;

/// A message's place in the stream, ordered: `major` first, then `minor`. NOTIFY numbering uses
/// `major = 0` and counts in `minor` (from 1; zero means "before every message"); WAL numbering
/// has the commit LSN in `major` (never 0) and the index within the transaction in `minor`.
///
/// Field order matters: the derived `Ord` compares `major` first, which is exactly the
/// stream order for both numberings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq {
    /// 0 (NOTIFY), or the commit LSN (WAL).
    pub major: u64,
    /// The counter (NOTIFY), or the index within the transaction (WAL).
    pub minor: u64,
}

impl Seq {
    /// Before every message; also "not a stream message".
    pub const ZERO: Self = Self { major: 0, minor: 0 };

    /// The `n`th message of a counted stream.
    pub const fn counter(n: u64) -> Self {
        Self { major: 0, minor: n }
    }

    /// Message `index` of the transaction committed at `lsn` (or the non-transactional message
    /// at `lsn`, index 0).
    pub const fn wal(lsn: u64, index: u64) -> Self {
        Self {
            major: lsn,
            minor: index,
        }
    }

    /// Whether this is [`Seq::ZERO`].
    pub fn is_zero(self) -> bool {
        self == Self::ZERO
    }

    /// The greatest position before this one (for "everything before here is unknown").
    pub fn before(self) -> Self {
        match (self.major, self.minor) {
            (0, 0) => Self::ZERO,
            // The previous LSN's last possible index: still strictly before every message of
            // this commit, after every message of the one before.
            (major, 0) => Self {
                major: major - 1,
                minor: u64::MAX,
            },
            (major, minor) => Self {
                major,
                minor: minor - 1,
            },
        }
    }

    /// Writes the wire form after the epoch and its `-`.
    fn write(self, f: &mut impl fmt::Write) -> fmt::Result {
        if self.major == 0 {
            write!(f, "{}", self.minor)
        } else {
            // PostgreSQL's `%X/%X` form, so an operator can paste it into `pg_` functions.
            let (hi, lo) = (self.major >> 32, self.major & 0xffff_ffff);
            write!(f, "{hi:X}/{lo:X}.{}", self.minor)
        }
    }

    fn parse(text: &str) -> Option<Self> {
        // Length caps before parsing: 8 hex digits fill a `u32` half of an LSN, 20 decimal
        // digits a `u64`; `parse` still refuses the values that overflow.
        let digits = |t: &str, hex: bool| {
            !t.is_empty()
                && t.len() <= if hex { 8 } else { 20 }
                && t.bytes().all(|b| {
                    if hex {
                        b.is_ascii_hexdigit()
                    } else {
                        b.is_ascii_digit()
                    }
                })
        };
        // A bare number is a counted (NOTIFY) position; anything else must be a full WAL form.
        if digits(text, false) {
            return Some(Self::counter(text.parse().ok()?));
        }
        let (lsn, index) = text.split_once('.')?;
        let (hi, lo) = lsn.split_once('/')?;
        if !digits(hi, true) || !digits(lo, true) || !digits(index, false) {
            return None;
        }
        let major = (u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?;
        // LSN 0 is never a commit: such text is malformed, not "before every message".
        (major != 0).then_some(Self::wal(major, index.parse().ok()?))
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f)
    }
}

/// A message's place in this server's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The numbering's process (NOTIFY) or database stream (WAL).
    pub epoch: u64,
    /// The message's place.
    pub seq: Seq,
}

impl Position {
    /// Parses the wire form; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() > MAX_TEXT {
            return None;
        }
        let (epoch, seq) = text.split_once('-')?;
        // Exactly 16 digits, as `Display` writes them: one spelling per position, so two
        // clients holding the same position hold the same text.
        if epoch.len() != 16 || !epoch.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(Self {
            epoch: u64::from_str_radix(epoch, 16).ok()?,
            seq: Seq::parse(seq)?,
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-", self.epoch)?;
        self.seq.write(f)
    }
}

/// The epoch of a WAL stream: the same on every node that reads `prefix`'s messages from the
/// same database of the same cluster, different for another cluster (system identifier), another
/// database or another prefix. FNV-1a, so that it never changes between builds or processes.
pub fn wal_epoch(system_id: &str, database: &str, prefix: &str) -> u64 {
    // The FNV-1a 64-bit offset basis and prime. Each part ends with a 0 byte so that
    // ("ab", "c") and ("a", "bc") do not hash alike.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [system_id, database, prefix] {
        for b in part.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// A fresh epoch: random, different for every process (std's `RandomState` is seeded from the
/// operating system's randomness).
pub fn new_epoch() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    // The clock is mixed in as well, so two hubs of one process (tests) still differ even
    // if the hasher's keys were ever reused.
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// What a client asked to resume from.
///
/// A malformed position is not an error for the client: it still joins, with a gap first,
/// so a client can always recover by resuming with whatever it has.
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
            seq: Seq::counter(42),
        };
        assert_eq!(p.to_string(), "deadbeef00000001-42");
        assert_eq!(Position::parse(&p.to_string()), Some(p));
        let w = Position {
            epoch: 7,
            seq: Seq::wal(0x1_16B3_7480, 3),
        };
        assert_eq!(w.to_string(), "0000000000000007-1/16B37480.3");
        assert_eq!(Position::parse(&w.to_string()), Some(w));
        assert_eq!(
            Position::parse("0000000000000007-1/16b37480.3"),
            Some(w),
            "either case"
        );
        for bad in [
            "",
            "42",
            "deadbeef-42",
            "deadbeef00000001-",
            "deadbeef00000001--1",
            "deadbeef00000001-4a",
            "zzzzzzzzzzzzzzzz-1",
            "deadbeef00000001-99999999999999999999999",
            "deadbeef00000001-0/0.1",
            "deadbeef00000001-1/2",
            "deadbeef00000001-1/.2",
            "deadbeef00000001-123456789/0.1",
            "deadbeef00000001-1/2.-1",
            "+eadbeef00000001-1",
        ] {
            assert_eq!(Position::parse(bad), None, "{bad}");
        }
        assert_eq!(ResumeFrom::parse(&"9".repeat(10_000)), ResumeFrom::Unknown);
        assert_ne!(new_epoch(), new_epoch());
    }

    #[test]
    fn seq_order_and_before() {
        assert!(Seq::counter(5) < Seq::counter(6));
        assert!(Seq::wal(100, 9) < Seq::wal(101, 0));
        assert_eq!(Seq::wal(101, 0).before(), Seq::wal(100, u64::MAX));
        assert_eq!(Seq::counter(3).before(), Seq::counter(2));
        assert_eq!(Seq::ZERO.before(), Seq::ZERO);
        assert_eq!(wal_epoch("1", "db", "p"), wal_epoch("1", "db", "p"));
        assert_ne!(wal_epoch("1", "db", "p"), wal_epoch("1", "dbp", ""));
    }
}

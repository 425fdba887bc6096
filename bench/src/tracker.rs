//! Sequence tracking: one `SeqTracker` per (receiver, sender) pair records
//! which sequence numbers arrived and classifies each arrival as new,
//! duplicate or out of order; `Tally` sums trackers up.

use serde::Serialize;

/// What one arrival was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First arrival, in order.
    InOrder,
    /// First arrival, but after a higher sequence number.
    OutOfOrder,
    /// Seen before.
    Duplicate,
    /// Sequence number beyond the limit (not tracked).
    Invalid,
}

/// Bitmap of the sequence numbers received from one sender.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    bits: Vec<u64>,
    next_max: u64,
    /// Distinct sequence numbers received.
    pub unique: u64,
    /// Repeated arrivals.
    pub duplicates: u64,
    /// First arrivals below the highest number already seen.
    pub out_of_order: u64,
    /// Arrivals with a sequence number at or above the limit.
    pub invalid: u64,
}

impl SeqTracker {
    /// Records `seq`; numbers `>= limit` are counted as invalid.
    pub fn record(&mut self, seq: u64, limit: u64) -> Arrival {
        if seq >= limit {
            self.invalid += 1;
            return Arrival::Invalid;
        }
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if w >= self.bits.len() {
            self.bits.resize(w + 1, 0);
        }
        if self.bits[w] & (1 << b) != 0 {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        self.bits[w] |= 1 << b;
        self.unique += 1;
        if seq + 1 < self.next_max {
            self.out_of_order += 1;
            Arrival::OutOfOrder
        } else {
            self.next_max = seq + 1;
            Arrival::InOrder
        }
    }

    /// Whether every number from 0 up to the highest seen arrived (no hole so far).
    pub fn contiguous(&self) -> bool {
        self.unique == self.next_max
    }
}

/// Totals over many trackers.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Tally {
    /// Deliveries expected.
    pub expected: u64,
    /// Distinct expected deliveries received.
    pub delivered: u64,
    /// expected - delivered.
    pub lost: u64,
    /// Repeated deliveries.
    pub duplicated: u64,
    /// Deliveries that arrived after a later one from the same sender.
    pub out_of_order: u64,
    /// Deliveries whose sequence number was never sent.
    pub invalid: u64,
}

impl Tally {
    /// Adds one tracker that should have received `expected` messages.
    pub fn add(&mut self, t: &SeqTracker, expected: u64) {
        self.expected += expected;
        self.delivered += t.unique.min(expected);
        self.lost += expected.saturating_sub(t.unique);
        self.duplicated += t.duplicates;
        self.out_of_order += t.out_of_order;
        self.invalid += t.invalid;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_arrivals() {
        let mut t = SeqTracker::default();
        assert_eq!(t.record(0, 10), Arrival::InOrder);
        assert_eq!(t.record(1, 10), Arrival::InOrder);
        assert!(t.contiguous());
        assert_eq!(t.record(3, 10), Arrival::InOrder);
        assert!(!t.contiguous());
        assert_eq!(t.record(2, 10), Arrival::OutOfOrder);
        assert!(t.contiguous());
        assert_eq!(t.record(3, 10), Arrival::Duplicate);
        assert_eq!(t.record(10, 10), Arrival::Invalid);
        assert_eq!(t.record(100, 1000), Arrival::InOrder);
        assert_eq!(
            (t.unique, t.duplicates, t.out_of_order, t.invalid),
            (5, 1, 1, 1)
        );
        let mut tally = Tally::default();
        tally.add(&t, 7);
        assert_eq!(tally.lost, 2);
        assert_eq!(tally.delivered, 5);
    }
}

//! The chaos run's verdict: per-channel continuity of what every subscriber received, against
//! what was published.
//!
//! Every channel has one publisher, which numbers its messages 0, 1, 2, … and records for each
//! number whether it is known to be committed (`Certain`), known not to be (`Absent`), or not
//! known (`Uncertain`: the publish failed or its answer was lost, so it may or may not have
//! been committed). A subscriber's log per channel is the numbers it received, in order, with a
//! marker where a `Gap` event that names the channel (or names none, so all) arrived.
//!
//! Expected per channel: every `Certain` number, and every `Uncertain` one that any subscriber
//! received (it was committed, so all must have it). Then per subscriber and channel: a number
//! seen again is a duplicate, one below the highest seen so far is out of order, an expected
//! one never seen is lost, an `Absent` one or one never published is a phantom. A loss is
//! announced when a `Gap` arrived between the message before it and the one after it (or
//! before the first message, or after the last), and silent otherwise.

use serde::Serialize;

/// What a publisher knows of one published number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed (acknowledged, or found in the ledger table).
    Certain,
    /// Not committed (the ledger table does not have it).
    Absent,
    /// Unknown: the publish failed or its answer never came.
    Uncertain,
}

/// A `Gap` marker in a log.
pub const GAP: i64 = -1;

/// One subscriber's logs, one per channel it follows.
#[derive(Debug, Default)]
pub struct SubLog {
    /// The channel indexes it follows.
    pub channels: Vec<usize>,
    /// Per channel (parallel to `channels`): numbers received in order, [`GAP`] markers between.
    pub logs: Vec<Vec<i64>>,
}

/// Counts of a run (over all subscribers and channels).
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Tally {
    /// Messages the subscribers received (each copy counted).
    pub received: u64,
    /// Messages each subscriber should have received (expected × its followers).
    pub expected: u64,
    /// Expected messages a subscriber never received.
    pub lost: u64,
    /// Of `lost`: with a `Gap` event where the loss is.
    pub announced: u64,
    /// Of `lost`: without one.
    pub silent: u64,
    /// Messages received again.
    pub duplicated: u64,
    /// Messages received after a higher number of their channel.
    pub out_of_order: u64,
    /// Messages received that were never committed (or never published).
    pub phantom: u64,
    /// `Gap` markers in the logs.
    pub gaps: u64,
    /// (subscriber, channel) pairs with at least one violation, the first few, for the report.
    pub examples: Vec<String>,
}

/// Checks every log against `published` (per channel, the outcome of each number);
/// `losses_violate`: any loss is a violation (WAL), else only a silent one (NOTIFY) — which
/// decides what goes into `examples`.
pub fn check(published: &[Vec<Outcome>], subs: &[SubLog], losses_violate: bool) -> Tally {
    let mut t = Tally::default();
    // A number some subscriber received: committed.
    let mut seen_anywhere: Vec<Vec<bool>> =
        published.iter().map(|p| vec![false; p.len()]).collect();
    for s in subs {
        for (&c, log) in s.channels.iter().zip(&s.logs) {
            for &n in log {
                if n >= 0 && (n as usize) < seen_anywhere[c].len() {
                    seen_anywhere[c][n as usize] = true;
                }
            }
        }
    }
    let expected: Vec<Vec<bool>> = published
        .iter()
        .zip(&seen_anywhere)
        .map(|(p, seen)| {
            p.iter()
                .zip(seen)
                .map(|(o, &s)| match o {
                    Outcome::Certain => true,
                    Outcome::Uncertain => s,
                    Outcome::Absent => false,
                })
                .collect()
        })
        .collect();
    for (i, s) in subs.iter().enumerate() {
        for (&c, log) in s.channels.iter().zip(&s.logs) {
            let before = t.clone();
            one(&published[c], &expected[c], log, &mut t);
            let lost = if losses_violate { t.lost } else { t.silent };
            let lost_before = if losses_violate {
                before.lost
            } else {
                before.silent
            };
            if t.examples.len() < 10
                && (lost, t.duplicated, t.out_of_order, t.phantom)
                    != (
                        lost_before,
                        before.duplicated,
                        before.out_of_order,
                        before.phantom,
                    )
            {
                t.examples.push(format!(
                    "subscriber {i} channel {c}: silent {} dup {} order {} phantom {} (lost {})",
                    t.silent - before.silent,
                    t.duplicated - before.duplicated,
                    t.out_of_order - before.out_of_order,
                    t.phantom - before.phantom,
                    t.lost - before.lost
                ));
            }
        }
    }
    t
}

/// One subscriber's log of one channel.
fn one(published: &[Outcome], expected: &[bool], log: &[i64], t: &mut Tally) {
    let n = published.len();
    let mut got = vec![false; n];
    let mut max = -1i64;
    for &e in log {
        if e == GAP {
            t.gaps += 1;
            continue;
        }
        t.received += 1;
        let k = e as usize;
        if k >= n || published[k] == Outcome::Absent {
            t.phantom += 1;
            continue;
        }
        if got[k] {
            t.duplicated += 1;
        } else if e < max {
            t.out_of_order += 1;
        }
        got[k] = true;
        max = max.max(e);
    }
    let missing: Vec<usize> = (0..n).filter(|&k| expected[k] && !got[k]).collect();
    t.expected += expected.iter().filter(|&&e| e).count() as u64;
    t.lost += missing.len() as u64;
    // Each missing number lies between the highest number before it and the next higher one;
    // it was announced if a Gap came in between.
    let mut next = 0;
    let mut top = -1i64;
    let mut gap = false;
    let classify = |upto: i64, gap: bool, next: &mut usize, t: &mut Tally| {
        while *next < missing.len() && (missing[*next] as i64) < upto {
            if gap {
                t.announced += 1;
            } else {
                t.silent += 1;
            }
            *next += 1;
        }
    };
    for &e in log {
        if e == GAP {
            gap = true;
        } else if e > top && (e as usize) < n {
            classify(e, gap, &mut next, t);
            top = e;
            gap = false;
        }
    }
    classify(i64::MAX, gap, &mut next, t);
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;

    fn sub(logs: &[&[i64]]) -> SubLog {
        SubLog {
            channels: (0..logs.len()).collect(),
            logs: logs.iter().map(|l| l.to_vec()).collect(),
        }
    }

    #[test]
    fn a_complete_log_passes() {
        let p = vec![vec![Certain; 4]];
        let t = check(&p, &[sub(&[&[0, 1, 2, 3]])], false);
        assert_eq!((t.received, t.expected, t.lost), (4, 4, 0));
        assert_eq!(
            (t.duplicated, t.out_of_order, t.phantom, t.silent),
            (0, 0, 0, 0)
        );
    }

    #[test]
    fn duplicates_reorders_and_phantoms_are_counted() {
        let p = vec![vec![Certain, Certain, Certain, Absent]];
        let t = check(&p, &[sub(&[&[0, 2, 1, 2, 3, 9]])], false);
        assert_eq!(
            (t.duplicated, t.out_of_order, t.phantom, t.lost),
            (1, 1, 2, 0)
        );
    }

    #[test]
    fn losses_are_announced_only_by_a_gap_where_they_are() {
        let p = vec![vec![Certain; 8]];
        // 1 lost after a Gap; 4 lost with the Gap elsewhere; 7 lost at the end without a Gap.
        let t = check(&p, &[sub(&[&[0, GAP, 2, 3, 5, GAP, 6]])], false);
        assert_eq!((t.lost, t.announced, t.silent, t.gaps), (3, 1, 2, 2));
        // A Gap before the first message covers a loss at the start; one at the end, the tail.
        let t = check(&p, &[sub(&[&[GAP, 2, 3, 4, 5, 6, GAP]])], false);
        assert_eq!((t.lost, t.announced, t.silent), (3, 3, 0));
    }

    #[test]
    fn uncertain_numbers_are_expected_only_when_someone_got_them() {
        let p = vec![vec![Certain, Uncertain, Uncertain, Certain]];
        // Nobody got 2 (not committed); one subscriber got 1, so the other lost it.
        let t = check(&p, &[sub(&[&[0, 1, 3]]), sub(&[&[0, 3]])], false);
        assert_eq!((t.expected, t.lost, t.silent), (6, 1, 1));
        assert_eq!(t.examples.len(), 1);
    }
}

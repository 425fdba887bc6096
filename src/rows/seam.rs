//! The seam of a snapshot with the change stream: which transactions a snapshot contains, read
//! from `pg_current_snapshot()` and the WAL insert position after it (docs/ROWS.md §8). A leaf:
//! the snapshot's reader makes it, the row subscriptions apply it to the changes they receive.

/// Which transactions a snapshot contains, and the WAL position that bounds their commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seam {
    xmin: u32,
    xmax: u32,
    xip: Vec<u32>,
    /// `pg_current_wal_insert_lsn()` read after the snapshot was taken.
    lsn: u64,
}

/// `a` comes before `b` in the circular 32-bit transaction id space (PostgreSQL's
/// `TransactionIdPrecedes` for normal ids).
fn precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl Seam {
    /// From `pg_current_snapshot()::text` (`xmin:xmax:xip,…`, 64-bit ids: pgoutput's are their
    /// low 32 bits) and `pg_current_wal_insert_lsn()::text` (`X/Y`).
    pub fn parse(snapshot: &str, lsn: &str) -> Option<Self> {
        let mut parts = snapshot.split(':');
        let id = |s: &str| s.parse::<u64>().ok().map(|x| x as u32);
        let xmin = id(parts.next()?)?;
        let xmax = id(parts.next()?)?;
        let xip = match parts.next()? {
            "" => Vec::new(),
            list => list.split(',').map(id).collect::<Option<_>>()?,
        };
        let (hi, lo) = lsn.split_once('/')?;
        let lsn = (u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?;
        Some(Self {
            xmin,
            xmax,
            xip,
            lsn,
        })
    }

    /// Whether a change committed at `commit_lsn` is past the seam (so is every later one).
    pub fn is_before(&self, commit_lsn: u64) -> bool {
        commit_lsn > self.lsn
    }

    /// Whether the snapshot already contains the changes of transaction `xid`, committed at
    /// `commit_lsn` (see the module header for why this is exact).
    pub fn contains(&self, commit_lsn: u64, xid: u32) -> bool {
        if commit_lsn > self.lsn {
            return false;
        }
        precedes(xid, self.xmin) || (precedes(xid, self.xmax) && !self.xip.contains(&xid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seam_contains_exactly_the_snapshots_transactions() {
        let seam = Seam::parse("100:105:101,103", "0/16B3748").unwrap();
        let lsn = 0x16B3748;
        assert!(seam.contains(lsn, 99), "before xmin");
        assert!(seam.contains(lsn, 102), "between, not in progress");
        assert!(!seam.contains(lsn, 101), "in progress at the snapshot");
        assert!(!seam.contains(lsn, 105), "at xmax");
        assert!(!seam.contains(lsn + 1, 99), "committed after the bound");
        // 64-bit ids: pgoutput's xids are their low 32 bits, compared circularly.
        let wrapped = Seam::parse("4294967290:4294967300:", "1/0").unwrap();
        assert!(seam_contains(&wrapped, 4_294_967_295));
        assert!(
            !seam_contains(&wrapped, 5),
            "xid 2^32+5 is at or after xmax"
        );
        assert!(Seam::parse("x:1:", "0/0").is_none());
    }

    fn seam_contains(s: &Seam, xid: u32) -> bool {
        s.contains(0, xid)
    }
}

//! Dates and times as comparable numbers, for filters on `date`, `time`, `timetz`, `timestamp`
//! and `timestamptz` columns (`created_at=gt.2024-01-01T00:00:00Z`).
//!
//! Why parse at all: a row carries `to_jsonb`'s ISO 8601 text and a filter carries whatever the
//! client wrote; comparing the texts would put `…+01:00` and `…Z` in the wrong order. Only ISO
//! forms are accepted (what `to_jsonb` writes, plus `Z` and a space or `T` between date and
//! time); PostgreSQL's other input styles (`Jan 2 2024`, `now`, `epoch`) are refused rather than
//! guessed. A `timestamptz` literal must carry its offset: the session time zone that PostgreSQL
//! would apply is not known here.

/// Microseconds per day.
const DAY_US: i64 = 86_400_000_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year numbering).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `YYYY-MM-DD`, with an optional ` BC` handled by the caller; returns days since the epoch.
fn date(s: &str, bc: bool) -> Option<i64> {
    let mut it = s.splitn(3, '-');
    let (y, m, d) = (
        digits(it.next()?)?,
        digits(it.next()?)?,
        digits(it.next()?)?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y == 0 {
        return None;
    }
    let year = if bc { 1 - y } else { y };
    Some(days_from_civil(year, m, d))
}

/// `HH:MM[:SS[.ffffff]]` to microseconds since midnight (24:00:00 allowed, as in PostgreSQL).
fn time(s: &str) -> Option<i64> {
    let mut it = s.splitn(3, ':');
    let h = digits(it.next()?)?;
    let m = digits(it.next()?)?;
    let (sec, frac) = match it.next() {
        None => (0, 0),
        Some(rest) => match rest.split_once('.') {
            None => (digits(rest)?, 0),
            Some((sec, f)) => {
                if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                // Round to microseconds like PostgreSQL.
                let mut us: i64 = 0;
                for (i, b) in f.bytes().chain(std::iter::repeat(b'0')).take(7).enumerate() {
                    if i < 6 {
                        us = us * 10 + i64::from(b - b'0');
                    } else if b >= b'5' {
                        us += 1;
                    }
                }
                (digits(sec)?, us)
            }
        },
    };
    if h > 24 || m > 59 || sec > 60 || (h == 24 && (m > 0 || sec > 0 || frac > 0)) {
        return None;
    }
    Some(((h * 60 + m) * 60 + sec) * 1_000_000 + frac)
}

/// Splits a trailing UTC offset (`Z`, `+05`, `-05:30`, `+0530`, `+05:21:10`) off a time;
/// returns (time text, offset seconds east of UTC).
fn split_offset(s: &str) -> Option<(&str, Option<i64>)> {
    if let Some(t) = s.strip_suffix(['Z', 'z']) {
        return Some((t, Some(0)));
    }
    let Some(pos) = s.rfind(['+', '-']) else {
        return Some((s, None));
    };
    let (t, off) = (&s[..pos], &s[pos + 1..]);
    if !off.is_ascii() {
        return None;
    }
    let sign = if s.as_bytes()[pos] == b'-' { -1 } else { 1 };
    let parts: Vec<&str> = if off.contains(':') {
        off.split(':').collect()
    } else if off.len() == 4 {
        vec![&off[..2], &off[2..]]
    } else {
        vec![off]
    };
    if parts.is_empty() || parts.len() > 3 || parts.iter().any(|p| p.len() != 2) {
        return None;
    }
    let mut secs = 0;
    for (i, p) in parts.iter().enumerate() {
        secs += digits(p)? * [3600, 60, 1][i];
    }
    if secs > 16 * 3600 {
        return None;
    }
    Some((t, Some(sign * secs)))
}

/// Days since 1970-01-01 for a `date` (`i64::MIN`/`MAX` for `-infinity`/`infinity`).
pub fn parse_date(s: &str) -> Option<i64> {
    let s = s.trim();
    match s {
        "infinity" => return Some(i64::MAX),
        "-infinity" => return Some(i64::MIN),
        _ => {}
    }
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(d) => (d, true),
        None => (s, false),
    };
    date(s, bc)
}

/// Microseconds since 1970-01-01 00:00 for a `timestamp` (`with_zone = false`: the offset must
/// be absent) or a `timestamptz` (the offset is required and applied, giving UTC).
pub fn parse_timestamp(s: &str, with_zone: bool) -> Option<i64> {
    let s = s.trim();
    match s {
        "infinity" => return Some(i64::MAX),
        "-infinity" => return Some(i64::MIN),
        _ => {}
    }
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(d) => (d, true),
        None => (s, false),
    };
    let (d, t) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let days = date(d, bc)?;
    let (us, offset) = match t {
        None => (0, None),
        Some(t) => {
            let (t, off) = split_offset(t)?;
            (time(t)?, off)
        }
    };
    let local = days.checked_mul(DAY_US)?.checked_add(us)?;
    match (with_zone, offset) {
        (true, Some(off)) => local.checked_sub(off * 1_000_000),
        (false, None) => Some(local),
        _ => None,
    }
}

/// Microseconds since midnight for a `time`.
pub fn parse_time(s: &str) -> Option<i64> {
    time(s.trim())
}

/// A `timetz` as PostgreSQL orders it: (the instant in UTC, then the offset).
pub fn parse_timetz(s: &str) -> Option<(i64, i64)> {
    let (t, off) = split_offset(s.trim())?;
    let off = off?;
    Some((time(t)? - off * 1_000_000, off))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_compare_across_offsets() {
        let a = parse_timestamp("2024-01-02T03:04:05+01:00", true).unwrap();
        let b = parse_timestamp("2024-01-02 02:04:05Z", true).unwrap();
        let c = parse_timestamp("2024-01-02T02:04:05.000001+00", true).unwrap();
        assert_eq!(a, b);
        assert_eq!(c - b, 1);
        assert_eq!(parse_timestamp("1970-01-01T00:00:00+00:00", true), Some(0));
        assert_eq!(parse_timestamp("1970-01-02", false), Some(DAY_US));
        assert!(parse_timestamp("2024-01-02 03:04:05", true).is_none());
        assert!(parse_timestamp("2024-01-02 03:04:05+01", false).is_none());
        assert!(parse_timestamp("now", true).is_none());
        assert!(parse_timestamp("0001-01-01T00:00:00+00:00 BC", true).unwrap() < 0);
        assert_eq!(parse_date("infinity"), Some(i64::MAX));
        assert!(parse_date("2024-13-01").is_none());
        assert_eq!(parse_time("00:00:01.5"), Some(1_500_000));
        assert_eq!(parse_time("00:00:00.0000005"), Some(1));
        assert!(parse_timetz("12:00:00+05:30").unwrap() < parse_timetz("12:00:00+00").unwrap());
        assert!(parse_timetz("12:00+aé1").is_none());
        assert!(parse_timestamp("2024-01-01T00:00-é12", true).is_none());
    }
}

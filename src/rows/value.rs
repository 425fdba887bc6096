//! Column values of a row change, from PostgreSQL's text output (as pgoutput sends them) to the
//! typed JSON that PostgreSQL's own `to_jsonb` would give for the same value.
//!
//! Why `to_jsonb` is the reference: it is what a user sees when they run the same query in SQL
//! (and what PostgREST returns), so a live row and a fetched row look alike. The mapping is
//! decided by the column's type OID (pgoutput's Relation message names it); types this module
//! does not know are passed through as strings, which is also what `to_jsonb` does for every
//! type without a JSON counterpart (`interval`, `point`, enums, `oid`, ...).
//!
//! Differences from `to_jsonb`, on purpose (see docs/ROWS.md):
//! - `numeric` values that an IEEE double cannot hold exactly (more than ~15 significant digits)
//!   become a JSON *string* with the exact text, so no digit is silently lost; the others are
//!   numbers. (`to_jsonb` writes the exact digits as a number, which JavaScript's `JSON.parse`
//!   then rounds; `serde_json`'s `arbitrary_precision` feature would keep them but changes number
//!   handling for every crate in the binary, token parsing included.)
//! - `int8` is always a number, as in `to_jsonb`; values beyond 2^53 are exact in the JSON text
//!   but a JavaScript client rounds them unless it parses with a big-number reviver.

use serde_json::{Number, Value};
use thiserror::Error;

/// Type OIDs of the built-in types this module maps (from PostgreSQL's `pg_type.dat`; stable
/// across versions).
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// What a scalar type is, for both the JSON mapping and the filter's comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scalar {
    Bool,
    /// int2, int4, int8: exact integers.
    Int,
    /// float4, float8.
    Float,
    Numeric,
    /// text, varchar, char, bpchar, name: compared byte-wise.
    Text,
    Uuid,
    Bytea,
    Json,
    Jsonb,
    Date,
    Time,
    TimeTz,
    Timestamp,
    TimestampTz,
    /// Anything else (`oid`, `interval`, enums, domains, geometric types, ...): the text as is.
    Other,
}

/// A column's type as far as rows are concerned: a scalar, or a one-or-more-dimensional array
/// of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    Scalar(Scalar),
    Array(Scalar),
}

impl ColumnType {
    /// Classifies a type OID (base types and their array types; anything else is `Other`).
    pub fn of(type_oid: u32) -> Self {
        use Scalar::*;
        let scalar = |o: u32| -> Option<Scalar> {
            Some(match o {
                oid::BOOL => Bool,
                oid::INT2 | oid::INT4 | oid::INT8 => Int,
                oid::FLOAT4 | oid::FLOAT8 => Float,
                oid::NUMERIC => Numeric,
                oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::CHAR | oid::NAME => Text,
                oid::UUID => Uuid,
                oid::BYTEA => Bytea,
                oid::JSON => Json,
                oid::JSONB => Jsonb,
                oid::DATE => Date,
                oid::TIME => Time,
                oid::TIMETZ => TimeTz,
                oid::TIMESTAMP => Timestamp,
                oid::TIMESTAMPTZ => TimestampTz,
                oid::OID | oid::INTERVAL => Other,
                _ => return None,
            })
        };
        if let Some(s) = scalar(type_oid) {
            return ColumnType::Scalar(s);
        }
        // Array type OIDs of the built-in types above.
        let element = match type_oid {
            1000 => Some(Bool),
            1005 | 1007 | 1016 => Some(Int),
            1021 | 1022 => Some(Float),
            1231 => Some(Numeric),
            1009 | 1015 | 1014 | 1002 | 1003 => Some(Text),
            2951 => Some(Uuid),
            1001 => Some(Bytea),
            199 => Some(Json),
            3807 => Some(Jsonb),
            1182 => Some(Date),
            1183 => Some(Time),
            1270 => Some(TimeTz),
            1115 => Some(Timestamp),
            1185 => Some(TimestampTz),
            1028 | 1187 => Some(Other),
            _ => None,
        };
        match element {
            Some(e) => ColumnType::Array(e),
            None => ColumnType::Scalar(Other),
        }
    }

    /// A short name for error messages.
    pub fn name(self) -> String {
        match self {
            ColumnType::Scalar(s) => s.name().to_owned(),
            ColumnType::Array(s) => format!("{}[]", s.name()),
        }
    }
}

impl Scalar {
    pub fn name(self) -> &'static str {
        match self {
            Scalar::Bool => "boolean",
            Scalar::Int => "integer",
            Scalar::Float => "float",
            Scalar::Numeric => "numeric",
            Scalar::Text => "text",
            Scalar::Uuid => "uuid",
            Scalar::Bytea => "bytea",
            Scalar::Json => "json",
            Scalar::Jsonb => "jsonb",
            Scalar::Date => "date",
            Scalar::Time => "time",
            Scalar::TimeTz => "timetz",
            Scalar::Timestamp => "timestamp",
            Scalar::TimestampTz => "timestamptz",
            Scalar::Other => "other",
        }
    }
}

/// A value that PostgreSQL's text output should never produce for its type: the decoder stops
/// rather than guess (a bug or a version difference, worth a log line with the column).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ValueError {
    #[error("not a valid {type_name} value: {text:?}")]
    Invalid {
        type_name: &'static str,
        text: String,
    },
    #[error("malformed array literal at byte {pos}: {what}")]
    Array { pos: usize, what: &'static str },
    #[error("array nested deeper than {max} dimensions")]
    TooDeep { max: usize },
}

/// PostgreSQL allows at most 6 array dimensions (`MAXDIM`).
const MAX_DIMS: usize = 6;

/// Turns a column's text (as PostgreSQL prints it with `DateStyle = ISO` and
/// `bytea_output = hex`, the defaults) into the JSON `to_jsonb` gives.
pub fn to_json(ty: ColumnType, text: &str) -> Result<Value, ValueError> {
    match ty {
        ColumnType::Scalar(s) => scalar_to_json(s, text),
        ColumnType::Array(s) => {
            let parsed = parse_array(text)?;
            array_to_json(s, &parsed)
        }
    }
}

fn array_to_json(s: Scalar, a: &ArrayItem) -> Result<Value, ValueError> {
    match a {
        ArrayItem::Null => Ok(Value::Null),
        ArrayItem::Text(t) => scalar_to_json(s, t),
        ArrayItem::List(items) => items
            .iter()
            .map(|i| array_to_json(s, i))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
    }
}

fn invalid(s: Scalar, text: &str) -> ValueError {
    ValueError::Invalid {
        type_name: s.name(),
        text: text.chars().take(64).collect(),
    }
}

/// One scalar's text to JSON.
pub fn scalar_to_json(s: Scalar, text: &str) -> Result<Value, ValueError> {
    Ok(match s {
        Scalar::Bool => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => return Err(invalid(s, text)),
        },
        Scalar::Int => {
            let n: i64 = text.parse().map_err(|_| invalid(s, text))?;
            Value::Number(n.into())
        }
        Scalar::Float => float_to_json(text).ok_or_else(|| invalid(s, text))?,
        Scalar::Numeric => numeric_to_json(text).ok_or_else(|| invalid(s, text))?,
        Scalar::Json | Scalar::Jsonb => serde_json::from_str(text).map_err(|_| invalid(s, text))?,
        Scalar::TimestampTz => Value::String(timestamp_iso(text, true)),
        Scalar::Timestamp => Value::String(timestamp_iso(text, false)),
        Scalar::Text
        | Scalar::Uuid
        | Scalar::Bytea
        | Scalar::Date
        | Scalar::Time
        | Scalar::TimeTz
        | Scalar::Other => Value::String(text.to_owned()),
    })
}

/// `to_jsonb` writes `NaN` and the infinities as strings, finite floats as numbers (through
/// `numeric`, so integral values print without exponent: `1e+15` becomes `1000000000000000`).
fn float_to_json(text: &str) -> Option<Value> {
    match text {
        "NaN" | "Infinity" | "-Infinity" => return Some(Value::String(text.to_owned())),
        _ => {}
    }
    let x: f64 = text.parse().ok()?;
    if !x.is_finite() {
        return None;
    }
    Some(Value::Number(f64_number(x)))
}

/// The number `serde_json` would parse from `to_jsonb`'s digits for this double: integers that
/// fit 64 bits as integers (and `-0` as `0`), the rest as doubles.
pub(crate) fn f64_number(x: f64) -> Number {
    if x == 0.0 {
        return Number::from(0u64);
    }
    if x.fract() == 0.0 {
        if x > 0.0 && x < 18_446_744_073_709_551_616.0 {
            return Number::from(x as u64);
        }
        if (-9_223_372_036_854_775_808.0..0.0).contains(&x) {
            return Number::from(x as i64);
        }
    }
    Number::from_f64(x).unwrap_or_else(|| Number::from(0u64))
}

/// `numeric`: special values as strings (as `to_jsonb`); a number when a double holds the value
/// exactly, else the exact text as a string (see the module header).
fn numeric_to_json(text: &str) -> Option<Value> {
    match text {
        "NaN" | "Infinity" | "-Infinity" => return Some(Value::String(text.to_owned())),
        _ => {}
    }
    let (neg, digits, exp) = decimal_parts(text)?;
    if let Ok(Value::Number(n)) = serde_json::from_str::<Value>(text) {
        // serde_json parses integers exactly; doubles must print back to the same digits.
        let exact = if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
            decimal_parts(&format!("{f}")) == Some((neg && !digits.is_empty(), digits, exp))
        } else {
            true
        };
        if exact {
            return Some(Value::Number(n));
        }
        return Some(Value::String(text.to_owned()));
    }
    None
}

/// A decimal's normal form: (negative, significant digits without leading/trailing zeros,
/// exponent of the last digit), with zero as (false, "", 0). `None` if not plain decimal text
/// (`[-+]digits[.digits]`, as `numeric` and Rust's `{}` for `f64` print).
pub(crate) fn decimal_parts(text: &str) -> Option<(bool, String, i64)> {
    let (neg, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let all: String = format!("{int}{frac}");
    let mut exp = -(frac.len() as i64);
    let trimmed_end = all.trim_end_matches('0');
    exp += (all.len() - trimmed_end.len()) as i64;
    let digits = trimmed_end.trim_start_matches('0').to_owned();
    if digits.is_empty() {
        return Some((false, String::new(), 0));
    }
    Some((neg, digits, exp))
}

/// `2024-01-02 03:04:05.5+00` (text output) to `2024-01-02T03:04:05.5+00:00` (`to_jsonb`): a
/// `T` between date and time, and for `timestamptz` an offset of whole hours gets its `:00`.
/// `infinity`, `-infinity` and the ` BC` suffix stay as they are, as in `to_jsonb`.
fn timestamp_iso(text: &str, with_zone: bool) -> String {
    let Some((date, rest)) = text.split_once(' ') else {
        return text.to_owned();
    };
    let (time, bc) = match rest.strip_suffix(" BC") {
        Some(t) => (t, " BC"),
        None => (rest, ""),
    };
    let mut out = format!("{date}T{time}");
    if with_zone {
        // The offset starts at the last sign after the time's start ("03:04:05+05:30").
        if let Some(pos) = time.rfind(['+', '-']) {
            let offset = &time[pos + 1..];
            if offset.len() == 2 {
                out.push_str(":00");
            }
        }
    }
    out.push_str(bc);
    out
}

/// A parsed array literal: nested lists of element texts, with SQL NULLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArrayItem {
    Null,
    Text(String),
    List(Vec<ArrayItem>),
}

/// Parses PostgreSQL's array literal text (`{1,2}`, `{"a b",NULL,"q\"x"}`, `{{1,2},{3,4}}`,
/// `[0:1]={1,2}`), the form arrays have in pgoutput and in PostgREST's `cs`/`cd` values.
/// Bounded: at most [`MAX_DIMS`] levels, linear in the text.
pub fn parse_array(text: &str) -> Result<ArrayItem, ValueError> {
    let b = text.as_bytes();
    let mut pos = 0;
    // Optional dimension decoration "[1:2][3:4]=".
    if b.first() == Some(&b'[') {
        match text.find('=') {
            Some(eq) => pos = eq + 1,
            None => {
                return Err(ValueError::Array {
                    pos: 0,
                    what: "dimensions without '='",
                });
            }
        }
    }
    skip_ws(b, &mut pos);
    let item = parse_list(b, &mut pos, 1)?;
    skip_ws(b, &mut pos);
    if pos != b.len() {
        return Err(ValueError::Array {
            pos,
            what: "text after the closing '}'",
        });
    }
    Ok(item)
}

fn skip_ws(b: &[u8], pos: &mut usize) {
    while *pos < b.len() && b[*pos].is_ascii_whitespace() {
        *pos += 1;
    }
}

fn parse_list(b: &[u8], pos: &mut usize, depth: usize) -> Result<ArrayItem, ValueError> {
    if depth > MAX_DIMS {
        return Err(ValueError::TooDeep { max: MAX_DIMS });
    }
    if b.get(*pos) != Some(&b'{') {
        return Err(ValueError::Array {
            pos: *pos,
            what: "expected '{'",
        });
    }
    *pos += 1;
    let mut items = Vec::new();
    skip_ws(b, pos);
    if b.get(*pos) == Some(&b'}') {
        *pos += 1;
        return Ok(ArrayItem::List(items));
    }
    loop {
        skip_ws(b, pos);
        let item = match b.get(*pos) {
            Some(b'{') => parse_list(b, pos, depth + 1)?,
            Some(b'"') => {
                *pos += 1;
                let mut out = Vec::new();
                loop {
                    match b.get(*pos) {
                        None => {
                            return Err(ValueError::Array {
                                pos: *pos,
                                what: "unterminated quoted element",
                            });
                        }
                        Some(b'"') => {
                            *pos += 1;
                            break;
                        }
                        Some(b'\\') => {
                            let Some(&c) = b.get(*pos + 1) else {
                                return Err(ValueError::Array {
                                    pos: *pos,
                                    what: "backslash at the end",
                                });
                            };
                            out.push(c);
                            *pos += 2;
                        }
                        Some(&c) => {
                            out.push(c);
                            *pos += 1;
                        }
                    }
                }
                ArrayItem::Text(String::from_utf8_lossy(&out).into_owned())
            }
            Some(_) => {
                let start = *pos;
                let mut out = Vec::new();
                while let Some(&c) = b.get(*pos) {
                    match c {
                        b',' | b'}' => break,
                        b'{' | b'"' => {
                            return Err(ValueError::Array {
                                pos: *pos,
                                what: "unexpected character in unquoted element",
                            });
                        }
                        b'\\' => {
                            let Some(&n) = b.get(*pos + 1) else {
                                return Err(ValueError::Array {
                                    pos: *pos,
                                    what: "backslash at the end",
                                });
                            };
                            out.push(n);
                            *pos += 2;
                        }
                        _ => {
                            out.push(c);
                            *pos += 1;
                        }
                    }
                }
                // Unquoted elements lose surrounding whitespace; unquoted NULL is SQL NULL.
                let raw = String::from_utf8_lossy(&out).into_owned();
                let t = raw.trim();
                if t.is_empty() {
                    return Err(ValueError::Array {
                        pos: start,
                        what: "empty unquoted element",
                    });
                }
                if t.eq_ignore_ascii_case("NULL") && !b[start..*pos].contains(&b'\\') {
                    ArrayItem::Null
                } else {
                    ArrayItem::Text(t.to_owned())
                }
            }
            None => {
                return Err(ValueError::Array {
                    pos: *pos,
                    what: "unterminated array",
                });
            }
        };
        items.push(item);
        skip_ws(b, pos);
        match b.get(*pos) {
            Some(b',') => *pos += 1,
            Some(b'}') => {
                *pos += 1;
                return Ok(ArrayItem::List(items));
            }
            _ => {
                return Err(ValueError::Array {
                    pos: *pos,
                    what: "expected ',' or '}'",
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn j(oid: u32, text: &str) -> Value {
        to_json(ColumnType::of(oid), text).unwrap()
    }

    #[test]
    fn numbers_like_to_jsonb() {
        assert_eq!(j(oid::INT4, "-12"), json!(-12));
        assert_eq!(
            j(oid::INT8, "9223372036854775807"),
            json!(9223372036854775807i64)
        );
        assert_eq!(j(oid::NUMERIC, "1.50"), json!(1.5));
        assert_eq!(j(oid::NUMERIC, "0.0000001"), json!(0.0000001));
        assert_eq!(j(oid::NUMERIC, "NaN"), json!("NaN"));
        assert_eq!(j(oid::NUMERIC, "-Infinity"), json!("-Infinity"));
        // Too many digits for a double: the exact text, as a string.
        let big = "123456789012345678901234567890.123456789";
        assert_eq!(j(oid::NUMERIC, big), json!(big));
        assert_eq!(j(oid::FLOAT8, "1e+30"), json!(1e30));
        assert_eq!(j(oid::FLOAT8, "1e+15"), json!(1_000_000_000_000_000u64));
        assert_eq!(j(oid::FLOAT8, "-0"), json!(0));
        assert_eq!(j(oid::FLOAT4, "NaN"), json!("NaN"));
        assert_eq!(j(oid::OID, "12"), json!("12"));
        assert!(to_json(ColumnType::of(oid::INT4), "x").is_err());
    }

    #[test]
    fn times_like_to_jsonb() {
        assert_eq!(
            j(oid::TIMESTAMPTZ, "2024-01-02 03:04:05.5+00"),
            json!("2024-01-02T03:04:05.5+00:00")
        );
        assert_eq!(
            j(oid::TIMESTAMPTZ, "1900-01-01 05:21:10+05:21:10"),
            json!("1900-01-01T05:21:10+05:21:10")
        );
        assert_eq!(
            j(oid::TIMESTAMPTZ, "0001-01-01 00:00:00-03 BC"),
            json!("0001-01-01T00:00:00-03:00 BC")
        );
        assert_eq!(j(oid::TIMESTAMPTZ, "infinity"), json!("infinity"));
        assert_eq!(
            j(oid::TIMESTAMP, "2024-01-02 03:04:05"),
            json!("2024-01-02T03:04:05")
        );
        assert_eq!(j(oid::TIMETZ, "12:00:00+00"), json!("12:00:00+00"));
        assert_eq!(j(oid::DATE, "0044-03-15 BC"), json!("0044-03-15 BC"));
    }

    #[test]
    fn arrays() {
        assert_eq!(j(1007, "{1,NULL,3}"), json!([1, null, 3]));
        assert_eq!(j(1007, "[0:1]={1,2}"), json!([1, 2]));
        assert_eq!(j(1007, "{{1,2},{3,4}}"), json!([[1, 2], [3, 4]]));
        assert_eq!(j(1007, "{}"), json!([]));
        assert_eq!(
            j(1009, r#"{"a\\b","q\"","NULL",""," x ",plain}"#),
            json!(["a\\b", "q\"", "NULL", "", " x ", "plain"])
        );
        assert_eq!(j(3807, r#"{"{\"a\": 1}","[1]"}"#), json!([{"a": 1}, [1]]));
        assert_eq!(
            j(1185, r#"{"2024-01-01 00:00:00+00"}"#),
            json!(["2024-01-01T00:00:00+00:00"])
        );
        for bad in [
            "{",
            "{1,",
            "{1}}",
            "{\"a}",
            "1",
            "{{{{{{{1}}}}}}}",
            "{a\"b}",
            "{,}",
        ] {
            assert!(parse_array(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scalars_as_text() {
        assert_eq!(j(oid::BOOL, "t"), json!(true));
        assert_eq!(j(oid::BYTEA, "\\x0102"), json!("\\x0102"));
        assert_eq!(j(oid::BPCHAR, "ab  "), json!("ab  "));
        assert_eq!(j(oid::JSONB, r#"{"a": [1]}"#), json!({"a": [1]}));
        assert_eq!(j(999_999, "(1,2)"), json!("(1,2)"));
    }

    #[test]
    fn decimal_normal_form() {
        assert_eq!(decimal_parts("1.50"), Some((false, "15".into(), -1)));
        assert_eq!(decimal_parts("-0.00"), Some((false, "".into(), 0)));
        assert_eq!(decimal_parts("1200"), Some((false, "12".into(), 2)));
        assert_eq!(decimal_parts("1e5"), None);
    }
}

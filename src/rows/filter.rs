//! Row filters in PostgREST's syntax (`status=eq.open&or=(prio.gt.2,tags.cs.{urgent})`): the
//! parser (with limits), the binding to a table's columns (typed literals, refusals that name the
//! column) and the evaluator over a decoded row.
//!
//! Why PostgREST's syntax: it is what Supabase users already write, both for queries and for
//! Realtime's `filter`, and it fits a URL. Why evaluated here and not in SQL: a change must be
//! matched against thousands of subscriptions without a round trip; filter text never reaches
//! SQL at all.
//!
//! Semantics follow PostgreSQL's (docs/ROWS.md has the full table): comparisons with NULL are
//! unknown, `not.` of unknown stays unknown, only a definite *true* matches; numbers compare by
//! value, text by bytes (the C collation), times as instants. A column that the row does not
//! carry (the old row of an `UPDATE` without `REPLICA IDENTITY FULL`, an unchanged TOASTed value)
//! makes the condition undecidable, and [`Verdict::Unknown`] says so instead of guessing.

use std::cmp::Ordering;

use percent_encoding::percent_decode_str;
use serde_json::Value;
use thiserror::Error;

use super::temporal;
use super::value::{ArrayItem, ColumnType, Scalar, decimal_parts, parse_array};

/// Bounds on what a subscriber may ask for; every one gives a refusal naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of filter text (before percent-decoding).
    pub max_text: usize,
    /// Values in one `in.(...)` list.
    pub max_in: usize,
    /// Nesting of `or(...)`/`and(...)` groups.
    pub max_depth: usize,
    /// Conditions (`col.op.value`) in the whole filter.
    pub max_conditions: usize,
    /// Columns in `select=`.
    pub max_select: usize,
    /// Characters in a `like`/`ilike` pattern: matching costs up to pattern length × value
    /// length, evaluated on every change, so a long pattern is refused.
    pub max_pattern: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_text: 16 * 1024,
            max_in: 1000,
            max_depth: 16,
            max_conditions: 100,
            max_select: 256,
            max_pattern: 256,
        }
    }
}

/// Why a filter is refused. Positions are byte offsets in the filter text (inside a percent-
/// encoded pair: the pair's start plus the offset in its decoded value). Values are shortened to
/// 64 characters (control characters as `?`) so a refusal never echoes a megabyte back.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FilterError {
    #[error("filter is {len} bytes long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("at byte {pos}: {what}")]
    Syntax { pos: usize, what: String },
    #[error("at byte {pos}: groups nested deeper than {max} levels")]
    TooDeep { pos: usize, max: usize },
    #[error("more than {max} conditions")]
    TooManyConditions { max: usize },
    #[error("at byte {pos}: the `in` list for column {column:?} has more than {max} values")]
    InTooLong {
        pos: usize,
        column: String,
        max: usize,
    },
    #[error("at byte {pos}: the pattern for column {column:?} is longer than {max} characters")]
    PatternTooLong {
        pos: usize,
        column: String,
        max: usize,
    },
    #[error("`select` names more than {max} columns")]
    TooManySelected { max: usize },
    #[error("at byte {pos}: unknown column {column:?}")]
    UnknownColumn { pos: usize, column: String },
    #[error(
        "at byte {pos}: operator `{op}` does not apply to column {column:?} of type {type_name}"
    )]
    Unsupported {
        pos: usize,
        column: String,
        op: &'static str,
        type_name: String,
    },
    #[error("at byte {pos}: {value:?} is not a valid {type_name} value for column {column:?}")]
    BadValue {
        pos: usize,
        column: String,
        value: String,
        type_name: String,
    },
}

/// A name or value as quoted in a refusal: at most 64 characters, control characters as `?`,
/// so a refusal stays short and one line whatever the input.
fn short(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn syntax(pos: usize, what: impl Into<String>) -> FilterError {
    FilterError::Syntax {
        pos,
        what: what.into(),
    }
}

/// PostgREST's operators (the subset that applies to rows; full-text and range operators are
/// refused as unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    Like,
    Ilike,
    Is,
    In,
    Cs,
    Cd,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "eq" => Op::Eq,
            "neq" => Op::Neq,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "like" => Op::Like,
            "ilike" => Op::Ilike,
            "is" => Op::Is,
            "in" => Op::In,
            "cs" => Op::Cs,
            "cd" => Op::Cd,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Like => "like",
            Op::Ilike => "ilike",
            Op::Is => "is",
            Op::In => "in",
            Op::Cs => "cs",
            Op::Cd => "cd",
        }
    }
}

/// `is.` operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsValue {
    Null,
    NotNull,
    True,
    False,
    Unknown,
}

/// One `column op value` as written (untyped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub column: String,
    pub negated: bool,
    pub op: Op,
    /// The operand text; for `in`, see `list`.
    pub value: String,
    /// The `in` list's values (quotes removed).
    pub list: Vec<String>,
    /// Where the condition starts in the filter text.
    pub pos: usize,
}

/// A parsed, not yet typed, filter expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Cond(Condition),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
}

/// The parse of a whole filter text: the top-level conjuncts (all must hold) and the column
/// list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    pub conjuncts: Vec<Expr>,
    /// `None`: every column (no `select=`, or `select=*`).
    pub select: Option<Vec<String>>,
    /// Where the `select=` value starts, for refusals.
    pub select_pos: usize,
}

struct Parser {
    limits: Limits,
    conditions: usize,
}

impl Parser {
    fn count(&mut self) -> Result<(), FilterError> {
        self.conditions += 1;
        if self.conditions > self.limits.max_conditions {
            return Err(FilterError::TooManyConditions {
                max: self.limits.max_conditions,
            });
        }
        Ok(())
    }

    /// A top-level `column=[not.]op.value` pair.
    fn pair_condition(
        &mut self,
        column: &str,
        value: &str,
        pos: usize,
    ) -> Result<Expr, FilterError> {
        if column.is_empty() {
            return Err(syntax(pos, "empty column name"));
        }
        let (negated, rest) = match value.strip_prefix("not.") {
            Some(r) => (true, r),
            None => (false, value),
        };
        let (op_text, operand) = rest.split_once('.').ok_or_else(|| {
            syntax(
                pos,
                format!("expected `op.value` for column {:?}", short(column)),
            )
        })?;
        let op = Op::parse(op_text)
            .ok_or_else(|| syntax(pos, format!("unknown operator {:?}", short(op_text))))?;
        self.count()?;
        self.check_pattern(op, column, operand, pos)?;
        let list = if op == Op::In {
            self.in_list(column, operand, pos)?
        } else {
            Vec::new()
        };
        let cond = Condition {
            column: column.to_owned(),
            negated,
            op,
            value: operand.to_owned(),
            list,
            pos,
        };
        Ok(Expr::Cond(cond))
    }

    fn check_pattern(
        &self,
        op: Op,
        column: &str,
        pattern: &str,
        pos: usize,
    ) -> Result<(), FilterError> {
        if matches!(op, Op::Like | Op::Ilike) && pattern.chars().count() > self.limits.max_pattern {
            return Err(FilterError::PatternTooLong {
                pos,
                column: short(column),
                max: self.limits.max_pattern,
            });
        }
        Ok(())
    }

    /// `(a,"b,c",d)` to its values.
    fn in_list(&self, column: &str, text: &str, pos: usize) -> Result<Vec<String>, FilterError> {
        let b = text.as_bytes();
        if b.first() != Some(&b'(') || b.last() != Some(&b')') || b.len() < 2 {
            return Err(syntax(
                pos,
                format!("`in` for column {:?} needs `(v1,v2,...)`", short(column)),
            ));
        }
        let inner = &text[1..text.len() - 1];
        let mut out = Vec::new();
        if inner.is_empty() {
            return Ok(out);
        }
        let ib = inner.as_bytes();
        let mut i = 0;
        loop {
            if out.len() >= self.limits.max_in {
                return Err(FilterError::InTooLong {
                    pos,
                    column: short(column),
                    max: self.limits.max_in,
                });
            }
            if ib.get(i) == Some(&b'"') {
                let (v, next) = quoted(ib, i)
                    .ok_or_else(|| syntax(pos + 1 + i, "unterminated quoted value"))?;
                out.push(v);
                i = next;
            } else {
                let end = inner[i..].find(',').map_or(ib.len(), |e| i + e);
                out.push(inner[i..end].to_owned());
                i = end;
            }
            match ib.get(i) {
                None => return Ok(out),
                Some(b',') => i += 1,
                Some(_) => return Err(syntax(pos + 1 + i, "expected `,` after a quoted value")),
            }
        }
    }

    /// `(item,item,...)` of a logic tree, starting at `b[*i] == '('`.
    fn group(
        &mut self,
        b: &[u8],
        i: &mut usize,
        depth: usize,
        base: usize,
    ) -> Result<Vec<Expr>, FilterError> {
        if depth > self.limits.max_depth {
            return Err(FilterError::TooDeep {
                pos: base + *i,
                max: self.limits.max_depth,
            });
        }
        if b.get(*i) != Some(&b'(') {
            return Err(syntax(base + *i, "expected `(`"));
        }
        *i += 1;
        let mut items = Vec::new();
        loop {
            items.push(self.item(b, i, depth, base)?);
            match b.get(*i) {
                Some(b',') => *i += 1,
                Some(b')') => {
                    *i += 1;
                    return Ok(items);
                }
                _ => return Err(syntax(base + *i, "expected `,` or `)`")),
            }
        }
    }

    /// One item of a group: `[not.]and(...)`, `[not.]or(...)` or `col.[not.]op.value`.
    fn item(
        &mut self,
        b: &[u8],
        i: &mut usize,
        depth: usize,
        base: usize,
    ) -> Result<Expr, FilterError> {
        let start = *i;
        let rest = &b[*i..];
        let (neg, after_not) = if rest.starts_with(b"not.") {
            (true, 4)
        } else {
            (false, 0)
        };
        let r = &rest[after_not..];
        for (word, is_and) in [(&b"and("[..], true), (&b"or("[..], false)] {
            if r.starts_with(word) {
                *i += after_not + word.len() - 1;
                let items = self.group(b, i, depth + 1, base)?;
                let e = if is_and {
                    Expr::And(items)
                } else {
                    Expr::Or(items)
                };
                return Ok(if neg { Expr::Not(Box::new(e)) } else { e });
            }
        }
        // A condition: column, '.', [not.] op, '.', value.
        let text = std::str::from_utf8(rest).map_err(|_| syntax(base + start, "not UTF-8"))?;
        let dot = text
            .find(['.', ',', ')'])
            .filter(|&d| text.as_bytes()[d] == b'.')
            .ok_or_else(|| syntax(base + start, "expected `column.op.value`"))?;
        let column = &text[..dot];
        if column.is_empty() {
            return Err(syntax(base + start, "empty column name"));
        }
        let mut j = dot + 1;
        let mut negated = false;
        if text[j..].starts_with("not.") {
            negated = true;
            j += 4;
        }
        let op_end = text[j..]
            .find('.')
            .map(|e| j + e)
            .ok_or_else(|| syntax(base + start + j, "expected `op.value`"))?;
        let op_text = &text[j..op_end];
        let op = Op::parse(op_text).ok_or_else(|| {
            syntax(
                base + start + j,
                format!("unknown operator {:?}", short(op_text)),
            )
        })?;
        self.count()?;
        let vstart = op_end + 1;
        let vb = &text.as_bytes()[vstart..];
        let (value, used) = tree_value(vb, op == Op::In)
            .ok_or_else(|| syntax(base + start + vstart, "malformed value"))?;
        *i = start + vstart + used;
        self.check_pattern(op, column, &value, base + start)?;
        let list = if op == Op::In {
            self.in_list(column, &value, base + start + vstart)?
        } else {
            Vec::new()
        };
        Ok(Expr::Cond(Condition {
            column: column.to_owned(),
            negated,
            op,
            value,
            list,
            pos: base + start,
        }))
    }
}

/// A `"..."` value with backslash escapes starting at `b[i] == '"'`; returns the value and the
/// index after the closing quote.
fn quoted(b: &[u8], mut i: usize) -> Option<(String, usize)> {
    i += 1;
    let mut out = Vec::new();
    loop {
        match *b.get(i)? {
            b'"' => return Some((String::from_utf8(out).ok()?, i + 1)),
            b'\\' => {
                out.push(*b.get(i + 1)?);
                i += 2;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
}

/// A value inside a logic tree, which ends at the first `,` or `)` outside quotes, braces and (for
/// `in`) its parenthesised list. Returns the value (quotes removed for a wholly quoted value) and
/// the bytes used.
fn tree_value(b: &[u8], is_in: bool) -> Option<(String, usize)> {
    if is_in {
        // "(...)" up to the matching ')' outside quotes.
        if b.first() != Some(&b'(') {
            return None;
        }
        let mut i = 1;
        let mut in_quotes = false;
        while i < b.len() {
            match b[i] {
                b'\\' if in_quotes => i += 1,
                b'"' => in_quotes = !in_quotes,
                b')' if !in_quotes => {
                    return Some((String::from_utf8(b[..=i].to_vec()).ok()?, i + 1));
                }
                _ => {}
            }
            i += 1;
        }
        return None;
    }
    if b.first() == Some(&b'"') {
        let (v, next) = quoted(b, 0)?;
        return Some((v, next));
    }
    let mut i = 0;
    let mut braces = 0usize;
    let mut in_quotes = false;
    while i < b.len() {
        match b[i] {
            b'\\' if in_quotes => i += 1,
            b'"' if braces > 0 => in_quotes = !in_quotes,
            b'{' if !in_quotes => braces += 1,
            b'}' if !in_quotes => braces = braces.saturating_sub(1),
            b',' | b')' if braces == 0 && !in_quotes => break,
            _ => {}
        }
        i += 1;
    }
    let v = String::from_utf8(b[..i.min(b.len())].to_vec()).ok()?;
    Some((v, i.min(b.len())))
}

/// Parses a filter text: `&`-separated `key=value` pairs, each percent-decoded (`+` is a plus
/// sign, not a space: write `%20` for a space). Keys `select`, `or`, `and`, `not.or`,
/// `not.and` are special; any other key is a column. An empty text is the filter that matches
/// every row.
pub fn parse(text: &str, limits: &Limits) -> Result<Parsed, FilterError> {
    if text.len() > limits.max_text {
        return Err(FilterError::TooLong {
            len: text.len(),
            max: limits.max_text,
        });
    }
    let mut p = Parser {
        limits: *limits,
        conditions: 0,
    };
    let mut out = Parsed::default();
    let mut seen_select = false;
    let mut pos = 0;
    for raw in text.split('&') {
        let here = pos;
        pos += raw.len() + 1;
        if raw.is_empty() {
            continue;
        }
        let (k, v) = raw
            .split_once('=')
            .ok_or_else(|| syntax(here, "expected `key=value`"))?;
        let decode = |s: &str, at: usize| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| syntax(at, "percent-encoding is not UTF-8"))
        };
        let key = decode(k, here)?;
        let value = decode(v, here + k.len() + 1)?;
        let vpos = here + k.len() + 1;
        match key.as_str() {
            "select" => {
                if seen_select {
                    return Err(syntax(here, "`select` given twice"));
                }
                seen_select = true;
                if value == "*" {
                    continue;
                }
                let cols: Vec<String> = value.split(',').map(str::to_owned).collect();
                if cols.len() > limits.max_select {
                    return Err(FilterError::TooManySelected {
                        max: limits.max_select,
                    });
                }
                if let Some(i) = cols.iter().position(|c| c.is_empty()) {
                    return Err(syntax(
                        vpos,
                        format!("empty column name in `select` (item {})", i + 1),
                    ));
                }
                out.select = Some(cols);
                out.select_pos = vpos;
            }
            "or" | "and" | "not.or" | "not.and" => {
                let b = value.as_bytes();
                let mut i = 0;
                let items = p.group(b, &mut i, 1, vpos)?;
                if i != b.len() {
                    return Err(syntax(vpos + i, "text after the closing `)`"));
                }
                let e = if key.ends_with("and") {
                    Expr::And(items)
                } else {
                    Expr::Or(items)
                };
                out.conjuncts.push(if key.starts_with("not.") {
                    Expr::Not(Box::new(e))
                } else {
                    e
                });
            }
            _ => {
                let c = p.pair_condition(&key, &value, here)?;
                out.conjuncts.push(c);
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Typed literals and comparisons.

/// A value of a scalar type, in a form that compares as PostgreSQL compares that type.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Int(i64),
    /// PostgreSQL's float order: NaN above everything and equal to itself; `-0 = 0`.
    Float(f64),
    Numeric(Num),
    Bool(bool),
    /// Text, uuid (lower-case canonical), bytea (lower-case hex), other types: byte order.
    Text(String),
    /// Dates, times, timestamps: one integer (days or microseconds); timetz: instant, offset.
    Time(i64, i64),
    Json(Value),
    Array(Vec<ALit>),
}

/// An array's element tree.
#[derive(Debug, Clone, PartialEq)]
pub enum ALit {
    Null,
    Elem(Lit),
    List(Vec<ALit>),
}

/// A `numeric` value: finite values in normal form (sign, digits, exponent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Num {
    NegInf,
    Fin { neg: bool, digits: String, exp: i64 },
    PosInf,
    NaN,
}

impl Num {
    /// Decimal text, with an optional exponent (`1.5`, `-2e3`, `NaN`, `Infinity`).
    pub fn parse(text: &str) -> Option<Num> {
        let t = text.trim();
        match t {
            "NaN" => return Some(Num::NaN),
            "Infinity" | "+Infinity" | "inf" => return Some(Num::PosInf),
            "-Infinity" | "-inf" => return Some(Num::NegInf),
            _ => {}
        }
        let (mantissa, e) = match t.find(['e', 'E']) {
            Some(i) => {
                let e: i64 = t[i + 1..].parse().ok()?;
                if e.unsigned_abs() > 1_000_000 {
                    return None;
                }
                (&t[..i], e)
            }
            None => (t, 0),
        };
        let (neg, digits, exp) = decimal_parts(mantissa)?;
        if digits.is_empty() {
            return Some(Num::Fin {
                neg: false,
                digits,
                exp: 0,
            });
        }
        Some(Num::Fin {
            neg,
            digits,
            exp: exp + e,
        })
    }

    fn rank(&self) -> u8 {
        match self {
            Num::NegInf => 0,
            Num::Fin { .. } => 1,
            Num::PosInf => 2,
            Num::NaN => 3,
        }
    }

    fn cmp(&self, other: &Num) -> Ordering {
        match (self, other) {
            (
                Num::Fin {
                    neg: an,
                    digits: ad,
                    exp: ae,
                },
                Num::Fin {
                    neg: bn,
                    digits: bd,
                    exp: be,
                },
            ) => {
                let sign = |neg: bool, d: &str| -> i8 {
                    if d.is_empty() {
                        0
                    } else if neg {
                        -1
                    } else {
                        1
                    }
                };
                let (sa, sb) = (sign(*an, ad), sign(*bn, bd));
                if sa != sb || sa == 0 {
                    return sa.cmp(&sb);
                }
                // Same sign, both non-zero: compare magnitudes.
                let mag = (ad.len() as i64 + ae)
                    .cmp(&(bd.len() as i64 + be))
                    .then_with(|| ad.as_str().cmp(bd.as_str()));
                if sa > 0 { mag } else { mag.reverse() }
            }
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

fn float_cmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        // Neither is NaN, so partial_cmp is total here (and -0 == 0).
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

impl Lit {
    /// PostgreSQL's order between two values of the same column type; `None` when the types
    /// differ (cannot happen for a bound filter) or have no order (json).
    fn cmp(&self, other: &Lit) -> Option<Ordering> {
        Some(match (self, other) {
            (Lit::Int(a), Lit::Int(b)) => a.cmp(b),
            (Lit::Float(a), Lit::Float(b)) => float_cmp(*a, *b),
            (Lit::Numeric(a), Lit::Numeric(b)) => a.cmp(b),
            (Lit::Bool(a), Lit::Bool(b)) => a.cmp(b),
            (Lit::Text(a), Lit::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Lit::Time(a, x), Lit::Time(b, y)) => a.cmp(b).then(x.cmp(y)),
            _ => return None,
        })
    }

    /// Equality as PostgreSQL's `=` for the type (jsonb: numbers by value, objects by keys).
    fn equals(&self, other: &Lit) -> bool {
        match (self, other) {
            (Lit::Json(a), Lit::Json(b)) => json_eq(a, b),
            (Lit::Array(a), Lit::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| alit_eq(x, y))
            }
            _ => self.cmp(other) == Some(Ordering::Equal),
        }
    }

    /// A key that is equal for two literals exactly when [`Lit::equals`] says so, for the
    /// equality index; `None` for types that are not indexed (json, arrays).
    pub fn index_key(&self) -> Option<String> {
        Some(match self {
            Lit::Int(i) => format!("i{i}"),
            Lit::Float(f) => {
                if f.is_nan() {
                    "fnan".to_owned()
                } else if *f == 0.0 {
                    "f0".to_owned()
                } else {
                    format!("f{}", f.to_bits())
                }
            }
            Lit::Numeric(n) => match n {
                Num::Fin { neg, digits, exp } => {
                    format!("n{}{digits}e{exp}", if *neg { "-" } else { "" })
                }
                other => format!("n{}", other.rank()),
            },
            Lit::Bool(b) => format!("b{b}"),
            Lit::Text(t) => format!("t{t}"),
            Lit::Time(a, b) => format!("d{a},{b}"),
            Lit::Json(_) | Lit::Array(_) => return None,
        })
    }
}

/// Array element equality as PostgreSQL's array `=`: NULL elements equal each other.
fn alit_eq(a: &ALit, b: &ALit) -> bool {
    match (a, b) {
        (ALit::Null, ALit::Null) => true,
        (ALit::Elem(x), ALit::Elem(y)) => x.equals(y),
        (ALit::List(x), ALit::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| alit_eq(p, q))
        }
        _ => false,
    }
}

fn json_num(n: &serde_json::Number) -> Option<Num> {
    Num::parse(&n.to_string())
}

/// jsonb equality: numbers by value, objects regardless of key order.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (json_num(x), json_num(y)) {
            (Some(p), Some(q)) => p.cmp(&q) == Ordering::Equal,
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// jsonb `@>`: does `a` contain `b` (PostgreSQL's rules, including "an array contains a
/// primitive it has as an element" at the top level).
fn json_contains(a: &Value, b: &Value, top: bool) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => y
            .iter()
            .all(|(k, v)| x.get(k).is_some_and(|w| json_contains(w, v, false))),
        (Value::Array(x), Value::Array(y)) => y.iter().all(|v| {
            x.iter().any(|w| match (w, v) {
                (Value::Array(_), Value::Array(_)) | (Value::Object(_), Value::Object(_)) => {
                    json_contains(w, v, false)
                }
                _ => json_eq(w, v),
            })
        }),
        (Value::Array(x), prim) if top && !prim.is_array() && !prim.is_object() => {
            x.iter().any(|w| json_eq(w, prim))
        }
        _ => json_eq(a, b),
    }
}

/// Parses a filter operand for a scalar type, or why not.
fn scalar_lit(s: Scalar, text: &str) -> Option<Lit> {
    Some(match s {
        Scalar::Int => Lit::Int(text.trim().parse().ok()?),
        Scalar::Float => {
            let t = text.trim();
            let f = match t.to_ascii_lowercase().as_str() {
                "nan" => f64::NAN,
                "infinity" | "inf" | "+infinity" => f64::INFINITY,
                "-infinity" | "-inf" => f64::NEG_INFINITY,
                _ => {
                    if !t
                        .bytes()
                        .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
                    {
                        return None;
                    }
                    t.parse().ok()?
                }
            };
            Lit::Float(f)
        }
        Scalar::Numeric => Lit::Numeric(Num::parse(text)?),
        Scalar::Bool => Lit::Bool(match text.trim().to_ascii_lowercase().as_str() {
            "t" | "true" | "y" | "yes" | "on" | "1" => true,
            "f" | "false" | "n" | "no" | "off" | "0" => false,
            _ => return None,
        }),
        Scalar::Text | Scalar::Other => Lit::Text(text.to_owned()),
        Scalar::Uuid => {
            let hex: String = text
                .trim()
                .trim_start_matches('{')
                .trim_end_matches('}')
                .chars()
                .filter(|c| *c != '-')
                .collect();
            if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let h = hex.to_ascii_lowercase();
            Lit::Text(format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            ))
        }
        Scalar::Bytea => {
            if let Some(hex) = text
                .strip_prefix("\\x")
                .or_else(|| text.strip_prefix("\\X"))
            {
                if hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                Lit::Text(hex.to_ascii_lowercase())
            } else if text.contains('\\') {
                return None;
            } else {
                Lit::Text(text.bytes().map(|b| format!("{b:02x}")).collect())
            }
        }
        Scalar::Json | Scalar::Jsonb => Lit::Json(serde_json::from_str(text).ok()?),
        Scalar::Date => Lit::Time(temporal::parse_date(text)?, 0),
        Scalar::Time => Lit::Time(temporal::parse_time(text)?, 0),
        Scalar::TimeTz => {
            let (a, b) = temporal::parse_timetz(text)?;
            Lit::Time(a, b)
        }
        Scalar::Timestamp => Lit::Time(temporal::parse_timestamp(text, false)?, 0),
        Scalar::TimestampTz => Lit::Time(temporal::parse_timestamp(text, true)?, 0),
    })
}

/// A row's JSON value (as [`super::value::to_json`] made it) as a comparable literal; `None`
/// for JSON null or a value that does not fit the type (treated as NULL).
pub fn value_lit(ty: ColumnType, v: &Value) -> Option<Lit> {
    match ty {
        ColumnType::Scalar(s) => scalar_value_lit(s, v),
        ColumnType::Array(s) => match v {
            Value::Array(items) => {
                Some(Lit::Array(items.iter().map(|i| value_alit(s, i)).collect()))
            }
            _ => None,
        },
    }
}

fn value_alit(s: Scalar, v: &Value) -> ALit {
    match v {
        Value::Null => ALit::Null,
        Value::Array(items) if !matches!(s, Scalar::Json | Scalar::Jsonb) => {
            ALit::List(items.iter().map(|i| value_alit(s, i)).collect())
        }
        other => scalar_value_lit(s, other).map_or(ALit::Null, ALit::Elem),
    }
}

fn scalar_value_lit(s: Scalar, v: &Value) -> Option<Lit> {
    match (s, v) {
        (_, Value::Null) => None,
        (Scalar::Json | Scalar::Jsonb, v) => Some(Lit::Json(v.clone())),
        (Scalar::Int, Value::Number(n)) => n.as_i64().map(Lit::Int),
        (Scalar::Float, Value::Number(n)) => n.as_f64().map(Lit::Float),
        (Scalar::Numeric, Value::Number(n)) => json_num(n).map(Lit::Numeric),
        (Scalar::Bool, Value::Bool(b)) => Some(Lit::Bool(*b)),
        (Scalar::Bytea, Value::String(t)) => t
            .strip_prefix("\\x")
            .map(|h| Lit::Text(h.to_ascii_lowercase())),
        (Scalar::Text | Scalar::Other | Scalar::Uuid, Value::String(t)) => {
            Some(Lit::Text(t.clone()))
        }
        (_, Value::String(t)) => scalar_lit(s, t),
        _ => None,
    }
}

fn array_lit(s: Scalar, text: &str) -> Option<Lit> {
    fn conv(s: Scalar, a: &ArrayItem) -> Option<ALit> {
        Some(match a {
            ArrayItem::Null => ALit::Null,
            ArrayItem::Text(t) => ALit::Elem(scalar_lit(s, t)?),
            ArrayItem::List(items) => {
                ALit::List(items.iter().map(|i| conv(s, i)).collect::<Option<_>>()?)
            }
        })
    }
    match conv(s, &parse_array(text).ok()?)? {
        ALit::List(items) => Some(Lit::Array(items)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Binding and evaluation.

/// A table's columns as the filter needs them: name and type.
pub trait Columns {
    fn column_type(&self, name: &str) -> Option<ColumnType>;
}

impl Columns for [(String, ColumnType)] {
    fn column_type(&self, name: &str) -> Option<ColumnType> {
        self.iter().find(|(n, _)| n == name).map(|(_, t)| *t)
    }
}

/// What a bound condition tests.
#[derive(Debug, Clone, PartialEq)]
enum Test {
    Cmp(Op, Lit),
    In(Vec<Lit>),
    Like { pattern: Vec<Pat>, fold: bool },
    Is(IsValue),
    Cs(Lit),
    Cd(Lit),
}

/// One step of a LIKE pattern.
#[derive(Debug, Clone, PartialEq)]
enum Pat {
    Char(char),
    One,
    Any,
}

#[derive(Debug, Clone, PartialEq)]
struct Bound {
    column: String,
    ty: ColumnType,
    negated: bool,
    test: Test,
}

#[derive(Debug, Clone, PartialEq)]
enum BExpr {
    Cond(Bound),
    And(Vec<BExpr>),
    Or(Vec<BExpr>),
    Not(Box<BExpr>),
}

/// A filter bound to a table: typed literals, checked operators; ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    conjuncts: Vec<BExpr>,
    select: Option<Vec<String>>,
}

/// The outcome of a filter on a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The filter is true.
    Match,
    /// The filter is false or NULL (SQL's WHERE drops both).
    NoMatch,
    /// The row lacks a column that the filter reads (not NULL: absent), and the answer depends
    /// on it.
    Unknown,
}

/// A row as the evaluator reads it: `None` means the column is not known (absent from a
/// key-only old row, or an unchanged TOASTed value); `Some(Value::Null)` is SQL NULL.
pub trait Row {
    fn get(&self, column: &str) -> Option<&Value>;
}

impl Row for serde_json::Map<String, Value> {
    fn get(&self, column: &str) -> Option<&Value> {
        serde_json::Map::get(self, column)
    }
}

impl Row for std::collections::HashMap<String, Value> {
    fn get(&self, column: &str) -> Option<&Value> {
        std::collections::HashMap::get(self, column)
    }
}

fn like_pattern(text: &str) -> Vec<Pat> {
    let mut out = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        out.push(match c {
            '*' | '%' => Pat::Any,
            '_' => Pat::One,
            '\\' => Pat::Char(chars.next().unwrap_or('\\')),
            c => Pat::Char(c),
        });
    }
    out
}

/// LIKE matching, linear space and O(n·m) time at worst (the classic single-backtrack wildcard
/// match, which is exact for `%` and `_`).
fn like_match(pattern: &[Pat], text: &str, fold: bool) -> bool {
    let t: Vec<char> = text.chars().collect();
    let eq = |p: char, c: char| {
        if fold {
            p.eq_ignore_ascii_case(&c)
        } else {
            p == c
        }
    };
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match pattern.get(pi) {
            Some(Pat::Any) => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(Pat::One) => {
                pi += 1;
                ti += 1;
            }
            Some(Pat::Char(p)) if eq(*p, t[ti]) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[pi.min(pattern.len())..]
        .iter()
        .all(|p| *p == Pat::Any)
}

fn bind_cond(c: &Condition, cols: &(impl Columns + ?Sized)) -> Result<Bound, FilterError> {
    let ty = cols
        .column_type(&c.column)
        .ok_or_else(|| FilterError::UnknownColumn {
            pos: c.pos,
            column: short(&c.column),
        })?;
    let unsupported = || FilterError::Unsupported {
        pos: c.pos,
        column: short(&c.column),
        op: c.op.name(),
        type_name: ty.name(),
    };
    let bad = |v: &str| FilterError::BadValue {
        pos: c.pos,
        column: short(&c.column),
        value: short(v),
        type_name: ty.name(),
    };
    let ordered = |s: Scalar| !matches!(s, Scalar::Json | Scalar::Jsonb | Scalar::Other);
    let test = match (c.op, ty) {
        (Op::Is, _) => Test::Is(match c.value.as_str() {
            "null" => IsValue::Null,
            "not_null" => IsValue::NotNull,
            "true" | "false" | "unknown" if ty != ColumnType::Scalar(Scalar::Bool) => {
                return Err(unsupported());
            }
            "true" => IsValue::True,
            "false" => IsValue::False,
            "unknown" => IsValue::Unknown,
            other => return Err(bad(other)),
        }),
        (Op::Eq | Op::Neq, ColumnType::Scalar(Scalar::Json)) => return Err(unsupported()),
        (Op::Eq | Op::Neq, ColumnType::Scalar(s)) => {
            Test::Cmp(c.op, scalar_lit(s, &c.value).ok_or_else(|| bad(&c.value))?)
        }
        (Op::Eq | Op::Neq, ColumnType::Array(s)) => {
            Test::Cmp(c.op, array_lit(s, &c.value).ok_or_else(|| bad(&c.value))?)
        }
        (Op::Lt | Op::Lte | Op::Gt | Op::Gte, ColumnType::Scalar(s)) if ordered(s) => {
            Test::Cmp(c.op, scalar_lit(s, &c.value).ok_or_else(|| bad(&c.value))?)
        }
        (Op::Like | Op::Ilike, ColumnType::Scalar(Scalar::Text)) => Test::Like {
            pattern: like_pattern(&c.value),
            fold: c.op == Op::Ilike,
        },
        (Op::In, ColumnType::Scalar(s)) if s != Scalar::Json => Test::In(
            c.list
                .iter()
                .map(|v| scalar_lit(s, v).ok_or_else(|| bad(v)))
                .collect::<Result<_, _>>()?,
        ),
        (Op::Cs | Op::Cd, ColumnType::Scalar(Scalar::Jsonb)) => {
            let l = scalar_lit(Scalar::Jsonb, &c.value).ok_or_else(|| bad(&c.value))?;
            if c.op == Op::Cs {
                Test::Cs(l)
            } else {
                Test::Cd(l)
            }
        }
        (Op::Cs | Op::Cd, ColumnType::Array(s)) if s != Scalar::Json => {
            let l = array_lit(s, &c.value).ok_or_else(|| bad(&c.value))?;
            if c.op == Op::Cs {
                Test::Cs(l)
            } else {
                Test::Cd(l)
            }
        }
        _ => return Err(unsupported()),
    };
    Ok(Bound {
        column: c.column.clone(),
        ty,
        negated: c.negated,
        test,
    })
}

fn bind_expr(e: &Expr, cols: &(impl Columns + ?Sized)) -> Result<BExpr, FilterError> {
    Ok(match e {
        Expr::Cond(c) => BExpr::Cond(bind_cond(c, cols)?),
        Expr::And(items) => BExpr::And(
            items
                .iter()
                .map(|i| bind_expr(i, cols))
                .collect::<Result<_, _>>()?,
        ),
        Expr::Or(items) => BExpr::Or(
            items
                .iter()
                .map(|i| bind_expr(i, cols))
                .collect::<Result<_, _>>()?,
        ),
        Expr::Not(inner) => BExpr::Not(Box::new(bind_expr(inner, cols)?)),
    })
}

/// Truth values as sets of possible outcomes: a definite value is one bit; a condition on a
/// column the row lacks is all three. Combining sets by SQL's three-valued logic decides
/// whether the missing columns could change the answer.
type Truth = u8;
const T: Truth = 1;
const F: Truth = 2;
const N: Truth = 4;
const ANY: Truth = T | F | N;

fn each(a: Truth) -> impl Iterator<Item = Truth> {
    [T, F, N].into_iter().filter(move |b| a & b != 0)
}

fn t_not(a: Truth) -> Truth {
    each(a).fold(0, |acc, v| {
        acc | match v {
            T => F,
            F => T,
            _ => N,
        }
    })
}

fn t_and(a: Truth, b: Truth) -> Truth {
    let mut out = 0;
    for x in each(a) {
        for y in each(b) {
            out |= if x == F || y == F {
                F
            } else if x == N || y == N {
                N
            } else {
                T
            };
        }
    }
    out
}

fn t_or(a: Truth, b: Truth) -> Truth {
    t_not(t_and(t_not(a), t_not(b)))
}

fn eval_bound(b: &Bound, row: &impl Row) -> Truth {
    let Some(v) = row.get(&b.column) else {
        return ANY;
    };
    let lit = value_lit(b.ty, v);
    let r =
        match (&b.test, lit) {
            (Test::Is(is), lit) => {
                let r = match is {
                    IsValue::Null | IsValue::Unknown => lit.is_none(),
                    IsValue::NotNull => lit.is_some(),
                    IsValue::True => lit == Some(Lit::Bool(true)),
                    IsValue::False => lit == Some(Lit::Bool(false)),
                };
                if r { T } else { F }
            }
            (_, None) => N,
            (Test::Cmp(op, l), Some(v)) => {
                let r = match op {
                    Op::Eq => v.equals(l),
                    Op::Neq => !v.equals(l),
                    _ => match v.cmp(l) {
                        None => return N,
                        Some(o) => match op {
                            Op::Lt => o.is_lt(),
                            Op::Lte => o.is_le(),
                            Op::Gt => o.is_gt(),
                            _ => o.is_ge(),
                        },
                    },
                };
                if r { T } else { F }
            }
            (Test::In(list), Some(v)) => {
                if list.iter().any(|l| v.equals(l)) {
                    T
                } else {
                    F
                }
            }
            (Test::Like { pattern, fold }, Some(Lit::Text(t))) => {
                if like_match(pattern, &t, *fold) { T } else { F }
            }
            (Test::Cs(l), Some(v)) => contains(&v, l),
            (Test::Cd(l), Some(v)) => contains(l, &v),
            _ => N,
        };
    if b.negated { t_not(r) } else { r }
}

/// `a @> b` for arrays (element equality, NULLs in `b` never contained, dimensions ignored)
/// and jsonb.
fn contains(a: &Lit, b: &Lit) -> Truth {
    fn flat<'a>(items: &'a [ALit], out: &mut Vec<Option<&'a Lit>>) {
        for i in items {
            match i {
                ALit::Null => out.push(None),
                ALit::Elem(l) => out.push(Some(l)),
                ALit::List(l) => flat(l, out),
            }
        }
    }
    match (a, b) {
        (Lit::Json(x), Lit::Json(y)) => {
            if json_contains(x, y, true) {
                T
            } else {
                F
            }
        }
        (Lit::Array(x), Lit::Array(y)) => {
            let (mut xs, mut ys) = (Vec::new(), Vec::new());
            flat(x, &mut xs);
            flat(y, &mut ys);
            // Scalar elements have index keys (equal exactly when the elements are): one set
            // makes this linear; jsonb elements fall back to pairwise comparison.
            let keys: Option<std::collections::HashSet<String>> =
                xs.iter().flatten().map(|x| x.index_key()).collect();
            let all = ys.iter().all(|e| match e {
                None => false,
                Some(e) => match (&keys, e.index_key()) {
                    (Some(keys), Some(k)) => keys.contains(&k),
                    _ => xs.iter().any(|x| x.is_some_and(|x| x.equals(e))),
                },
            });
            if all { T } else { F }
        }
        _ => N,
    }
}

fn eval_expr(e: &BExpr, row: &impl Row) -> Truth {
    match e {
        BExpr::Cond(b) => eval_bound(b, row),
        BExpr::And(items) => items.iter().fold(T, |acc, i| {
            if acc == F {
                F
            } else {
                t_and(acc, eval_expr(i, row))
            }
        }),
        BExpr::Or(items) => items.iter().fold(F, |acc, i| {
            if acc == T {
                T
            } else {
                t_or(acc, eval_expr(i, row))
            }
        }),
        BExpr::Not(inner) => t_not(eval_expr(inner, row)),
    }
}

impl Filter {
    /// Parses and binds in one step.
    pub fn new(
        text: &str,
        limits: &Limits,
        cols: &(impl Columns + ?Sized),
    ) -> Result<Filter, FilterError> {
        Filter::bind(&parse(text, limits)?, cols)
    }

    /// Types a parsed filter against a table's columns: unknown columns, operators that do not
    /// apply to a column's type and operands that are not valid for it are refused here, once,
    /// instead of failing on every change.
    pub fn bind(parsed: &Parsed, cols: &(impl Columns + ?Sized)) -> Result<Filter, FilterError> {
        if let Some(sel) = &parsed.select {
            for c in sel {
                if cols.column_type(c).is_none() {
                    return Err(FilterError::UnknownColumn {
                        pos: 0,
                        column: short(c),
                    });
                }
            }
        }
        Ok(Filter {
            conjuncts: parsed
                .conjuncts
                .iter()
                .map(|e| bind_expr(e, cols))
                .collect::<Result<_, _>>()?,
            select: parsed.select.clone(),
        })
    }

    /// Whether the row passes.
    pub fn eval(&self, row: &impl Row) -> Verdict {
        let mut acc = T;
        for c in &self.conjuncts {
            acc = t_and(acc, eval_expr(c, row));
            if acc & T == 0 {
                return Verdict::NoMatch;
            }
        }
        if acc == T {
            Verdict::Match
        } else {
            Verdict::Unknown
        }
    }

    /// Every column the filter reads (once each): if they are all key columns, the old row of
    /// an `UPDATE` or `DELETE` decides it even without `REPLICA IDENTITY FULL`, which the caller
    /// can tell the subscriber at subscribe time.
    pub fn columns(&self) -> Vec<&str> {
        fn walk<'a>(e: &'a BExpr, out: &mut Vec<&'a str>) {
            match e {
                BExpr::Cond(b) => {
                    if !out.contains(&b.column.as_str()) {
                        out.push(&b.column);
                    }
                }
                BExpr::And(items) | BExpr::Or(items) => items.iter().for_each(|i| walk(i, out)),
                BExpr::Not(inner) => walk(inner, out),
            }
        }
        let mut out = Vec::new();
        self.conjuncts.iter().for_each(|c| walk(c, &mut out));
        out
    }

    /// Whether the filter lets every row through (no condition; a `select=` may still apply).
    pub fn is_empty(&self) -> bool {
        self.conjuncts.is_empty()
    }

    /// The columns to send (`select=`), `None` for all.
    pub fn select(&self) -> Option<&[String]> {
        self.select.as_deref()
    }

    /// The top-level `column=eq.value` conjuncts (not negated, scalar, indexable), as (column,
    /// index key): a row can match only if its value of that column has that key.
    pub fn equalities(&self) -> impl Iterator<Item = (&str, ColumnType, String)> {
        self.conjuncts.iter().filter_map(|c| match c {
            BExpr::Cond(Bound {
                column,
                ty,
                negated: false,
                test: Test::Cmp(Op::Eq, lit),
            }) => lit.index_key().map(|k| (column.as_str(), *ty, k)),
            _ => None,
        })
    }
}

/// What an `UPDATE` is to one subscription, from its filter's verdicts on the old and the new
/// row (docs/ROWS.md, "Updates that move rows"). A client keeps a list by key: `Enter` and
/// `Update` upsert, `Leave` deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateDelivery {
    /// In before and after.
    Update,
    /// Out before, in after.
    Enter,
    /// In before, out after: sent so that the client drops the row.
    Leave,
    /// Out before and after, or undecidable (not sent).
    Skip,
}

/// The rule for an `UPDATE`. The old row is only undecidable (`Unknown`) when it carries just
/// the key (no `REPLICA IDENTITY FULL`) and the filter reads other columns: then a new row that
/// matches is sent as `Update` (the client upserts it: it may or may not have had it), and one
/// that does not match is skipped, because sending a `Leave` for every such update would send
/// every change of the table to every such subscription. A new row is undecidable only when the
/// filter reads an unchanged TOASTed column that could not be filled from the old row; it is
/// treated as "no change in membership" (the column did not change): `Update` if the old row
/// matched, else skipped.
pub fn classify_update(old: Verdict, new: Verdict) -> UpdateDelivery {
    use Verdict::*;
    match (old, new) {
        (Match, Match) | (Unknown, Match) | (Match, Unknown) => UpdateDelivery::Update,
        (NoMatch, Match) => UpdateDelivery::Enter,
        (Match, NoMatch) => UpdateDelivery::Leave,
        (NoMatch, NoMatch) | (Unknown, NoMatch) | (NoMatch, Unknown) | (Unknown, Unknown) => {
            UpdateDelivery::Skip
        }
    }
}

/// A row value's index key for a column type (see [`Lit::index_key`]); `None` for NULL and
/// unindexed types.
pub fn row_index_key(ty: ColumnType, v: &Value) -> Option<String> {
    value_lit(ty, v)?.index_key()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::value::oid;
    use serde_json::json;

    fn cols() -> Vec<(String, ColumnType)> {
        [
            ("id", oid::INT8),
            ("title", oid::TEXT),
            ("status", oid::TEXT),
            ("done", oid::BOOL),
            ("price", oid::NUMERIC),
            ("score", oid::FLOAT8),
            ("tags", 1009),
            ("nums", 1007),
            ("meta", oid::JSONB),
            ("raw", oid::JSON),
            ("at", oid::TIMESTAMPTZ),
            ("uid", oid::UUID),
            ("bin", oid::BYTEA),
        ]
        .into_iter()
        .map(|(n, o)| (n.to_owned(), ColumnType::of(o)))
        .collect()
    }

    fn row() -> serde_json::Map<String, Value> {
        json!({
            "id": 7, "title": "Hello, World", "status": "open", "done": false,
            "price": 12.5, "score": "NaN", "tags": ["a", "b c", null], "nums": [1, 2, 3],
            "meta": {"a": 1, "b": [1, 2], "c": {"d": "e"}}, "raw": {"x": 1},
            "at": "2024-01-02T03:04:05.5+01:00", "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "bin": "\\x0102ff"
        })
        .as_object()
        .cloned()
        .unwrap()
    }

    fn check(text: &str) -> Verdict {
        Filter::new(text, &Limits::default(), cols().as_slice())
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .eval(&row())
    }

    #[test]
    fn operators() {
        use Verdict::*;
        let cases = [
            ("", Match),
            ("id=eq.7", Match),
            ("id=eq.07", Match),
            ("id=neq.7", NoMatch),
            ("id=gt.6&id=lt.8", Match),
            ("id=gte.8", NoMatch),
            ("id=in.(1,7,9)", Match),
            ("id=in.()", NoMatch),
            ("id=not.in.(1,2)", Match),
            ("status=eq.open", Match),
            ("status=in.(open,\"a,b\")", Match),
            ("title=like.Hello*", Match),
            ("title=like.hello*", NoMatch),
            ("title=ilike.hello*", Match),
            ("title=like.*o, W*", Match),
            ("title=like.H_llo%25", Match),
            ("title=lt.Hello", NoMatch),
            ("title=gt.H", Match),
            ("title=lt.h", Match),
            ("done=is.false", Match),
            ("done=is.true", NoMatch),
            ("done=eq.f", Match),
            ("done=not.is.null", Match),
            ("price=eq.12.50", Match),
            ("price=lt.1e2", Match),
            ("price=gt.12.4999999999999999999999", Match),
            ("score=gt.1e308", Match),
            ("score=eq.NaN", Match),
            ("tags=cs.{a}", Match),
            ("tags=cs.{a,z}", NoMatch),
            ("tags=cs.{NULL}", NoMatch),
            ("tags=cd.{a,\"b c\",d}", NoMatch),
            ("nums=cd.{1,2,3,4}", Match),
            ("nums=eq.{1,2,3}", Match),
            ("meta=cs.{\"a\":1}", Match),
            ("meta=cs.{\"c\":{}}", Match),
            ("meta=cs.{\"b\":[2]}", Match),
            ("meta=cs.{\"a\":2}", NoMatch),
            ("meta=eq.{\"b\":[1,2],\"a\":1.0,\"c\":{\"d\":\"e\"}}", Match),
            ("at=eq.2024-01-02T02:04:05.5Z", Match),
            ("at=gt.2024-01-02T03:00:00+00:00", NoMatch),
            ("uid=eq.A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", Match),
            ("bin=eq.\\x0102FF", Match),
            ("raw=is.not_null", Match),
            ("or=(id.eq.1,status.eq.open)", Match),
            ("or=(id.eq.1,and(status.eq.open,done.is.true))", NoMatch),
            ("not.or=(id.eq.1,id.eq.2)", Match),
            ("and=(id.eq.7,or(title.like.*World,id.eq.0))", Match),
            ("or=(tags.cs.{a,b},title.eq.\"x,y)\")", NoMatch),
            ("or=(id.in.(1,\"7\"),id.eq.0)", Match),
            ("or=(not.and(id.eq.7,done.is.false))", NoMatch),
            ("or=(id.not.eq.7)", NoMatch),
            ("select=id,title&id=eq.7", Match),
        ];
        for (text, want) in cases {
            assert_eq!(check(text), want, "{text}");
        }
    }

    #[test]
    fn nulls_are_three_valued_and_absent_columns_unknown() {
        let cols = cols();
        let mut r = row();
        r.insert("status".into(), Value::Null);
        let f = |t: &str| Filter::new(t, &Limits::default(), cols.as_slice()).unwrap();
        assert_eq!(f("status=eq.open").eval(&r), Verdict::NoMatch);
        assert_eq!(f("status=not.eq.open").eval(&r), Verdict::NoMatch);
        assert_eq!(f("status=is.null").eval(&r), Verdict::Match);
        assert_eq!(f("or=(status.eq.x,id.eq.7)").eval(&r), Verdict::Match);
        r.remove("status");
        assert_eq!(f("status=eq.open").eval(&r), Verdict::Unknown);
        // The missing column cannot change these answers.
        assert_eq!(f("status=eq.open&id=eq.8").eval(&r), Verdict::NoMatch);
        assert_eq!(f("or=(status.eq.open,id.eq.7)").eval(&r), Verdict::Match);
        assert_eq!(
            f("not.or=(status.eq.open,id.eq.7)").eval(&r),
            Verdict::NoMatch
        );
        assert_eq!(f("id=eq.7").eval(&r), Verdict::Match);
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let l = Limits::default();
        let c = cols();
        let err = |t: &str| Filter::new(t, &l, c.as_slice()).unwrap_err();
        assert!(
            matches!(err("nope=eq.1"), FilterError::UnknownColumn { column, .. } if column == "nope")
        );
        assert!(matches!(err("id=eq.x"), FilterError::BadValue { column, .. } if column == "id"));
        assert!(matches!(err("id=eq.1.5"), FilterError::BadValue { .. }));
        assert!(matches!(
            err("id=like.1"),
            FilterError::Unsupported { op: "like", .. }
        ));
        assert!(matches!(err("raw=eq.{}"), FilterError::Unsupported { .. }));
        assert!(matches!(err("id=is.true"), FilterError::Unsupported { .. }));
        assert!(matches!(
            err("at=gt.2024-01-01"),
            FilterError::BadValue { .. }
        ));
        assert!(matches!(err("id=fts.x"), FilterError::Syntax { .. }));
        assert!(matches!(err("id"), FilterError::Syntax { pos: 0, .. }));
        assert!(matches!(
            err("id=eq.1&or=(id.eq.1"),
            FilterError::Syntax { .. }
        ));
        assert!(matches!(err("or=(id.eq.1))"), FilterError::Syntax { .. }));
        assert!(matches!(
            err("select=id,nope"),
            FilterError::UnknownColumn { .. }
        ));
        assert!(matches!(err("title=eq.%ff"), FilterError::Syntax { .. }));
        let many = format!(
            "id=in.({})",
            (0..1001)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(matches!(
            err(&many),
            FilterError::InTooLong { max: 1000, .. }
        ));
        let deep = format!("or=({}id.eq.1{})", "or(".repeat(1000), ")".repeat(1000));
        assert!(
            matches!(err(&deep), FilterError::TooLong { .. })
                || matches!(err(&deep), FilterError::TooDeep { .. })
        );
        let deep = format!("or=({}id.eq.1{})", "or(".repeat(20), ")".repeat(20));
        assert!(matches!(err(&deep), FilterError::TooDeep { max: 16, .. }));
        let conds = (0..101).map(|_| "id=eq.1").collect::<Vec<_>>().join("&");
        assert!(matches!(
            err(&conds),
            FilterError::TooManyConditions { max: 100 }
        ));
        assert!(matches!(
            err(&"x".repeat(20_000)),
            FilterError::TooLong { .. }
        ));
        // Values in refusals are shortened.
        let long = format!("title=ilike.x&id=eq.{}", "9".repeat(500));
        assert!(err(&long).to_string().len() < 200);
        let control = format!("nums={}cd.x", "\u{18}".repeat(100));
        assert!(err(&control).to_string().len() < 200, "{}", err(&control));
    }

    #[test]
    fn updates_enter_and_leave() {
        use UpdateDelivery::*;
        use Verdict::{Match as M, NoMatch as N, Unknown as U};
        assert_eq!(classify_update(M, M), Update);
        assert_eq!(classify_update(N, M), Enter);
        assert_eq!(classify_update(M, N), Leave);
        assert_eq!(classify_update(N, N), Skip);
        assert_eq!(classify_update(U, M), Update);
        assert_eq!(classify_update(U, N), Skip);
        let c = cols();
        let f = Filter::new(
            "id=eq.1&or=(status.eq.x,not.and(done.is.true))",
            &Limits::default(),
            c.as_slice(),
        )
        .unwrap();
        assert_eq!(f.columns(), vec!["id", "status", "done"]);
    }

    #[test]
    fn like_wildcards() {
        let p = like_pattern("a*b_c\\%");
        assert!(like_match(&p, "aXXbYc%", false));
        assert!(!like_match(&p, "aXXbYcd", false));
        assert!(like_match(&like_pattern("%"), "", false));
        assert!(like_match(
            &like_pattern("*a*a*a*b"),
            &"a".repeat(50).add_b(),
            false
        ));
        assert!(!like_match(
            &like_pattern("*a*a*a*b"),
            &"a".repeat(50),
            false
        ));
    }

    trait AddB {
        fn add_b(self) -> String;
    }
    impl AddB for String {
        fn add_b(mut self) -> String {
            self.push('b');
            self
        }
    }

    #[test]
    fn numeric_order_is_by_value() {
        let n = |s| Num::parse(s).unwrap();
        assert_eq!(n("1.50").cmp(&n("1.5")), Ordering::Equal);
        assert_eq!(n("-2").cmp(&n("-10")), Ordering::Greater);
        assert_eq!(n("0.001").cmp(&n("0")), Ordering::Greater);
        assert_eq!(n("1e3").cmp(&n("999.99")), Ordering::Greater);
        assert_eq!(n("NaN").cmp(&n("Infinity")), Ordering::Greater);
        assert_eq!(n("-0").cmp(&n("0")), Ordering::Equal);
    }

    #[test]
    fn equalities_feed_the_index() {
        let c = cols();
        let f = Filter::new(
            "id=eq.7&status=eq.open&or=(id.eq.1)&done=not.eq.true&meta=eq.{}",
            &Limits::default(),
            c.as_slice(),
        )
        .unwrap();
        let eqs: Vec<_> = f.equalities().collect();
        let names: Vec<_> = eqs.iter().map(|(c, _, k)| (*c, k.as_str())).collect();
        assert_eq!(names, vec![("id", "i7"), ("status", "topen")]);
        assert_eq!(
            row_index_key(ColumnType::of(oid::INT8), &json!(7)).as_deref(),
            Some("i7")
        );
        assert_eq!(
            row_index_key(ColumnType::of(oid::NUMERIC), &json!(1.5)),
            Filter::new("price=eq.1.50", &Limits::default(), c.as_slice())
                .unwrap()
                .equalities()
                .next()
                .map(|(_, _, k)| k)
        );
    }
}

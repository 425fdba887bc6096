//! Row subscriptions (issue 22) end to end, over protocol v2 with the WAL source: filtered
//! subscriptions checked against an oracle computed in SQL from a log of every change (random
//! filters of every operator, random changes, rows moving in and out, `select=` projections),
//! exact resume of a filtered subscription across a restart and on another node (half the
//! oracle run's sockets move to a second node mid-run), the rules without `REPLICA IDENTITY
//! FULL`, filters in SSE and compat URLs, and hostile subscriptions that each get a refusal
//! naming what is wrong while other sockets keep flowing.
//!
//! The oracle never uses pgws's evaluator: each random filter is generated together with the SQL
//! predicate PostgREST would run for it, and PostgreSQL evaluates that predicate on the old and
//! the new row of every logged change (`jsonb_populate_record` of `to_jsonb(OLD)`/`to_jsonb(NEW)`),
//! which gives the deliveries, and their `move`, that docs/ROWS.md §4 prescribes.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

/// A WAL-source server on `db`.
async fn wal_server(db: &str, extra: &[&str]) -> TestServer {
    let mut args = vec!["--source", "wal"];
    args.extend_from_slice(extra);
    start_on(db, &args).await
}

/// The channel of a table of schema `public`.
fn table(name: &str) -> String {
    format!("table:public.{name}")
}

/// A v2 socket whose token (mode `r`) names `channels`.
async fn open(s: &TestServer, channels: &[String]) -> Ws {
    let tok = token(json!({"mode":"r","channels":channels}));
    open_v2_url(&s.url(&format!("/{tok}"))).await.0
}

/// The next frame as JSON, waiting at most `limit` (pings and pongs skipped).
async fn frame_within(ws: &mut Ws, limit: Duration) -> Value {
    loop {
        let frame = tokio::time::timeout(limit, ws.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("valid frame");
        match frame {
            Message::Text(t) => {
                return serde_json::from_str(t.as_str())
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {}", t.as_str()));
            }
            Message::Close(c) => panic!("socket closed: {c:?}"),
            _ => {}
        }
    }
}

/// Sends a `subscribe` (with `filter` and `since` when given) and reads up to its answer,
/// `subscribed` or `error`; the frames before it (a replay) are returned too.
async fn subscribe(
    ws: &mut Ws,
    id: &str,
    channel: &str,
    filter: Option<Value>,
    since: Option<&str>,
) -> (Value, Vec<Value>) {
    let mut req = json!({"type":"subscribe","id":id,"channel":channel});
    if let Some(f) = filter {
        req["filter"] = f;
    }
    if let Some(p) = since {
        req["since"] = json!(p);
    }
    send(ws, &req.to_string()).await;
    let mut before = Vec::new();
    loop {
        let v = frame_within(ws, WAIT).await;
        if (v["type"] == "subscribed" || v["type"] == "error") && v["id"] == id {
            return (v, before);
        }
        before.push(v);
    }
}

/// Subscribes with a filter and expects `subscribed` with no replay.
async fn follow(ws: &mut Ws, id: &str, channel: &str, filter: &str) {
    let (answer, before) = subscribe(ws, id, channel, Some(json!(filter)), None).await;
    assert_eq!(
        answer["type"], "subscribed",
        "{channel} {filter:?}: {answer}"
    );
    assert!(before.is_empty(), "{before:?}");
}

/// The change a `message` frame carries (its `data` is the change as a JSON string).
fn change(frame: &Value) -> Value {
    assert_eq!(frame["type"], "message", "{frame}");
    let data = frame["data"].as_str().expect("data is a string");
    serde_json::from_str(data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {data}"))
}

/// Equal as JSON, numbers by value (`2.5` is `2.50`, `3` is `3.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// `row` (an object or null) cut to `keep` (none: the whole row).
fn project(row: &Value, keep: Option<&[String]>) -> Value {
    match (row, keep) {
        (Value::Object(m), Some(keep)) => Value::Object(
            m.iter()
                .filter(|(k, _)| keep.iter().any(|c| c == *k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Map<_, _>>(),
        ),
        _ => row.clone(),
    }
}

/// A small seeded generator (xorshift64*): the seed is printed so a failure can be replayed
/// with `ROWS_SEED=<seed>`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// The oracle's tables (identical; one channel each) and their column values, as SQL literals.
const TABLES: [&str; 5] = ["items0", "items1", "items2", "items3", "items4"];
const COLUMNS: [&str; 9] = ["a", "big", "n", "t", "flag", "at", "j", "tags", "note"];

fn domain(column: &str) -> &'static [&'static str] {
    match column {
        "a" => &[
            "NULL", "-1", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
        ],
        "big" => &[
            "NULL",
            "0",
            "1000000000000",
            "2000000000000",
            "3000000000000",
            "9007199254740993",
        ],
        "n" => &[
            "NULL", "0", "0.5", "1.25", "2.50", "3", "-1", "100", "'NaN'",
        ],
        "t" => &[
            "NULL", "'a'", "'ab'", "'b'", "'Ab'", "'ba'", "'x y'", "''", "'a_b'", "'50%'", "'é'",
            "'Z'",
        ],
        "flag" => &["NULL", "true", "false"],
        "at" => &[
            "NULL",
            "'2024-01-01 00:00:00+00'",
            "'2024-01-01 01:00:00+00'",
            "'2024-01-01 02:30:00+01'",
            "'2024-01-01 03:00:00.5+00'",
            "'2024-06-01 00:00:00-07'",
        ],
        "j" => &[
            "NULL",
            r#"'{"k":1}'"#,
            r#"'{"k":2,"m":[1,2]}'"#,
            r#"'{"k":1,"m":[2]}'"#,
            "'[1,2]'",
            "'[2,3]'",
            r#"'{"k":1.0}'"#,
        ],
        "tags" => &[
            "NULL",
            "'{}'",
            "'{x}'",
            "'{x,y}'",
            "'{y,z}'",
            "'{x,NULL}'",
            "'{z}'",
        ],
        "note" => &["NULL", "NULL", "NULL", "'n1'", "'n2'"],
        _ => unreachable!("{column}"),
    }
}

/// The kinds of filter every run covers (one subscription at least of each).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    Like,
    Ilike,
    In,
    IsNull,
    IsTrue,
    Cs,
    Cd,
    Or,
    And,
    Not,
}

const KINDS: [Kind; 16] = [
    Kind::Eq,
    Kind::Neq,
    Kind::Lt,
    Kind::Lte,
    Kind::Gt,
    Kind::Gte,
    Kind::Like,
    Kind::Ilike,
    Kind::In,
    Kind::IsNull,
    Kind::IsTrue,
    Kind::Cs,
    Kind::Cd,
    Kind::Or,
    Kind::And,
    Kind::Not,
];

/// One condition: the column, its operator part as a filter writes it (`eq.3`, `not.in.(1,2)`),
/// the SQL predicate PostgREST would send for it, and whether it may stand inside a group (a
/// value with a comma outside braces may not).
struct Atom {
    column: &'static str,
    op: String,
    sql: String,
    group_ok: bool,
}

/// Operands: (filter text, SQL literal with its cast).
fn operands(column: &str) -> Vec<(&'static str, &'static str)> {
    match column {
        "a" => vec![
            ("-1", "-1"),
            ("0", "0"),
            ("2", "2"),
            ("3", "3"),
            ("5", "5"),
            ("7", "7"),
            ("9", "9"),
        ],
        "id" => vec![
            ("20", "20"),
            ("100", "100"),
            ("300", "300"),
            ("1000", "1000"),
            ("3000", "3000"),
        ],
        "big" => vec![
            ("0", "0::bigint"),
            ("1000000000000", "1000000000000::bigint"),
            ("2000000000000", "2000000000000::bigint"),
            ("9007199254740993", "9007199254740993::bigint"),
        ],
        "n" => vec![
            ("0", "0::numeric"),
            ("0.5", "0.5::numeric"),
            ("1.25", "1.25::numeric"),
            ("2.50", "2.50::numeric"),
            ("2.5", "2.5::numeric"),
            ("3", "3::numeric"),
            ("-1", "-1::numeric"),
            ("NaN", "'NaN'::numeric"),
        ],
        "t" => vec![
            ("a", "'a'"),
            ("ab", "'ab'"),
            ("b", "'b'"),
            ("Ab", "'Ab'"),
            ("x%20y", "'x y'"),
            ("ba", "'ba'"),
            ("a_b", "'a_b'"),
            ("%C3%A9", "'é'"),
            ("Z", "'Z'"),
        ],
        "note" => vec![("n1", "'n1'"), ("n2", "'n2'")],
        "flag" => vec![("true", "true"), ("false", "false")],
        "at" => vec![
            (
                "2024-01-01T01:00:00Z",
                "'2024-01-01T01:00:00Z'::timestamptz",
            ),
            (
                "2024-01-01T02:00:00+01:00",
                "'2024-01-01T02:00:00+01:00'::timestamptz",
            ),
            (
                "2024-01-01%2000:00:00+00",
                "'2024-01-01 00:00:00+00'::timestamptz",
            ),
            (
                "2024-01-01T03:00:00.5Z",
                "'2024-01-01T03:00:00.5Z'::timestamptz",
            ),
        ],
        "j" => vec![
            (r#"{"k":1}"#, r#"'{"k":1}'::jsonb"#),
            (r#"{"k":2,"m":[1,2]}"#, r#"'{"k":2,"m":[1,2]}'::jsonb"#),
            ("[1,2]", "'[1,2]'::jsonb"),
        ],
        "tags" => vec![
            ("{x}", "'{x}'::text[]"),
            ("{x,y}", "'{x,y}'::text[]"),
            ("{}", "'{}'::text[]"),
            ("{y,z}", "'{y,z}'::text[]"),
        ],
        _ => unreachable!("{column}"),
    }
}

/// A value with a comma outside braces cannot stand inside a group unquoted.
fn group_safe(value: &str) -> bool {
    let mut depth = 0i32;
    for c in value.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' | '(' | ')' if depth == 0 => return false,
            _ => {}
        }
    }
    true
}

/// A random condition of `kind` (a scalar kind).
fn atom(rng: &mut Rng, kind: Kind) -> Atom {
    let choices: &[&'static str] = match kind {
        Kind::Eq => &[
            "a", "big", "n", "t", "flag", "at", "j", "tags", "note", "id",
        ],
        Kind::Neq => &["a", "big", "n", "t"],
        Kind::Lt | Kind::Lte | Kind::Gt | Kind::Gte => &["a", "big", "n", "t", "at", "id"],
        Kind::Like | Kind::Ilike => &["t", "t", "note"],
        Kind::In => &["a", "n", "t", "id"],
        Kind::IsNull => &COLUMNS,
        Kind::IsTrue => &["flag"],
        Kind::Cs | Kind::Cd => &["j", "tags"],
        _ => unreachable!("{kind:?}"),
    };
    let column = choices[rng.below(choices.len())];
    let text_cmp = |sql_op: &str, lit: &str| {
        if column == "t" {
            format!("{column} COLLATE \"C\" {sql_op} {lit}")
        } else {
            format!("{column} {sql_op} {lit}")
        }
    };
    let (op, sql) = match kind {
        Kind::Eq | Kind::Neq | Kind::Lt | Kind::Lte | Kind::Gt | Kind::Gte => {
            let (f, lit) = *rng.pick(&operands(column));
            let (name, sql_op) = match kind {
                Kind::Eq => ("eq", "="),
                Kind::Neq => ("neq", "<>"),
                Kind::Lt => ("lt", "<"),
                Kind::Lte => ("lte", "<="),
                Kind::Gt => ("gt", ">"),
                _ => ("gte", ">="),
            };
            (format!("{name}.{f}"), text_cmp(sql_op, lit))
        }
        Kind::Like | Kind::Ilike => {
            let patterns: &[(&str, &str)] = if column == "note" {
                &[("n*", "n%"), ("*2", "%2"), ("N_", "N_")]
            } else {
                &[
                    ("a*", "a%"),
                    ("*b", "%b"),
                    ("_b", "_b"),
                    ("*a*", "%a%"),
                    ("A*", "A%"),
                    ("x%20*", "x %"),
                    ("*\\%25", "%\\%"),
                    ("a\\_b", "a\\_b"),
                    ("a%25", "a%"),
                ]
            };
            let (f, p) = *rng.pick(patterns);
            let (name, sql_op) = if kind == Kind::Like {
                ("like", "LIKE")
            } else {
                ("ilike", "ILIKE")
            };
            (format!("{name}.{f}"), format!("{column} {sql_op} '{p}'"))
        }
        Kind::In => {
            let all = operands(column);
            let n = 1 + rng.below(4);
            let chosen: Vec<(&str, &str)> = (0..n).map(|_| *rng.pick(&all)).collect();
            let f: Vec<&str> = chosen.iter().map(|c| c.0).collect();
            let l: Vec<&str> = chosen.iter().map(|c| c.1).collect();
            (
                format!("in.({})", f.join(",")),
                format!("{column} IN ({})", l.join(", ")),
            )
        }
        Kind::IsNull => {
            if rng.chance(30) {
                ("is.not_null".into(), format!("{column} IS NOT NULL"))
            } else {
                ("is.null".into(), format!("{column} IS NULL"))
            }
        }
        Kind::IsTrue => {
            let (f, s) = *rng.pick(&[
                ("true", "TRUE"),
                ("true", "TRUE"),
                ("false", "FALSE"),
                ("unknown", "UNKNOWN"),
            ]);
            (format!("is.{f}"), format!("flag IS {s}"))
        }
        Kind::Cs | Kind::Cd => {
            let values: &[(&str, &str)] = match (column, kind) {
                ("j", Kind::Cs) => &[
                    (r#"{"k":1}"#, r#"'{"k":1}'::jsonb"#),
                    (r#"{"m":[1]}"#, r#"'{"m":[1]}'::jsonb"#),
                    ("[1]", "'[1]'::jsonb"),
                    ("2", "'2'::jsonb"),
                ],
                ("j", _) => &[
                    (r#"{"k":1,"m":[1,2]}"#, r#"'{"k":1,"m":[1,2]}'::jsonb"#),
                    (r#"{"k":2,"m":[1,2]}"#, r#"'{"k":2,"m":[1,2]}'::jsonb"#),
                    ("[1,2,3]", "'[1,2,3]'::jsonb"),
                ],
                (_, Kind::Cs) => &[
                    ("{x}", "'{x}'::text[]"),
                    ("{x,y}", "'{x,y}'::text[]"),
                    ("{}", "'{}'::text[]"),
                    ("{z}", "'{z}'::text[]"),
                ],
                _ => &[
                    ("{x,y}", "'{x,y}'::text[]"),
                    ("{x,y,z}", "'{x,y,z}'::text[]"),
                    ("{y}", "'{y}'::text[]"),
                ],
            };
            let (f, lit) = *rng.pick(values);
            let (name, sql_op) = if kind == Kind::Cs {
                ("cs", "@>")
            } else {
                ("cd", "<@")
            };
            (format!("{name}.{f}"), format!("{column} {sql_op} {lit}"))
        }
        _ => unreachable!(),
    };
    let group_ok = group_safe(op.split_once('.').map_or("", |(_, v)| v)) || op.starts_with("in.");
    Atom {
        column,
        op,
        sql,
        group_ok,
    }
}

/// The scalar kinds (those [`atom`] makes).
const SCALAR: [Kind; 13] = [
    Kind::Eq,
    Kind::Neq,
    Kind::Lt,
    Kind::Lte,
    Kind::Gt,
    Kind::Gte,
    Kind::Like,
    Kind::Ilike,
    Kind::In,
    Kind::IsNull,
    Kind::IsTrue,
    Kind::Cs,
    Kind::Cd,
];

/// A random condition that may stand in a group, negated sometimes: (`col.op`, SQL).
fn group_atom(rng: &mut Rng) -> (String, String) {
    loop {
        let k = *rng.pick(&SCALAR);
        let a = atom(rng, k);
        if a.group_ok {
            return if rng.chance(20) {
                (
                    format!("{}.not.{}", a.column, a.op),
                    format!("(NOT ({}))", a.sql),
                )
            } else {
                (format!("{}.{}", a.column, a.op), format!("({})", a.sql))
            };
        }
    }
}

/// The items of a random group (`depth` more levels allowed): (`a.eq.1,or(...)`, SQL parts).
fn group_items(rng: &mut Rng, depth: usize) -> (String, Vec<String>) {
    let n = 2 + rng.below(2);
    let mut texts = Vec::new();
    let mut sqls = Vec::new();
    for _ in 0..n {
        if depth > 0 && rng.chance(30) {
            let (word, sql_word) = *rng.pick(&[("or", " OR "), ("and", " AND ")]);
            let (inner, parts) = group_items(rng, depth - 1);
            let sql = format!("({})", parts.join(sql_word));
            if rng.chance(30) {
                texts.push(format!("not.{word}({inner})"));
                sqls.push(format!("(NOT {sql})"));
            } else {
                texts.push(format!("{word}({inner})"));
                sqls.push(sql);
            }
        } else {
            let (t, s) = group_atom(rng);
            texts.push(t);
            sqls.push(s);
        }
    }
    (texts.join(","), sqls)
}

/// One top-level pair of `kind`: (`col=op.value` or `or=(...)`, SQL).
fn pair(rng: &mut Rng, kind: Kind) -> (String, String) {
    match kind {
        Kind::Or | Kind::And => {
            let (word, sql_word) = if kind == Kind::Or {
                ("or", " OR ")
            } else {
                ("and", " AND ")
            };
            let (items, parts) = group_items(rng, 2);
            (
                format!("{word}=({items})"),
                format!("({})", parts.join(sql_word)),
            )
        }
        Kind::Not => {
            if rng.chance(50) {
                let (word, sql_word) = *rng.pick(&[("or", " OR "), ("and", " AND ")]);
                let (items, parts) = group_items(rng, 1);
                (
                    format!("not.{word}=({items})"),
                    format!("(NOT ({}))", parts.join(sql_word)),
                )
            } else {
                let k = *rng.pick(&SCALAR);
                let a = atom(rng, k);
                (
                    format!("{}=not.{}", a.column, a.op),
                    format!("(NOT ({}))", a.sql),
                )
            }
        }
        _ => {
            let a = atom(rng, kind);
            (format!("{}={}", a.column, a.op), format!("({})", a.sql))
        }
    }
}

/// One random subscription of the oracle run.
struct Sub {
    table: &'static str,
    filter: String,
    sql: String,
    /// The columns `select=` asks for (the key `id` added), if any.
    select: Option<Vec<String>>,
}

fn random_sub(rng: &mut Rng, i: usize) -> Sub {
    let kind = if i < 3 * KINDS.len() {
        KINDS[i % KINDS.len()]
    } else {
        *rng.pick(&KINDS)
    };
    let mut pairs = vec![pair(rng, kind)];
    if rng.chance(35) {
        let k = *rng.pick(&KINDS);
        pairs.push(pair(rng, k));
    }
    let mut select = None;
    if rng.chance(30) {
        let mut cols: Vec<String> = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let c = rng.pick(&COLUMNS).to_string();
            if !cols.contains(&c) {
                cols.push(c);
            }
        }
        pairs.push((format!("select={}", cols.join(",")), String::new()));
        cols.push("id".into());
        select = Some(cols);
    }
    let filter = pairs
        .iter()
        .map(|p| p.0.as_str())
        .collect::<Vec<_>>()
        .join("&");
    let sql = pairs
        .iter()
        .filter(|p| !p.1.is_empty())
        .map(|p| p.1.as_str())
        .collect::<Vec<_>>()
        .join(" AND ");
    Sub {
        table: TABLES[i % TABLES.len()],
        filter,
        sql,
        select,
    }
}

/// Random transactions over the oracle's tables, `total` row changes in all; returns the SQL
/// of each transaction. Every statement changes a known number of rows (ids are tracked).
fn random_transactions(rng: &mut Rng, total: usize) -> Vec<String> {
    let mut live: Vec<Vec<i32>> = vec![Vec::new(); TABLES.len()];
    let mut next_id = 1;
    let mut done = 0;
    let mut out = Vec::new();
    let value = |rng: &mut Rng, c: &str| rng.pick(domain(c)).to_string();
    while done < total {
        let size = match rng.below(10) {
            0 => 60 + rng.below(60),
            1..=3 => 1,
            _ => 2 + rng.below(20),
        };
        let mut sql = String::from("BEGIN;\n");
        for _ in 0..size {
            if done >= total {
                break;
            }
            let k = rng.below(TABLES.len());
            let tbl = TABLES[k];
            let ids = &mut live[k];
            let roll = rng.below(100);
            if ids.len() < 15 || roll < 35 {
                let vals: Vec<String> = COLUMNS.iter().map(|c| value(rng, c)).collect();
                sql += &format!(
                    "INSERT INTO {tbl} (id, {}) VALUES ({next_id}, {});\n",
                    COLUMNS.join(", "),
                    vals.join(", ")
                );
                ids.push(next_id);
                next_id += 1;
                done += 1;
            } else if (78..80).contains(&roll) {
                // The key itself changes (the old row names the old key).
                let at = rng.below(ids.len());
                let id = ids[at];
                sql += &format!("UPDATE {tbl} SET id = {next_id} WHERE id = {id};\n");
                ids[at] = next_id;
                next_id += 1;
                done += 1;
            } else if roll < 80 {
                let id = ids[rng.below(ids.len())];
                let mut cols: Vec<&str> = Vec::new();
                for _ in 0..1 + rng.below(3) {
                    let c = *rng.pick(&COLUMNS);
                    if !cols.contains(&c) {
                        cols.push(c);
                    }
                }
                let mut sets: Vec<String> = cols
                    .iter()
                    .map(|c| format!("{c} = {}", value(rng, c)))
                    .collect();
                if rng.chance(5) {
                    // Changes nothing: still an UPDATE of the row.
                    sets = vec!["note = note".into()];
                }
                sql += &format!("UPDATE {tbl} SET {} WHERE id = {id};\n", sets.join(", "));
                done += 1;
            } else if roll < 88 && ids.len() >= 3 && done + 3 <= total {
                // Several rows in one statement.
                let mut pick: Vec<i32> = Vec::new();
                while pick.len() < 3 {
                    let id = ids[rng.below(ids.len())];
                    if !pick.contains(&id) {
                        pick.push(id);
                    }
                }
                let list = pick
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                let set = *rng.pick(&[
                    "a = a + 1",
                    "flag = NOT flag",
                    "n = n * 2",
                    "tags = tags || '{x}'::text[]",
                ]);
                sql += &format!("UPDATE {tbl} SET {set} WHERE id IN ({list});\n");
                done += 3;
            } else {
                let at = rng.below(ids.len());
                let id = ids.swap_remove(at);
                sql += &format!("DELETE FROM {tbl} WHERE id = {id};\n");
                done += 1;
            }
        }
        sql += "COMMIT;";
        out.push(sql);
    }
    out
}

/// What one subscription should receive, computed by PostgreSQL from the change log:
/// (log sequence, op, move, old row, new row).
type Expected = Vec<(i64, String, Option<String>, Value, Value)>;

async fn oracle(db: &tokio_postgres::Client, sub: &Sub) -> Expected {
    // The predicate is the generator's SQL for the filter (constants written by this test,
    // never input), evaluated on each logged row version as a row of the table.
    let tbl = sub.table;
    let pred = if sub.sql.is_empty() {
        "true".to_string()
    } else {
        sub.sql.clone()
    };
    let query = format!(
        "WITH v AS ( \
           SELECT seq, op, old_row, new_row, \
             CASE WHEN old_row IS NULL THEN false ELSE coalesce( \
               (SELECT {pred} FROM jsonb_populate_record(NULL::public.{tbl}, l.old_row) AS r), \
               false) END AS old_in, \
             CASE WHEN new_row IS NULL THEN false ELSE coalesce( \
               (SELECT {pred} FROM jsonb_populate_record(NULL::public.{tbl}, l.new_row) AS r), \
               false) END AS new_in \
           FROM change_log l WHERE tbl = $1) \
         SELECT seq, op, \
           CASE WHEN op = 'UPDATE' AND NOT old_in THEN 'in' \
                WHEN op = 'UPDATE' AND NOT new_in THEN 'out' END, \
           coalesce(old_row::text, 'null'), coalesce(new_row::text, 'null') \
         FROM v \
         WHERE (op = 'INSERT' AND new_in) OR (op = 'DELETE' AND old_in) \
            OR (op = 'UPDATE' AND (old_in OR new_in)) \
         ORDER BY seq"
    );
    db.query(&query, &[&tbl])
        .await
        .unwrap_or_else(|e| panic!("oracle for {:?} ({}): {e}", sub.filter, sub.sql))
        .iter()
        .map(|r| {
            let old: String = r.get(3);
            let new: String = r.get(4);
            (
                r.get(0),
                r.get(1),
                r.get(2),
                serde_json::from_str(&old).unwrap(),
                serde_json::from_str(&new).unwrap(),
            )
        })
        .collect()
}

const ORACLE_SCHEMA: &str = r#"
CREATE TABLE change_log (seq bigserial PRIMARY KEY, tbl text NOT NULL, op text NOT NULL,
                         old_row jsonb, new_row jsonb);
CREATE FUNCTION log_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO change_log (tbl, op, old_row, new_row) VALUES (TG_TABLE_NAME, TG_OP,
    CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
    CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
  RETURN NULL;
END $$;
CREATE TABLE fence (id int PRIMARY KEY);
"#;

/// Each socket's frames until the fence's INSERT arrives (cross-channel order on a socket is
/// the stream's order, so everything committed before the fence came before it), or until
/// `stop` fires (the client goes away: what it read so far is returned, the socket dropped).
fn read_until_fence(
    mut ws: Ws,
    fence: String,
    mut stop: Option<tokio::sync::oneshot::Receiver<()>>,
) -> tokio::task::JoinHandle<Vec<Value>> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            let v = match stop.as_mut() {
                Some(stop) => tokio::select! {
                    _ = stop => return got,
                    v = frame_within(&mut ws, Duration::from_secs(120)) => v,
                },
                None => frame_within(&mut ws, Duration::from_secs(120)).await,
            };
            if v["type"] == "message" && v["channel"] == fence.as_str() {
                return got;
            }
            got.push(v);
        }
    })
}

/// 10,000 random inserts, updates and deletes in transactions of 1 to 120 rows over five
/// tables with `REPLICA IDENTITY FULL`, and 50 subscriptions with random filters (every
/// operator, groups, negations, some with `select=`) on 10 sockets: each receives exactly the
/// changes the SQL oracle computes, in commit order, with the right `op` and `move`, and rows
/// projected to the selected columns plus the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_subscriptions_receive_exactly_what_sql_says() {
    const CHANGES: usize = 10_000;
    const SOCKETS: usize = 10;
    let seed: u64 = std::env::var("ROWS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("ROWS_SEED={seed}");
    let mut rng = Rng(seed);
    let db_uri = fresh_db().await;
    let db = pg(&db_uri).await;
    db.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let mut schema = String::from(ORACLE_SCHEMA);
    for t in TABLES {
        schema += &format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, a int, big bigint, n numeric, t text, \
               flag bool, at timestamptz, j jsonb, tags text[], note text); \
             ALTER TABLE {t} REPLICA IDENTITY FULL; \
             CREATE TRIGGER {t}_log AFTER INSERT OR UPDATE OR DELETE ON {t} \
               FOR EACH ROW EXECUTE FUNCTION log_change();\n"
        );
    }
    schema += &format!(
        "CREATE PUBLICATION pgws FOR TABLE {}, fence;",
        TABLES.join(", ")
    );
    db.batch_execute(&schema).await.unwrap();
    // Room in the replay window for every change of a table: the movers' resume is exact.
    let window = ["--replay-messages", "20000", "--replay-bytes", "50000000"];
    let s = wal_server(&db_uri, &window).await;
    let other = wal_server(&db_uri, &window).await;
    // A first change of every table that both nodes deliver (fence last): positions handed
    // out from here on lie within both nodes' streams (a position older than a node's start
    // gets a gap there, rightly), and each node has met every channel (see
    // `resuming_on_a_node_that_met_the_channel_after_the_position_is_exact` for why).
    let mut warm = Vec::new();
    for node in [&s, &other] {
        let mut ws = open(node, &[table("fence")]).await;
        follow(&mut ws, "warm", &table("fence"), "").await;
        warm.push(ws);
    }
    let mut first = String::from("BEGIN;");
    for t in TABLES {
        first += &format!("INSERT INTO {t} (id) VALUES (-1);");
    }
    first += "INSERT INTO fence VALUES (0); COMMIT; DELETE FROM change_log;";
    db.batch_execute(&first).await.unwrap();
    for ws in &mut warm {
        assert_eq!(change(&frame_within(ws, WAIT).await)["new"]["id"], 0);
    }
    drop(warm);

    let subs: Vec<Sub> = (0..SOCKETS * TABLES.len())
        .map(|i| random_sub(&mut rng, i))
        .collect();
    for op in [
        "eq", "neq", "lt", "lte", "gt", "gte", "like", "ilike", "in", "is", "cs", "cd",
    ] {
        assert!(
            subs.iter()
                .any(|s| s.filter.contains(&format!("={op}."))
                    || s.filter.contains(&format!(".{op}."))),
            "seed {seed}: operator {op} used"
        );
    }
    for word in ["or=(", "and=(", "not.", "select="] {
        assert!(subs.iter().any(|s| s.filter.contains(word)), "{word} used");
    }
    let mut channels: Vec<String> = TABLES.iter().map(|t| table(t)).collect();
    channels.push(table("fence"));
    // Sockets 0..MOVERS go away halfway through the writes and resume every subscription on
    // the other node a quarter later, while the writes go on.
    const MOVERS: usize = 5;
    let mut readers = Vec::new();
    let mut stops = Vec::new();
    let mut joined_at = Vec::new();
    for sock in 0..SOCKETS {
        let mut ws = open(&s, &channels).await;
        for k in 0..TABLES.len() {
            let sub = &subs[sock * TABLES.len() + k];
            let (answer, before) = subscribe(
                &mut ws,
                &format!("s{sock}-{k}"),
                &table(sub.table),
                Some(json!(sub.filter)),
                None,
            )
            .await;
            assert_eq!(
                answer["type"], "subscribed",
                "seed {seed}: {:?}: {answer}",
                sub.filter
            );
            assert!(before.is_empty());
            joined_at.push(answer["position"].as_str().unwrap().to_string());
        }
        follow(&mut ws, "fence", &table("fence"), "").await;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let stopped = (sock < MOVERS).then_some(stopped);
        stops.push(Some(stop));
        readers.push(Some(read_until_fence(ws, table("fence"), stopped)));
    }

    let started = Instant::now();
    let transactions = random_transactions(&mut rng, CHANGES);
    let mut received: Vec<Vec<Value>> = vec![Vec::new(); SOCKETS];
    let mut replayed = 0;
    for (n, tx) in transactions.iter().enumerate() {
        if n == transactions.len() / 2 {
            for sock in 0..MOVERS {
                let _ = stops[sock].take().unwrap().send(());
                received[sock] = readers[sock].take().unwrap().await.unwrap();
            }
        }
        if n == transactions.len() * 3 / 4 {
            for sock in 0..MOVERS {
                let mut ws = open(&other, &channels).await;
                for k in 0..TABLES.len() {
                    let i = sock * TABLES.len() + k;
                    let channel = table(subs[i].table);
                    let since = received[sock]
                        .iter()
                        .rev()
                        .find(|v| v["channel"] == channel.as_str())
                        .map_or(joined_at[i].clone(), |v| {
                            v["position"].as_str().unwrap().to_string()
                        });
                    let (answer, before) = subscribe(
                        &mut ws,
                        &format!("r{sock}-{k}"),
                        &channel,
                        Some(json!(subs[i].filter)),
                        Some(&since),
                    )
                    .await;
                    assert_eq!(answer["type"], "subscribed", "seed {seed}: {answer}");
                    replayed += answer["replayed"].as_u64().unwrap_or(0);
                    received[sock].extend(before);
                }
                follow(&mut ws, "fence", &table("fence"), "").await;
                readers[sock] = Some(read_until_fence(ws, table("fence"), None));
            }
        }
        db.batch_execute(tx)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: {e:?}\n{tx}"));
    }
    db.batch_execute("INSERT INTO fence VALUES (1)")
        .await
        .unwrap();
    let written = started.elapsed();
    let logged: i64 = db
        .query_one("SELECT count(*) FROM change_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged as usize, CHANGES, "seed {seed}: every change logged");

    for (sock, r) in readers.into_iter().enumerate() {
        received[sock].extend(
            tokio::time::timeout(Duration::from_secs(180), r.unwrap())
                .await
                .expect("every socket reaches the fence")
                .unwrap(),
        );
    }
    let delivered_in = started.elapsed();

    let (mut deliveries, mut moves_in, mut moves_out, mut projected) = (0, 0, 0, 0);
    let mut ops_seen = HashSet::new();
    for (i, sub) in subs.iter().enumerate() {
        let channel = table(sub.table);
        let frames: Vec<&Value> = received[i / TABLES.len()]
            .iter()
            .filter(|v| v["channel"] == channel.as_str())
            .collect();
        let want = oracle(&db, sub).await;
        let ctx = format!(
            "seed {seed}, subscription {i} on {}: filter {:?}, SQL {}",
            sub.table, sub.filter, sub.sql
        );
        let got: Vec<Value> = frames.iter().map(|f| change(f)).collect();
        let positions: HashSet<&str> = frames
            .iter()
            .map(|f| f["position"].as_str().expect("a position"))
            .collect();
        assert_eq!(positions.len(), frames.len(), "{ctx}: no position twice");
        let first_diff = want
            .iter()
            .zip(&got)
            .position(|((_, op, mv, old, new), c)| {
                let keep = sub.select.as_deref();
                c["op"] != op.as_str()
                    || c.get("move").and_then(Value::as_str) != mv.as_deref()
                    || !same(&c["new"], &project(new, keep))
                    || !same(&c["old"], &project(old, keep))
            });
        if want.len() != got.len() || first_diff.is_some() {
            let at = first_diff.unwrap_or(want.len().min(got.len()));
            panic!(
                "{ctx}\nexpected {} changes, received {}; first difference at {at}:\n\
                 expected (seq, op, move, old, new): {:?}\nreceived: {}",
                want.len(),
                got.len(),
                want.get(at),
                got.get(at).map_or("nothing".into(), |v| v.to_string())
            );
        }
        for c in &got {
            assert_eq!(
                (&c["schema"], &c["table"]),
                (&json!("public"), &json!(sub.table))
            );
            assert_eq!(c["unchanged_toast"], json!([]), "{ctx}");
            assert!(c["commit_time"].as_str().is_some_and(|t| t.ends_with('Z')));
        }
        deliveries += got.len();
        for (_, op, mv, _, _) in &want {
            ops_seen.insert(op.clone());
            match mv.as_deref() {
                Some("in") => moves_in += 1,
                Some("out") => moves_out += 1,
                _ => {}
            }
        }
        if sub.select.is_some() {
            projected += got.len();
        }
    }
    for (i, frames) in received.iter().enumerate() {
        let stray: Vec<&Value> = frames.iter().filter(|v| v["type"] != "message").collect();
        assert!(
            stray.is_empty(),
            "seed {seed}: socket {i} got other frames: {stray:?}"
        );
    }
    assert!(
        moves_in > 0 && moves_out > 0,
        "seed {seed}: rows moved in and out"
    );
    assert_eq!(ops_seen.len(), 3, "inserts, updates and deletes delivered");
    println!(
        "oracle: {CHANGES} changes in {} transactions, {} subscriptions ({} with select), \
         {deliveries} deliveries ({moves_in} move in, {moves_out} move out, {projected} \
         projected, {replayed} replayed on the other node to {} resumed subscriptions); written \
         in {written:?}, all delivered {delivered_in:?} after the first",
        transactions.len(),
        subs.len(),
        subs.iter().filter(|s| s.select.is_some()).count(),
        MOVERS * TABLES.len()
    );
    s.stop().await.unwrap();
    other.stop().await.unwrap();
}

/// The table and filter of the resume tests, and what they do.
const STOCK: &str = "CREATE TABLE stock (id int PRIMARY KEY, qty int, label text); \
                     ALTER TABLE stock REPLICA IDENTITY FULL; \
                     CREATE PUBLICATION pgws FOR TABLE stock;";
const STOCK_FILTER: &str = "qty=gt.5&select=qty";

/// Seen live before the client goes away: an insert, and a row moving in.
async fn stock_before(db: &tokio_postgres::Client) {
    db.batch_execute(
        "INSERT INTO stock VALUES (1, 10, 'a'); INSERT INTO stock VALUES (2, 1, 'b'); \
         UPDATE stock SET qty = 7 WHERE id = 2;",
    )
    .await
    .unwrap();
}

/// Missed while away: six of these pass the filter (see [`STOCK_MISSED`]).
async fn stock_missed(db: &tokio_postgres::Client) {
    db.batch_execute(
        "BEGIN; INSERT INTO stock VALUES (3, 9, 'c'); INSERT INTO stock VALUES (4, 0, 'd'); \
           UPDATE stock SET qty = 2 WHERE id = 1; COMMIT; \
         UPDATE stock SET qty = 8 WHERE id = 2; \
         BEGIN; UPDATE stock SET label = 'cc' WHERE id = 3; DELETE FROM stock WHERE id = 4; \
           DELETE FROM stock WHERE id = 3; COMMIT; \
         INSERT INTO stock VALUES (5, 6, 'e'); \
         UPDATE stock SET label = 'x' WHERE id = 1;",
    )
    .await
    .unwrap();
}

/// (op, id, move, new, old) of the missed changes that pass `qty=gt.5`, projected to id, qty.
fn stock_missed_expected() -> Vec<Value> {
    vec![
        json!(["INSERT", null, {"id":3,"qty":9}, null]),
        json!(["UPDATE", "out", {"id":1,"qty":2}, {"id":1,"qty":10}]),
        json!(["UPDATE", null, {"id":2,"qty":8}, {"id":2,"qty":7}]),
        json!(["UPDATE", null, {"id":3,"qty":9}, {"id":3,"qty":9}]),
        json!(["DELETE", null, null, {"id":3,"qty":9}]),
        json!(["INSERT", null, {"id":5,"qty":6}, null]),
    ]
}

/// A change as [`stock_missed_expected`] writes it.
fn summary(frame: &Value) -> Value {
    let c = change(frame);
    json!([
        c["op"],
        c.get("move").cloned().unwrap_or(Value::Null),
        c["new"],
        c["old"]
    ])
}

/// Reads the two changes of [`stock_before`]; returns the last position.
async fn read_stock_before(ws: &mut Ws) -> String {
    let first = frame_within(ws, WAIT).await;
    assert_eq!(
        summary(&first),
        json!(["INSERT", null, {"id":1,"qty":10}, null])
    );
    let second = frame_within(ws, WAIT).await;
    assert_eq!(
        summary(&second),
        json!(["UPDATE", "in", {"id":2,"qty":7}, {"id":2,"qty":1}])
    );
    second["position"].as_str().unwrap().to_string()
}

/// After a resume: live changes follow, still filtered, and nothing else is pending.
async fn stock_live_after(db: &tokio_postgres::Client, ws: &mut Ws) {
    db.batch_execute(
        "INSERT INTO stock VALUES (6, 100, 'f'); INSERT INTO stock VALUES (7, 0, 'g'); \
         INSERT INTO stock VALUES (8, 50, 'h');",
    )
    .await
    .unwrap();
    for id in [6, 8] {
        let c = change(&frame_within(ws, WAIT).await);
        assert_eq!((&c["op"], &c["new"]["id"]), (&json!("INSERT"), &json!(id)));
    }
    send(ws, r#"{"type":"ping","id":"probe"}"#).await;
    assert_eq!(
        frame_within(ws, WAIT).await,
        json!({"type":"pong","id":"probe"}),
        "nothing else pending"
    );
}

/// A filtered subscription resumes exactly across a pgws restart: the filtered changes
/// committed while no pgws ran are replayed (moves included), then live ones follow.
#[tokio::test]
async fn a_filtered_row_subscription_resumes_exactly_across_a_restart() {
    let db_uri = fresh_db().await;
    let db = pg(&db_uri).await;
    db.batch_execute(STOCK).await.unwrap();
    let node = ["--node-id", "rows-resume"];
    let channel = table("stock");
    let s = wal_server(&db_uri, &node).await;
    let mut ws = open(&s, std::slice::from_ref(&channel)).await;
    follow(&mut ws, "1", &channel, STOCK_FILTER).await;
    stock_before(&db).await;
    let last = read_stock_before(&mut ws).await;
    drop(ws);
    s.stop().await.unwrap();
    stock_missed(&db).await;

    let s = wal_server(&db_uri, &node).await;
    let mut ws = open(&s, std::slice::from_ref(&channel)).await;
    let (answer, replay) = subscribe(
        &mut ws,
        "2",
        &channel,
        Some(json!(STOCK_FILTER)),
        Some(&last),
    )
    .await;
    assert_eq!(answer["type"], "subscribed", "{answer}");
    let got: Vec<Value> = replay.iter().map(summary).collect();
    assert_eq!(
        got,
        stock_missed_expected(),
        "exactly the filtered changes missed"
    );
    assert_eq!(answer["replayed"], 6);
    stock_live_after(&db, &mut ws).await;
    s.stop().await.unwrap();
}

/// A filtered subscription moves to another node with its position: the other node (its own
/// slot) replays exactly the filtered changes missed, frame for frame as a client that stayed
/// on the first node received them live.
#[tokio::test]
async fn a_filtered_row_subscription_resumes_exactly_on_another_node() {
    let db_uri = fresh_db().await;
    let db = pg(&db_uri).await;
    db.batch_execute(STOCK).await.unwrap();
    let channel = table("stock");
    let a = wal_server(&db_uri, &["--node-id", "rows-a"]).await;
    let b = wal_server(&db_uri, &["--node-id", "rows-b"]).await;
    let mut witness = open(&a, std::slice::from_ref(&channel)).await;
    follow(&mut witness, "w", &channel, STOCK_FILTER).await;
    let mut ws = open(&a, std::slice::from_ref(&channel)).await;
    follow(&mut ws, "1", &channel, STOCK_FILTER).await;
    stock_before(&db).await;
    let last = read_stock_before(&mut ws).await;
    drop(ws);
    stock_missed(&db).await;
    let mut live = Vec::new();
    for _ in 0..8 {
        live.push(frame_within(&mut witness, WAIT).await);
    }

    let mut moved = open(&b, std::slice::from_ref(&channel)).await;
    let (answer, replay) = subscribe(
        &mut moved,
        "2",
        &channel,
        Some(json!(STOCK_FILTER)),
        Some(&last),
    )
    .await;
    assert_eq!(answer["type"], "subscribed", "{answer}");
    let got: Vec<Value> = replay.iter().map(summary).collect();
    assert_eq!(
        got,
        stock_missed_expected(),
        "exactly the filtered changes missed"
    );
    for (r, l) in replay.iter().zip(&live[2..]) {
        assert_eq!(
            (&r["position"], change(r)),
            (&l["position"], change(l)),
            "as sent live on the other node"
        );
    }
    stock_live_after(&db, &mut moved).await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// One hostile request and what must answer it: the code and words the message must hold.
struct Hostile {
    channel: String,
    filter: Option<Value>,
    code: &'static str,
    says: Vec<String>,
}

fn hostile(channel: &str, filter: Option<Value>, code: &'static str, says: &[&str]) -> Hostile {
    Hostile {
        channel: channel.into(),
        filter,
        code,
        says: says.iter().map(|s| s.to_string()).collect(),
    }
}

/// A table name that tries SQL (the catalog query binds it).
const SQL_TABLE: &str = "table:public.x'; drop table target; --";

/// The table the hostile test subscribes to, one outside the publication, one of 1,600 columns.
fn hostile_cases() -> Vec<Hostile> {
    let target = table("target");
    let t = target.as_str();
    let f = |s: &str| Some(json!(s));
    let in_1001 = format!(
        "a=in.({})",
        (0..1001)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let in_10000 = format!(
        "a=in.({})",
        (0..10_000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let deep = format!("or=({}a.eq.1{})", "or(".repeat(999), ")".repeat(999));
    let wide_all = format!(
        "select=id,{}",
        (1..1600)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let many = vec!["a=gt.0"; 101].join("&");
    let long_pattern = format!("t=like.{}", "a".repeat(300));
    vec![
        hostile(t, f("a=eq"), "bad_filter", &["byte"]),
        hostile(t, f("a=zz.1"), "bad_filter", &["zz"]),
        hostile(t, f("or=(a.eq.1"), "bad_filter", &["byte"]),
        hostile(t, f("a=in.(1,2"), "bad_filter", &["byte"]),
        hostile(
            t,
            f("titel=eq.x"),
            "bad_filter",
            &["unknown column \"titel\""],
        ),
        hostile(t, f("select=id,nope"), "bad_filter", &["\"nope\""]),
        hostile(t, f("a=like.x*"), "bad_filter", &["like", "\"a\""]),
        hostile(t, f("a=eq.abc"), "bad_filter", &["abc", "\"a\""]),
        hostile(t, f("a=eq.%ZZ"), "bad_filter", &["\"a\""]),
        hostile(t, f("done=is.maybe"), "bad_filter", &["maybe"]),
        hostile(t, f("t=eq.%FF%FE"), "bad_filter", &["UTF-8"]),
        hostile(t, f("=eq.1"), "bad_filter", &["empty column name"]),
        hostile(t, f("or=(a.zz.1,t.eq.x)"), "bad_filter", &["zz"]),
        hostile(t, f("select=a&select=t"), "bad_filter", &["twice"]),
        hostile(
            t,
            f("and=(a.eq.1,titel.eq.2)"),
            "bad_filter",
            &["\"titel\""],
        ),
        hostile(t, f("tags=cs.{unclosed"), "bad_filter", &["tags"]),
        hostile(t, f("j=cs.{not json}"), "bad_filter", &["\"j\""]),
        hostile(
            t,
            f("a;drop%20table%20target;--=eq.1"),
            "bad_filter",
            &["unknown column", "drop table target"],
        ),
        hostile(t, f(&long_pattern), "bad_filter", &["pattern", "256"]),
        hostile(t, f(&many), "bad_filter", &["100 conditions"]),
        hostile(t, f(&in_1001), "bad_filter", &["`in`", "1000"]),
        // 48,889 bytes: past the filter text's 16 KiB before its 1,000 values.
        hostile(t, f(&in_10000), "bad_filter", &["16384"]),
        hostile(t, f(&deep), "bad_filter", &["nested deeper than 16"]),
        hostile(&table("wide"), f(&wide_all), "bad_filter", &["256"]),
        hostile(t, Some(json!(42)), "bad_request", &["filter"]),
        hostile(t, Some(json!({"a":"eq.1"})), "bad_request", &["filter"]),
        hostile("chat", f("a=eq.1"), "bad_request", &["filter"]),
        hostile(&table("nope"), None, "unknown_table", &["nope"]),
        hostile(SQL_TABLE, None, "unknown_table", &[]),
        hostile(&table("secret"), None, "unknown_table", &["publication"]),
        hostile(
            &table("secret"),
            f("a=eq.1"),
            "unknown_table",
            &["publication"],
        ),
    ]
}

/// Sends `case` and checks its refusal; returns the time the answer took.
async fn refuse(ws: &mut Ws, n: usize, case: &Hostile) -> Duration {
    let id = format!("h{n}");
    let started = Instant::now();
    let (answer, before) = subscribe(ws, &id, &case.channel, case.filter.clone(), None).await;
    let took = started.elapsed();
    let shown = format!(
        "{:.120}",
        case.filter.clone().unwrap_or(Value::Null).to_string()
    );
    assert!(before.is_empty(), "{shown}: {before:?}");
    assert_eq!(
        (answer["type"].as_str(), answer["code"].as_str()),
        (Some("error"), Some(case.code)),
        "{} {shown}: {answer}",
        case.channel
    );
    let message = answer["message"].as_str().unwrap_or_default();
    for word in &case.says {
        assert!(
            message.contains(word.as_str()),
            "{} {shown}: the refusal names {word:?}: {message}",
            case.channel
        );
    }
    assert!(
        message.len() < 512,
        "a refusal stays short: {} bytes",
        message.len()
    );
    took
}

/// Hostile subscriptions each get a refusal with its code and a message naming what is wrong:
/// malformed filters, unknown columns and tables, a table outside the publication, SQL in names
/// and values (compared literally: nothing reaches SQL), 10,000-value `in` lists, groups nested
/// 1,000 deep, a `select` of every column of a 1,600-column table, a filter on a channel that is
/// not a table. Three sockets send them over and over while a fourth socket's filtered
/// subscription receives every matching change of a concurrent writer, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_subscriptions_are_refused_by_name_and_others_keep_flowing() {
    const ROWS: i32 = 600;
    const ROUNDS: usize = 8;
    let db_uri = fresh_db().await;
    let db = pg(&db_uri).await;
    let wide_columns = (1..1600)
        .map(|i| format!("c{i} int"))
        .collect::<Vec<_>>()
        .join(", ");
    db.batch_execute(&format!(
        "CREATE TABLE target (id int PRIMARY KEY, a int, t text, tags text[], j jsonb, done bool); \
         ALTER TABLE target REPLICA IDENTITY FULL; \
         CREATE TABLE secret (id int PRIMARY KEY, a int); \
         CREATE TABLE wide (id int PRIMARY KEY, {wide_columns}); \
         CREATE PUBLICATION pgws FOR TABLE target, wide;"
    ))
    .await
    .unwrap();
    let s = wal_server(&db_uri, &["--rate-bytes", "0", "--rate-messages", "100000"]).await;
    let channels: Vec<String> = ["target", "secret", "nope", "wide"]
        .iter()
        .map(|t| table(t))
        .chain(["chat".to_string(), SQL_TABLE.to_string()])
        .collect();

    // Values that try SQL are values: compared literally, the table still there.
    let mut literal = open(&s, &channels).await;
    let sneaky = "'; drop table target; --";
    follow(
        &mut literal,
        "sql",
        &table("target"),
        "t=eq.';%20drop%20table%20target;%20--",
    )
    .await;
    db.execute(
        "INSERT INTO target (id, a, t) VALUES (-1, 0, 'x'), (-2, 0, $1)",
        &[&sneaky],
    )
    .await
    .unwrap();
    let c = change(&frame_within(&mut literal, WAIT).await);
    assert_eq!(
        (&c["new"]["id"], &c["new"]["t"]),
        (&json!(-2), &json!(sneaky))
    );
    drop(literal);

    // Every case once, alone, timed.
    let cases = hostile_cases();
    let mut lone = open(&s, &channels).await;
    let mut slowest = Duration::ZERO;
    for (n, case) in cases.iter().enumerate() {
        slowest = slowest.max(refuse(&mut lone, n, case).await);
    }

    // The 1,600-column table is served without a filter, and with a select at the limit.
    let mut wide = open(&s, &channels).await;
    follow(&mut wide, "all", &table("wide"), "").await;
    let mut wide_sel = open(&s, &channels).await;
    let cols256 = (1..=256)
        .map(|i| format!("c{i}"))
        .collect::<Vec<_>>()
        .join(",");
    follow(
        &mut wide_sel,
        "sel",
        &table("wide"),
        &format!("select={cols256}"),
    )
    .await;
    db.execute("INSERT INTO wide (id, c1, c1599) VALUES (1, 11, 1599)", &[])
        .await
        .unwrap();
    let c = change(&frame_within(&mut wide, WAIT).await);
    let new = c["new"].as_object().unwrap();
    assert_eq!(
        (new.len(), &new["c1"], &new["c1599"]),
        (1600, &json!(11), &json!(1599))
    );
    let c = change(&frame_within(&mut wide_sel, WAIT).await);
    let new = c["new"].as_object().unwrap();
    assert_eq!(
        (new.len(), &new["id"], &new["c1"]),
        (257, &json!(1), &json!(11)),
        "the 256 selected columns and the key"
    );

    // The storm: three sockets refusing in a loop while a writer commits and a witness counts.
    let mut witness = open(&s, &channels).await;
    follow(&mut witness, "w", &table("target"), "a=gte.300&select=a").await;
    let mut storm = Vec::new();
    for k in 0..3 {
        let mut ws = open(&s, &channels).await;
        storm.push(tokio::spawn(async move {
            let cases = hostile_cases();
            let mut slowest = Duration::ZERO;
            for round in 0..ROUNDS {
                for (n, case) in cases.iter().enumerate() {
                    slowest =
                        slowest.max(refuse(&mut ws, (k * 1000 + round) * 100 + n, case).await);
                }
            }
            slowest
        }));
    }
    // The writer keeps committing until every hostile socket is done (at least ROWS rows), so
    // the witness's changes overlap the whole storm; a last matching row marks the end.
    let storm_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let db_uri = db_uri.clone();
        let storm_done = storm_done.clone();
        tokio::spawn(async move {
            let db = pg(&db_uri).await;
            let mut id = 0;
            while id < ROWS || !storm_done.load(std::sync::atomic::Ordering::Relaxed) {
                let mut sql = String::from("BEGIN;");
                for _ in 0..20 {
                    sql += &format!("INSERT INTO target (id, a, t) VALUES ({id}, {id}, 'r');");
                    id += 1;
                }
                sql += "COMMIT;";
                db.batch_execute(&sql).await.unwrap();
            }
            db.batch_execute("INSERT INTO target (id, a) VALUES (1000000, 1000000)")
                .await
                .unwrap();
            id
        })
    };
    let started = Instant::now();
    let reading = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.last() != Some(&1_000_000) {
            let c = change(&frame_within(&mut witness, WAIT).await);
            assert_eq!(c["op"], "INSERT");
            assert_eq!(c["new"].as_object().unwrap().len(), 2, "id and a: {c}");
            seen.push(c["new"]["id"].as_i64().unwrap());
        }
        (seen, witness)
    });
    // Meanwhile a well-behaved client subscribes and unsubscribes: how long its answers take.
    let mut polite = open(&s, &channels).await;
    let mut polite_slowest = Duration::ZERO;
    for n in 0..20 {
        let asked = Instant::now();
        let id = format!("p{n}");
        let (answer, _) = subscribe(
            &mut polite,
            &id,
            &table("target"),
            Some(json!("a=lt.-100&select=t")),
            None,
        )
        .await;
        assert_eq!(answer["type"], "subscribed", "{answer}");
        polite_slowest = polite_slowest.max(asked.elapsed());
        send(
            &mut polite,
            &json!({"type":"unsubscribe","id":id,"channel":table("target")}).to_string(),
        )
        .await;
        assert_eq!(
            frame_within(&mut polite, WAIT).await["type"],
            "unsubscribed"
        );
    }
    assert!(
        polite_slowest < Duration::from_secs(2),
        "a client's subscribe took {polite_slowest:?} under the storm"
    );
    let mut storm_slowest = Duration::ZERO;
    for h in storm {
        storm_slowest = storm_slowest.max(h.await.unwrap());
    }
    let storm_took = started.elapsed();
    storm_done.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.unwrap();
    let (seen, mut witness) = reading.await.unwrap();
    let witnessed = started.elapsed();
    let mut want: Vec<i64> = (300..written as i64).collect();
    want.push(1_000_000);
    assert_eq!(seen, want, "every match, once, in order");
    send(&mut witness, r#"{"type":"ping","id":"probe"}"#).await;
    assert_eq!(
        frame_within(&mut witness, WAIT).await,
        json!({"type":"pong","id":"probe"}),
        "nothing else"
    );
    // Nothing was dropped or executed.
    let tables: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('target', 'secret', 'wide')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 3);
    println!(
        "hostile: {} cases, slowest refusal alone {slowest:?}, under the storm {storm_slowest:?}; \
         {} refusals in {storm_took:?}; a polite subscribe at most {polite_slowest:?}; the \
         witness got all {} matching changes of {written} rows in {witnessed:?}",
        cases.len(),
        3 * ROUNDS * cases.len(),
        seen.len()
    );
    s.stop().await.unwrap();
}

/// Over SSE and compat websockets the URL's query string is the filter: a refused filter is an
/// HTTP 400 naming the problem, an unknown or unpublished table a 404, and a filtered stream
/// carries only the rows the filter lets through, moves marked, projected by `select=`.
#[tokio::test]
async fn url_row_filters_refuse_by_http_status_and_filter_sse_and_compat() {
    let db_uri = fresh_db().await;
    let db = pg(&db_uri).await;
    db.batch_execute(
        "CREATE TABLE target (id int PRIMARY KEY, a int, t text); \
         ALTER TABLE target REPLICA IDENTITY FULL; \
         CREATE TABLE secret (id int PRIMARY KEY); \
         CREATE PUBLICATION pgws FOR TABLE target;",
    )
    .await
    .unwrap();
    let s = wal_server(&db_uri, &[]).await;
    let channels: Vec<String> = ["target", "secret", "nope"]
        .iter()
        .map(|t| table(t))
        .collect();
    let tok = token(json!({"mode":"r","channels":channels}));
    for (query, status, says) in [
        ("titel=eq.x", 400, "titel"),
        ("a=eq.abc", 400, "abc"),
        ("or=(a.eq.1", 400, "byte"),
    ] {
        let path = format!("/{}/{tok}?{query}", table("target"));
        match crate::sse::open(s.addr, &path, &[]).await {
            Ok(_) => panic!("{query}: the stream opened"),
            Err((got, body)) => {
                assert_eq!(got, status, "{query}: {body}");
                assert!(body.contains(says), "{query}: {body}");
            }
        }
    }
    for name in ["nope", "secret"] {
        let path = format!("/{}/{tok}", table(name));
        match crate::sse::open(s.addr, &path, &[]).await {
            Ok(_) => panic!("{name}: the stream opened"),
            Err((got, body)) => assert_eq!(got, 404, "{name}: {body}"),
        }
        // A compat websocket too: a refusal, not an empty stream.
        let (got, body) = refused(&s.url(&path)).await;
        assert_eq!(got, 404, "{name}: {body}");
    }
    let (got, body) = refused(&s.url(&format!("/{}/{tok}?titel=eq.x", table("target")))).await;
    assert_eq!(got, 400, "{body}");
    assert!(body.contains("titel"), "{body}");
    let mut compat = connect(&s.url(&format!("/{}/{tok}?a=gte.5&select=a", table("target")))).await;
    let path = format!("/{}/{tok}?a=gte.5&select=a", table("target"));
    let mut sse = crate::sse::open(s.addr, &path, &[])
        .await
        .expect("a filtered stream opens");
    db.batch_execute(
        "INSERT INTO target VALUES (1, 1, 'x'), (2, 7, 'y'); UPDATE target SET a = 9 WHERE id = 1; \
         UPDATE target SET a = 0 WHERE id = 2;",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let ev = sse.next_event().await;
        let c: Value = serde_json::from_str(ev.data.as_deref().unwrap()).unwrap();
        got.push(json!([
            c["op"],
            c.get("move").cloned().unwrap_or(Value::Null),
            c["new"]
        ]));
    }
    let want = vec![
        json!(["INSERT", null, {"id":2,"a":7}]),
        json!(["UPDATE", "in", {"id":1,"a":9}]),
        json!(["UPDATE", "out", {"id":2,"a":0}]),
    ];
    assert_eq!(got, want, "event stream");
    let mut got = Vec::new();
    for _ in 0..3 {
        let c = next_json(&mut compat).await;
        got.push(json!([
            c["op"],
            c.get("move").cloned().unwrap_or(Value::Null),
            c["new"]
        ]));
    }
    assert_eq!(got, want, "compat websocket");
    s.stop().await.unwrap();
}

/// Without `REPLICA IDENTITY FULL` (docs/ROWS.md §4): an `UPDATE` carries no old row, so a filter
/// on a non-key column sees a row entering as an update (no `move`), cannot see one leaving (not
/// sent), and a `DELETE` is sent with the key only; a filter on the key alone stays exact, a key
/// change that leaves it is a `move` out; `TRUNCATE` reaches every subscription of the table.
#[tokio::test]
async fn without_replica_identity_full_filters_follow_the_documented_rules() {
    let db_uri = fresh_db().await;
    let db = pg(&db_uri).await;
    db.batch_execute(
        "CREATE TABLE plain (id int PRIMARY KEY, qty int, label text); \
         CREATE PUBLICATION pgws FOR TABLE plain;",
    )
    .await
    .unwrap();
    let s = wal_server(&db_uri, &[]).await;
    let channel = table("plain");
    let mut by_qty = open(&s, std::slice::from_ref(&channel)).await;
    follow(&mut by_qty, "q", &channel, "qty=gt.5").await;
    let mut by_key = open(&s, std::slice::from_ref(&channel)).await;
    follow(&mut by_key, "k", &channel, "id=eq.3").await;
    db.batch_execute(
        "INSERT INTO plain VALUES (1, 10, 'a'); INSERT INTO plain VALUES (2, 1, 'b'); \
         UPDATE plain SET qty = 7 WHERE id = 2; \
         UPDATE plain SET qty = 2 WHERE id = 1; \
         UPDATE plain SET label = 'z' WHERE id = 2; \
         DELETE FROM plain WHERE id = 1; \
         INSERT INTO plain VALUES (3, 0, 'c'); INSERT INTO plain VALUES (4, 9, 'd'); \
         UPDATE plain SET label = 'cc' WHERE id = 3; UPDATE plain SET label = 'dd' WHERE id = 4; \
         UPDATE plain SET id = 30 WHERE id = 3; DELETE FROM plain WHERE id = 4; \
         TRUNCATE plain;",
    )
    .await
    .unwrap();
    let brief = |frame: &Value| {
        let c = change(frame);
        let id = |row: &Value| row.get("id").cloned().unwrap_or(Value::Null);
        json!([
            c["op"],
            c.get("move").cloned().unwrap_or(Value::Null),
            id(&c["new"]),
            c["old"]
        ])
    };
    let mut qty = Vec::new();
    for _ in 0..7 {
        qty.push(brief(&frame_within(&mut by_qty, WAIT).await));
    }
    assert_eq!(
        qty,
        vec![
            json!(["INSERT", null, 1, null]),
            // Entering, seen as an update (upserts); no old row to compare with.
            json!(["UPDATE", null, 2, null]),
            // id 1 leaving (qty 2) cannot be seen: not sent.
            json!(["UPDATE", null, 2, null]),
            // A delete with a key-only old row is sent, whatever the filter says.
            json!(["DELETE", null, null, {"id":1}]),
            json!(["INSERT", null, 4, null]),
            json!(["UPDATE", null, 4, null]),
            json!(["DELETE", null, null, {"id":4}]),
        ],
        "{qty:#?}"
    );
    assert_eq!(
        change(&frame_within(&mut by_qty, WAIT).await)["op"],
        "TRUNCATE"
    );
    let mut key = Vec::new();
    for _ in 0..3 {
        key.push(brief(&frame_within(&mut by_key, WAIT).await));
    }
    assert_eq!(
        key,
        vec![
            json!(["INSERT", null, 3, null]),
            json!(["UPDATE", null, 3, null]),
            json!(["UPDATE", "out", 30, {"id":3}]),
        ],
        "{key:#?}"
    );
    assert_eq!(
        change(&frame_within(&mut by_key, WAIT).await)["op"],
        "TRUNCATE"
    );
    s.stop().await.unwrap();
}

/// A client moves to another node with a position from before the first change of its table
/// that node saw, where that change followed other changes in its transaction: the node has
/// streamed everything since it started, so the resume is exact (no `gap`), and the change
/// is replayed.
#[tokio::test]
async fn resuming_on_a_node_that_met_the_channel_after_the_position_is_exact() {
    let db_uri = fresh_db().await;
    let db = pg(&db_uri).await;
    db.batch_execute(
        "CREATE TABLE one (id int PRIMARY KEY); CREATE TABLE two (id int PRIMARY KEY); \
         CREATE PUBLICATION pgws FOR TABLE one, two;",
    )
    .await
    .unwrap();
    let a = wal_server(&db_uri, &[]).await;
    let b = wal_server(&db_uri, &[]).await;
    // Both nodes past a first change: positions from here on are within both streams.
    let mut warm = Vec::new();
    for node in [&a, &b] {
        let mut ws = open(node, &[table("one")]).await;
        follow(&mut ws, "warm", &table("one"), "").await;
        warm.push(ws);
    }
    db.batch_execute("INSERT INTO one VALUES (0)")
        .await
        .unwrap();
    for ws in &mut warm {
        frame_within(ws, WAIT).await;
    }
    let channel = table("two");
    let mut ws = open(&a, std::slice::from_ref(&channel)).await;
    let (answer, _) = subscribe(&mut ws, "1", &channel, None, None).await;
    let since = answer["position"].as_str().unwrap().to_string();
    drop(ws);
    db.batch_execute("BEGIN; INSERT INTO one VALUES (1); INSERT INTO two VALUES (1); COMMIT;")
        .await
        .unwrap();
    // B has delivered the transaction (its witness of `one` got it).
    let c = change(&frame_within(&mut warm[1], WAIT).await);
    assert_eq!(c["new"]["id"], 1);
    let mut moved = open(&b, std::slice::from_ref(&channel)).await;
    let (answer, replay) = subscribe(&mut moved, "2", &channel, None, Some(&since)).await;
    assert_eq!(answer["type"], "subscribed", "{answer}");
    assert_eq!(
        replay.len(),
        1,
        "the missed change alone, no gap: {replay:?}"
    );
    assert_eq!(change(&replay[0])["new"]["id"], 1);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// The same across a restart: the restarted node rebuilds its windows from its slot, meets the
/// channel at a change that follows another table's change in its transaction, and must still
/// replay it exactly after the client's position.
#[tokio::test]
async fn resuming_after_a_restart_on_a_channel_met_after_the_position_is_exact() {
    let db_uri = fresh_db().await;
    let db = pg(&db_uri).await;
    db.batch_execute(
        "CREATE TABLE one (id int PRIMARY KEY); CREATE TABLE two (id int PRIMARY KEY); \
         CREATE PUBLICATION pgws FOR TABLE one, two;",
    )
    .await
    .unwrap();
    let node = ["--node-id", "rows-met-late"];
    let a = wal_server(&db_uri, &node).await;
    let mut warm = open(&a, &[table("one")]).await;
    follow(&mut warm, "warm", &table("one"), "").await;
    db.batch_execute("INSERT INTO one VALUES (0)")
        .await
        .unwrap();
    frame_within(&mut warm, WAIT).await;
    let channel = table("two");
    let mut ws = open(&a, std::slice::from_ref(&channel)).await;
    let (answer, _) = subscribe(&mut ws, "1", &channel, None, None).await;
    let since = answer["position"].as_str().unwrap().to_string();
    drop((ws, warm));
    a.stop().await.unwrap();
    db.batch_execute("BEGIN; INSERT INTO one VALUES (1); INSERT INTO two VALUES (1); COMMIT;")
        .await
        .unwrap();
    let a = wal_server(&db_uri, &node).await;
    let mut back = open(&a, std::slice::from_ref(&channel)).await;
    let (answer, replay) = subscribe(&mut back, "2", &channel, None, Some(&since)).await;
    assert_eq!(answer["type"], "subscribed", "{answer}");
    assert_eq!(
        replay.len(),
        1,
        "the missed change alone, no gap: {replay:?}"
    );
    assert_eq!(change(&replay[0])["new"]["id"], 1);
    a.stop().await.unwrap();
}

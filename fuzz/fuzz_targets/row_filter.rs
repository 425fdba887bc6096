//! Row filters (PostgREST syntax): any text either parses and binds to the table or is refused
//! with an error; nothing panics, and evaluation is consistent:
//!
//! - a filter evaluates on a full row, on a row with NULLs and on rows lacking columns;
//! - lacking columns only ever turns a definite answer into `Unknown`, never into the opposite
//!   answer (the missing values could have been the ones in the full row);
//! - a refusal's message stays short (values are cut), whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgws::internals::{ColumnType, Filter, Limits, Verdict};
use serde_json::{Map, Value, json};

fn columns() -> Vec<(String, ColumnType)> {
    [
        ("id", 20),
        ("n", 23),
        ("title", 25),
        ("done", 16),
        ("price", 1700),
        ("score", 701),
        ("tags", 1009),
        ("nums", 1007),
        ("meta", 3802),
        ("raw", 114),
        ("at", 1184),
        ("day", 1082),
        ("uid", 2950),
        ("bin", 17),
        ("other", 1186),
    ]
    .into_iter()
    .map(|(n, o)| (n.to_owned(), ColumnType::of(o)))
    .collect()
}

fn full_row() -> Map<String, Value> {
    json!({
        "id": 7, "n": -3, "title": "Hello, World", "done": false, "price": 12.5, "score": "NaN",
        "tags": ["a", "b c", null], "nums": [[1, 2], [3, 4]], "meta": {"a": 1, "b": [1, 2]},
        "raw": {"x": 1}, "at": "2024-01-02T03:04:05.5+01:00", "day": "2024-01-02",
        "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "bin": "\\x0102ff", "other": "1 day"
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let cols = columns();
    let filter = match Filter::new(&text, &Limits::default(), cols.as_slice()) {
        Ok(f) => f,
        Err(e) => {
            assert!(e.to_string().len() < 400, "long refusal: {e}");
            return;
        }
    };
    let full = full_row();
    let whole = filter.eval(&full);
    assert_ne!(whole, Verdict::Unknown, "a full row is always decidable");
    let nulls: Map<String, Value> = full.keys().map(|k| (k.clone(), Value::Null)).collect();
    assert_ne!(filter.eval(&nulls), Verdict::Unknown);
    // Drop columns in a pattern chosen by the input.
    let seed = data
        .iter()
        .fold(0u32, |a, b| a.rotate_left(5) ^ u32::from(*b));
    for round in 0..4u32 {
        let partial: Map<String, Value> = full
            .iter()
            .enumerate()
            .filter(|(i, _)| (seed.rotate_left(round * 8) >> (i % 32)) & 1 == 1)
            .map(|(_, (k, v))| (k.clone(), v.clone()))
            .collect();
        let v = filter.eval(&partial);
        assert!(
            v == whole || v == Verdict::Unknown,
            "{v:?} vs {whole:?} for {text:?}"
        );
    }
    let _ = filter.select();
});

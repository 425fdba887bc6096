//! Arbitrary bytes as a stream position: `ResumeFrom::parse` (an SSE `Last-Event-ID` header or
//! `last-event-id` query parameter) and `Position::parse` (a v2 `since`), which read what clients
//! send back to resume.
//!
//! Invariants: nothing panics; text longer than 64 bytes is never a position; a position read
//! writes back as text that reads to the same position (and that text is the canonical form,
//! which reads to itself); a WAL position never has LSN 0; `Last-Event-ID` is the position read
//! from the trimmed text, anything else is `Unknown` (a `Gap`), never an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgws::internals::position::{Position, ResumeFrom};

fuzz_target!(|data: &[u8]| {
    // Header values and query strings reach the parser as `&str` (hyper refuses the rest).
    let text = String::from_utf8_lossy(data);
    let text: &str = &text;

    let parsed = Position::parse(text);
    match ResumeFrom::parse(text) {
        ResumeFrom::At(p) => assert_eq!(Position::parse(text.trim()), Some(p)),
        ResumeFrom::Unknown => assert_eq!(Position::parse(text.trim()), None),
    }
    let Some(p) = parsed else {
        return;
    };
    assert!(
        text.len() <= 64,
        "a {}-byte text read as a position",
        text.len()
    );
    let written = p.to_string();
    assert!(
        written.len() <= 64,
        "{written:?} is longer than a position may be"
    );
    assert_eq!(
        Position::parse(&written),
        Some(p),
        "{text:?} -> {written:?}"
    );
    assert_eq!(
        Position::parse(&written).map(|q| q.to_string()),
        Some(written.clone()),
        "the written form is not canonical"
    );
    if p.seq.major != 0 {
        assert!(
            written.contains('/'),
            "a WAL position written as a counter: {written:?}"
        );
    }
    if !p.seq.is_zero() {
        assert!(
            p.seq.before() < p.seq,
            "before() of {written:?} is not before it"
        );
    }
});

//! pgoutput decoding: any bytes decode to a message or a typed error, never a panic; a decoded
//! Relation decodes any tuple of its width to JSON or a typed error, and a Relation message's
//! decoding does not depend on trailing garbage being accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgws::internals::{PgoutputMessage, TupleValue, decode_pgoutput};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = decode_pgoutput(data) else {
        return;
    };
    // A message that decodes has no bytes left over: one more byte must be refused.
    let mut longer = data.to_vec();
    longer.push(0);
    assert!(decode_pgoutput(&longer).is_err());
    if let PgoutputMessage::Relation(rel) = msg {
        // The message's own text, reused as every column's value: exercises every type's
        // text parser with arbitrary input.
        let text = String::from_utf8_lossy(data).into_owned();
        for kind in 0..3 {
            let tuple: Vec<TupleValue> = rel
                .columns
                .iter()
                .map(|_| match kind {
                    0 => TupleValue::Null,
                    1 => TupleValue::UnchangedToast,
                    _ => TupleValue::Text(text.clone()),
                })
                .collect();
            let _ = rel.row(&tuple, kind == 2);
            let _ = rel.row(&tuple, false);
        }
    }
});

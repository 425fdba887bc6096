//! Arbitrary bytes as a websocket request path: `parse_path`, then `resolve` with the fixed HMAC
//! key, then `redact` (what the access log writes).
//!
//! Invariants: nothing panics; the token is a path segment; a grant obeys `check_grant`; `redact`
//! keeps every segment or replaces it by `<token>`, and a token that was accepted never survives it.
#![no_main]

#[path = "common.rs"]
mod common;

use common::{KEYS, NOW, Spec, check_grant};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // hyper hands pgws a `&str`; bytes that are not UTF-8 still make a (lossy) path.
    let path = String::from_utf8_lossy(data);
    let path: &str = &path;

    let redacted = pgws::internals::redact(path);
    let before: Vec<&str> = path.split('/').collect();
    let after: Vec<&str> = redacted.split('/').collect();
    assert_eq!(
        before.len(),
        after.len(),
        "redact changed the segments of {path:?}"
    );
    for (b, a) in before.iter().zip(&after) {
        assert!(a == b || *a == "<token>", "redact turned {b:?} into {a:?}");
        if b.split('.').count() == 3
            && b.split('.').take(2).all(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            })
        {
            assert_eq!(*a, "<token>", "a JWT-looking segment survived redact");
        }
    }
    assert_eq!(
        pgws::internals::redact(&redacted),
        redacted,
        "redact is not idempotent"
    );

    let Ok((channel, token)) = pgws::auth::parse_path(path) else {
        return;
    };
    assert!(!token.contains('/'), "token {token:?} spans segments");
    let rest = path.strip_prefix('/').unwrap_or(path);
    let offset = path.len() - rest.len();
    let token_index = offset.min(1) + usize::from(channel.is_some());
    assert_eq!(
        before[token_index], token,
        "token is not segment {token_index} of {path:?}"
    );

    let result = pgws::auth::resolve(
        &KEYS,
        &pgws::auth::Rules::default(),
        channel.as_deref(),
        token,
        NOW,
    );
    if let Ok(grant) = &result {
        check_grant(grant, &Spec::default(), channel.as_deref(), NOW);
        // In direct channel mode each granted channel is LISTENed as a quoted identifier: it must
        // read back as exactly the channel name. (A NUL byte cannot travel in a query at all; see
        // docs/SECURITY.md, "Fuzzing", for what that did.)
        for c in &grant.channels {
            let q = pgws::internals::quote_ident(c);
            let inner = q
                .strip_prefix('"')
                .and_then(|q| q.strip_suffix('"'))
                .expect("quoted");
            assert!(
                !inner.replace("\"\"", "").contains('"'),
                "lone quote in {q:?}"
            );
            assert_eq!(
                inner.replace("\"\"", "\""),
                *c,
                "quote_ident({c:?}) = {q:?}"
            );
        }
        if !token.is_empty() {
            assert_eq!(
                after[token_index], "<token>",
                "an accepted token reaches the log"
            );
        }
    }
});

//! Structured tokens: claims built from fuzz data (or raw payload bytes), a header, signed with the
//! fixed secret (or another key), then optionally mangled; `resolve` with or without a URL channel.
//!
//! Invariants: nothing panics; every grant obeys `check_grant`; a cleanly signed HS256 token gets
//! exactly what the README's rules say (`common::model`, with fuzzed `Rules`: leeway, audience,
//! issuer, claim paths, default mode); HS384/HS512 with the 32-byte secret and
//! tokens signed by another key are refused; a mangled token is never accepted (no signature
//! bypass).
#![no_main]

#[path = "common.rs"]
mod common;

use arbitrary::Arbitrary;
use base64::Engine as _;
use common::{Json, KEYS, NOW, SECRET, Spec, Text, check_grant, model, observed};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

#[derive(Arbitrary, Debug)]
enum Field {
    Str(Text),
    Other(Json),
}

impl Field {
    fn get(&self) -> Value {
        match self {
            Field::Str(t) => Value::String(t.get()),
            Field::Other(j) => j.get(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Time {
    Past(u32),
    Future(u32),
    Now,
    Float(f64),
    Other(Json),
}

impl Time {
    fn get(&self) -> Value {
        match self {
            Time::Past(s) => Value::from(NOW as i64 - i64::from(*s)),
            Time::Future(s) => Value::from(NOW as i64 + 1 + i64::from(*s)),
            Time::Now => Value::from(NOW as i64),
            Time::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Time::Other(j) => j.get(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Channels {
    Strings(Vec<Text>),
    Mixed(Vec<Json>),
    Other(Json),
}

#[derive(Arbitrary, Debug)]
struct Claims {
    mode: Option<Field>,
    channel: Option<Field>,
    channels: Option<Channels>,
    exp: Option<Time>,
    nbf: Option<Time>,
    iat: Option<Time>,
    extra: Vec<(Text, Json)>,
}

impl Claims {
    fn get(&self) -> Map<String, Value> {
        let mut m = Map::new();
        // Extra claims first, so the named ones win (and the fuzzer can still set any key).
        for (k, v) in &self.extra {
            m.insert(k.get(), v.get());
        }
        if let Some(f) = &self.mode {
            m.insert("mode".into(), f.get());
        }
        if let Some(f) = &self.channel {
            m.insert("channel".into(), f.get());
        }
        match &self.channels {
            None => {}
            Some(Channels::Strings(v)) => {
                m.insert(
                    "channels".into(),
                    v.iter().map(|t| Value::String(t.get())).collect(),
                );
            }
            Some(Channels::Mixed(v)) => {
                m.insert("channels".into(), v.iter().map(Json::get).collect());
            }
            Some(Channels::Other(j)) => {
                m.insert("channels".into(), j.get());
            }
        }
        for (name, t) in [("exp", &self.exp), ("nbf", &self.nbf), ("iat", &self.iat)] {
            if let Some(t) = t {
                m.insert(name.into(), t.get());
            }
        }
        m
    }
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
enum Hs {
    HS256,
    HS384,
    HS512,
}

impl Hs {
    fn alg(self) -> Algorithm {
        match self {
            Hs::HS256 => Algorithm::HS256,
            Hs::HS384 => Algorithm::HS384,
            Hs::HS512 => Algorithm::HS512,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum HeaderSpec {
    /// `{"alg":…,"typ":"JWT"}` plus an optional `kid` and extra fields.
    Standard {
        alg: Hs,
        kid: Option<Text>,
        extra: Vec<(Text, Json)>,
    },
    /// Any header bytes; signed with HS256.
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Payload {
    Built(Claims),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum SignWith {
    Secret,
    Other(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Mangle {
    Flip { at: usize, byte: u8 },
    Truncate(usize),
    Insert { at: usize, text: String },
    Remove { at: usize, len: u8 },
    SwapParts(u8, u8),
    DropSignature,
    Whole(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    header: HeaderSpec,
    payload: Payload,
    sign_with: SignWith,
    requested: Option<Text>,
    mangle: Option<Mangle>,
    rules: Spec,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn char_boundary(s: &str, at: usize) -> usize {
    let mut at = at % (s.len() + 1);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn mangle(token: &str, m: &Mangle) -> String {
    let mut t = token.to_string();
    match m {
        Mangle::Flip { at, byte } => {
            let mut bytes = t.into_bytes();
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] ^= byte | 1;
            }
            t = String::from_utf8_lossy(&bytes).into_owned();
        }
        Mangle::Truncate(n) => t.truncate(char_boundary(&t, *n)),
        Mangle::Insert { at, text } => t.insert_str(char_boundary(&t, *at), text),
        Mangle::Remove { at, len } => {
            let a = char_boundary(&t, *at);
            let b = char_boundary(&t, a + usize::from(*len));
            if b > a {
                t.replace_range(a..b, "");
            }
        }
        Mangle::SwapParts(i, j) => {
            let mut parts: Vec<&str> = token.split('.').collect();
            let n = parts.len();
            parts.swap(usize::from(*i) % n, usize::from(*j) % n);
            t = parts.join(".");
        }
        Mangle::DropSignature => {
            if let Some(dot) = t.rfind('.') {
                t.truncate(dot + 1);
            }
        }
        Mangle::Whole(s) => t = s.clone(),
    }
    t
}

fuzz_target!(|input: Input| {
    let (alg, header_bytes) = match &input.header {
        HeaderSpec::Standard { alg, kid, extra } => {
            let mut h = Map::new();
            for (k, v) in extra {
                h.insert(k.get(), v.get());
            }
            h.insert("typ".into(), "JWT".into());
            h.insert("alg".into(), format!("{:?}", alg.alg()).into());
            if let Some(kid) = kid {
                h.insert("kid".into(), kid.get().into());
            }
            (*alg, serde_json::to_vec(&h).unwrap())
        }
        HeaderSpec::Raw(bytes) => (Hs::HS256, bytes.clone()),
    };
    let claims = match &input.payload {
        Payload::Built(c) => Some(c.get()),
        Payload::Raw(_) => None,
    };
    let payload_bytes = match (&input.payload, &claims) {
        (Payload::Raw(bytes), _) => bytes.clone(),
        (_, Some(c)) => serde_json::to_vec(c).unwrap(),
        _ => unreachable!(),
    };
    let by_secret = match &input.sign_with {
        SignWith::Secret => true,
        SignWith::Other(k) => k.as_slice() == SECRET,
    };
    let key = match &input.sign_with {
        SignWith::Secret => EncodingKey::from_secret(SECRET),
        SignWith::Other(k) => EncodingKey::from_secret(k),
    };
    let message = format!("{}.{}", b64(&header_bytes), b64(&payload_bytes));
    let Ok(signature) = jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg.alg()) else {
        return;
    };
    let token = format!("{message}.{signature}");
    let requested = input.requested.as_ref().map(Text::get);
    let requested = requested.as_deref();

    let rules = input.rules.rules();
    let result = pgws::auth::resolve(&KEYS, &rules, requested, &token, NOW);
    if let Ok(g) = &result {
        check_grant(g, &input.rules, requested, NOW);
    }
    let clean_header = matches!(
        &input.header,
        HeaderSpec::Standard { extra, .. } if extra.is_empty()
    );
    match (&claims, alg, by_secret) {
        // A well-formed HS256 token with the right key: exactly the README's rules.
        (Some(c), Hs::HS256, true) if clean_header => {
            assert_eq!(
                observed(&result),
                model(c, &input.rules, requested, NOW),
                "claims {c:?}"
            );
            if let Ok(g) = &result {
                assert!(common::json_eq(
                    &Value::Object(g.claims.clone()),
                    &Value::Object(c.clone())
                ));
            }
        }
        // HS384/HS512 need 48/64-byte keys: the 32-byte secret verifies nothing.
        (_, Hs::HS384 | Hs::HS512, _) => assert!(result.is_err(), "{alg:?} with a 32-byte key"),
        // Another key: never accepted.
        (_, _, false) => assert!(
            result.is_err(),
            "a token signed with another key was accepted"
        ),
        _ => {}
    }

    if let Some(m) = &input.mangle {
        let bad = mangle(&token, m);
        let result = pgws::auth::resolve(&KEYS, &rules, requested, &bad, NOW);
        if let Ok(g) = &result {
            check_grant(g, &input.rules, requested, NOW);
            assert!(
                bad.is_empty() || (bad == token && by_secret),
                "mangled token accepted: {bad:?} (signed: {token:?})"
            );
        }
    }
});

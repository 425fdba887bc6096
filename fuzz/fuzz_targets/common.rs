//! Shared by the fuzz targets: the fixed key, the fixed clock, and a structured JSON generator.
#![allow(dead_code)]

use std::sync::LazyLock;

use arbitrary::Arbitrary;
use pgws::auth::grant::{ClaimPath, Rules};
use pgws::auth::{AuthError, Grant, KeySet};
use serde_json::{Map, Number, Value};

/// The secret of pgws's own unit tests (32 bytes: long enough for HS256 only).
pub const SECRET: &[u8] = b"reallyreallyreallyreallyverysafe";

/// A fixed "now" (2023-11-14), so that runs are reproducible.
pub const NOW: f64 = 1_700_000_000.0;

/// Built once: `KeySet::from_secret` is not what these targets measure.
pub static KEYS: LazyLock<KeySet> =
    LazyLock::new(|| KeySet::from_secret(SECRET).expect("the fixed secret is a valid key"));

/// Strings that matter to pgws, so the fuzzer does not have to guess them.
const WORDS: &[&str] = &[
    "r",
    "w",
    "rw",
    "",
    "chat",
    "test",
    "a",
    "b",
    "admin",
    "RW",
    "mode",
    "channel",
    "channels",
    "exp",
    "nbf",
    "iat",
    "sub",
    "aud",
    "iss",
    "message_delivered_at",
    "listen",
    "é",
    "a b",
    "\u{0}",
    "\"",
    "\\",
    "/",
    ".",
    "%20",
    "app",
    "/app/mode",
    "/app/channels",
    "/app/0",
    "~0",
    "~1",
    "/a~1b",
    "a/b",
    "https://example.com/mode",
];

/// A string that is either one of [`WORDS`] or anything.
#[derive(Arbitrary, Debug, Clone)]
pub enum Text {
    Word(u8),
    Any(String),
}

impl Text {
    pub fn get(&self) -> String {
        match self {
            Text::Word(i) => WORDS[*i as usize % WORDS.len()].to_string(),
            Text::Any(s) => s.clone(),
        }
    }
}

/// Any JSON value (floats that are not finite become `null`, as serde_json does).
#[derive(Arbitrary, Debug, Clone)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(Text),
    Arr(Vec<Json>),
    Obj(Vec<(Text, Json)>),
}

impl Json {
    pub fn get(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Int(i) => Value::from(*i),
            Json::Uint(u) => Value::from(*u),
            Json::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Json::Str(t) => Value::String(t.get()),
            Json::Arr(v) => Value::Array(v.iter().map(Json::get).collect()),
            Json::Obj(v) => Value::Object(v.iter().map(|(k, v)| (k.get(), v.get())).collect()),
        }
    }
}

/// JSON equality where numbers may differ in their last bit: serde_json's default float parser
/// is not always correctly rounded (feature `float_roundtrip`), and pgws does not ask for it.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => {
                    // Relative for normal numbers; absolute for subnormals, which have fewer bits.
                    let d = (x - y).abs();
                    d <= x.abs().max(y.abs()) * 4.0 * f64::EPSILON || d <= 4.0 * f64::MIN_POSITIVE
                }
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, a)| y.get(k).is_some_and(|b| json_eq(a, b)))
        }
        _ => a == b,
    }
}

/// The token rules under test, in plain data (turned into `pgws::auth::Rules` by [`Spec::rules`]).
#[derive(Arbitrary, Debug, Clone, Default)]
pub struct Spec {
    pub leeway: u16,
    pub audience: Option<Vec<Text>>,
    pub issuer: Option<Vec<Text>>,
    pub mode: Option<Text>,
    pub channel: Option<Text>,
    pub channels: Option<Text>,
    pub default_mode: Option<Text>,
}

/// A resolved claim-path setting: the configured text, or the claim's own name by default.
fn path(t: &Option<Text>, default: &str) -> String {
    t.as_ref().map_or_else(|| default.to_string(), Text::get)
}

impl Spec {
    pub fn rules(&self) -> Rules {
        Rules {
            audience: self
                .audience
                .as_ref()
                .map(|v| v.iter().map(Text::get).collect()),
            issuer: self
                .issuer
                .as_ref()
                .map(|v| v.iter().map(Text::get).collect()),
            leeway: f64::from(self.leeway),
            mode: ClaimPath::new(&path(&self.mode, "mode")),
            channel: ClaimPath::new(&path(&self.channel, "channel")),
            channels: ClaimPath::new(&path(&self.channels, "channels")),
            default_mode: self.default_mode.as_ref().map(Text::get),
        }
    }
}

/// A claim by configured location: a top-level key, or an RFC 6901 JSON Pointer when it starts
/// with `/` (serde_json's implementation, not pgws's).
fn lookup<'a>(claims: &'a Value, at: &str) -> Option<&'a Value> {
    if at.starts_with('/') {
        claims.pointer(at)
    } else {
        claims.get(at)
    }
}

/// What `resolve` must answer for verified claims, written from the README's rules (not from the
/// code): time claims with the leeway (`exp` first, then `nbf`, then `iat`; a non-number is an
/// error); `aud`/`iss` in the accepted lists when configured; a string `mode` (or the default mode
/// when there is no mode claim at all); then `channel` followed by `channels` (only when every
/// element is a string), duplicates removed; a URL channel must be among them, or anything without
/// channel claims.
#[derive(Debug, PartialEq)]
pub enum Expected {
    Granted {
        mode: &'static str,
        channels: Vec<String>,
    },
    Expired,
    MissingMode,
    NoAllowedChannels,
    Invalid,
}

fn mode_of(s: &str) -> &'static str {
    match s {
        "r" => "r",
        "w" => "w",
        "rw" => "rw",
        _ => "",
    }
}

fn listed(v: Option<&Value>, accepted: &[String]) -> bool {
    match v {
        Some(Value::String(s)) => accepted.contains(s),
        Some(Value::Array(l)) => l
            .iter()
            .filter_map(Value::as_str)
            .any(|s| accepted.iter().any(|a| a == s)),
        _ => false,
    }
}

/// Nesting depth of JSON text: `{}` is 1, `{"a":[]}` is 2.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => depth_of_object(o),
        _ => 0,
    }
}

fn depth_of_object(o: &Map<String, Value>) -> usize {
    1 + o.values().map(depth).max().unwrap_or(0)
}

pub fn model(
    claims: &Map<String, Value>,
    spec: &Spec,
    requested: Option<&str>,
    now: f64,
) -> Expected {
    // jsonwebtoken reads `exp`, `nbf` and `sub` while verifying, and its reader gives up on the
    // whole claim set when `sub` is an array or object, or `exp`/`nbf` a non-empty one: the token
    // is refused as malformed (JWTClaimsSetDecodeError) before pgws looks at the times. Such
    // claims are refused either way; only the message differs. (Found by this fuzzer, see
    // docs/SECURITY.md.)
    let container = |v: Option<&Value>, empty_ok: bool| match v {
        Some(Value::Array(a)) => !(empty_ok && a.is_empty()),
        Some(Value::Object(o)) => !(empty_ok && o.is_empty()),
        _ => false,
    };
    // serde_json refuses JSON nested 128 levels deep or more (its recursion limit), so such a
    // claim set is malformed too. (Also found by this fuzzer.)
    if depth_of_object(claims) >= 128 {
        return Expected::Invalid;
    }
    if container(claims.get("sub"), false)
        || container(claims.get("exp"), true)
        || container(claims.get("nbf"), true)
    {
        return Expected::Invalid;
    }
    let leeway = f64::from(spec.leeway);
    let time = |name: &str| -> Result<Option<f64>, ()> {
        match claims.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(_) => Err(()),
        }
    };
    match time("exp") {
        Err(()) => return Expected::Invalid,
        Ok(Some(exp)) if now >= exp + leeway => return Expected::Expired,
        Ok(_) => {}
    }
    match time("nbf") {
        Err(()) => return Expected::Invalid,
        Ok(Some(nbf)) if nbf > now + leeway => return Expected::Invalid,
        Ok(_) => {}
    }
    match time("iat") {
        Err(()) => return Expected::Invalid,
        Ok(Some(iat)) if iat > now + leeway => return Expected::Invalid,
        Ok(_) => {}
    }
    let rules = spec.rules();
    if let Some(aud) = &rules.audience {
        if !listed(claims.get("aud"), aud) {
            return Expected::Invalid;
        }
    }
    if let Some(iss) = &rules.issuer {
        if !listed(claims.get("iss"), iss) {
            return Expected::Invalid;
        }
    }
    let all = Value::Object(claims.clone());
    let mode = match (lookup(&all, &path(&spec.mode, "mode")), &rules.default_mode) {
        (Some(Value::String(m)), _) => mode_of(m),
        (None, Some(d)) => mode_of(d),
        _ => return Expected::MissingMode,
    };
    let mut allowed: Vec<String> = Vec::new();
    if let Some(Value::String(c)) = lookup(&all, &path(&spec.channel, "channel")) {
        allowed.push(c.clone());
    }
    if let Some(Value::Array(list)) = lookup(&all, &path(&spec.channels, "channels")) {
        if list.iter().all(Value::is_string) {
            for c in list {
                let c = c.as_str().unwrap().to_string();
                if !allowed.contains(&c) {
                    allowed.push(c);
                }
            }
        }
    }
    let channels = match requested {
        Some(r) if allowed.is_empty() || allowed.iter().any(|c| c == r) => vec![r.to_string()],
        Some(_) => vec![],
        None => allowed,
    };
    if channels.is_empty() {
        Expected::NoAllowedChannels
    } else {
        Expected::Granted { mode, channels }
    }
}

/// The outcome of `resolve` in the model's terms.
pub fn observed(r: &Result<Grant, AuthError>) -> Expected {
    match r {
        Ok(g) => Expected::Granted {
            mode: g.mode.as_str(),
            channels: g.channels.clone(),
        },
        Err(AuthError::Expired) => Expected::Expired,
        Err(AuthError::MissingMode) => Expected::MissingMode,
        Err(AuthError::NoAllowedChannels) => Expected::NoAllowedChannels,
        Err(AuthError::Invalid(_)) => Expected::Invalid,
    }
}

/// What holds for every grant, whatever the token: channels non-empty and without duplicates; a
/// URL channel is the only channel; `exp` (plus leeway) is in the future; and the grant is what
/// the rules say for the claims it carries.
pub fn check_grant(g: &Grant, spec: &Spec, requested: Option<&str>, now: f64) {
    assert!(!g.channels.is_empty(), "a grant without channels: {g:?}");
    let mut seen = std::collections::HashSet::new();
    for c in &g.channels {
        assert!(
            seen.insert(c),
            "duplicate channel {c:?} in {:?}",
            g.channels
        );
    }
    if let Some(r) = requested {
        assert_eq!(g.channels, [r], "a URL channel must be the only channel");
    }
    if let Some(exp) = g.exp {
        assert!(
            now < exp,
            "granted at {now} although exp (with leeway) is {exp}"
        );
    }
    assert_eq!(
        model(&g.claims, spec, requested, now),
        observed(&Ok(g.clone())),
        "grant disagrees with the rules for its own claims {:?}",
        g.claims
    );
}

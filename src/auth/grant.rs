//! What a verified token grants: the mode, the channels, and the claims copied into messages.
//!
//! The resolution table is the original's (spec §3.4): a `channel` claim followed by the
//! `channels` claim; a URL channel must be among them, and a token without channel claims may open
//! any URL channel. Unlike the original, duplicate channels are removed (the original subscribed
//! and NOTIFYed twice).

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::{AuthError, KeySet};

/// What a socket may do. Any `mode` string other than `r`, `w`, `rw` is accepted and grants
/// nothing, as in the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// Receives messages of its channels.
    pub read: bool,
    /// May publish to its channels.
    pub write: bool,
}

impl Mode {
    fn parse(s: &str) -> Self {
        Self {
            read: s == "r" || s == "rw",
            write: s == "w" || s == "rw",
        }
    }

    /// The claim text for this mode (`r`, `w`, `rw`, or empty).
    pub fn as_str(&self) -> &'static str {
        match (self.read, self.write) {
            (true, true) => "rw",
            (true, false) => "r",
            (false, true) => "w",
            (false, false) => "",
        }
    }
}

/// An accepted token, resolved against the URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// What the socket may do.
    pub mode: Mode,
    /// The channels the socket is bound to, without duplicates, in claim order.
    pub channels: Vec<String>,
    /// Every claim of the token (copied into the `claims` of each message).
    pub claims: Map<String, Value>,
    /// `exp`, when it is a number: the socket is closed with 3001 at that instant.
    pub exp: Option<f64>,
}

/// Splits a websocket request path into the requested channel and the token (spec §2.2).
///
/// As the original: the leading `/` is dropped and the rest split on `/`; with two or more
/// segments the first is the channel and the second the token, with one segment it is the token.
/// Unlike the original, the query string is not part of the token, and the channel is
/// percent-decoded (so `/my%20chan/…` opens `my chan`). One segment without a `.` cannot be a JWT
/// (`/chat`, a channel whose token was forgotten): that is [`NO_TOKEN`] instead of the
/// original's decode error (both start with `Error: `).
pub fn parse_path(path: &str) -> Result<(Option<Cow<'_, str>>, &str), AuthError> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let mut segments = rest.split('/');
    let first = segments.next().unwrap_or("");
    match segments.next() {
        Some(token) => {
            let channel = percent_encoding::percent_decode_str(first)
                .decode_utf8()
                .map_err(|_| {
                    AuthError::Invalid("channel name is not valid percent-encoded UTF-8".into())
                })?;
            Ok((Some(channel), token))
        }
        None if !first.is_empty() && !first.contains('.') => {
            Err(AuthError::Invalid(NO_TOKEN.into()))
        }
        None => Ok((None, first)),
    }
}

/// The refusal of a path that names no token (after `Error: `).
pub const NO_TOKEN: &str =
    "no token: expected /<channel>/<token> or /<token>, or an Authorization: Bearer header";

/// Where a claim is found: a top-level key (which may itself contain dots or slashes, as the
/// namespaced claims of identity providers do, e.g. `https://example.com/mode`), or a JSON
/// Pointer into nested claims when it starts with `/` (e.g. `/app_metadata/pgws/mode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath(String);

impl ClaimPath {
    /// A claim location as configured.
    pub fn new(path: &str) -> Self {
        Self(path.to_string())
    }

    /// The claim's value, if present.
    pub fn get<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        let Some(pointer) = self.0.strip_prefix('/') else {
            return claims.get(&self.0);
        };
        let mut parts = pointer
            .split('/')
            .map(|p| p.replace("~1", "/").replace("~0", "~"));
        let mut value = claims.get(&parts.next()?)?;
        for part in parts {
            value = match value {
                Value::Object(m) => m.get(&part)?,
                Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(value)
    }
}

/// How tokens are judged beyond their signature. The default is the original's behaviour.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Accepted `aud` values (`PGWS_JWT_AUDIENCE`); `None`: not checked.
    pub audience: Option<Vec<String>>,
    /// Accepted `iss` values (`PGWS_JWT_ISSUER`); `None`: not checked.
    pub issuer: Option<Vec<String>>,
    /// Clock-skew allowance in seconds for `exp`, `nbf`, `iat` (`PGWS_JWT_LEEWAY`).
    pub leeway: f64,
    /// Where `mode` is (`PGWS_CLAIM_MODE`).
    pub mode: ClaimPath,
    /// Where `channel` is (`PGWS_CLAIM_CHANNEL`).
    pub channel: ClaimPath,
    /// Where `channels` is (`PGWS_CLAIM_CHANNELS`).
    pub channels: ClaimPath,
    /// Mode for tokens without a mode claim (`PGWS_DEFAULT_MODE`); `None`: "Missing mode".
    pub default_mode: Option<String>,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            audience: None,
            issuer: None,
            leeway: 0.0,
            mode: ClaimPath::new("mode"),
            channel: ClaimPath::new("channel"),
            channels: ClaimPath::new("channels"),
            default_mode: None,
        }
    }
}

/// Verifies `token` and resolves the channels for the requested one, at time `now` (seconds).
pub fn resolve(
    keys: &KeySet,
    rules: &Rules,
    requested: Option<&str>,
    token: &str,
    now: f64,
) -> Result<Grant, AuthError> {
    let mut grant = verify(keys, rules, token, now)?;
    let allowed = std::mem::take(&mut grant.channels);
    grant.channels = match requested {
        // A table's channel must be named by the token, never opened by "any channel".
        Some(r) if allowed.is_empty() && !crate::channel::is_table(r) => vec![r.to_string()],
        Some(_) if allowed.is_empty() => Vec::new(),
        Some(r) => allowed.into_iter().filter(|c| c == r).collect(),
        None => allowed,
    };
    if grant.channels.is_empty() {
        return Err(AuthError::NoAllowedChannels);
    }
    Ok(grant)
}

/// Verifies `token` (signature, times, audience, issuer, mode) without resolving it against a
/// URL: the grant's `channels` are the ones its claims name (`channel`, then `channels`, without
/// duplicates), empty when it names none, which protocol v2 reads as "any channel" (as a URL
/// channel is allowed for such a token). Protocol v2 grants, and refreshes, with it.
pub fn verify(keys: &KeySet, rules: &Rules, token: &str, now: f64) -> Result<Grant, AuthError> {
    // The original special-cases the empty token: an empty claim set, hence "Missing mode"
    // (also with a default mode: an absent token never grants anything).
    if token.is_empty() {
        return Err(AuthError::MissingMode);
    }
    let claims = keys.verify(token)?;
    let exp = check_times(&claims, now, rules.leeway)?;
    check_listed(
        &claims,
        "aud",
        rules.audience.as_deref(),
        "JWTNotInAudience",
    )?;
    check_listed(&claims, "iss", rules.issuer.as_deref(), "JWTNotInIssuer")?;
    let mode = match (rules.mode.get(&claims), &rules.default_mode) {
        (Some(Value::String(m)), _) => Mode::parse(m),
        (None, Some(default)) => Mode::parse(default),
        _ => return Err(AuthError::MissingMode),
    };
    let mut allowed: Vec<String> = Vec::new();
    if let Some(Value::String(c)) = rules.channel.get(&claims) {
        allowed.push(c.clone());
    }
    if let Some(Value::Array(list)) = rules.channels.get(&claims)
        && list.iter().all(Value::is_string)
    {
        allowed.extend(list.iter().filter_map(Value::as_str).map(str::to_string));
    }
    let mut seen = std::collections::HashSet::new();
    allowed.retain(|c| seen.insert(c.clone()));
    Ok(Grant {
        mode,
        channels: allowed,
        claims,
        exp,
    })
}

/// `aud` / `iss` must be (or, for `aud`, contain) one of the accepted values when configured.
fn check_listed(
    claims: &Map<String, Value>,
    name: &str,
    accepted: Option<&[String]>,
    error: &str,
) -> Result<(), AuthError> {
    let Some(accepted) = accepted else {
        return Ok(());
    };
    let ok = match claims.get(name) {
        Some(Value::String(v)) => accepted.contains(v),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|v| accepted.iter().any(|a| a == v)),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(AuthError::Invalid(error.into()))
    }
}

/// `exp`, `nbf` and `iat`; with the default zero leeway exactly the original: valid while
/// `now < exp`.
fn check_times(
    claims: &Map<String, Value>,
    now: f64,
    leeway: f64,
) -> Result<Option<f64>, AuthError> {
    let number = |name: &str| -> Result<Option<f64>, AuthError> {
        match claims.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(other) => Err(AuthError::Invalid(format!(
                "JWTClaimsSetDecodeError \"{name} must be a numeric date, got {other}\""
            ))),
        }
    };
    let exp = number("exp")?;
    if exp.is_some_and(|exp| now >= exp + leeway) {
        return Err(AuthError::Expired);
    }
    if number("nbf")?.is_some_and(|nbf| nbf > now + leeway) {
        return Err(AuthError::Invalid("JWTNotYetValid".into()));
    }
    if number("iat")?.is_some_and(|iat| iat > now + leeway) {
        return Err(AuthError::Invalid("JWTIssuedAtFuture".into()));
    }
    Ok(exp.map(|exp| exp + leeway))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &[u8] = b"reallyreallyreallyreallyverysafe";

    fn keys() -> KeySet {
        KeySet::from_secret(SECRET).unwrap()
    }

    fn token(claims: Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn grant(requested: Option<&str>, claims: Value) -> Result<Grant, AuthError> {
        resolve(
            &keys(),
            &Rules::default(),
            requested,
            &token(claims),
            1_700_000_000.0,
        )
    }

    fn grant_with(
        rules: &Rules,
        requested: Option<&str>,
        claims: Value,
    ) -> Result<Grant, AuthError> {
        resolve(&keys(), rules, requested, &token(claims), 1_700_000_000.0)
    }

    #[test]
    fn audience_issuer_and_leeway() {
        let rules = Rules {
            audience: Some(vec!["pgws".into()]),
            issuer: Some(vec!["https://idp.example".into()]),
            leeway: 30.0,
            ..Rules::default()
        };
        let ok =
            json!({"mode":"r","aud":["x","pgws"],"iss":"https://idp.example","exp":1_699_999_990});
        assert!(grant_with(&rules, Some("c"), ok).is_ok());
        let e = grant_with(
            &rules,
            Some("c"),
            json!({"mode":"r","aud":"other","iss":"https://idp.example"}),
        );
        assert_eq!(e.unwrap_err().to_string(), "Error: JWTNotInAudience");
        let e = grant_with(&rules, Some("c"), json!({"mode":"r","aud":"pgws"}));
        assert_eq!(e.unwrap_err().to_string(), "Error: JWTNotInIssuer");
        let e = grant_with(
            &rules,
            Some("c"),
            json!({"mode":"r","aud":"pgws","iss":"https://idp.example","exp":1_699_999_960}),
        );
        assert_eq!(e.unwrap_err(), AuthError::Expired);
    }

    #[test]
    fn claim_paths_and_default_mode() {
        let rules = Rules {
            mode: ClaimPath::new("https://example.com/mode"),
            channels: ClaimPath::new("/app_metadata/pgws/channels"),
            default_mode: Some("r".into()),
            ..Rules::default()
        };
        let g = grant_with(
            &rules,
            None,
            json!({
                "https://example.com/mode": "rw",
                "app_metadata": {"pgws": {"channels": ["a", "b"]}}
            }),
        )
        .unwrap();
        assert_eq!(g.mode.as_str(), "rw");
        assert_eq!(g.channels, ["a", "b"]);
        let g = grant_with(&rules, Some("x"), json!({"sub":"u"})).unwrap();
        assert_eq!(g.mode.as_str(), "r");
        // An empty token never gets the default mode.
        assert_eq!(
            resolve(&keys(), &rules, Some("x"), "", 0.0).unwrap_err(),
            AuthError::MissingMode
        );
        assert_eq!(
            ClaimPath::new("/a~1b/0").get(json!({"a/b":[7]}).as_object().unwrap()),
            Some(&json!(7))
        );
    }

    // Spec §10 rows 3–9.
    #[test]
    fn expired_token() {
        let e = grant(None, json!({"mode":"r","channel":"test","exp":1})).unwrap_err();
        assert_eq!(e.to_string(), "Token expired");
    }

    #[test]
    fn any_channel_without_channel_claims() {
        let g = grant(Some("test"), json!({"mode":"r"})).unwrap();
        assert_eq!(g.channels, ["test"]);
        assert_eq!(
            g.mode,
            Mode {
                read: true,
                write: false
            }
        );
        assert_eq!(Value::Object(g.claims), json!({"mode":"r"}));
    }

    #[test]
    fn old_style_channel_claim() {
        let g = grant(Some("test"), json!({"mode":"r","channel":"test"})).unwrap();
        assert_eq!(g.channels, ["test"]);
    }

    /// A table's channel is granted only when the token names it.
    #[test]
    fn table_channels_must_be_named() {
        let e = grant(Some("table:public.todos"), json!({"mode":"r"}));
        assert_eq!(e.unwrap_err().to_string(), "No allowed channels");
        let g = grant(
            Some("table:public.todos"),
            json!({"mode":"r","channels":["table:public.todos"]}),
        )
        .unwrap();
        assert_eq!(g.channels, ["table:public.todos"]);
        assert_eq!(
            grant(Some("chat"), json!({"mode":"r"})).unwrap().channels,
            ["chat"]
        );
    }

    #[test]
    fn all_channels_of_the_token() {
        let g = grant(None, json!({"mode":"r","channels":["test","another test"]})).unwrap();
        assert_eq!(g.channels, ["test", "another test"]);
    }

    #[test]
    fn requested_channel_from_claims() {
        let g = grant(
            Some("test"),
            json!({"mode":"r","channels":["test","test2"]}),
        )
        .unwrap();
        assert_eq!(g.channels, ["test"]);
        let e = grant(
            Some("notAllowed"),
            json!({"mode":"r","channels":["test","test2"]}),
        );
        assert_eq!(e.unwrap_err().to_string(), "No allowed channels");
    }

    #[test]
    fn missing_mode() {
        let e = grant(Some("test"), json!({"channels":["test","test2"]})).unwrap_err();
        assert_eq!(e.to_string(), "Missing mode");
        let e = grant(Some("test"), json!({"mode":1})).unwrap_err();
        assert_eq!(e, AuthError::MissingMode);
        assert_eq!(
            resolve(&keys(), &Rules::default(), None, "", 0.0).unwrap_err(),
            AuthError::MissingMode
        );
    }

    #[test]
    fn no_channels_without_url_channel() {
        let e = grant(None, json!({"mode":"rw"})).unwrap_err();
        assert_eq!(e, AuthError::NoAllowedChannels);
    }

    #[test]
    fn channel_then_channels_deduplicated() {
        let g = grant(
            None,
            json!({"mode":"rw","channel":"a","channels":["b","a","b"]}),
        )
        .unwrap();
        assert_eq!(g.channels, ["a", "b"]);
        let g = grant(None, json!({"mode":"rw","channels":["a","a"]})).unwrap();
        assert_eq!(g.channels, ["a"]);
    }

    #[test]
    fn non_string_channels_claim_is_ignored() {
        let g = grant(Some("x"), json!({"mode":"r","channels":["a",1]})).unwrap();
        assert_eq!(g.channels, ["x"]);
    }

    #[test]
    fn unknown_mode_grants_nothing_but_is_accepted() {
        let g = grant(Some("x"), json!({"mode":"admin"})).unwrap();
        assert_eq!(
            g.mode,
            Mode {
                read: false,
                write: false
            }
        );
    }

    #[test]
    fn time_claims() {
        let now = 1_700_000_000.0;
        assert_eq!(
            grant(None, json!({"mode":"r","channel":"a","nbf": now + 100.0})).unwrap_err(),
            AuthError::Invalid("JWTNotYetValid".into())
        );
        assert_eq!(
            grant(None, json!({"mode":"r","channel":"a","iat": now + 100.0})).unwrap_err(),
            AuthError::Invalid("JWTIssuedAtFuture".into())
        );
        assert!(grant(None, json!({"mode":"r","channel":"a","exp":"soon"})).is_err());
        let g = grant(None, json!({"mode":"r","channel":"a","exp": now + 5.0})).unwrap();
        assert_eq!(g.exp, Some(now + 5.0));
        // exactly at exp: expired
        assert_eq!(
            grant(None, json!({"mode":"r","channel":"a","exp": now})).unwrap_err(),
            AuthError::Expired
        );
    }

    #[test]
    fn path_forms() {
        let p = |s| {
            let (c, t) = parse_path(s).unwrap();
            (c.map(|c| c.into_owned()), t.to_string())
        };
        assert_eq!(p("/chat/tok"), (Some("chat".into()), "tok".into()));
        assert_eq!(p("/a.b.c"), (None, "a.b.c".into()));
        assert_eq!(
            parse_path("/chanonly").unwrap_err().to_string(),
            "Error: no token: expected /<channel>/<token> or /<token>, or an Authorization: Bearer header"
        );
        assert_eq!(p("/"), (None, "".into()));
        assert_eq!(p("/chat/"), (Some("chat".into()), "".into()));
        assert_eq!(p("/a/b/c"), (Some("a".into()), "b".into()));
        assert_eq!(p("//tok"), (Some("".into()), "tok".into()));
        assert_eq!(p("/my%20chan/tok"), (Some("my chan".into()), "tok".into()));
        assert!(parse_path("/%ff/tok").is_err());
    }
}

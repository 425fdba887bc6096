//! Connection strings without their passwords, for help, errors and logs.
//!
//! Both libpq forms are handled: the URL (`postgres://user:secret@host/db?password=…`, the
//! password in the user part or as a query parameter) and key=value (`password=secret`,
//! `password='with spaces'`). The password becomes `***`; everything else is kept, so that the
//! text still tells the user which server and database it is about.

/// Keys whose values are secrets.
const SECRET_KEYS: [&str; 2] = ["password", "sslpassword"];

/// What is shown instead of a secret.
const MASK: &str = "***";

/// `conninfo` with every password replaced by `***`. A `@file` reference is returned as is.
pub fn redact_conninfo(conninfo: &str) -> String {
    if conninfo.starts_with('@') {
        return conninfo.to_string();
    }
    match url_rest(conninfo) {
        Some(rest) => {
            let scheme = &conninfo[..conninfo.len() - rest.len()];
            format!("{scheme}{}", redact_url(rest))
        }
        None => redact_key_value(conninfo),
    }
}

/// `text` (an error message about `conninfo`) with the connection string and each of its
/// passwords replaced, should a library have echoed them. Passwords shorter than four bytes are
/// left alone: replacing them would garble the message more than it would protect.
pub fn scrub(text: &str, conninfo: &str) -> String {
    let mut out = if conninfo.is_empty() {
        text.to_string()
    } else {
        text.replace(conninfo, &redact_conninfo(conninfo))
    };
    for secret in passwords(conninfo) {
        if secret.len() >= 4 {
            out = out.replace(&secret, MASK);
        }
    }
    out
}

/// The part after `postgres://` or `postgresql://`, if `s` is a URL.
fn url_rest(s: &str) -> Option<&str> {
    ["postgresql://", "postgres://"].iter().find_map(|scheme| {
        s.get(..scheme.len())
            .filter(|p| p.eq_ignore_ascii_case(scheme))
            .map(|_| &s[scheme.len()..])
    })
}

/// The URL after the scheme, redacted. As libpq, the user part ends at an `@` before the first
/// `/`; the last such `@` is taken, so that a password with an unencoded `@` is hidden whole.
fn redact_url(rest: &str) -> String {
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (mut out, tail) = match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user_info = &rest[..at];
            let user = match user_info.find(':') {
                Some(colon) => format!("{}:{MASK}", &user_info[..colon]),
                None => user_info.to_string(),
            };
            (format!("{user}@"), &rest[at + 1..])
        }
        None => (String::new(), rest),
    };
    match tail.find('?') {
        Some(q) => {
            out.push_str(&tail[..=q]);
            let params: Vec<String> = tail[q + 1..]
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((key, _)) if is_secret_key(key) => format!("{key}={MASK}"),
                    _ => param.to_string(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(tail),
    }
    out
}

fn is_secret_key(key: &str) -> bool {
    SECRET_KEYS
        .iter()
        .any(|k| k.eq_ignore_ascii_case(key.trim()))
}

/// One `key = value` pair of a key=value connection string, as byte offsets.
struct Pair {
    key: (usize, usize),
    value: (usize, usize),
}

/// Splits a key=value string as libpq does: whitespace between pairs, optional whitespace
/// around `=`, values single-quoted (with `\'` and `\\`) or running to the next whitespace (with
/// `\` escaping). Returns the pairs read and, when the rest does not parse, where it starts.
fn pairs(s: &str) -> (Vec<Pair>, Option<usize>) {
    let b = s.as_bytes();
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let mut out = Vec::new();
    let mut i = skip_ws(0);
    while i < b.len() {
        let key_start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = (key_start, i);
        i = skip_ws(i);
        if i >= b.len() || b[i] != b'=' {
            return (out, Some(key_start));
        }
        i = skip_ws(i + 1);
        let value_start = i;
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            loop {
                match b.get(i) {
                    None => return (out, Some(key_start)),
                    Some(b'\\') => i += 2,
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
        }
        let i_end = i.min(b.len());
        out.push(Pair {
            key,
            value: (value_start, i_end),
        });
        i = skip_ws(i_end);
    }
    (out, None)
}

fn redact_key_value(s: &str) -> String {
    let (pairs, broken) = pairs(s);
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    for p in &pairs {
        if is_secret_key(&s[p.key.0..p.key.1]) {
            out.push_str(&s[copied..p.value.0]);
            out.push_str(MASK);
            copied = p.value.1;
        }
    }
    match broken {
        // What does not parse may hold a secret libpq would have read differently: hide it.
        Some(at) => {
            out.push_str(&s[copied..at]);
            out.push_str(MASK);
        }
        None => out.push_str(&s[copied..]),
    }
    out
}

/// The passwords in `conninfo`, as written and (URL form) percent-decoded, quotes and escapes
/// removed.
fn passwords(conninfo: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut push = |raw: &str| {
        found.push(raw.to_string());
        if let Ok(decoded) = percent_encoding::percent_decode_str(raw).decode_utf8()
            && decoded != raw
        {
            found.push(decoded.into_owned());
        }
    };
    if let Some(rest) = url_rest(conninfo) {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some((_, password)) = rest[..at].split_once(':')
        {
            push(password);
        }
        if let Some((_, query)) = rest.split_once('?') {
            for (key, value) in query.split('&').filter_map(|p| p.split_once('=')) {
                if is_secret_key(key) {
                    push(value);
                }
            }
        }
    } else {
        for p in pairs(conninfo).0 {
            if is_secret_key(&conninfo[p.key.0..p.key.1]) {
                let raw = &conninfo[p.value.0..p.value.1];
                let inner = raw
                    .strip_prefix('\'')
                    .and_then(|r| r.strip_suffix('\''))
                    .unwrap_or(raw);
                push(raw);
                push(&inner.replace("\\'", "'").replace("\\\\", "\\"));
            }
        }
    }
    found.retain(|p| !p.is_empty());
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_masked() {
        for (input, shown) in [
            (
                "postgres://u:secretpw@db.example.com:5432/app",
                "postgres://u:***@db.example.com:5432/app",
            ),
            (
                "postgresql://u:secretpw@h1,h2/app?sslmode=require",
                "postgresql://u:***@h1,h2/app?sslmode=require",
            ),
            ("postgres://u:p@ss:w@rd@host/db", "postgres://u:***@host/db"),
            (
                "postgres://u@host/db?sslmode=require&password=secretpw",
                "postgres://u@host/db?sslmode=require&password=***",
            ),
            ("POSTGRES://u:secretpw@host", "POSTGRES://u:***@host"),
            ("postgres://u@host/db", "postgres://u@host/db"),
            ("postgres://host/db", "postgres://host/db"),
            ("postgres:///db?host=/tmp", "postgres:///db?host=/tmp"),
        ] {
            assert_eq!(redact_conninfo(input), shown, "{input}");
        }
    }

    #[test]
    fn key_value_passwords_are_masked() {
        for (input, shown) in [
            (
                "host=db user=u password=secretpw dbname=app",
                "host=db user=u password=*** dbname=app",
            ),
            (
                "host=db password = 'with spaces \\' and quote' dbname=app",
                "host=db password = *** dbname=app",
            ),
            ("password=secretpw", "password=***"),
            ("PASSWORD=x sslpassword=y", "PASSWORD=*** sslpassword=***"),
            ("host=db user=u", "host=db user=u"),
            ("host=db password='unterminated", "host=db ***"),
            ("host=db password secretpw", "host=db ***"),
            ("@/run/secrets/db", "@/run/secrets/db"),
        ] {
            assert_eq!(redact_conninfo(input), shown, "{input}");
        }
    }

    #[test]
    fn scrub_removes_echoed_passwords() {
        let uri = "postgres://u:sec%72etpw@h/db";
        assert_eq!(
            scrub(&format!("cannot use {uri}: bad secretpw"), uri),
            "cannot use postgres://u:***@h/db: bad ***"
        );
        let kv = "host=h password='two words'";
        assert_eq!(scrub("saw two words", kv), "saw ***");
        assert_eq!(scrub("nothing secret", "host=h"), "nothing secret");
    }
}

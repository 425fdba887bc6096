//! `ChannelName`: a channel name that PostgreSQL can use, checked once.
//!
//! One set of rules for every place a name comes from (settings, tokens, URLs): not empty, at
//! most 63 bytes (PostgreSQL truncates longer identifiers, so a LISTEN on a longer name would
//! silently listen to the truncated one and `pg_notify` refuses it), no control characters (no
//! use in a name, and a NUL would break the LISTEN connection; a newline would let a client forge
//! log lines). [`ChannelName::quoted`] is the only way a name enters SQL text (`LISTEN`, which
//! takes no parameters); everywhere else names travel as bound parameters.

use std::fmt;

/// PostgreSQL's identifier limit (`NAMEDATALEN - 1`).
pub const MAX_CHANNEL_BYTES: usize = 63;

/// Why a name is not a usable channel name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    /// The empty string.
    #[error("is empty")]
    Empty,
    /// Longer than [`MAX_CHANNEL_BYTES`].
    #[error("is longer than PostgreSQL's 63-byte channel name limit")]
    TooLong(usize),
    /// Holds a control character (NUL included).
    #[error("contains a control character")]
    Control,
}

impl ChannelNameError {
    /// The refusal text a client gets for a channel of its token or URL (the wording is part of
    /// the HTTP interface: tests and clients match on it).
    pub fn client_text(self) -> String {
        match self {
            Self::Empty => "Error: empty channel name".into(),
            Self::TooLong(n) => format!("Error: channel name longer than 63 bytes: {n} bytes"),
            Self::Control => "Error: channel name contains a control character".into(),
        }
    }
}

/// A checked channel name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Box<str>);

impl ChannelName {
    /// Checks `name` against PostgreSQL's rules and pgws's.
    pub fn new(name: &str) -> Result<Self, ChannelNameError> {
        check(name)?;
        Ok(Self(name.into()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a quoted SQL identifier (see [`quote_ident`]).
    pub fn quoted(&self) -> String {
        quote_ident(&self.0)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<&str> for ChannelName {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for ChannelName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Checks a name without keeping it.
pub fn check(name: &str) -> Result<(), ChannelNameError> {
    if name.is_empty() {
        Err(ChannelNameError::Empty)
    } else if name.len() > MAX_CHANNEL_BYTES {
        Err(ChannelNameError::TooLong(name.len()))
    } else if name.chars().any(char::is_control) {
        Err(ChannelNameError::Control)
    } else {
        Ok(())
    }
}

/// Quotes an identifier for SQL text the way PostgreSQL does: in double quotes, with embedded
/// double quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// How the channel of a table's changes begins (`table:<schema>.<table>`, `PGWS_SOURCE=wal`).
/// Such a channel is granted only to a token that names it: the "any channel" of a token
/// without channel claims never opens a table.
pub const TABLE_PREFIX: &str = "table:";

/// Whether `name` is a table's channel ([`TABLE_PREFIX`]).
pub fn is_table(name: &str) -> bool {
    name.starts_with(TABLE_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        let problem = |n: &str| check(n).err().map(ChannelNameError::client_text);
        assert!(problem("chat").is_none());
        assert!(problem("my chan").is_none());
        assert!(problem("").is_some());
        assert!(problem(&"x".repeat(64)).is_some());
        assert!(problem("a\0b").unwrap().contains("control"));
        assert!(problem("x\n2026 ERROR forged").is_some());
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("chat"), "\"chat\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            quote_ident("x\"; DROP TABLE t; --"),
            "\"x\"\"; DROP TABLE t; --\""
        );
        assert_eq!(ChannelName::new("a\"b").unwrap().quoted(), "\"a\"\"b\"");
    }
}

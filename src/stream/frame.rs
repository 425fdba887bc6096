//! `Frame`: one message's text on its way to clients, allocated once and shared by reference
//! count with every client it goes to.
//!
//! The text is kept in the form the websocket transport sends (tungstenite's `Utf8Bytes`, a
//! `Bytes` known to be UTF-8), so that a notification is checked and copied once for all its
//! sockets; nothing outside this file and the transports sees that type.

use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A message's text, cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Utf8Bytes);

impl Frame {
    /// The text (transports that re-encode it, such as Server-Sent Events, read it here).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Length in bytes (what queue limits count).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The websocket transport's form of the text (no copy).
    pub(crate) fn into_ws_text(self) -> Utf8Bytes {
        self.0
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Self {
        Self(Utf8Bytes::from(text))
    }
}

impl From<&str> for Frame {
    fn from(text: &str) -> Self {
        Self(Utf8Bytes::from(text))
    }
}

//! The original protocol's handler: every text the client sends is a message to publish on all
//! of its channels (spec §5.1); a binary frame is published when it is UTF-8 text. Answers are
//! `Error` events for what could not be published (the [`Client`] queues them).

use super::Handler;
use crate::client::Client;

/// The compat protocol: no state beyond the client's.
pub struct Compat;

impl Handler for Compat {
    async fn text(&mut self, client: &mut Client, text: &str) {
        client.publish(text).await;
    }

    async fn binary(&mut self, client: &mut Client, bytes: &[u8]) {
        match std::str::from_utf8(bytes) {
            Ok(text) => client.publish(text).await,
            Err(_) => client.refuse(
                "invalid_utf8",
                "binary message is not valid UTF-8 text; it was not published",
                None,
            ),
        }
    }
}

//! `unsubscribe`: leave a channel (and its presence). No message of the channel follows the
//! answer.
//!
//! What it owns: leaving one channel on request. What it must never do: queue the answer
//! before the socket left the hub (so no message of the channel can follow it), or leave a
//! channel the socket does not follow silently (the client's view would drift from ours).

use serde_json::Value;

use super::{Code, Refused, Session};
use crate::client::Client;
use crate::stream::Frame;
use crate::wire::v2::{self as wire, Id};

impl Session {
    /// Leaves `channel`; `Ok`: the `unsubscribed` answer, `Err`: the socket did not follow it.
    pub(super) fn unsubscribe(
        &mut self,
        client: &mut Client,
        id: &Id,
        channel: &str,
    ) -> Result<Frame, Refused> {
        // `part` leaves the hub first (under its lock), so once it returns nothing more of the
        // channel is queued; what was queued before still goes out, before the answer.
        if !client.part(channel) {
            return Err(Refused::new(
                Code::NotSubscribed,
                format!(
                    "this socket does not follow the channel {}",
                    // Quoted as JSON: the name comes from the client and may hold anything.
                    Value::String(channel.to_string())
                ),
            ));
        }
        // After the hub: presence's `leave` event for the others may name this socket.
        self.leave_presence(channel);
        Ok(wire::unsubscribed(id, channel))
    }
}

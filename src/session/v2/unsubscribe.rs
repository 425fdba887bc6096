//! `unsubscribe`: leave a channel (and its presence). No message of the channel follows the
//! answer.

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
        if !client.part(channel) {
            return Err(Refused::new(
                Code::NotSubscribed,
                format!(
                    "this socket does not follow the channel {}",
                    Value::String(channel.to_string())
                ),
            ));
        }
        self.leave_presence(channel);
        Ok(wire::unsubscribed(id, channel))
    }
}

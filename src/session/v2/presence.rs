//! `presence_set`: set this socket's member's state on a channel it follows (docs/PROTOCOL.md,
//! "Presence"). The state is any JSON value of at most [`MAX_STATE`] bytes (compact), `null`
//! clears it; a socket sets at most [`RATE`] states a second (a burst of as many). Answered
//! `presence_set` once the state is in place, or an `error`.

use std::time::Instant;

use serde_json::Value;

use super::{Code, Refused, Session};
use crate::client::Client;
use crate::presence::table::MAX_STATE;
use crate::stream::Frame;
use crate::wire::v2::{self as wire, Id};

/// States a socket may set per second (and in one burst): enough for a typing flag or a cursor
/// a few times a second, not a stream (publish is for streams).
pub const RATE: f64 = 10.0;

/// A socket's allowance of state changes (a token bucket).
#[derive(Debug)]
pub(super) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(now: Instant) -> Self {
        Self {
            tokens: RATE,
            at: now,
        }
    }

    /// Takes one token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * RATE;
        self.tokens = (self.tokens + earned).min(RATE);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Session {
    /// Sets the state (see the module header); `Ok`: the answer, `Err`: the refusal.
    pub(super) fn presence_set(
        &mut self,
        client: &Client,
        id: &Id,
        channel: &str,
        state: &str,
    ) -> Result<Frame, Refused> {
        if client.state().presence.is_none() {
            return Err(Refused::new(
                Code::PresenceDisabled,
                "presence is off on this server (PGWS_PRESENCE=false)",
            ));
        }
        let membership = self
            .presence
            .as_ref()
            .and_then(|list| list.iter().find(|m| m.channel() == channel))
            .ok_or_else(|| {
                Refused::new(
                    Code::NotSubscribed,
                    format!(
                        "this socket does not follow the channel {}",
                        Value::String(channel.to_string())
                    ),
                )
            })?;
        if state.len() > MAX_STATE {
            return Err(Refused::new(
                Code::TooLarge,
                format!(
                    "a presence state is at most {MAX_STATE} bytes of JSON; this one is {}",
                    state.len()
                ),
            ));
        }
        let now = Instant::now();
        let bucket = self
            .state_rate
            .get_or_insert_with(|| Box::new(Bucket::full(now)));
        if !bucket.take(now) {
            return Err(Refused::new(
                Code::RateLimited,
                format!("a socket sets at most {RATE} presence states a second"),
            ));
        }
        membership.set_state(state).map_err(|_| {
            Refused::new(
                Code::Anonymous,
                "this socket's member is anonymous (its token has no usable PGWS_PRESENCE_CLAIM \
                 claim, or the channel names 1000 members already), and an anonymous member has \
                 no state",
            )
        })?;
        Ok(wire::presence_set(id, channel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t = Instant::now();
        let mut b = Bucket::full(t);
        assert!((0..10).all(|_| b.take(t)));
        assert!(!b.take(t));
        assert!(!b.take(t + Duration::from_millis(50)));
        assert!(b.take(t + Duration::from_millis(101)));
        assert!(!b.take(t + Duration::from_millis(101)));
        // Idle time earns at most a full burst.
        let later = t + Duration::from_secs(60);
        assert!((0..10).all(|_| b.take(later)));
        assert!(!b.take(later));
    }
}

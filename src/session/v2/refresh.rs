//! `refresh`: replace the token in band before its `exp`. The new token must verify and keep the
//! subject; every subscription is checked again under it, and those it no longer allows are left
//! with a `left` event before the answer.
//!
//! What it owns: the switch from one token to the next on a live socket. What it must never
//! do: change anything when the new token is refused (the old one stays in force until its own
//! `exp`), let a socket change subject (the per-subject slot, the database subject and the
//! presence identity were all taken for the old `sub`), or keep a subscription the new token
//! does not allow. The client may rely on every `left` event coming before `refreshed`, so
//! that when it reads `refreshed` its list of channels is already the server's.

use super::Session;
use super::access::{self, Access, Action};
use crate::auth::{self, AuthError};
use crate::client::Client;
use crate::stream::Frame;
use crate::wire::v2::{self as wire, Id};

impl Session {
    /// Replaces the token: re-checks every subscription under the new grant (leaving, with a
    /// `left` event, those it no longer allows), then answers `refreshed`. A token that does not
    /// verify is answered with an error and changes nothing.
    pub(super) async fn refresh(&mut self, client: &mut Client, id: &Id, token: &str) -> Frame {
        let state = client.state();
        // `verify`, not `resolve`: a v2 token's grant is its own claims, with no channel taken
        // from a URL.
        let grant = match auth::verify(
            &state.keys(),
            &state.config.rules,
            token,
            auth::now_seconds(),
        ) {
            Ok(g) => g,
            // Its own code: a client that refreshes late can tell "get a fresher token" apart from
            // "this token is wrong".
            Err(AuthError::Expired) => {
                return wire::error(
                    id,
                    "token_expired",
                    "the new token has expired already; the current one stays until its exp",
                );
            }
            Err(e) => {
                // Info: a bad token is the client's problem, but worth a line when debugging one.
                tracing::info!(conn = client.id(), error = %e, "v2: refresh refused");
                return wire::error(
                    id,
                    "bad_token",
                    &format!("{e}; the current token stays until its exp"),
                );
            }
        };
        // Built aside and swapped in only at the end: until then every check below still runs
        // against a socket that holds the old token.
        let access = Access::new(&grant, state.presence.as_ref().map(|p| p.claim()));
        // Compared as JSON values: `"42"` and `42` are different subjects. A missing `sub` must
        // stay missing.
        if access.sub() != self.access.sub() {
            return wire::error(
                id,
                "subject_changed",
                "the new token's sub differs from the current one's; open a new socket for another subject",
            );
        }
        let mut gone = Vec::new();
        // A copy of the list: leaving a channel changes it. Every channel is checked (the
        // database is asked once per channel, when it is on) before any is left, so a failure
        // half-way cannot leave the socket between two tokens' views.
        for channel in client.channels().to_vec() {
            if let Err(denied) = access::check(
                client.state(),
                client.authz(),
                &access,
                &channel,
                Action::Subscribe,
            )
            .await
            {
                gone.push((channel, denied));
            }
        }
        for (channel, denied) in gone {
            // Left in the hub (no message of the channel follows the `left` event), in presence,
            // and in the client's list that authorization re-checks.
            client.part(&channel);
            self.leave_presence(&channel);
            client
                .outbox()
                .push(wire::left(&channel, denied.code.as_str(), &denied.message));
        }
        // Mode, expiry and claims (for the envelopes of later publishes) together; the
        // session's timer picks the new `exp` up from the client.
        client.regrant(access.mode, access.exp, &grant.claims);
        *self.access = access;
        wire::refreshed(
            id,
            self.access.mode.as_str(),
            self.access.channels.as_deref(),
            self.access.exp,
        )
    }
}

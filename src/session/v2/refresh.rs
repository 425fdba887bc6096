//! `refresh`: replace the token in band before its `exp`. The new token must verify and keep the
//! subject; every subscription is checked again under it, and those it no longer allows are left
//! with a `left` event before the answer.

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
        let grant = match auth::verify(
            &state.keys(),
            &state.config.rules,
            token,
            auth::now_seconds(),
        ) {
            Ok(g) => g,
            Err(AuthError::Expired) => {
                return wire::error(
                    id,
                    "token_expired",
                    "the new token has expired already; the current one stays until its exp",
                );
            }
            Err(e) => {
                tracing::info!(conn = client.id(), error = %e, "v2: refresh refused");
                return wire::error(
                    id,
                    "bad_token",
                    &format!("{e}; the current token stays until its exp"),
                );
            }
        };
        let access = Access::new(&grant, state.presence.as_ref().map(|p| p.claim()));
        if access.sub() != self.access.sub() {
            return wire::error(
                id,
                "subject_changed",
                "the new token's sub differs from the current one's; open a new socket for another subject",
            );
        }
        let mut gone = Vec::new();
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
            client.part(&channel);
            self.leave_presence(&channel);
            client
                .outbox()
                .push(wire::left(&channel, denied.code.as_str(), &denied.message));
        }
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

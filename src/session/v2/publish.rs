//! `publish`: send to one channel and be answered once PostgreSQL took it (`ack`) or did not
//! (`nack`). The answer is owed, not awaited: the socket goes on serving its other requests and
//! the loop delivers answers in the order the publishes were sent ([`super::Handler`]).

use std::time::Duration;

use super::access::{self, Action};
use super::{Answer, Code, Refused, Session};
use crate::channel::ChannelName;
use crate::client::Client;
use crate::publish::{Outcome, Publish, PublishError};
use crate::stream::Frame;
use crate::wire::v2::{self as wire, Id};

/// How long a publish waits for PostgreSQL before it is answered `database_unavailable`.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Publishes awaiting PostgreSQL on one socket; more are answered `rate_limited`.
const MAX_PENDING: usize = 1024;

/// A publish's outcome as its `ack` or `nack`: the write function's refusal with its code and
/// SQLSTATE; `too_large` when PostgreSQL found the notification too long, `shutting_down` when
/// the pool is closed, `database_unavailable` for any other failure (no connection, the
/// statement failed, no answer in time).
fn render(id: &Id, channel: &str, outcome: Outcome) -> Frame {
    match outcome {
        Ok(_) => wire::ack(id, channel, None),
        Err(PublishError::Refused(e)) => wire::nack_sql(
            id,
            channel,
            e.code.as_str(),
            &e.message,
            e.sqlstate.as_deref(),
        ),
        Err(e) => {
            let code = match e {
                PublishError::TooLarge(_) => "too_large",
                PublishError::ShuttingDown => "shutting_down",
                _ => "database_unavailable",
            };
            wire::nack(id, channel, code, &e.to_string())
        }
    }
}

impl Session {
    /// Sends `data` to `channel` and owes the answer (see the module header); `Err`: the
    /// `nack` to answer now.
    pub(super) async fn publish(
        &mut self,
        client: &mut Client,
        id: &Id,
        channel: &str,
        data: &str,
    ) -> Result<(), Refused> {
        let name = ChannelName::new(channel)
            .map_err(|e| Refused::new(Code::BadChannel, e.client_text()))?;
        access::check(
            client.state(),
            client.authz(),
            &self.access,
            &name,
            Action::Publish,
        )
        .await?;
        if self.pending.as_ref().map_or(0, |p| p.len()) >= MAX_PENDING {
            return Err(Refused::new(
                Code::RateLimited,
                format!("{MAX_PENDING} publishes of this socket already await PostgreSQL"),
            ));
        }
        // The write permission was checked above (`access::check`), once. With a write function
        // (authorization by the database), the database answers instead of a NOTIFY: its
        // refusal is the nack, with its SQLSTATE.
        let request = client
            .publish_request(&name, data)
            .map_err(|too_large| Refused::new(Code::TooLarge, too_large.message(data.len())))?;
        let (id, channel) = (id.clone(), channel.to_string());
        let answer: Answer = if matches!(request, Publish::Write { .. }) {
            // Waiting for a write slot happens in the answer, not here: the socket keeps
            // serving its other requests meanwhile.
            let publisher = client.state().publisher.clone();
            let key = client.id();
            Box::pin(async move {
                let outcome = publisher.publish(key, request).await.await;
                Some(render(&id, &channel, outcome))
            })
        } else {
            let pending = client.state().publisher.publish(client.id(), request).await;
            Box::pin(
                async move { Some(render(&id, &channel, pending.within(ANSWER_TIMEOUT).await)) },
            )
        };
        self.pending.get_or_insert_default().push_back(answer);
        Ok(())
    }
}

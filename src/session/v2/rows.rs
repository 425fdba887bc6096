//! The row-subscription part of `subscribe`: a table's channel with its filter, made into the
//! view the hub joins (holding what it receives when a snapshot comes first), or refused with
//! the code a client branches on; and the snapshot itself, read while the session goes on.

use std::sync::Arc;

use super::{Answer, Code, Refused};
use crate::client::Client;
use crate::rows::catalog::TableInfo;
use crate::rows::seam::Seam;
use crate::rows::selector::RowSubscription;
use crate::rows::snapshot::{self, HOLD_CAP, SnapshotError};
use crate::rows::subscribe::{Prepared, RowsRefusal, prepare};
use crate::state::AppState;
use crate::stream::{Frame, Kept};
use crate::wire::v2 as wire;

/// The row subscription to the table channel `channel` with `filter`.
pub(super) async fn subscription(
    state: &AppState,
    channel: &str,
    filter: &str,
) -> Result<Prepared, Refused> {
    prepare(state.catalog.as_deref(), channel, filter)
        .await
        .map_err(|e| {
            let code = match e {
                RowsRefusal::UnknownTable(_) => Code::UnknownTable,
                RowsRefusal::BadFilter(_) => Code::BadFilter,
                RowsRefusal::Unavailable(_) => Code::DatabaseUnavailable,
                RowsRefusal::NeedsV2 => Code::BadRequest,
            };
            Refused::new(code, e.to_string())
        })
}

/// What a snapshot needs once the subscription has joined: the subscription's twin (the hub
/// has the original) and the table.
pub(super) struct Pending {
    sub: RowSubscription,
    info: Arc<TableInfo>,
    schema: String,
    table: String,
}

/// Splits `prepared` into the view the hub joins (holding when `snapshot`; under per-row
/// authorization when the client has a database subject) and what the snapshot reads with.
pub(super) fn split(
    client: &Client,
    prepared: Prepared,
    snapshot: bool,
) -> (crate::stream::View, Option<Pending>) {
    let Prepared {
        sub,
        info,
        schema,
        table,
    } = prepared;
    let sub = match (&client.state().rls, client.authz()) {
        (Some(rls), Some(authz)) => {
            let membership = rls.join(&format!("{schema}.{table}"), authz.subject());
            sub.with_rls(membership, withheld)
        }
        _ => sub,
    };
    if !snapshot {
        return (sub.into_view(), None);
    }
    // Holding first: the twin shares its seam (and, under RLS, its known keys).
    let sub = sub.holding(HOLD_CAP);
    let pending = Pending {
        sub: sub.twin(),
        info,
        schema,
        table,
    };
    (sub.into_view(), Some(pending))
}

/// A v2 subscriber's notice of changes withheld because their authorization failed: a `gap`
/// (reason `authorization_failed`), so a client knows its view may miss rows and can re-snapshot.
fn withheld(channel: &str, message: &str) -> Frame {
    wire::authorization_gap(channel, message)
}

/// Ends the holding at once (an exact resume needs no snapshot): what was held follows.
pub(super) fn release_now(client: &Client, channel: &str) {
    client
        .state()
        .hub
        .release_view(channel, client.outbox_handle(), |kept, _| match kept {
            Kept::Frames(frames) => frames,
            Kept::Overflowed => Vec::new(),
        });
}

/// The snapshot, as an answer the session awaits while it goes on serving: pages go to the
/// socket's queue as they are read; at the end the held changes the snapshot did not contain
/// and `snapshot_end` are queued under the hub's lock (or `snapshot_failed` and what was held).
pub(super) fn read(client: &Client, channel: &str, pending: Pending) -> Answer {
    let state: Arc<AppState> = client.state_arc();
    let outbox = client.outbox_handle().clone();
    let channel = channel.to_owned();
    let who = client
        .authz()
        .map(|a| (a.subject().role.to_string(), a.subject().claims.to_string()));
    Box::pin(async move {
        let Pending {
            sub,
            info,
            schema,
            table,
        } = pending;
        // One turn per snapshot: each holds a connection and a transaction while it reads, so
        // a storm of re-snapshots waits here instead of exhausting the database's connections.
        let Ok(_turn) = state.snapshots.acquire().await else {
            return None;
        };
        let result = snapshot::read(
            &state.config.db,
            who.as_ref().map(|(r, c)| (r.as_str(), c.as_str())),
            &schema,
            &table,
            &info,
            &sub,
            state.config.snapshot,
            &outbox,
            |rows| wire::snapshot(&channel, rows),
        )
        .await;
        let hub = &state.hub;
        match result {
            Ok((seam, rows)) => {
                hub.release_view(&channel, &outbox, |kept, position| match kept {
                    Kept::Frames(frames) => {
                        let mut out: Vec<Frame> = frames
                            .into_iter()
                            .filter(|f| !in_snapshot(&seam, f))
                            .collect();
                        out.push(wire::snapshot_end(&channel, rows, position));
                        out
                    }
                    Kept::Overflowed => vec![wire::snapshot_failed(
                        &channel,
                        "too_many_changes",
                        &format!(
                            "more than {HOLD_CAP} changes came while the snapshot was read; \
                             some were dropped: unsubscribe and subscribe again"
                        ),
                    )],
                });
            }
            Err(SnapshotError::Gone) => {}
            Err(e) => {
                tracing::warn!(channel, error = %e, "snapshot failed");
                let code = match e {
                    SnapshotError::TooLarge(_) => "too_large",
                    SnapshotError::Timeout(_) => "timeout",
                    _ => "database_unavailable",
                };
                hub.release_view(&channel, &outbox, |kept, _| {
                    let mut out = vec![wire::snapshot_failed(&channel, code, &e.to_string())];
                    if let Kept::Frames(frames) = kept {
                        out.extend(frames);
                    }
                    out
                });
            }
        }
        None
    })
}

/// Whether a held change is already in the snapshot (its transaction's id and commit LSN
/// against the seam). A frame without `xid` is not a change of a transaction the snapshot saw.
fn in_snapshot(seam: &Seam, frame: &Frame) -> bool {
    #[derive(serde::Deserialize)]
    struct Xid {
        xid: Option<u32>,
    }
    match serde_json::from_str::<Xid>(frame.as_str()) {
        Ok(Xid { xid: Some(xid) }) => seam.contains(frame.seq().major, xid),
        _ => false,
    }
}

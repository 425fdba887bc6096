//! The row-subscription part of `subscribe`: a table's channel with its filter, made into the
//! view the hub joins, or refused with the code a client branches on.

use super::{Code, Refused};
use crate::rows::subscribe::{RowsRefusal, prepare};
use crate::state::AppState;
use crate::stream::View;

/// The view for a subscription to the table channel `channel` with `filter`.
pub(super) async fn subscription(
    state: &AppState,
    channel: &str,
    filter: &str,
) -> Result<View, Refused> {
    prepare(state.catalog.as_deref(), channel, filter)
        .await
        .map(|sub| sub.into_view())
        .map_err(|e| {
            let code = match e {
                RowsRefusal::UnknownTable(_) => Code::UnknownTable,
                RowsRefusal::BadFilter(_) => Code::BadFilter,
                RowsRefusal::Unavailable(_) => Code::DatabaseUnavailable,
            };
            Refused::new(code, e.to_string())
        })
}

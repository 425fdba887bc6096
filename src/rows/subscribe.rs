//! Making a row subscription from what a client asked for: a table's channel and a filter text.
//!
//! What it owns: the steps and their refusals, the same for every carrier (a v2 `subscribe`, an
//! event stream's URL): the table must be in the publication ([`Catalog`]), the filter must
//! parse within the limits and bind to the table's columns ([`Filter`]). What it must never do:
//! touch the hub: the caller joins with the [`RowSubscription`] it gets, or refuses.

use std::sync::Arc;

use super::catalog::{Catalog, CatalogError, TableInfo, split_name};
use super::filter::{Filter, FilterError, Limits};
use super::selector::RowSubscription;
use crate::channel::TABLE_PREFIX;

/// Why a row subscription cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowsRefusal {
    /// The table is unknown, unpublished, or the source does not read tables.
    #[error("{0}")]
    UnknownTable(String),
    /// The filter does not parse or bind.
    #[error("filter refused: {0}")]
    BadFilter(#[from] FilterError),
    /// The table's description could not be read.
    #[error("{0}")]
    Unavailable(String),
    /// Per-row authorization is on, and this carrier cannot take part in it yet.
    #[error(
        "with authorization by the database, table channels are followed over protocol v2 (per-row authorization)"
    )]
    NeedsV2,
}

/// A row subscription with the table it reads (what a snapshot needs).
pub struct Prepared {
    /// The subscription (filter bound to the table).
    pub sub: RowSubscription,
    /// The table's columns and key.
    pub info: Arc<TableInfo>,
    /// The table's schema.
    pub schema: String,
    /// The table's name.
    pub table: String,
}

/// A row subscription to `channel` (`table:<schema>.<table>`) with `filter` (PostgREST syntax;
/// empty: every row and column). `catalog` is `None` when the source is not the WAL.
pub async fn prepare(
    catalog: Option<&Catalog>,
    channel: &str,
    filter: &str,
) -> Result<Prepared, RowsRefusal> {
    let Some(catalog) = catalog else {
        return Err(RowsRefusal::UnknownTable(
            "table changes come only from the WAL source (PGWS_SOURCE=wal)".into(),
        ));
    };
    // Parsed before the catalog is asked: a malformed filter costs no query.
    let parsed = super::filter::parse(filter, &Limits::default())?;
    let name = channel.strip_prefix(TABLE_PREFIX).unwrap_or(channel);
    let (schema, table) = split_name(name).map_err(|e| RowsRefusal::UnknownTable(e.to_string()))?;
    let info = catalog.describe(schema, table).await.map_err(|e| match e {
        CatalogError::Unavailable(_) => RowsRefusal::Unavailable(e.to_string()),
        _ => RowsRefusal::UnknownTable(e.to_string()),
    })?;
    let bound = Filter::bind(&parsed, info.columns.as_slice())?;
    Ok(Prepared {
        sub: RowSubscription::new(bound, info.key.clone()),
        schema: schema.to_owned(),
        table: table.to_owned(),
        info,
    })
}

/// The filter an event stream's or a compat websocket's URL carries: its query string without
/// the `last-event-id` parameter (which says where to resume, not which rows).
pub fn filter_of_query(query: Option<&str>) -> String {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some("last-event-id"))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::filter_of_query;

    #[test]
    fn a_url_filter_is_its_query_without_the_resume_parameter() {
        assert_eq!(filter_of_query(None), "");
        assert_eq!(
            filter_of_query(Some("done=eq.false&last-event-id=abc&select=id")),
            "done=eq.false&select=id"
        );
        assert_eq!(filter_of_query(Some("last-event-id=")), "");
    }
}

//! Pages of stored events applied in commit order: the part that a shadow
//! rebuild's catch-up and swap ([`super::shadow`]) and a parked
//! projector's catch-up ([`super::parking`]) share.

use domain::envelope::Envelope;
use sqlx::{PgConnection, PgPool, Row as _};

use super::checkpoints::apply_many_in;
use super::{ErrorChain, Projector, RunError};
use crate::rebuild::{self, stored_event, Horizon, COLUMNS};

/// [`COLUMNS`] with the event's `txid` as `cursor_txid` after them (the
/// columns keep their positions for [`stored_event`]).
pub(super) fn with_txid() -> String {
    COLUMNS.replacen(" FROM events", ", txid::text::bigint AS cursor_txid FROM events", 1)
}

/// The aggregate types in the store that `projector` handles.
pub(super) async fn handled_types(
    pool: &PgPool,
    projector: &dyn Projector,
) -> Result<Vec<String>, sqlx::Error> {
    Ok(rebuild::aggregate_types(pool).await?.into_iter().filter(|t| projector.handles(t)).collect())
}

/// Sets `search_path` for the rest of the transaction (a shadow
/// rebuild's tables first).
pub(super) async fn set_search_path(conn: &mut PgConnection, search_path: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT set_config('search_path', $1, true)").bind(search_path).execute(conn).await?;
    Ok(())
}

/// A range of stored events read page by page ([`Range::apply_next_page`]):
/// those of `types` with `txid` in `[from, to)` (no lower bound without
/// `from`; no upper bound without `to`: every committed one), in commit
/// order. With `unapplied_for`, only the events above that projector's
/// checkpoint of their aggregate, and with `unapplied_condition` only
/// those the condition holds for ([`Projector::unapplied_condition`]): a
/// parked projector's catch-up.
pub(super) struct Range<'a> {
    pub types: &'a [String],
    pub from: Option<Horizon>,
    pub to: Option<Horizon>,
    pub unapplied_for: Option<&'a str>,
    pub unapplied_condition: Option<&'static str>,
    /// `(txid, position)` of the last event read.
    after: Option<(i64, i64)>,
}

impl<'a> Range<'a> {
    pub(super) fn new(types: &'a [String], from: Option<Horizon>, to: Option<Horizon>) -> Self {
        Self { types, from, to, unapplied_for: None, unapplied_condition: None, after: None }
    }

    /// Reads the next page (at most `limit` events) on `conn` and applies
    /// it to `projector` there ([`apply_named`]); returns the envelopes
    /// applied (fewer than `limit`: the range is done).
    pub(super) async fn apply_next_page(
        &mut self,
        conn: &mut PgConnection,
        projector: &dyn Projector,
        limit: usize,
    ) -> Result<Vec<Envelope>, RunError> {
        let rows = sqlx::query(&format!(
            "{columns} e WHERE aggregate_type = ANY($1) \
             AND ($2::bigint IS NULL OR txid >= $2::text::xid8) AND ($3::bigint IS NULL OR txid < $3::text::xid8) \
             AND ($4::bigint IS NULL OR (txid, position) > ($4::text::xid8, $5)) \
             AND ($7::text IS NULL OR sequence > COALESCE((SELECT c.sequence FROM projection_checkpoints c \
                  WHERE c.projector = $7 AND c.aggregate_type = e.aggregate_type \
                    AND c.aggregate_id = e.aggregate_id), -1)) \
             AND ({unapplied}) ORDER BY txid, position LIMIT $6",
            columns = with_txid(),
            unapplied = self.unapplied_condition.unwrap_or("true"),
        ))
        .bind(self.types)
        .bind(self.from.map(|h| h.0))
        .bind(self.to.map(|h| h.0))
        .bind(self.after.map(|a| a.0))
        .bind(self.after.map_or(0, |a| a.1))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(self.unapplied_for)
        .fetch_all(&mut *conn)
        .await?;
        let mut envelopes = Vec::with_capacity(rows.len());
        for row in &rows {
            let txid: i64 = row.try_get("cursor_txid")?;
            let stored = stored_event(row)?;
            let envelope = stored.to_envelope().map_err(|source| RunError::Projector {
                projector: projector.name(),
                aggregate_type: stored.aggregate_type.clone(),
                aggregate_id: stored.aggregate_id.clone(),
                sequence: stored.sequence,
                source,
            })?;
            self.after = Some((txid, envelope.position));
            envelopes.push(envelope);
        }
        if !envelopes.is_empty() {
            apply_named(conn, projector, &envelopes.iter().collect::<Vec<_>>()).await?;
        }
        Ok(envelopes)
    }
}

/// [`apply_many_in`], naming the envelope on failure: the transaction is
/// then lost, so the culprit is found by applying the envelopes one at a
/// time after rolling back to a savepoint.
pub(super) async fn apply_named(
    tx: &mut PgConnection,
    projector: &dyn Projector,
    envelopes: &[&Envelope],
) -> Result<(), RunError> {
    sqlx::query("SAVEPOINT catch_up").execute(&mut *tx).await?;
    let Err(batch_error) = apply_many_in(&mut *tx, projector, envelopes).await else {
        sqlx::query("RELEASE SAVEPOINT catch_up").execute(&mut *tx).await?;
        return Ok(());
    };
    sqlx::query("ROLLBACK TO SAVEPOINT catch_up").execute(&mut *tx).await?;
    for envelope in envelopes {
        if let Err(source) = apply_many_in(&mut *tx, projector, std::slice::from_ref(envelope)).await {
            return Err(super::projector_error(projector, envelope, source));
        }
    }
    // Applied one by one after all: the batch failed for a reason of its own.
    tracing::warn!(projector = projector.name(), error = %ErrorChain(&batch_error), "catch-up batch failed; applied one by one");
    Ok(())
}

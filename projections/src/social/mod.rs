//! The social context's read models (ARCHITECTURE decided 15, 16).

pub mod engagement;
pub mod graph;
pub mod home;
pub mod notifications;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::runtime::ProjectionError;

/// Switches the edge row `from → to` of `(table, from column, to column)`
/// to `active` as of event `seq`, unless the row was already set by that
/// event or a later one: the in-row duplicate guard of
/// `Checkpoints::InReadModel` (rows are never deleted, only switched, and
/// carry the sequence that last set them). Returns whether the row's
/// `active` changed (so counters move by exactly one).
///
/// # Errors
/// Database errors.
pub(crate) async fn switch_edge(
    conn: &mut PgConnection,
    (table, a, b): (&str, &str, &str),
    from: Uuid,
    to: Uuid,
    active: bool,
    at: DateTime<Utc>,
    seq: i64,
) -> Result<bool, ProjectionError> {
    // Create the row switched off (seq 0) if absent, so it can be locked.
    sqlx::query(&format!(
        "INSERT INTO {table} ({a}, {b}, active, since, seq) VALUES ($1, $2, false, $3, 0)
         ON CONFLICT ({a}, {b}) DO NOTHING"
    ))
    .bind(from)
    .bind(to)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    let (was_active, stored): (bool, i64) =
        sqlx::query_as(&format!("SELECT active, seq FROM {table} WHERE {a} = $1 AND {b} = $2 FOR UPDATE"))
            .bind(from)
            .bind(to)
            .fetch_one(&mut *conn)
            .await?;
    if seq <= stored {
        tracing::debug!(table, seq, stored, "already applied; skipped");
        return Ok(false);
    }
    sqlx::query(&format!("UPDATE {table} SET active = $3, since = $4, seq = $5 WHERE {a} = $1 AND {b} = $2"))
        .bind(from)
        .bind(to)
        .bind(active)
        .bind(at)
        .bind(seq)
        .execute(&mut *conn)
        .await?;
    Ok(was_active != active)
}

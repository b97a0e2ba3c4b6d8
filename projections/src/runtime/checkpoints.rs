//! The per-aggregate checkpoints of [`Checkpoints::PerAggregate`]
//! projectors (ARCHITECTURE decided 5): the statements that lock and store
//! them, and the transactions that apply envelopes with them.

use std::collections::HashMap;

use domain::envelope::Envelope;
use sqlx::{PgConnection, PgPool, QueryBuilder};

use super::{Applied, Checkpoints, Projector};
use crate::error::ProjectionError;
use crate::rebuild::RebuildChunk;

/// Locks (creating if needed) the checkpoint row and returns its sequence.
/// A plain `SELECT … FOR UPDATE` cannot lock a row that does not exist yet,
/// so two runners could both apply an aggregate's first event; the no-op
/// upsert locks in both cases. A new row holds -1 until the update below
/// (sequences are ≥ 0), and is rolled back with the transaction on failure.
const LOCK_CHECKPOINT: &str = "INSERT INTO projection_checkpoints \
     (projector, aggregate_type, aggregate_id, sequence) VALUES ($1, $2, $3, -1) \
     ON CONFLICT (projector, aggregate_type, aggregate_id) \
     DO UPDATE SET sequence = projection_checkpoints.sequence RETURNING sequence";

const STORE_CHECKPOINT: &str = "UPDATE projection_checkpoints SET sequence = $4 \
     WHERE projector = $1 AND aggregate_type = $2 AND aggregate_id = $3";

/// [`LOCK_CHECKPOINT`] for many aggregates at once (`$2` types, `$3` ids,
/// distinct pairs). The rows are locked in array order (`ORDER BY` the
/// ordinality), which the caller makes sorted, so two runners locking
/// overlapping sets always take the locks in the same order and cannot
/// deadlock on them.
const LOCK_CHECKPOINTS: &str = "INSERT INTO projection_checkpoints \
     (projector, aggregate_type, aggregate_id, sequence) \
     SELECT $1, k.t, k.i, -1 FROM UNNEST($2::text[], $3::text[]) WITH ORDINALITY AS k(t, i, n) ORDER BY k.n \
     ON CONFLICT (projector, aggregate_type, aggregate_id) \
     DO UPDATE SET sequence = projection_checkpoints.sequence \
     RETURNING aggregate_type, aggregate_id, sequence";

/// [`STORE_CHECKPOINT`] for many aggregates at once (`$2` types, `$3` ids,
/// `$4` sequences); the rows exist and are already locked by
/// [`LOCK_CHECKPOINTS`]. Written as an upsert, not `UPDATE … FROM UNNEST`:
/// the upsert finds each row through the primary key whatever the table's
/// statistics say, while the join was planned as a hash join over all of
/// the projector's checkpoints once they outgrew their statistics (3.7 ms
/// per batch and growing with the table in `bench freshness`).
const STORE_CHECKPOINTS: &str = "INSERT INTO projection_checkpoints \
     (projector, aggregate_type, aggregate_id, sequence) \
     SELECT $1, u.t, u.i, u.s FROM UNNEST($2::text[], $3::text[], $4::int8[]) AS u(t, i, s) \
     ON CONFLICT (projector, aggregate_type, aggregate_id) DO UPDATE SET sequence = EXCLUDED.sequence";

/// The checkpoints a set-based rebuild chunk leaves (`$2` type, `$3` ids,
/// `$4` sequences): after the reset there are none and each stream is in
/// one chunk only, so a plain insert; an existing checkpoint fails the
/// chunk, which is then replayed with [`STORE_REPLAYED_CHECKPOINTS`].
pub(super) const STORE_REBUILT_CHECKPOINTS: &str = "INSERT INTO projection_checkpoints \
     (projector, aggregate_type, aggregate_id, sequence) \
     SELECT $1, t, i, s FROM UNNEST($2::text[], $3::text[], $4::int8[]) AS u(t, i, s)";

/// The checkpoints of a rebuild chunk replayed event by event: as
/// [`STORE_REBUILT_CHECKPOINTS`], but a checkpoint that exists is kept when
/// higher (never lowered).
pub(super) const STORE_REPLAYED_CHECKPOINTS: &str = "INSERT INTO projection_checkpoints \
     (projector, aggregate_type, aggregate_id, sequence) \
     SELECT $1, t, i, s FROM UNNEST($2::text[], $3::text[], $4::int8[]) AS u(t, i, s) \
     ON CONFLICT (projector, aggregate_type, aggregate_id) \
     DO UPDATE SET sequence = GREATEST(projection_checkpoints.sequence, EXCLUDED.sequence)";

/// Taken (shared) by every live transaction of a projector, as its first
/// statement: a shadow rebuild's swap takes the same key exclusively
/// ([`SWAP_LOCK`]) to stop the projector's live writers on every node
/// while it catches up and swaps. `$1` the projector's name; key space
/// 1801 (issue 18).
const WRITE_LOCK: &str = "SELECT pg_advisory_xact_lock_shared(1801, hashtext($1))";

/// The head of a [`Projector::push_one_statement`] statement: [`WRITE_LOCK`]
/// tried without waiting (`false` while a swap holds [`SWAP_LOCK`]), as a
/// CTE the projector's writes join; the name is bound next.
const ONE_STATEMENT_HEAD: &str =
    "WITH write_lock AS MATERIALIZED (SELECT pg_try_advisory_xact_lock_shared(1801, hashtext(";

/// The exclusive side of [`WRITE_LOCK`], taken by a swap.
pub(super) const SWAP_LOCK: &str = "SELECT pg_advisory_xact_lock(1801, hashtext($1))";

async fn write_lock(conn: &mut PgConnection, projector: &dyn Projector) -> Result<(), sqlx::Error> {
    sqlx::query(WRITE_LOCK).bind(projector.name()).execute(conn).await?;
    Ok(())
}

/// A transaction of `pool` that holds `projector`'s [`WRITE_LOCK`]: `BEGIN`,
/// then the lock. (Not one simple query for both: should the lock fail or
/// the future be dropped while it waits, sqlx 0.8 would not know the
/// connection is in a transaction and would give it back to the pool in
/// one — `pool.begin()` counts the transaction before the lock is asked.)
///
/// # Errors
/// Database errors.
pub(super) async fn begin_locked(
    pool: &PgPool,
    projector: &dyn Projector,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    write_lock(&mut tx, projector).await?;
    Ok(tx)
}

/// Stores the checkpoints of a rebuilt `chunk`: each stream's last event
/// that `projector` does not ignore ([`Projector::ignored_event_types`]),
/// as the live path leaves them; a stream of ignored events only gets none.
pub(super) async fn store_rebuilt_checkpoints(
    conn: &mut PgConnection,
    projector: &dyn Projector,
    chunk: &RebuildChunk,
    statement: &'static str,
) -> Result<(), sqlx::Error> {
    let ignored = projector.ignored_event_types();
    let (mut types, mut ids, mut sequences) = (Vec::new(), Vec::new(), Vec::new());
    for stream in chunk.streams() {
        let last = stream.events.iter().rev().find(|e| !ignored.contains(&e.event_type.as_str()));
        if let Some(last) = last {
            types.push(stream.aggregate_type);
            ids.push(stream.aggregate_id);
            sequences.push(last.sequence);
        }
    }
    sqlx::query(statement).bind(projector.name()).bind(types).bind(ids).bind(sequences).execute(conn).await?;
    Ok(())
}

/// One projector, one envelope, one transaction. `Ok(false)`: duplicate.
#[tracing::instrument(level = "debug", skip_all, fields(projector = projector.name()))]
pub(super) async fn apply_one(
    pool: &PgPool,
    projector: &dyn Projector,
    envelope: &Envelope,
) -> Result<bool, ProjectionError> {
    if projector.ignored_event_types().contains(&envelope.event_type.as_str()) {
        return Ok(false);
    }
    let mut tx = begin_locked(pool, projector).await?;
    if projector.checkpoints() == Checkpoints::InReadModel {
        projector.apply(&mut tx, envelope).await?;
        tx.commit().await?;
        return Ok(true);
    }
    let stored: i64 = sqlx::query_scalar(LOCK_CHECKPOINT)
        .bind(projector.name())
        .bind(&envelope.aggregate_type)
        .bind(&envelope.aggregate_id)
        .fetch_one(&mut *tx)
        .await?;
    if envelope.sequence <= stored {
        tx.rollback().await?;
        tracing::debug!(stored, "already applied; skipped");
        return Ok(false);
    }
    if stored >= 0 && envelope.sequence > stored + 1 && projector.ignored_event_types().is_empty() {
        tracing::warn!(stored, "sequence gap: events of this aggregate were not seen");
    }
    projector.apply(&mut tx, envelope).await?;
    sqlx::query(STORE_CHECKPOINT)
        .bind(projector.name())
        .bind(&envelope.aggregate_type)
        .bind(&envelope.aggregate_id)
        .bind(envelope.sequence)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// One projector, many envelopes (those it handles, in feed order), one
/// transaction; see the module docs.
#[tracing::instrument(level = "debug", skip_all, fields(projector = projector.name(), envelopes = envelopes.len()))]
pub(super) async fn apply_many(
    pool: &PgPool,
    projector: &dyn Projector,
    envelopes: &[&Envelope],
) -> Result<Applied, ProjectionError> {
    if let Some(applied) = apply_in_one_statement(pool, projector, envelopes).await? {
        return Ok(applied);
    }
    let mut tx = begin_locked(pool, projector).await?;
    let outcome = apply_many_in(&mut tx, projector, envelopes).await?;
    if outcome.applied == 0 {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(outcome)
}

/// The batch through [`Projector::push_one_statement`], when the projector
/// keeps its guard in its rows and writes the batch as one statement, and
/// no swap holds its lock: `Some` with what was applied. `None`: nothing
/// was written, take the transaction. `envelopes` are the live runner's
/// (`live_envelopes`: the projector's ignored event types already left
/// out), as [`apply_many`] gets them.
async fn apply_in_one_statement(
    pool: &PgPool,
    projector: &dyn Projector,
    envelopes: &[&Envelope],
) -> Result<Option<Applied>, ProjectionError> {
    if projector.checkpoints() != Checkpoints::InReadModel {
        return Ok(None);
    }
    if envelopes.is_empty() {
        return Ok(Some(Applied::default()));
    }
    let mut q = QueryBuilder::new(ONE_STATEMENT_HEAD);
    q.push_bind(projector.name());
    q.push(")) AS locked)");
    if !projector.push_one_statement(&mut q, envelopes)? {
        return Ok(None);
    }
    q.push(" SELECT locked FROM write_lock");
    let locked: bool = q.build_query_scalar().fetch_one(pool).await?;
    if !locked {
        tracing::debug!(projector = projector.name(), "write lock held by a swap; batch goes by transaction");
        return Ok(None);
    }
    metrics::counter!("streamforge_projector_one_statement_batches_total", "projector" => projector.name())
        .increment(1);
    Ok(Some(Applied { applied: envelopes.len(), skipped: 0 }))
}

/// [`apply_many`] inside the caller's transaction (no lock, no commit): the
/// live path above, and a shadow rebuild's catch-up, whose `search_path`
/// sends the writes — checkpoints included — to the shadow tables.
pub(super) async fn apply_many_in(
    tx: &mut PgConnection,
    projector: &dyn Projector,
    envelopes: &[&Envelope],
) -> Result<Applied, ProjectionError> {
    // Event types it ignores change nothing and move no checkpoint (the
    // live runner and every catch-up alike).
    let ignored = projector.ignored_event_types();
    let kept: Vec<&Envelope>;
    let envelopes = if ignored.is_empty() {
        envelopes
    } else {
        kept = envelopes.iter().copied().filter(|e| !ignored.contains(&e.event_type.as_str())).collect();
        if kept.is_empty() {
            return Ok(Applied::default());
        }
        &kept[..]
    };
    if projector.checkpoints() == Checkpoints::InReadModel {
        projector.apply_many(&mut *tx, envelopes).await?;
        return Ok(Applied { applied: envelopes.len(), skipped: 0 });
    }
    let mut keys: Vec<(&str, &str)> =
        envelopes.iter().map(|e| (e.aggregate_type.as_str(), e.aggregate_id.as_str())).collect();
    keys.sort_unstable();
    keys.dedup();
    let locked: Vec<(String, String, i64)> = sqlx::query_as(LOCK_CHECKPOINTS)
        .bind(projector.name())
        .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
    // Per aggregate: (stored checkpoint, running checkpoint).
    let mut checkpoints: HashMap<(String, String), (i64, i64)> =
        locked.into_iter().map(|(t, i, s)| ((t, i), (s, s))).collect();
    let mut outcome = Applied::default();
    let mut fresh: Vec<&Envelope> = Vec::with_capacity(envelopes.len());
    for envelope in envelopes {
        let key = (envelope.aggregate_type.clone(), envelope.aggregate_id.clone());
        let Some((_, running)) = checkpoints.get_mut(&key) else {
            // Every key was locked above; a missing one means the statement
            // did not return it, so do not guess.
            return Err(ProjectionError::Other(anyhow::anyhow!(
                "checkpoint of {}/{} was not locked",
                envelope.aggregate_type,
                envelope.aggregate_id
            )));
        };
        if envelope.sequence <= *running {
            outcome.skipped += 1;
            tracing::debug!(
                aggregate_id = %envelope.aggregate_id,
                sequence = envelope.sequence,
                checkpoint = *running,
                "already applied; skipped"
            );
            continue;
        }
        // (A projector that ignores some event types has gaps by design.)
        if *running >= 0 && envelope.sequence > *running + 1 && projector.ignored_event_types().is_empty() {
            tracing::warn!(
                aggregate_type = %envelope.aggregate_type,
                aggregate_id = %envelope.aggregate_id,
                sequence = envelope.sequence,
                checkpoint = *running,
                "sequence gap: events of this aggregate were not seen"
            );
        }
        fresh.push(envelope);
        *running = envelope.sequence;
        outcome.applied += 1;
    }
    if !fresh.is_empty() {
        projector.apply_many(&mut *tx, &fresh).await?;
    }
    if outcome.applied == 0 {
        return Ok(outcome);
    }
    let (mut types, mut ids, mut sequences) = (Vec::new(), Vec::new(), Vec::new());
    for ((aggregate_type, aggregate_id), (stored, running)) in &checkpoints {
        if running != stored {
            types.push(aggregate_type.as_str());
            ids.push(aggregate_id.as_str());
            sequences.push(*running);
        }
    }
    sqlx::query(STORE_CHECKPOINTS)
        .bind(projector.name())
        .bind(types)
        .bind(ids)
        .bind(sequences)
        .execute(&mut *tx)
        .await?;
    Ok(outcome)
}

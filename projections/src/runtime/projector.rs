//! The [`Projector`] trait — one read model's event handler — and where it
//! keeps its duplicate guard ([`Checkpoints`]).

use std::sync::Arc;

use async_trait::async_trait;
use domain::envelope::Envelope;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};

use crate::error::ProjectionError;
use crate::rebuild::RebuildChunk;

/// Where a projector keeps the duplicate guard of decided 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoints {
    /// The runner keeps one `projection_checkpoints` row per aggregate
    /// (the last sequence applied) and skips envelopes at or below it.
    PerAggregate,
    /// The read model's rows carry the sequence that last set them and the
    /// projector skips older envelopes itself: the runner writes no
    /// checkpoint rows: for pair-keyed streams, where one row per stream
    /// would be one row per edge, and for streams that each make one row
    /// (a challenge per login), where a checkpoint row per stream would
    /// double the writes. [`Projector::has_applied`] must then be
    /// overridden, and [`Projector::unapplied_condition`] should be.
    InReadModel,
}

/// One read model's event handler.
///
/// `apply` runs inside the transaction that also advances the projector's
/// checkpoint for the envelope's aggregate; it must only use `conn` (no
/// other connection, no side effects outside the database), so a failure
/// rolls everything back and a redelivery is harmless.
#[async_trait]
pub trait Projector: Send + Sync {
    /// Stable name; the key of its rows in `projection_checkpoints`.
    fn name(&self) -> &'static str;

    /// Whether envelopes of `aggregate_type` concern this projector (all
    /// events of a handled aggregate type are passed to `apply`).
    fn handles(&self, aggregate_type: &str) -> bool;

    /// Where the duplicate guard lives (default: the runner's
    /// per-aggregate checkpoints).
    fn checkpoints(&self) -> Checkpoints {
        Checkpoints::PerAggregate
    }

    /// Event types of the handled aggregates that leave this read model as
    /// it is (`apply` does nothing with them). The live runner passes them
    /// over — no transaction, no checkpoint write — and the default
    /// [`Projector::has_applied`] counts them as applied once every event
    /// of the stream up to the asked one is checkpointed or ignored.
    /// Default: none (a password login's `LoginPasswordAccepted` cost the
    /// profiles a transaction per login before; docs/performance.md).
    fn ignored_event_types(&self) -> &'static [&'static str] {
        &[]
    }

    /// For a [`Checkpoints::InReadModel`] projector: an SQL condition on
    /// a stored event `e` (its columns `aggregate_type`, `aggregate_id`,
    /// `sequence`) that holds when the read model has not applied it yet
    /// (the counterpart of a checkpoint row). A parked projector's
    /// catch-up reads only the events it holds (`None`, the default: every
    /// event, each then skipped by the rows' own guard), and `streamforge
    /// chaos verify` waits on it.
    fn unapplied_condition(&self) -> Option<&'static str> {
        None
    }

    /// Whether the read model has applied event `sequence` of stream
    /// `aggregate_type`/`aggregate_id` (read-your-writes, decided 13). The
    /// default reads the stream's checkpoint row; past it, an event is
    /// applied when it and every event between are of
    /// [`Projector::ignored_event_types`].
    ///
    /// # Errors
    /// Database errors.
    async fn has_applied(
        &self,
        pool: &PgPool,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
    ) -> Result<bool, sqlx::Error> {
        let stored: Option<i64> = sqlx::query_scalar(
            "SELECT sequence FROM projection_checkpoints
             WHERE projector = $1 AND aggregate_type = $2 AND aggregate_id = $3",
        )
        .bind(self.name())
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_optional(pool)
        .await?;
        if stored.is_some_and(|s| s >= sequence) {
            return Ok(true);
        }
        let ignored = self.ignored_event_types();
        if ignored.is_empty() {
            return Ok(false);
        }
        let after = stored.unwrap_or(0).max(0);
        let (events, handled): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE event_type <> ALL($5))
             FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 AND sequence <= $4",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(after)
        .bind(sequence)
        .bind(ignored)
        .fetch_one(pool)
        .await?;
        Ok(events == sequence - after && handled == 0)
    }

    /// Applies one envelope to the read model.
    ///
    /// # Errors
    /// [`ProjectionError`]; the transaction is then rolled back and the
    /// envelope retried later.
    async fn apply(&self, conn: &mut PgConnection, envelope: &Envelope) -> Result<(), ProjectionError>;

    /// Live batch entry point: applies `envelopes` — those of a feed batch
    /// this projector handles and has not applied yet, in feed order —
    /// inside the runner's transaction, which then stores the checkpoints
    /// and commits.
    ///
    /// The result must be exactly what [`Projector::apply`] leaves after
    /// the same envelopes one by one; the default does just that. A
    /// projector overrides it to write runs of independent envelopes with
    /// one set-based statement (fewer round trips on the latency path).
    ///
    /// # Errors
    /// [`ProjectionError`]; the runner then rolls the batch back and
    /// applies its envelopes one transaction each through `apply`, so that
    /// a failing envelope is named exactly in [`RunError::Projector`].
    async fn apply_many(
        &self,
        conn: &mut PgConnection,
        envelopes: &[&Envelope],
    ) -> Result<(), ProjectionError> {
        apply_one_by_one(self, conn, envelopes).await
    }

    /// The live batch as **one statement**, when this projector can write
    /// it so: the runner then sends that statement alone, outside any
    /// explicit transaction (a statement is atomic by itself), instead of
    /// `BEGIN`, the write lock, [`Projector::apply_many`]'s statements and
    /// `COMMIT` — one round trip instead of five or more per batch, on the
    /// path every login takes (issue 14). Only asked of
    /// [`Checkpoints::InReadModel`] projectors, whose guard against
    /// duplicates is in their own rows.
    ///
    /// `q` already holds `WITH write_lock AS MATERIALIZED (SELECT
    /// pg_try_advisory_xact_lock_shared(…) AS locked)`, the projector's
    /// write lock taken without waiting. The projector appends its own
    /// data-modifying CTEs (`, name AS (INSERT … )`), each of which must
    /// take its rows `FROM … write_lock WHERE write_lock.locked`: while a
    /// shadow rebuild's swap holds the lock the statement then writes
    /// nothing, and the runner takes the transaction path, which waits for
    /// the lock before it names any table (a statement that waited for it
    /// would hold its tables' locks meanwhile, against the swap's `DROP
    /// TABLE`). The runner closes the statement. The CTEs must leave what
    /// [`Projector::apply`] leaves after the same envelopes; they all see
    /// the snapshot from before the statement, so a batch whose events
    /// build on each other does not fit.
    ///
    /// Returns whether it pushed the statement (`false`, the default: the
    /// batch does not fit, `q` is dropped and the transaction path taken).
    ///
    /// # Errors
    /// [`ProjectionError`] (an envelope that does not decode); the runner
    /// then goes envelope by envelope, as for a failed
    /// [`Projector::apply_many`].
    fn push_one_statement(
        &self,
        q: &mut QueryBuilder<'static, Postgres>,
        envelopes: &[&Envelope],
    ) -> Result<bool, ProjectionError> {
        let _ = (q, envelopes);
        Ok(false)
    }

    /// The tables of the read model, unqualified (they live in the
    /// connection's `search_path`): the tables [`Projector::reset`]
    /// empties and a shadow rebuild ([`crate::replay`]) copies, fills and
    /// swaps in. Every statement of the projector must name its tables
    /// unqualified, so that a shadow rebuild's `search_path` redirects it.
    fn tables(&self) -> &'static [&'static str];

    /// Empties the read model (before an in-place rebuild), in the
    /// transaction that also deletes the projector's checkpoints. The
    /// default truncates [`Projector::tables`].
    ///
    /// # Errors
    /// [`ProjectionError`]; the reset is then rolled back.
    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        let tables = self.tables();
        if !tables.is_empty() {
            sqlx::query(&format!("TRUNCATE {}", tables.join(", "))).execute(conn).await?;
        }
        Ok(())
    }

    /// Rebuild entry point: brings the read model up to date with the
    /// complete streams of `chunk` (every settled event of each aggregate,
    /// ascending sequence), inside the runner's transaction, which then
    /// stores each stream's last sequence as its checkpoint and commits.
    ///
    /// Called only after [`Projector::reset`], for streams no earlier chunk
    /// of the same rebuild held; the result must be exactly what
    /// [`Projector::apply`] would leave after the same events one by one.
    /// An override may therefore insert its rows without `ON CONFLICT` (the
    /// unique check is then the index's own, as in a bulk load): a row that
    /// exists after all (a live runner left running, a row keyed by another
    /// stream's id) fails the chunk, which is then replayed through `apply`.
    /// The default does just that (one `apply` per event, in chunk order);
    /// a projector whose rows are a function of one stream overrides it to
    /// fold each stream in memory and write its rows with a few set-based
    /// statements.
    ///
    /// # Errors
    /// [`ProjectionError`]; the runner then rolls the chunk back and replays
    /// it through `apply` one event at a time, so that a failing event is
    /// named exactly in [`RunError::Projector`].
    async fn rebuild_chunk(
        &self,
        conn: &mut PgConnection,
        chunk: &RebuildChunk,
    ) -> Result<(), ProjectionError> {
        for event in chunk.events() {
            let envelope = event.to_envelope()?;
            self.apply(&mut *conn, &envelope).await?;
        }
        Ok(())
    }
}

/// A projector that rebuilds through the per-event path: it delegates
/// everything to the wrapped projector except [`Projector::rebuild_chunk`],
/// which keeps the default (`apply` per event, one transaction per chunk).
/// For comparisons of a set-based rebuild with the reference path.
pub struct PerEventRebuild(pub Arc<dyn Projector>);

#[async_trait]
impl Projector for PerEventRebuild {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        self.0.handles(aggregate_type)
    }

    fn checkpoints(&self) -> Checkpoints {
        self.0.checkpoints()
    }

    fn tables(&self) -> &'static [&'static str] {
        self.0.tables()
    }

    fn ignored_event_types(&self) -> &'static [&'static str] {
        self.0.ignored_event_types()
    }

    fn unapplied_condition(&self) -> Option<&'static str> {
        self.0.unapplied_condition()
    }

    async fn has_applied(
        &self,
        pool: &PgPool,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
    ) -> Result<bool, sqlx::Error> {
        self.0.has_applied(pool, aggregate_type, aggregate_id, sequence).await
    }

    async fn apply(&self, conn: &mut PgConnection, envelope: &Envelope) -> Result<(), ProjectionError> {
        self.0.apply(conn, envelope).await
    }

    async fn apply_many(
        &self,
        conn: &mut PgConnection,
        envelopes: &[&Envelope],
    ) -> Result<(), ProjectionError> {
        self.0.apply_many(conn, envelopes).await
    }

    fn push_one_statement(
        &self,
        q: &mut QueryBuilder<'static, Postgres>,
        envelopes: &[&Envelope],
    ) -> Result<bool, ProjectionError> {
        self.0.push_one_statement(q, envelopes)
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        self.0.reset(conn).await
    }
}

/// `envelopes` through [`Projector::apply`], one by one in feed order: the
/// default [`Projector::apply_many`], and a set-based one's fallback.
///
/// # Errors
/// The first envelope's [`ProjectionError`].
pub async fn apply_one_by_one<P: Projector + ?Sized>(
    projector: &P,
    conn: &mut PgConnection,
    envelopes: &[&Envelope],
) -> Result<(), ProjectionError> {
    for envelope in envelopes {
        projector.apply(&mut *conn, envelope).await?;
    }
    Ok(())
}

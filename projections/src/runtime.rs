//! The projector runtime: applies envelopes from an [`EventFeed`] to read
//! models, each projector's change and its per-aggregate checkpoint in one
//! Postgres transaction (ARCHITECTURE decided 5), then acknowledges the feed.
//!
//! A duplicated or replayed envelope (`sequence` not above the stored
//! checkpoint) is a no-op, so at-least-once feeds give exactly-once read
//! models.
//!
//! The live path ([`ProjectionRunner::run_once`]) applies a whole feed batch
//! per projector in **one** transaction: it locks (creating if needed) the
//! checkpoints of every aggregate in the batch with one statement, in a
//! deterministic order so that concurrent runners cannot deadlock on them,
//! applies in order the envelopes above the checkpoint (tracking it in
//! memory, so duplicates inside the batch are skipped too), stores the new
//! checkpoints with one statement and commits once; then the feed is
//! committed. When that transaction fails, the batch is retried envelope by
//! envelope (one transaction each), so a poison envelope is named exactly by
//! [`RunError::Projector`] and a transient failure does not stall the feed.
//!
//! A rebuild ([`ProjectionRunner::rebuild`]) reads the settled events of the
//! store in whole-stream chunks ([`crate::rebuild`]) and hands each chunk to
//! [`Projector::rebuild_chunk`]: set-based for the projectors that fold
//! streams in memory (`profiles`, `sessions`), per event otherwise.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use domain::envelope::Envelope;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, watch};

pub use crate::error::ProjectionError;
use crate::feed::{EventFeed, FeedError};
use crate::rebuild::{self, Horizon, RebuildChunk, StreamReader};

/// A failure of the [`ProjectionRunner`].
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A projector (or its checkpoint transaction) failed on an envelope;
    /// nothing of that projector's change was committed.
    #[error("projector `{projector}` failed on {aggregate_type}/{aggregate_id} sequence {sequence}")]
    Projector {
        /// [`Projector::name`].
        projector: &'static str,
        /// The envelope's aggregate type.
        aggregate_type: String,
        /// The envelope's aggregate id.
        aggregate_id: String,
        /// The envelope's sequence.
        sequence: i64,
        /// What went wrong.
        #[source]
        source: ProjectionError,
    },
    /// Resetting a projector for a rebuild failed.
    #[error("cannot reset projector `{projector}`")]
    Reset {
        /// [`Projector::name`].
        projector: &'static str,
        /// What went wrong.
        #[source]
        source: ProjectionError,
    },
    /// Reading the event store (rebuild) failed.
    #[error("cannot read the event store")]
    Store(#[from] sqlx::Error),
    /// The feed failed.
    #[error("event feed failed")]
    Feed(#[from] FeedError),
    /// [`ProjectionRunner::rebuild`] was given a name no projector has.
    #[error("no projector named `{0}`")]
    UnknownProjector(String),
    /// The rebuild's store reader task ended abnormally (panicked or was
    /// cancelled); nothing after the last committed chunk was written.
    #[error("rebuild reader task failed")]
    ReaderTask(#[source] tokio::task::JoinError),
}

/// Where a projector keeps the duplicate guard of decided 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoints {
    /// The runner keeps one `projection_checkpoints` row per aggregate
    /// (the last sequence applied) and skips envelopes at or below it.
    PerAggregate,
    /// The read model's rows carry the sequence that last set them and the
    /// projector skips older envelopes itself: the runner writes no
    /// checkpoint rows (for pair-keyed streams, where one row per stream
    /// would be one row per edge). [`Projector::has_applied`] must then be
    /// overridden.
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

    /// Whether the read model has applied event `sequence` of stream
    /// `aggregate_type`/`aggregate_id` (read-your-writes, decided 13). The
    /// default reads the stream's checkpoint row.
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
        Ok(stored.is_some_and(|s| s >= sequence))
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
        for envelope in envelopes {
            self.apply(&mut *conn, envelope).await?;
        }
        Ok(())
    }

    /// Empties the read model (before a rebuild), in the transaction that
    /// also deletes the projector's checkpoints.
    ///
    /// # Errors
    /// [`ProjectionError`]; the reset is then rolled back.
    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError>;

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

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        self.0.reset(conn).await
    }
}

/// What [`ProjectionRunner::apply_envelope`] (per envelope) or
/// [`ProjectionRunner::apply_batch`] (summed over the batch) did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// (Projector, envelope) pairs applied to a read model.
    pub applied: usize,
    /// (Projector, envelope) pairs skipped as already applied (duplicates).
    pub skipped: usize,
}

impl std::ops::AddAssign for Applied {
    fn add_assign(&mut self, other: Self) {
        self.applied += other.applied;
        self.skipped += other.skipped;
    }
}

/// What [`ProjectionRunner::rebuild`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RebuildStats {
    /// Settled events read from the store (of the aggregate types the
    /// projector handles only).
    pub read: usize,
    /// Events applied to the read model (all of those read).
    pub applied: usize,
    /// Aggregates (streams) whose checkpoint the rebuild stored.
    pub aggregates: usize,
    /// Chunks (transactions) written.
    pub chunks: usize,
    /// Chunks whose set-based write failed and that were replayed event by
    /// event instead (see [`Projector::rebuild_chunk`]).
    pub replayed_chunks: usize,
}

/// Default [`RunOptions::batch_size`].
pub const DEFAULT_BATCH_SIZE: usize = 1_000;

/// Default events per chunk of [`ProjectionRunner::rebuild`] (callers pass
/// their own; this is what the `streamforge` binary and benches use).
pub const DEFAULT_REBUILD_CHUNK: usize = 10_000;

/// Pacing of [`ProjectionRunner::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Most envelopes per batch (default [`DEFAULT_BATCH_SIZE`]). A batch
    /// takes what the feed already holds after its first envelope, so a
    /// large maximum costs no latency at light load and lets the runner
    /// drain a backlog with few transactions.
    pub batch_size: usize,
    /// Longest wait for a batch's first envelope (default 1 s); also bounds
    /// how stale a shutdown check can be.
    pub max_wait: Duration,
    /// First back-off after a failed batch (default 100 ms), doubled per
    /// consecutive failure up to `max_backoff` (default 30 s).
    pub min_backoff: Duration,
    /// Longest back-off.
    pub max_backoff: Duration,
    /// How long [`ProjectionRunner::run`] may leave applied batches
    /// unacknowledged (default 100 ms): it commits the feed once the oldest
    /// uncommitted batch is this old, or when the feed has nothing new, so
    /// the commit's round trip (a synchronous Kafka offset commit, or the
    /// Postgres feed's checkpoint) is not paid per batch on the latency
    /// path. After a crash at most this much is delivered again, and
    /// skipped by the checkpoints (decided 5). Zero commits every batch.
    pub commit_interval: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            batch_size: DEFAULT_BATCH_SIZE,
            max_wait: Duration::from_secs(1),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            commit_interval: Duration::from_millis(100),
        }
    }
}

/// Applies envelopes to a set of projectors.
#[derive(Clone)]
pub struct ProjectionRunner {
    pool: PgPool,
    projectors: Vec<Arc<dyn Projector>>,
    options: RunOptions,
}

impl fmt::Debug for ProjectionRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("projectors", &self.names())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

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
const STORE_REBUILT_CHECKPOINTS: &str = "INSERT INTO projection_checkpoints \
     (projector, aggregate_type, aggregate_id, sequence) \
     SELECT $1, t, i, s FROM UNNEST($2::text[], $3::text[], $4::int8[]) AS u(t, i, s)";

/// The checkpoints of a rebuild chunk replayed event by event: as
/// [`STORE_REBUILT_CHECKPOINTS`], but a checkpoint that exists is kept when
/// higher (never lowered).
const STORE_REPLAYED_CHECKPOINTS: &str = "INSERT INTO projection_checkpoints \
     (projector, aggregate_type, aggregate_id, sequence) \
     SELECT $1, t, i, s FROM UNNEST($2::text[], $3::text[], $4::int8[]) AS u(t, i, s) \
     ON CONFLICT (projector, aggregate_type, aggregate_id) \
     DO UPDATE SET sequence = GREATEST(projection_checkpoints.sequence, EXCLUDED.sequence)";

impl ProjectionRunner {
    /// A runner over `projectors` with default [`RunOptions`].
    pub fn new(pool: PgPool, projectors: Vec<Arc<dyn Projector>>) -> Self {
        Self { pool, projectors, options: RunOptions::default() }
    }

    /// Replaces the [`RunOptions`] used by [`ProjectionRunner::run`].
    pub fn with_options(mut self, options: RunOptions) -> Self {
        self.options = options;
        self
    }

    /// Names of the projectors.
    pub fn names(&self) -> Vec<&'static str> {
        self.projectors.iter().map(|p| p.name()).collect()
    }

    /// Applies `envelope` to every projector that handles its aggregate type,
    /// each in its own transaction with its checkpoint; a sequence not above
    /// the stored one is skipped.
    ///
    /// # Errors
    /// [`RunError::Projector`] for the first projector that fails; the
    /// projectors before it keep their (committed, idempotent) change.
    #[tracing::instrument(skip_all, fields(
        aggregate_type = %envelope.aggregate_type,
        aggregate_id = %envelope.aggregate_id,
        sequence = envelope.sequence,
        event_type = %envelope.event_type,
    ))]
    pub async fn apply_envelope(&self, envelope: &Envelope) -> Result<Applied, RunError> {
        let mut outcome = Applied::default();
        for projector in &self.projectors {
            if !projector.handles(&envelope.aggregate_type) {
                continue;
            }
            let applied = apply_one(&self.pool, projector.as_ref(), envelope)
                .await
                .map_err(|source| projector_error(projector.as_ref(), envelope, source))?;
            if applied {
                outcome.applied += 1;
            } else {
                outcome.skipped += 1;
            }
        }
        Ok(outcome)
    }

    /// Applies `batch` (in feed order) to every projector, the projectors
    /// concurrently: per projector, the envelopes it handles in **one**
    /// transaction with their
    /// checkpoints (see the module docs); envelopes whose sequence is not
    /// above the aggregate's checkpoint — stored, or reached earlier in the
    /// same batch — are skipped. When that transaction fails, the
    /// projector's envelopes are retried one transaction each.
    ///
    /// # Errors
    /// [`RunError::Projector`] naming the envelope that failed in the
    /// one-by-one retry (the first such projector's, in projector order).
    /// The other projectors, and that projector's envelopes before the
    /// failing one, keep their (committed, idempotent) changes.
    #[tracing::instrument(skip_all, fields(batch = batch.len()))]
    pub async fn apply_batch(&self, batch: &[Envelope]) -> Result<Applied, RunError> {
        // Projectors write disjoint read models and checkpoints, so their
        // transactions run side by side; each keeps feed order within.
        let results = futures::future::join_all(self.projectors.iter().filter_map(|projector| {
            let projector = projector.as_ref();
            let mine: Vec<&Envelope> =
                batch.iter().filter(|e| projector.handles(&e.aggregate_type)).collect();
            (!mine.is_empty()).then(|| self.apply_projector_batch(projector, mine))
        }))
        .await;
        let mut outcome = Applied::default();
        for result in results {
            outcome += result?;
        }
        Ok(outcome)
    }

    /// [`ProjectionRunner::apply_batch`] for one projector: one transaction,
    /// or envelope by envelope when that fails.
    async fn apply_projector_batch(
        &self,
        projector: &dyn Projector,
        mine: Vec<&Envelope>,
    ) -> Result<Applied, RunError> {
        let started = std::time::Instant::now();
        let newest = mine.iter().map(|e| e.occurred_at).max();
        let result = self.apply_projector_batch_inner(projector, mine).await;
        let name = projector.name();
        metrics::histogram!("streamforge_projector_batch_seconds", "projector" => name)
            .record(started.elapsed().as_secs_f64());
        if let Ok(applied) = &result {
            metrics::counter!("streamforge_projector_events_total", "projector" => name, "result" => "applied")
                .increment(applied.applied as u64);
            metrics::counter!("streamforge_projector_events_total", "projector" => name, "result" => "skipped")
                .increment(applied.skipped as u64);
            if let Some(newest) = newest {
                let lag = (chrono::Utc::now() - newest).num_milliseconds().max(0) as f64 / 1000.0;
                metrics::gauge!("streamforge_projector_lag_seconds", "projector" => name).set(lag);
            }
        }
        result
    }

    async fn apply_projector_batch_inner(
        &self,
        projector: &dyn Projector,
        mine: Vec<&Envelope>,
    ) -> Result<Applied, RunError> {
        match apply_many(&self.pool, projector, &mine).await {
            Ok(applied) => Ok(applied),
            Err(error) => {
                tracing::warn!(
                    projector = projector.name(),
                    envelopes = mine.len(),
                    error = %ErrorChain(&error),
                    "batch transaction failed; retrying envelope by envelope"
                );
                let mut outcome = Applied::default();
                for envelope in mine {
                    let applied = apply_one(&self.pool, projector, envelope)
                        .await
                        .map_err(|source| projector_error(projector, envelope, source))?;
                    if applied {
                        outcome.applied += 1;
                    } else {
                        outcome.skipped += 1;
                    }
                }
                Ok(outcome)
            }
        }
    }

    /// One step: takes a batch of at most `max` envelopes from `feed`
    /// (waiting at most `max_wait` for the first), applies it with
    /// [`ProjectionRunner::apply_batch`], then commits the feed. Returns the
    /// number of envelopes in the batch.
    ///
    /// # Errors
    /// [`RunError::Feed`] or [`RunError::Projector`]; the feed is then not
    /// committed — call [`EventFeed::rollback`] before the next step so the
    /// batch is delivered again ([`ProjectionRunner::run`] does).
    #[tracing::instrument(skip_all, fields(projectors = ?self.names(), batch))]
    pub async fn run_once(
        &self,
        feed: &mut dyn EventFeed,
        max: usize,
        max_wait: Duration,
    ) -> Result<usize, RunError> {
        let batch = feed.next_batch(max, max_wait).await?;
        tracing::Span::current().record("batch", batch.len());
        if batch.is_empty() {
            // Nothing new: every projector is caught up.
            for name in self.names() {
                metrics::gauge!("streamforge_projector_lag_seconds", "projector" => name).set(0.0);
            }
            return Ok(0);
        }
        self.apply_batch(&batch).await?;
        feed.commit().await?;
        Ok(batch.len())
    }

    /// Runs steps like [`ProjectionRunner::run_once`] until `shutdown`
    /// becomes `true` (or its sender is dropped), committing the feed when
    /// the oldest applied batch is [`RunOptions::commit_interval`] old or
    /// the feed is idle. A failed step is logged with its cause chain, the
    /// feed rolled back, and the step retried after an exponential
    /// back-off; it never returns an error.
    #[tracing::instrument(skip_all, fields(projectors = ?self.names()))]
    pub async fn run(&self, feed: &mut dyn EventFeed, mut shutdown: watch::Receiver<bool>) {
        let options = self.options;
        let mut backoff = options.min_backoff;
        // When the oldest applied but unacknowledged batch was applied.
        let mut uncommitted: Option<tokio::time::Instant> = None;
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            let step = tokio::select! {
                changed = shutdown.changed() => Step::Signal(changed.is_ok()),
                result = self.step(&mut *feed, &mut uncommitted) => Step::Done(result),
            };
            match step {
                Step::Signal(true) => continue,
                Step::Signal(false) => break,
                Step::Done(Ok(_)) => backoff = options.min_backoff,
                Step::Done(Err(error)) => {
                    tracing::error!(
                        error = %ErrorChain(&error),
                        backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                        "projection step failed; retrying"
                    );
                    uncommitted = None;
                    if let Err(error) = feed.rollback().await {
                        tracing::error!(error = %ErrorChain(&error), "feed rollback failed");
                    }
                    tokio::select! {
                        changed = shutdown.changed() => if changed.is_err() { break },
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(options.max_backoff);
                }
            }
        }
        // No final commit: a step cut short by the shutdown may have taken
        // a batch from the feed without applying it. What was applied but
        // not acknowledged is delivered again after a restart and skipped.
        tracing::info!("projection runner stopped");
    }

    /// One step of [`ProjectionRunner::run`]: like
    /// [`ProjectionRunner::run_once`], but the feed is committed only when
    /// the oldest uncommitted batch is [`RunOptions::commit_interval`] old
    /// or the feed had nothing new.
    async fn step(
        &self,
        feed: &mut dyn EventFeed,
        uncommitted: &mut Option<tokio::time::Instant>,
    ) -> Result<usize, RunError> {
        let options = self.options;
        let batch = feed.next_batch(options.batch_size, options.max_wait).await?;
        if !batch.is_empty() {
            self.apply_batch(&batch).await?;
            uncommitted.get_or_insert_with(tokio::time::Instant::now);
        }
        if let Some(since) = *uncommitted {
            if batch.is_empty() || since.elapsed() >= options.commit_interval {
                feed.commit().await?;
                *uncommitted = None;
            }
        }
        Ok(batch.len())
    }

    /// Rebuilds the read model of projector `name`: in one transaction
    /// [`Projector::reset`] and delete its checkpoints; then read every
    /// settled event (below the [`Horizon`] taken at the start) of the
    /// aggregate types it handles, in whole-stream chunks of about
    /// `chunk_size` events, and write each chunk with
    /// [`Projector::rebuild_chunk`] and its streams' checkpoints in one
    /// transaction. The next chunk is read while the current one is written.
    ///
    /// Stop the live runners of this projector during a rebuild: a live
    /// runner applying a newer event first would make the rebuild's
    /// checkpoint skip it or its older ones. Afterwards a live runner
    /// resumes correctly: every checkpoint is the last settled sequence of
    /// its aggregate, and events committed later are above it.
    ///
    /// # Errors
    /// [`RunError::UnknownProjector`], [`RunError::Reset`],
    /// [`RunError::Store`], [`RunError::Projector`] (a chunk that failed
    /// both set-based and event by event) or [`RunError::ReaderTask`]; a
    /// failed rebuild can simply be started again.
    #[tracing::instrument(skip_all, fields(projector = name))]
    pub async fn rebuild(&self, name: &str, chunk_size: usize) -> Result<RebuildStats, RunError> {
        let projector = self
            .projectors
            .iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| RunError::UnknownProjector(name.to_owned()))?
            .clone();
        let reset_error = |source| RunError::Reset { projector: projector.name(), source };
        let mut tx = self.pool.begin().await?;
        projector.reset(&mut tx).await.map_err(reset_error)?;
        sqlx::query("DELETE FROM projection_checkpoints WHERE projector = $1")
            .bind(projector.name())
            .execute(&mut *tx)
            .await
            .map_err(|e| reset_error(e.into()))?;
        tx.commit().await?;

        let horizon = Horizon::now(&self.pool).await?;
        let types: Vec<String> = rebuild::aggregate_types(&self.pool)
            .await?
            .into_iter()
            .filter(|t| projector.handles(t))
            .collect();
        let (chunks, mut received) = mpsc::channel(2);
        let mut reader =
            AbortOnDrop(tokio::spawn(read_chunks(self.pool.clone(), types, horizon, chunk_size, chunks)));

        let mut stats = RebuildStats::default();
        while let Some(chunk) = received.recv().await {
            let chunk = chunk?;
            if write_chunk(&self.pool, projector.as_ref(), &chunk).await? {
                stats.replayed_chunks += 1;
            }
            stats.chunks += 1;
            stats.read += chunk.len();
            stats.applied += chunk.len();
            stats.aggregates += chunk.streams().len();
        }
        if let Err(error) = (&mut reader.0).await {
            return Err(RunError::ReaderTask(error));
        }
        tracing::info!(
            read = stats.read,
            aggregates = stats.aggregates,
            chunks = stats.chunks,
            replayed_chunks = stats.replayed_chunks,
            horizon = horizon.0,
            "rebuild done"
        );
        Ok(stats)
    }
}

/// Aborts the task when dropped (a rebuild that fails stops its reader).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The reader side of a rebuild: sends the chunks of every type in turn,
/// then ends; a database error is sent and ends it. Stops early when the
/// receiver is gone.
async fn read_chunks(
    pool: PgPool,
    types: Vec<String>,
    horizon: Horizon,
    chunk_size: usize,
    chunks: mpsc::Sender<Result<RebuildChunk, sqlx::Error>>,
) {
    for aggregate_type in types {
        let mut reader = StreamReader::new(aggregate_type, horizon, chunk_size);
        loop {
            let next = reader.next_chunk(&pool).await;
            let last = !matches!(next, Ok(Some(_)));
            let item = match next {
                Ok(Some(chunk)) => Ok(chunk),
                Ok(None) => break,
                Err(error) => Err(error),
            };
            if chunks.send(item).await.is_err() || last {
                return;
            }
        }
    }
}

/// Writes one rebuild chunk with its checkpoints in one transaction:
/// set-based through [`Projector::rebuild_chunk`], or — when that fails —
/// replayed through [`Projector::apply`] one event at a time in a new
/// transaction. Returns whether it had to replay.
async fn write_chunk(
    pool: &PgPool,
    projector: &dyn Projector,
    chunk: &RebuildChunk,
) -> Result<bool, RunError> {
    let set_based = async {
        let mut tx = pool.begin().await?;
        projector.rebuild_chunk(&mut tx, chunk).await?;
        if projector.checkpoints() == Checkpoints::PerAggregate {
            store_rebuilt_checkpoints(&mut tx, projector.name(), chunk, STORE_REBUILT_CHECKPOINTS).await?;
        }
        tx.commit().await?;
        Ok::<_, ProjectionError>(())
    }
    .await;
    let Err(error) = set_based else { return Ok(false) };
    tracing::warn!(
        projector = projector.name(),
        events = chunk.len(),
        error = %ErrorChain(&error),
        "rebuild chunk failed; replaying it event by event"
    );
    let mut tx = pool.begin().await?;
    for event in chunk.events() {
        let applied = async {
            let envelope = event.to_envelope()?;
            projector.apply(&mut tx, &envelope).await
        }
        .await;
        applied.map_err(|source| RunError::Projector {
            projector: projector.name(),
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            sequence: event.sequence,
            source,
        })?;
    }
    if projector.checkpoints() == Checkpoints::PerAggregate {
        store_rebuilt_checkpoints(&mut tx, projector.name(), chunk, STORE_REPLAYED_CHECKPOINTS).await?;
    }
    tx.commit().await?;
    Ok(true)
}

async fn store_rebuilt_checkpoints(
    conn: &mut PgConnection,
    projector: &str,
    chunk: &RebuildChunk,
    statement: &'static str,
) -> Result<(), sqlx::Error> {
    let (mut types, mut ids, mut sequences) = (Vec::new(), Vec::new(), Vec::new());
    for (aggregate_type, aggregate_id, sequence) in chunk.checkpoints() {
        types.push(aggregate_type);
        ids.push(aggregate_id);
        sequences.push(sequence);
    }
    sqlx::query(statement).bind(projector).bind(types).bind(ids).bind(sequences).execute(conn).await?;
    Ok(())
}

enum Step {
    /// The shutdown channel changed (`true`) or its sender is gone (`false`).
    Signal(bool),
    Done(Result<usize, RunError>),
}

fn projector_error(projector: &dyn Projector, envelope: &Envelope, source: ProjectionError) -> RunError {
    RunError::Projector {
        projector: projector.name(),
        aggregate_type: envelope.aggregate_type.clone(),
        aggregate_id: envelope.aggregate_id.clone(),
        sequence: envelope.sequence,
        source,
    }
}

/// One projector, one envelope, one transaction. `Ok(false)`: duplicate.
#[tracing::instrument(level = "debug", skip_all, fields(projector = projector.name()))]
async fn apply_one(
    pool: &PgPool,
    projector: &dyn Projector,
    envelope: &Envelope,
) -> Result<bool, ProjectionError> {
    let mut tx = pool.begin().await?;
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
    if stored >= 0 && envelope.sequence > stored + 1 {
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
async fn apply_many(
    pool: &PgPool,
    projector: &dyn Projector,
    envelopes: &[&Envelope],
) -> Result<Applied, ProjectionError> {
    if projector.checkpoints() == Checkpoints::InReadModel {
        let mut tx = pool.begin().await?;
        projector.apply_many(&mut tx, envelopes).await?;
        tx.commit().await?;
        return Ok(Applied { applied: envelopes.len(), skipped: 0 });
    }
    let mut keys: Vec<(&str, &str)> =
        envelopes.iter().map(|e| (e.aggregate_type.as_str(), e.aggregate_id.as_str())).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut tx = pool.begin().await?;
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
        if *running >= 0 && envelope.sequence > *running + 1 {
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
        projector.apply_many(&mut tx, &fresh).await?;
    }
    if outcome.applied == 0 {
        tx.rollback().await?;
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
    tx.commit().await?;
    Ok(outcome)
}

/// Displays an error with its whole `source()` chain: `a: b: c`.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

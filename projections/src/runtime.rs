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
//! A projector that keeps its guard in its rows
//! ([`Checkpoints::InReadModel`]) may write a live batch as **one
//! statement** instead ([`Projector::push_one_statement`]): its write lock
//! tried in a CTE, no `BEGIN`/`COMMIT`, one round trip per batch; while a
//! shadow rebuild's swap holds the lock, the batch takes the transaction.
//!
//! A rebuild ([`ProjectionRunner::rebuild`]) reads the settled events of the
//! store in whole-stream chunks ([`crate::rebuild`]) and hands each chunk to
//! [`Projector::rebuild_chunk`]: set-based for the projectors that fold
//! streams in memory (`profiles`, `sessions`), per event otherwise.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use domain::envelope::Envelope;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};

pub use crate::error::ProjectionError;
use crate::feed::{EventFeed, FeedError, PacedAcks};
use crate::rebuild::{Horizon, RebuildChunk, StreamReader};
pub use projector::{apply_one_by_one, Checkpoints, PerEventRebuild, Projector};

mod checkpoints;
mod parking;
mod projector;
mod range;
mod shadow;
mod status;

pub use shadow::{ReplayGuard, ReplayOptions, ReplayProgress, ReplayStats};

use checkpoints::{
    apply_many, apply_one, store_rebuilt_checkpoints, STORE_REBUILT_CHECKPOINTS, STORE_REPLAYED_CHECKPOINTS,
};

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
    /// Projectors parked on a failing event ([`parking`]).
    parked: parking::ParkedSet,
}

impl fmt::Debug for ProjectionRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("projectors", &self.names())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ProjectionRunner {
    /// A runner over `projectors` with default [`RunOptions`].
    pub fn new(pool: PgPool, projectors: Vec<Arc<dyn Projector>>) -> Self {
        Self { pool, projectors, options: RunOptions::default(), parked: parking::ParkedSet::default() }
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
            let mine = live_envelopes(projector, batch);
            (!mine.is_empty()).then(|| self.apply_projector_batch(projector, mine))
        }))
        .await;
        let mut outcome = Applied::default();
        for result in results {
            outcome += result?;
        }
        Ok(outcome)
    }

    /// [`ProjectionRunner::apply_batch`] as [`ProjectionRunner::run`] does
    /// it: parked projectors get nothing, and a projector that fails on an
    /// envelope for a reason that is not transient is parked
    /// ([`parking`]) while the others' changes stand.
    ///
    /// # Errors
    /// A transient failure (the first, in projector order): the step is
    /// then retried whole (the others skip what they committed).
    async fn apply_batch_parking(&self, batch: &[Envelope]) -> Result<Applied, RunError> {
        let active: Vec<&dyn Projector> =
            self.projectors.iter().map(|p| p.as_ref()).filter(|p| !self.parked.contains(p.name())).collect();
        let results = futures::future::join_all(active.iter().filter_map(|projector| {
            let mine = live_envelopes(*projector, batch);
            (!mine.is_empty())
                .then_some(async move { (*projector, self.apply_projector_batch(*projector, mine).await) })
        }))
        .await;
        let mut outcome = Applied::default();
        let mut transient = None;
        for (projector, result) in results {
            match result {
                Ok(applied) => outcome += applied,
                Err(error) if !parking::is_transient(&error) => {
                    self.park(projector, &error, self.options.min_backoff).await;
                }
                Err(error) => {
                    transient.get_or_insert(error);
                }
            }
        }
        match transient {
            Some(error) => Err(error),
            None => Ok(outcome),
        }
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
        let mut acks = PacedAcks::new(options.commit_interval);
        // Progress applied since the status row was last written.
        let mut progress = status::PendingProgress::default();
        if let Err(error) = self.load_parked().await {
            tracing::warn!(error = %error, "parked projectors not loaded");
        }
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            let step = tokio::select! {
                changed = shutdown.changed() => Step::Signal(changed.is_ok()),
                result = self.step(&mut *feed, &mut acks, &mut progress) => Step::Done(result),
            };
            match step {
                Step::Signal(true) => continue,
                Step::Signal(false) => break,
                Step::Done(Ok(_)) => backoff = options.min_backoff,
                Step::Done(Err(error)) => {
                    if let Err(e) = self.record_failure(&error, false).await {
                        tracing::warn!(error = %e, "projection failure not recorded");
                    }
                    tracing::error!(
                        error = %ErrorChain(&error),
                        backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                        "projection step failed; retrying"
                    );
                    acks.forget();
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
        // What was applied is counted on the status page.
        if let Err(error) = self.flush_progress(&mut progress).await {
            tracing::warn!(error = %error, "projection status not recorded");
        }
        // No final commit: a step cut short by the shutdown may have taken
        // a batch from the feed without applying it. What was applied but
        // not acknowledged is delivered again after a restart and skipped.
        tracing::info!("projection runner stopped");
    }

    /// One step of [`ProjectionRunner::run`]: like
    /// [`ProjectionRunner::run_once`], but the feed is acknowledged at most
    /// every [`RunOptions::commit_interval`] ([`PacedAcks`]).
    ///
    /// The status row (`projection_status`) is written when the feed is
    /// acknowledged, or when it is idle, with the progress of every batch
    /// since ([`status::PendingProgress`]): one statement per acknowledgement
    /// instead of one per batch.
    async fn step(
        &self,
        feed: &mut dyn EventFeed,
        acks: &mut PacedAcks,
        progress: &mut status::PendingProgress,
    ) -> Result<usize, RunError> {
        let options = self.options;
        let batch = feed.next_batch(options.batch_size, options.max_wait).await?;
        self.retry_parked().await;
        if !batch.is_empty() {
            self.apply_batch_parking(&batch).await?;
            self.note_progress(progress, &batch);
        }
        let acked = acks.after_batch(feed, batch.len()).await?;
        if acked || batch.is_empty() {
            if let Err(error) = self.flush_progress(progress).await {
                tracing::warn!(error = %error, "projection status not recorded");
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
        let projector = self.projector(name).ok_or_else(|| RunError::UnknownProjector(name.to_owned()))?;
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
        let types = range::handled_types(&self.pool, projector.as_ref()).await?;
        let (chunks, mut received) = mpsc::channel(2);
        let mut reader =
            AbortOnDrop(tokio::spawn(read_chunks(self.pool.clone(), types, horizon, chunk_size, chunks)));

        let mut stats = RebuildStats::default();
        while let Some(chunk) = received.recv().await {
            let chunk = chunk?;
            if write_chunk(&self.pool, projector.as_ref(), &chunk, None).await? {
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
/// transaction. Returns whether it had to replay. With `search_path`, each
/// transaction sets it first (a shadow rebuild's tables).
async fn write_chunk(
    pool: &PgPool,
    projector: &dyn Projector,
    chunk: &RebuildChunk,
    search_path: Option<&str>,
) -> Result<bool, RunError> {
    let set_based = async {
        let mut tx = pool.begin().await?;
        if let Some(path) = search_path {
            range::set_search_path(&mut tx, path).await?;
        }
        projector.rebuild_chunk(&mut tx, chunk).await?;
        if projector.checkpoints() == Checkpoints::PerAggregate {
            store_rebuilt_checkpoints(&mut tx, projector, chunk, STORE_REBUILT_CHECKPOINTS).await?;
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
    if let Some(path) = search_path {
        range::set_search_path(&mut tx, path).await?;
    }
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
        store_rebuilt_checkpoints(&mut tx, projector, chunk, STORE_REPLAYED_CHECKPOINTS).await?;
    }
    tx.commit().await?;
    Ok(true)
}

enum Step {
    /// The shutdown channel changed (`true`) or its sender is gone (`false`).
    Signal(bool),
    Done(Result<usize, RunError>),
}

/// The envelopes of `batch` the live runner gives `projector`: of the
/// aggregate types it handles, minus the event types it ignores
/// ([`Projector::ignored_event_types`]).
fn live_envelopes<'b>(projector: &dyn Projector, batch: &'b [Envelope]) -> Vec<&'b Envelope> {
    let ignored = projector.ignored_event_types();
    batch
        .iter()
        .filter(|e| projector.handles(&e.aggregate_type) && !ignored.contains(&e.event_type.as_str()))
        .collect()
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

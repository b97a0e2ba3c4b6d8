//! The projector runtime: applies envelopes from an [`EventFeed`] to read
//! models, each projector's change and its per-aggregate checkpoint in one
//! Postgres transaction (ARCHITECTURE decided 5), then acknowledges the feed.
//!
//! A duplicated or replayed envelope (`sequence` not above the stored
//! checkpoint) is a no-op, so at-least-once feeds give exactly-once read
//! models.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use domain::envelope::Envelope;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use crate::feed::{EventFeed, FeedError};
use crate::tail::{self, Cursor};

/// A failure of one projector on one envelope.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// A read-model or checkpoint statement failed.
    #[error("read-model database error")]
    Database(#[from] sqlx::Error),
    /// The payload does not match the projector's event type.
    #[error("cannot decode event `{event_type}` version {event_version}")]
    Decode {
        /// `Envelope::event_type`.
        event_type: String,
        /// `Envelope::event_version`.
        event_version: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// Anything else (e.g. a sealed field that cannot be handled).
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl ProjectionError {
    /// A [`ProjectionError::Decode`] for `envelope`.
    pub fn decode(envelope: &Envelope, source: serde_json::Error) -> Self {
        Self::Decode {
            event_type: envelope.event_type.clone(),
            event_version: envelope.event_version.clone(),
            source,
        }
    }
}

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

    /// Applies one envelope to the read model.
    ///
    /// # Errors
    /// [`ProjectionError`]; the transaction is then rolled back and the
    /// envelope retried later.
    async fn apply(&self, conn: &mut PgConnection, envelope: &Envelope) -> Result<(), ProjectionError>;

    /// Empties the read model (before a rebuild), in the transaction that
    /// also deletes the projector's checkpoints.
    ///
    /// # Errors
    /// [`ProjectionError`]; the reset is then rolled back.
    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError>;
}

/// What [`ProjectionRunner::apply_envelope`] did with one envelope.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Projectors whose read model changed.
    pub applied: usize,
    /// Projectors that had already applied this sequence (duplicates).
    pub skipped: usize,
}

/// What [`ProjectionRunner::rebuild`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RebuildStats {
    /// Events read from the store.
    pub read: usize,
    /// Events applied to the read model.
    pub applied: usize,
}

/// Pacing of [`ProjectionRunner::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Envelopes per batch (default 100).
    pub batch_size: usize,
    /// Longest wait for a batch's first envelope (default 1 s); also bounds
    /// how stale a shutdown check can be.
    pub max_wait: Duration,
    /// First back-off after a failed batch (default 100 ms), doubled per
    /// consecutive failure up to `max_backoff` (default 30 s).
    pub min_backoff: Duration,
    /// Longest back-off.
    pub max_backoff: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            batch_size: 100,
            max_wait: Duration::from_secs(1),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
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

    /// One step: takes a batch of at most `max` envelopes from `feed`
    /// (waiting at most `max_wait` for the first), applies them in order,
    /// then commits the feed. Returns the number of envelopes in the batch.
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
            return Ok(0);
        }
        for envelope in &batch {
            self.apply_envelope(envelope).await?;
        }
        feed.commit().await?;
        Ok(batch.len())
    }

    /// Runs [`ProjectionRunner::run_once`] until `shutdown` becomes `true`
    /// (or its sender is dropped). A failed step is logged with its cause
    /// chain, the feed rolled back, and the step retried after an
    /// exponential back-off; it never returns an error.
    #[tracing::instrument(skip_all, fields(projectors = ?self.names()))]
    pub async fn run(&self, feed: &mut dyn EventFeed, mut shutdown: watch::Receiver<bool>) {
        let options = self.options;
        let mut backoff = options.min_backoff;
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            let step = tokio::select! {
                changed = shutdown.changed() => Step::Signal(changed.is_ok()),
                result = self.run_once(&mut *feed, options.batch_size, options.max_wait) => {
                    Step::Done(result)
                }
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
        tracing::info!("projection runner stopped");
    }

    /// Rebuilds the read model of projector `name`: in one transaction
    /// [`Projector::reset`] and delete its checkpoints, then replay every
    /// settled event of the store through it (`batch_size` per read).
    ///
    /// Stop the live runners of this projector during a rebuild: a live
    /// runner applying a newer event first would make the replay skip the
    /// aggregate's older ones.
    ///
    /// # Errors
    /// [`RunError::UnknownProjector`], [`RunError::Reset`],
    /// [`RunError::Store`] or [`RunError::Projector`]; a failed rebuild can
    /// simply be started again.
    #[tracing::instrument(skip_all, fields(projector = name))]
    pub async fn rebuild(&self, name: &str, batch_size: usize) -> Result<RebuildStats, RunError> {
        let projector = self
            .projectors
            .iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| RunError::UnknownProjector(name.to_owned()))?
            .as_ref();
        let reset_error = |source| RunError::Reset { projector: projector.name(), source };
        let mut tx = self.pool.begin().await?;
        projector.reset(&mut tx).await.map_err(reset_error)?;
        sqlx::query("DELETE FROM projection_checkpoints WHERE projector = $1")
            .bind(projector.name())
            .execute(&mut *tx)
            .await
            .map_err(|e| reset_error(e.into()))?;
        tx.commit().await?;

        let batch_size = batch_size.max(1);
        let mut stats = RebuildStats::default();
        let mut cursor = Cursor::ZERO;
        loop {
            let rows = tail::read_after(&self.pool, cursor, batch_size, None).await?;
            let full = rows.len() == batch_size;
            for (position, envelope) in rows {
                cursor = position;
                stats.read += 1;
                if !projector.handles(&envelope.aggregate_type) {
                    continue;
                }
                if apply_one(&self.pool, projector, &envelope)
                    .await
                    .map_err(|source| projector_error(projector, &envelope, source))?
                {
                    stats.applied += 1;
                }
            }
            if !full {
                break;
            }
        }
        tracing::info!(read = stats.read, applied = stats.applied, "rebuild done");
        Ok(stats)
    }
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

//! One failing projector does not hold back the others of its runner
//! (issue 18). A projector that fails on an envelope for a reason that is
//! not transient (its one-by-one retry names the envelope) is **parked**:
//! recorded as `failed` with the event in `projection_status` (`parked`),
//! and given no more envelopes, while the runner's other projectors go on
//! and the feed is acknowledged.
//!
//! A parked projector is retried with a doubling back-off: first the event
//! it failed on alone; once that applies (after a fix and a restart, or a
//! transient cause gone), it **catches up from the store** — every settled
//! event of its aggregate types below a horizon taken then, in commit order,
//! skipping what it applied already (its checkpoints for
//! [`Checkpoints::PerAggregate`], its own guard for
//! [`Checkpoints::InReadModel`]) — and rejoins the feed. Every envelope the
//! feed delivered before was settled below that horizon (the relay and the
//! Postgres feed publish settled events only), so the catch-up covers
//! whatever the projector missed while parked, and the feed's later
//! envelopes are applied or skipped by the checkpoints as usual. Parking
//! survives restarts: a runner starts with the projectors whose row says
//! `parked`, and catches them up first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::envelope::Envelope;
use tokio::time::Instant;

use super::checkpoints::{apply_many_in, begin_locked};
use super::range::{handled_types, with_txid, Range};
use super::{Checkpoints, ErrorChain, ProjectionRunner, Projector, RunError};
use crate::error::ProjectionError;
use crate::rebuild::{self, Horizon};

/// Events per catch-up transaction.
const CATCH_UP_BATCH: usize = 1_000;

/// A parked projector's retry schedule and the event it failed on.
#[derive(Debug, Clone)]
pub(super) struct Parked {
    retry_at: Instant,
    backoff: Duration,
    /// `(aggregate_type, aggregate_id, sequence)`; `None` after a restart.
    failed_on: Option<(String, String, i64)>,
}

/// The parked projectors of a runner (shared by its clones).
#[derive(Debug, Default, Clone)]
pub(super) struct ParkedSet(Arc<Mutex<HashMap<&'static str, Parked>>>);

impl ParkedSet {
    pub(super) fn contains(&self, name: &str) -> bool {
        self.0.lock().map(|m| m.contains_key(name)).unwrap_or(false)
    }

    fn insert(&self, name: &'static str, parked: Parked) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(name, parked);
        }
    }

    fn remove(&self, name: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(name);
        }
    }

    /// The parked projectors due for a retry.
    fn due(&self) -> Vec<(&'static str, Parked)> {
        let now = Instant::now();
        self.0
            .lock()
            .map(|m| m.iter().filter(|(_, p)| p.retry_at <= now).map(|(n, p)| (*n, p.clone())).collect())
            .unwrap_or_default()
    }
}

/// Whether a failure may pass by itself (connection, pool, deadlock,
/// serialization, lock timeout, resources, shutdown), so the whole step is
/// retried instead of parking the projector.
pub(super) fn is_transient(error: &RunError) -> bool {
    let sql = match error {
        RunError::Projector { source: ProjectionError::Database(e), .. } | RunError::Store(e) => e,
        RunError::Projector { .. } => return false,
        _ => return true,
    };
    match sql {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            let class = &code[..code.len().min(2)];
            matches!(class, "08" | "40" | "53" | "57" | "58") || code == "55P03"
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        _ => false,
    }
}

impl ProjectionRunner {
    /// Loads the projectors of this runner that a previous run left parked.
    pub(super) async fn load_parked(&self) -> Result<(), sqlx::Error> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT projector FROM projection_status WHERE parked AND projector = ANY($1)",
        )
        .bind(self.names())
        .fetch_all(&self.pool)
        .await?;
        for name in names {
            if let Some(projector) = self.projector(&name) {
                self.parked.insert(
                    projector.name(),
                    Parked { retry_at: Instant::now(), backoff: self.options.min_backoff, failed_on: None },
                );
            }
        }
        Ok(())
    }

    /// Parks `projector` after `error` (a [`RunError::Projector`]) and
    /// records it.
    pub(super) async fn park(&self, projector: &dyn Projector, error: &RunError, backoff: Duration) {
        let failed_on = match error {
            RunError::Projector { aggregate_type, aggregate_id, sequence, .. } => {
                Some((aggregate_type.clone(), aggregate_id.clone(), *sequence))
            }
            _ => None,
        };
        tracing::error!(
            projector = projector.name(),
            error = %ErrorChain(error),
            retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
            "projector parked on a failing event; the others go on"
        );
        self.parked
            .insert(projector.name(), Parked { retry_at: Instant::now() + backoff, backoff, failed_on });
        if let Err(e) = self.record_failure(error, true).await {
            tracing::warn!(error = %e, "projection failure not recorded");
        }
    }

    /// Retries every parked projector that is due (see the module docs).
    /// Never fails: a retry that fails parks the projector again, longer.
    pub(super) async fn retry_parked(&self) {
        for (name, parked) in self.parked.due() {
            let Some(projector) = self.projector(name) else { continue };
            match self.resume(projector.as_ref(), &parked).await {
                Ok(applied) => {
                    self.parked.remove(name);
                    tracing::info!(projector = name, applied, "parked projector caught up; back on the feed");
                    let result = sqlx::query(
                        "UPDATE projection_status SET parked = false, state = 'live', error = NULL,
                             failed_event = NULL, updated_at = now() WHERE projector = $1",
                    )
                    .bind(name)
                    .execute(&self.pool)
                    .await;
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "unparking not recorded");
                    }
                }
                Err(error) => {
                    let backoff = (parked.backoff * 2).min(self.options.max_backoff);
                    if is_transient(&error) {
                        tracing::warn!(projector = name, error = %ErrorChain(&error), "parked projector retry failed");
                        self.parked.insert(
                            name,
                            Parked { retry_at: Instant::now() + backoff, backoff, ..parked.clone() },
                        );
                    } else {
                        self.park(projector.as_ref(), &error, backoff).await;
                    }
                }
            }
        }
    }

    /// The failed event alone, then the catch-up from the store.
    async fn resume(&self, projector: &dyn Projector, parked: &Parked) -> Result<usize, RunError> {
        if let Some((aggregate_type, aggregate_id, sequence)) = &parked.failed_on {
            let stored = sqlx::query(&format!(
                "{} WHERE aggregate_type = $1 AND aggregate_id = $2 \
                 AND sequence = $3",
                with_txid()
            ))
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(sequence)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = stored {
                let event = rebuild::stored_event(&row)?;
                let envelope = event.to_envelope().map_err(|source| super::RunError::Projector {
                    projector: projector.name(),
                    aggregate_type: aggregate_type.clone(),
                    aggregate_id: aggregate_id.clone(),
                    sequence: *sequence,
                    source,
                })?;
                self.apply_locked(projector, &[&envelope]).await?;
                if let Err(e) = self.record_progress_of(&[projector.name()], &[envelope]).await {
                    tracing::warn!(error = %e, "projection status not recorded");
                }
            }
        }
        let horizon = Horizon::now(&self.pool).await?;
        let types = handled_types(&self.pool, projector).await?;
        let mut range = Range::new(&types, None, Some(horizon));
        match projector.checkpoints() {
            Checkpoints::PerAggregate => range.unapplied_for = Some(projector.name()),
            Checkpoints::InReadModel => range.unapplied_condition = projector.unapplied_condition(),
        }
        let mut applied = 0;
        loop {
            let mut tx = begin_locked(&self.pool, projector).await?;
            let page = range.apply_next_page(&mut tx, projector, CATCH_UP_BATCH).await?;
            tx.commit().await?;
            applied += page.len();
            if !page.is_empty() {
                if let Err(e) = self.record_progress_of(&[projector.name()], &page).await {
                    tracing::warn!(error = %e, "projection status not recorded");
                }
            }
            if page.len() < CATCH_UP_BATCH {
                break;
            }
        }
        Ok(applied)
    }

    /// `envelopes` applied to `projector` in one transaction under its write
    /// lock.
    async fn apply_locked(&self, projector: &dyn Projector, envelopes: &[&Envelope]) -> Result<(), RunError> {
        let mut tx = begin_locked(&self.pool, projector).await?;
        if let Err(source) = apply_many_in(&mut tx, projector, envelopes).await {
            return Err(match envelopes.first() {
                Some(envelope) => super::projector_error(projector, envelope, source),
                None => RunError::Store(sqlx::Error::Protocol("nothing to apply".to_owned())),
            });
        }
        tx.commit().await?;
        Ok(())
    }
}

//! The `projection_status` rows a runner writes: each projector's
//! progress after a batch, and the failure a step stopped on (the admin
//! status page's source, issue 18).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use domain::envelope::Envelope;

use super::{ErrorChain, ProjectionRunner, RunError};

/// Progress applied but not yet written to `projection_status`, per
/// projector: (position and time of the last envelope, events applied).
#[derive(Debug, Default)]
pub(super) struct PendingProgress(BTreeMap<&'static str, (i64, DateTime<Utc>, i64)>);

impl ProjectionRunner {
    /// Notes each active projector's progress over `batch` in `pending`,
    /// written by [`ProjectionRunner::flush_progress`].
    pub(super) fn note_progress(&self, pending: &mut PendingProgress, batch: &[Envelope]) {
        let active: Vec<&'static str> =
            self.projectors.iter().map(|p| p.name()).filter(|n| !self.parked.contains(n)).collect();
        self.note_progress_of(pending, &active, batch);
    }

    /// [`ProjectionRunner::note_progress`] for the projectors `only`.
    fn note_progress_of(&self, pending: &mut PendingProgress, only: &[&'static str], batch: &[Envelope]) {
        for projector in self.projectors.iter().filter(|p| only.contains(&p.name())) {
            let mine = batch.iter().filter(|e| projector.handles(&e.aggregate_type));
            let (n, last) = mine.fold((0_i64, None::<&Envelope>), |(n, last), e| {
                (n + 1, Some(last.filter(|l| l.position >= e.position).unwrap_or(e)))
            });
            if let Some(last) = last {
                let entry = pending.0.entry(projector.name()).or_insert((last.position, last.occurred_at, 0));
                if last.position >= entry.0 {
                    (entry.0, entry.1) = (last.position, last.occurred_at);
                }
                entry.2 += n;
            }
        }
    }

    /// Records the progress of the projectors `only` over `batch` at once
    /// (the catch-up paths; the live runner notes and flushes).
    pub(super) async fn record_progress_of(
        &self,
        only: &[&'static str],
        batch: &[Envelope],
    ) -> Result<(), sqlx::Error> {
        let mut pending = PendingProgress::default();
        self.note_progress_of(&mut pending, only, batch);
        self.flush_progress(&mut pending).await
    }

    /// Writes the progress noted in `pending` to `projection_status`
    /// (position and time of the last envelope each projector handled,
    /// events applied, a smoothed events/s) and clears a recorded failure
    /// unless the projector is parked (progress held back from before it
    /// was parked must not hide why; unparking clears it):
    /// the status page's source (issue 18). `pending` is emptied once
    /// written. The live runner calls it when it acknowledges its feed (at
    /// most every [`super::RunOptions::commit_interval`], and when idle), not
    /// after every batch: one statement instead of one per batch.
    pub(super) async fn flush_progress(&self, pending: &mut PendingProgress) -> Result<(), sqlx::Error> {
        if pending.0.is_empty() {
            return Ok(());
        }
        let (mut names, mut positions, mut times, mut counts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (name, (position, at, n)) in &pending.0 {
            names.push(*name);
            positions.push(*position);
            times.push(*at);
            counts.push(*n);
        }
        // One statement for every projector of the batch (the latency path).
        sqlx::query(
            "INSERT INTO projection_status (projector, position, last_event_at, applied, updated_at)
             SELECT * , now() FROM UNNEST($1::text[], $2::int8[], $3::timestamptz[], $4::int8[])
             ON CONFLICT (projector) DO UPDATE SET
                 position = GREATEST(projection_status.position, excluded.position),
                 last_event_at = excluded.last_event_at,
                 applied = projection_status.applied + excluded.applied,
                 rate = CASE WHEN extract(epoch FROM now() - projection_status.updated_at) > 0.001
                             THEN 0.8 * projection_status.rate
                                  + 0.2 * (excluded.applied / extract(epoch FROM now() - projection_status.updated_at))
                             ELSE projection_status.rate END,
                 state = CASE WHEN projection_status.parked THEN projection_status.state ELSE 'live' END,
                 error = CASE WHEN projection_status.parked THEN projection_status.error END,
                 failed_event = CASE WHEN projection_status.parked THEN projection_status.failed_event END,
                 updated_at = now()",
        )
        .bind(&names)
        .bind(&positions)
        .bind(&times)
        .bind(&counts)
        .execute(&self.pool)
        .await?;
        pending.0.clear();
        Ok(())
    }

    /// Records the failure a step stopped on (`failed`, the error chain and,
    /// with `park`, that the projector is parked ([`super::parking`]);
    /// for a projector's failure, its event), until the next step succeeds.
    pub(super) async fn record_failure(&self, error: &RunError, park: bool) -> Result<(), sqlx::Error> {
        let (names, event): (Vec<&str>, Option<String>) = match error {
            RunError::Projector { projector, aggregate_type, aggregate_id, sequence, .. } => {
                (vec![*projector], Some(format!("{aggregate_type}/{aggregate_id}#{sequence}")))
            }
            _ => (self.names(), None),
        };
        let text = ErrorChain(error).to_string();
        for name in names {
            sqlx::query(
                "INSERT INTO projection_status (projector, state, error, failed_event, parked, updated_at)
                 VALUES ($1, 'failed', $2, $3, $4, now())
                 ON CONFLICT (projector) DO UPDATE SET state = 'failed', error = $2, failed_event = $3,
                     parked = projection_status.parked OR $4, updated_at = now()",
            )
            .bind(name)
            .bind(&text)
            .bind(event.as_deref())
            .bind(park)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }
}

//! Command execution over the postgres-es event store.
//!
//! Why not `CqrsFramework::execute_with_metadata`: it returns `()`, so the
//! caller cannot tell which events a command produced (a wrong OTP is a
//! *successful* command that records `OtpVerificationFailed`), and it never
//! retries an optimistic-concurrency conflict. [`Executor`] does the same
//! three steps — load the aggregate from its events, `handle`, commit — with
//! the same `PersistedEventStore` (plain event-store mode only), returns the
//! new state and events, and retries conflicts a bounded number of times
//! before answering [`ExecError::Conflict`] (→ HTTP 409).

use std::collections::HashMap;
use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventStore};
use postgres_es::PostgresEventRepository;
use sqlx::PgPool;

/// Attempts per command when the aggregate was appended to concurrently.
pub const MAX_ATTEMPTS: u32 = 5;

/// Why a command did not commit.
#[derive(Debug, thiserror::Error)]
pub enum ExecError<E: std::error::Error> {
    /// The aggregate refused the command; nothing was written.
    #[error(transparent)]
    Domain(E),
    /// Still conflicting after [`MAX_ATTEMPTS`] attempts.
    #[error("the aggregate was changed concurrently")]
    Conflict,
    /// Store or database failure.
    #[error("event store error: {0}")]
    Store(String),
}

/// The outcome of a committed command.
#[derive(Debug)]
pub struct Executed<A: Aggregate> {
    /// State after the new events.
    pub state: A,
    /// The events appended (possibly none).
    pub events: Vec<A::Event>,
    /// Attempts it took: 1, plus one per optimistic-concurrency conflict
    /// that was retried (at most the executor's maximum).
    pub attempts: u32,
}

/// Executes commands of aggregate `A`.
pub struct Executor<A: Aggregate> {
    store: PersistedEventStore<PostgresEventRepository, A>,
    services: A::Services,
    max_attempts: u32,
}

impl<A> Executor<A>
where
    A: Aggregate + Clone,
    A::Command: Clone,
{
    /// An executor over the `events` table of `pool`, retrying conflicts up
    /// to [`MAX_ATTEMPTS`] attempts in all.
    pub fn new(pool: PgPool, services: A::Services) -> Self {
        let repo = PostgresEventRepository::new(pool);
        Self { store: PersistedEventStore::new_event_store(repo), services, max_attempts: MAX_ATTEMPTS }
    }

    /// Replaces the number of attempts per command (at least 1; 1 means a
    /// conflict is answered with [`ExecError::Conflict`] at once).
    #[must_use]
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Current state of aggregate `id` (the default state if it has no events).
    ///
    /// # Errors
    /// [`ExecError::Store`].
    pub async fn load(&self, id: &str) -> Result<A, ExecError<A::Error>> {
        let mut ctx = self.store.load_aggregate(id).await.map_err(store_error)?;
        Ok(ctx.aggregate().clone())
    }

    /// Loads `id`, handles `command`, appends the events with `metadata`.
    ///
    /// # Errors
    /// [`ExecError::Domain`] when refused, [`ExecError::Conflict`] after
    /// the maximum number of conflicting attempts ([`MAX_ATTEMPTS`] unless
    /// set by [`Executor::with_max_attempts`]); a conflicting attempt wrote
    /// nothing (the append is one transaction keyed by the events' primary
    /// key). [`ExecError::Store`] otherwise.
    #[tracing::instrument(skip_all, fields(aggregate_type = A::TYPE, aggregate_id = %id))]
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
        metadata: HashMap<String, String>,
    ) -> Result<Executed<A>, ExecError<A::Error>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut ctx = self.store.load_aggregate(id).await.map_err(store_error)?;
            let sink = EventSink::default();
            ctx.aggregate()
                .handle(command.clone(), &self.services, &sink)
                .await
                .map_err(ExecError::Domain)?;
            let events = sink.collect().await;
            let state = ctx.aggregate().clone();
            if events.is_empty() {
                return Ok(Executed { state, events, attempts: attempt });
            }
            match self.store.commit(events.clone(), ctx, metadata.clone()).await {
                Ok(_) => return Ok(Executed { state, events, attempts: attempt }),
                Err(AggregateError::AggregateConflict) if attempt < self.max_attempts => {
                    tracing::debug!(attempt, "aggregate conflict, retrying");
                    tokio::time::sleep(retry_delay(attempt)).await;
                }
                Err(AggregateError::AggregateConflict) => return Err(ExecError::Conflict),
                Err(e) => return Err(store_error(e)),
            }
        }
    }
}

/// Pause before attempt `attempt + 1`: "full jitter" over an exponential
/// ceiling of 4, 8, 16, 32 … ms, so writers that collided do not collide
/// again in lock step.
fn retry_delay(attempt: u32) -> Duration {
    let ceiling_ms = 2u64 << attempt.min(10);
    Duration::from_micros(rand::Rng::gen_range(&mut rand::thread_rng(), 500..=ceiling_ms * 1000))
}

fn store_error<E: std::error::Error>(e: AggregateError<E>) -> ExecError<E> {
    match e {
        AggregateError::UserError(e) => ExecError::Domain(e),
        AggregateError::AggregateConflict => ExecError::Conflict,
        other => ExecError::Store(other.to_string()),
    }
}

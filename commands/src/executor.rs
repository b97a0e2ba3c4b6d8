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
}

/// Executes commands of aggregate `A`.
pub struct Executor<A: Aggregate> {
    store: PersistedEventStore<PostgresEventRepository, A>,
    services: A::Services,
}

impl<A> Executor<A>
where
    A: Aggregate + Clone,
    A::Command: Clone,
{
    pub fn new(pool: PgPool, services: A::Services) -> Self {
        let repo = PostgresEventRepository::new(pool);
        Self { store: PersistedEventStore::new_event_store(repo), services }
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
    /// [`MAX_ATTEMPTS`] conflicting attempts, [`ExecError::Store`] otherwise.
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
                return Ok(Executed { state, events });
            }
            match self.store.commit(events.clone(), ctx, metadata.clone()).await {
                Ok(_) => return Ok(Executed { state, events }),
                Err(AggregateError::AggregateConflict) if attempt < MAX_ATTEMPTS => {
                    tracing::debug!(attempt, "aggregate conflict, retrying");
                    tokio::time::sleep(Duration::from_millis(2u64 << attempt)).await;
                }
                Err(AggregateError::AggregateConflict) => return Err(ExecError::Conflict),
                Err(e) => return Err(store_error(e)),
            }
        }
    }
}

fn store_error<E: std::error::Error>(e: AggregateError<E>) -> ExecError<E> {
    match e {
        AggregateError::UserError(e) => ExecError::Domain(e),
        AggregateError::AggregateConflict => ExecError::Conflict,
        other => ExecError::Store(other.to_string()),
    }
}

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
//!
//! Loading goes through postgres-es; the append is one multi-row `INSERT`
//! of the same seven columns postgres-es writes (same rows, same JSON, same
//! conflict on the primary key), sent without `BEGIN`/`COMMIT`: one
//! statement is its own transaction, so the append stays all-or-nothing
//! with one round trip instead of `2 + n` (see [`Executor::execute`]).

use std::collections::HashMap;
use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{EventStoreAggregateContext, PersistedEventStore};
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventStore};
use domain::consistency::ConsistencyToken;
use postgres_es::PostgresEventRepository;
use sqlx::{PgPool, Postgres, QueryBuilder};

mod together;

pub use together::{append_together, Decided, DecidedRows, EventRows, Together};
use together::{count_command, StreamRows};

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
    /// Where the command's last event landed (`None` when it appended
    /// nothing): the read-your-writes token handed to the client
    /// (`X-Consistency-Token`, ARCHITECTURE decided 13).
    pub token: Option<ConsistencyToken>,
}

/// Which of a stream's events a load folds. Only for aggregates whose
/// state provably does not depend on the events left out (documented at
/// the executor that uses it); the sequence is always the stream's last.
#[derive(Debug, Clone, Copy)]
pub enum Tail {
    /// Every event (postgres-es's load).
    All,
    /// From the stream's last event of one of these types on (its `apply`
    /// leaves nothing of the state before it), or every event if none.
    FromLast(&'static [&'static str]),
    /// The events recorded in the last `secs` seconds (the state forgets
    /// older ones), and the last event for the sequence.
    RecordedWithin { secs: i64 },
}

/// Executes commands of aggregate `A`.
pub struct Executor<A: Aggregate> {
    store: PersistedEventStore<PostgresEventRepository, A>,
    /// Which events a load folds, by stream id.
    tail: fn(&str) -> Tail,
    pool: PgPool,
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
        let repo = PostgresEventRepository::new(pool.clone());
        Self {
            store: PersistedEventStore::new_event_store(repo).with_upcasters(domain::upcast::upcasters()),
            tail: |_| Tail::All,
            pool,
            services,
            max_attempts: MAX_ATTEMPTS,
        }
    }

    /// Folds only the [`Tail`] `rule` names for each stream id, so a long
    /// stream is not replayed whole on every command (e.g. throttles).
    #[must_use]
    pub fn with_tail(mut self, rule: fn(&str) -> Tail) -> Self {
        self.tail = rule;
        self
    }

    /// Loads stream `id` as its [`Tail`] rule says (postgres-es's load for
    /// [`Tail::All`], [`Executor::load_many`]'s statement otherwise).
    async fn load_context(&self, id: &str) -> Result<EventStoreAggregateContext<A>, ExecError<A::Error>> {
        if matches!((self.tail)(id), Tail::All) {
            return self.store.load_aggregate(id).await.map_err(store_error);
        }
        let loaded = self.load_many(&[id]).await?.pop();
        loaded.map(|l| l.0).ok_or_else(|| ExecError::Store("stream not loaded".to_owned()))
    }

    /// Streams `ids` of `A`, each as its [`Tail`] rule says, read by one
    /// statement (`UNION ALL` of the per-stream reads), in the order given:
    /// for commands on several streams of one request (e.g. the password
    /// throttle and the code budget of one login), run with
    /// [`Executor::execute_loaded`].
    ///
    /// # Errors
    /// [`ExecError::Store`] on a database error or an event that does not
    /// deserialise.
    pub async fn load_many(&self, ids: &[&str]) -> Result<Vec<Loaded<A>>, ExecError<A::Error>> {
        let mut q: QueryBuilder<'_, Postgres> = QueryBuilder::new("");
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                q.push(" UNION ALL ");
            }
            self.push_load(&mut q, i32::try_from(i).unwrap_or(i32::MAX), id);
        }
        q.push(" ORDER BY k, sequence");
        let rows: Vec<LoadRow> =
            q.build_query_as().fetch_all(&self.pool).await.map_err(|e| ExecError::Store(e.to_string()))?;
        let mut contexts: Vec<EventStoreAggregateContext<A>> =
            ids.iter().map(|id| empty_context(id)).collect();
        for (k, _, sequence, event_type, event_version, payload) in rows {
            let ctx = usize::try_from(k)
                .ok()
                .and_then(|k| contexts.get_mut(k))
                .ok_or_else(|| ExecError::Store("row of an unknown stream".to_owned()))?;
            fold_row(ctx, sequence, &event_type, &event_version, payload)?;
        }
        Ok(contexts.into_iter().map(Loaded).collect())
    }

    /// Pushes the read of stream `id` of `A` as part `k` of a `UNION ALL`
    /// (parenthesised; the columns of a [`LoadRow`]), as its [`Tail`] rule
    /// says: for one statement that reads several aggregates' streams
    /// (e.g. a password login's, `IdentityService::start_login`). Fold the
    /// rows of part `k`, in sequence order, with [`Executor::loaded_from`].
    pub(crate) fn push_load<'q>(&self, q: &mut QueryBuilder<'q, Postgres>, k: i32, id: &'q str) {
        q.push("(SELECT ");
        q.push_bind(k);
        q.push(" AS k, aggregate_type, sequence, event_type, event_version, payload FROM events WHERE aggregate_type = ");
        q.push_bind(A::TYPE);
        q.push(" AND aggregate_id = ");
        q.push_bind(id);
        match (self.tail)(id) {
            Tail::All => {}
            Tail::FromLast(types) => {
                q.push(" AND sequence >= COALESCE((SELECT max(sequence) FROM events WHERE aggregate_type = ");
                q.push_bind(A::TYPE);
                q.push(" AND aggregate_id = ");
                q.push_bind(id);
                q.push(" AND event_type = ANY(");
                q.push_bind(types);
                q.push(")), 0)");
            }
            Tail::RecordedWithin { secs } => {
                q.push(" AND (recorded_at >= now() - make_interval(secs => ");
                q.push_bind(secs as f64);
                q.push(") OR sequence = (SELECT max(sequence) FROM events WHERE aggregate_type = ");
                q.push_bind(A::TYPE);
                q.push(" AND aggregate_id = ");
                q.push_bind(id);
                q.push("))");
            }
        }
        q.push(")");
    }

    /// Stream `id` of `A` folded from `rows` (its events in sequence
    /// order, as [`LoadRow`]s of one part of a read built with
    /// [`Executor::push_load`]), through the upcasters as cqrs-es loads.
    ///
    /// # Errors
    /// [`ExecError::Store`] for an event that does not deserialise.
    pub(crate) fn loaded_from(
        id: &str,
        rows: impl IntoIterator<Item = LoadRow>,
    ) -> Result<Loaded<A>, ExecError<A::Error>> {
        let mut ctx = empty_context::<A>(id);
        for (_, _, sequence, event_type, event_version, payload) in rows {
            fold_row(&mut ctx, sequence, &event_type, &event_version, payload)?;
        }
        Ok(Loaded(ctx))
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
        let mut ctx = self.load_context(id).await?;
        Ok(ctx.aggregate().clone())
    }

    /// Loads `id`, handles `command`, appends the events with `metadata`.
    ///
    /// # Errors
    /// [`ExecError::Domain`] when refused, [`ExecError::Conflict`] after
    /// the maximum number of conflicting attempts ([`MAX_ATTEMPTS`] unless
    /// set by [`Executor::with_max_attempts`]); a conflicting attempt wrote
    /// nothing (the append is one statement, refused whole by the events'
    /// primary key). [`ExecError::Store`] otherwise.
    #[tracing::instrument(skip_all, fields(aggregate_type = A::TYPE, aggregate_id = %id))]
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
        metadata: HashMap<String, String>,
    ) -> Result<Executed<A>, ExecError<A::Error>> {
        self.run(id, command, metadata, First::Load, None).await
    }

    /// [`Executor::execute`] for a stream the caller has just named (a fresh
    /// random id): the first attempt handles the command on the default
    /// state without reading the stream — one query fewer. Should the stream
    /// exist after all, the append conflicts on sequence 1, writes nothing,
    /// and the command is handled again on the loaded state at once (not
    /// counted as a conflict), so the outcome is that of `execute`.
    ///
    /// # Errors
    /// As [`Executor::execute`].
    #[tracing::instrument(skip_all, fields(aggregate_type = A::TYPE, aggregate_id = %id))]
    pub async fn execute_new(
        &self,
        id: &str,
        command: A::Command,
        metadata: HashMap<String, String>,
    ) -> Result<Executed<A>, ExecError<A::Error>> {
        self.run(id, command, metadata, First::New, None).await
    }

    /// [`Executor::execute`] whose append also writes `also` in the same
    /// statement (a data-modifying `WITH` query): the row exists if and only
    /// if the events were appended. A refused command writes neither.
    ///
    /// # Errors
    /// As [`Executor::execute`]; a unique violation in `also` is
    /// [`ExecError::Store`] (not a conflict).
    #[tracing::instrument(skip_all, fields(aggregate_type = A::TYPE, aggregate_id = %id))]
    pub async fn execute_with(
        &self,
        id: &str,
        command: A::Command,
        metadata: HashMap<String, String>,
        also: &dyn CoWrite,
    ) -> Result<Executed<A>, ExecError<A::Error>> {
        self.run(id, command, metadata, First::Load, Some(also)).await
    }

    /// [`Executor::execute_new`] with `also` written by the append, as in
    /// [`Executor::execute_with`].
    ///
    /// # Errors
    /// As [`Executor::execute_with`].
    #[tracing::instrument(skip_all, fields(aggregate_type = A::TYPE, aggregate_id = %id))]
    pub async fn execute_new_with(
        &self,
        id: &str,
        command: A::Command,
        metadata: HashMap<String, String>,
        also: &dyn CoWrite,
    ) -> Result<Executed<A>, ExecError<A::Error>> {
        self.run(id, command, metadata, First::New, Some(also)).await
    }

    /// [`Executor::execute`] starting from `loaded` (from
    /// [`Executor::load_with`]) instead of reading the stream again. If the
    /// stream moved on since, the append conflicts and the command is retried
    /// on a fresh load, as in `execute`.
    ///
    /// # Errors
    /// As [`Executor::execute`].
    #[tracing::instrument(skip_all, fields(aggregate_type = A::TYPE, aggregate_id = %loaded.0.aggregate_id))]
    pub async fn execute_loaded(
        &self,
        loaded: Loaded<A>,
        command: A::Command,
        metadata: HashMap<String, String>,
    ) -> Result<Executed<A>, ExecError<A::Error>> {
        let id = loaded.0.aggregate_id.clone();
        self.run(&id, command, metadata, First::Given(loaded.0), None).await
    }

    /// Stream `id` of `A` and the stream of the same id of aggregate type
    /// `B` (e.g. a user and that user's TOTP factor), read by one `SELECT`
    /// on the events' primary key. `B`'s events are folded with `B::apply`.
    /// `B` is another aggregate type than `A` (checked in debug builds).
    ///
    /// # Errors
    /// [`ExecError::Store`] on a database error or an event that does not
    /// deserialise.
    pub async fn load_with<B: Aggregate>(&self, id: &str) -> Result<(Loaded<A>, B), ExecError<A::Error>> {
        debug_assert_ne!(A::TYPE, B::TYPE, "load_with reads two aggregate types");
        let rows: Vec<(String, i64, serde_json::Value)> = sqlx::query_as(
            "SELECT aggregate_type, sequence, payload FROM events
             WHERE aggregate_type = ANY($1) AND aggregate_id = $2 ORDER BY aggregate_type, sequence",
        )
        .bind([A::TYPE, B::TYPE])
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| ExecError::Store(e.to_string()))?;
        let mut ctx = empty_context::<A>(id);
        let mut other = B::default();
        let undecodable = |e: serde_json::Error| ExecError::Store(format!("event payload: {e}"));
        for (aggregate_type, sequence, payload) in rows {
            if aggregate_type == A::TYPE {
                ctx.aggregate.apply(serde_json::from_value(payload).map_err(undecodable)?);
                ctx.current_sequence =
                    usize::try_from(sequence).map_err(|e| ExecError::Store(e.to_string()))?;
            } else {
                other.apply(serde_json::from_value(payload).map_err(undecodable)?);
            }
        }
        Ok((Loaded(ctx), other))
    }

    /// [`Executor::run_attempts`], counted in `streamforge_commands_total`
    /// by aggregate, command (the metadata's `command`) and outcome (`ok`,
    /// `unchanged`, `refused`, `conflict`, `error`).
    async fn run(
        &self,
        id: &str,
        command: A::Command,
        metadata: HashMap<String, String>,
        first: First<A>,
        also: Option<&dyn CoWrite>,
    ) -> Result<Executed<A>, ExecError<A::Error>> {
        let result = self.run_attempts(id, command, &metadata, first, also).await;
        let outcome = match &result {
            Ok(done) if done.events.is_empty() => "unchanged",
            Ok(_) => "ok",
            Err(ExecError::Domain(_)) => "refused",
            Err(ExecError::Conflict) => "conflict",
            Err(ExecError::Store(_)) => "error",
        };
        count_command::<A>(&metadata, outcome);
        result
    }

    async fn run_attempts(
        &self,
        id: &str,
        command: A::Command,
        metadata: &HashMap<String, String>,
        first: First<A>,
        also: Option<&dyn CoWrite>,
    ) -> Result<Executed<A>, ExecError<A::Error>> {
        let mut attempt = 0;
        let mut next = first;
        loop {
            let assumed_new = matches!(next, First::New);
            let mut ctx = match std::mem::replace(&mut next, First::Load) {
                First::New => empty_context(id),
                First::Given(ctx) => {
                    attempt += 1;
                    ctx
                }
                First::Load => {
                    attempt += 1;
                    self.load_context(id).await?
                }
            };
            let sink = EventSink::default();
            ctx.aggregate()
                .handle(command.clone(), &self.services, &sink)
                .await
                .map_err(ExecError::Domain)?;
            let events = sink.collect().await;
            let state = ctx.aggregate().clone();
            if events.is_empty() {
                return Ok(Executed { state, events, attempts: attempt.max(1), token: None });
            }
            match self.append(id, ctx.current_sequence, &events, metadata, also).await {
                Ok(position) => {
                    let sequence = i64::try_from(ctx.current_sequence + events.len()).unwrap_or(i64::MAX);
                    let token = ConsistencyToken {
                        position,
                        aggregate_type: A::TYPE.to_owned(),
                        aggregate_id: id.to_owned(),
                        sequence,
                    };
                    return Ok(Executed { state, events, attempts: attempt.max(1), token: Some(token) });
                }
                Err(Together::Conflict) if assumed_new => {
                    tracing::debug!("stream assumed new already exists; loading it");
                }
                Err(Together::Conflict) if attempt < self.max_attempts => {
                    tracing::debug!(attempt, "aggregate conflict, retrying");
                    metrics::counter!("streamforge_command_retries_total", "aggregate" => A::TYPE)
                        .increment(1);
                    tokio::time::sleep(retry_delay(attempt)).await;
                }
                Err(Together::Conflict) => return Err(ExecError::Conflict),
                Err(Together::Store(e)) => return Err(ExecError::Store(e)),
            }
        }
    }

    /// Appends `events` after sequence `last_sequence` of stream `id`,
    /// preceded by `also`'s `WITH` query when given: one statement
    /// (`together::insert_events`, which [`append_together`] uses too).
    async fn append(
        &self,
        id: &str,
        last_sequence: usize,
        events: &[A::Event],
        metadata: &HashMap<String, String>,
        also: Option<&dyn CoWrite>,
    ) -> Result<i64, Together> {
        let rows = StreamRows::<A> { id, last_sequence, events, metadata };
        together::insert_events(&self.pool, &[&rows], also).await
    }
}

/// A stream as loaded by [`Executor::load_with`], to hand to
/// [`Executor::execute_loaded`]: the state and the stream's last sequence.
pub struct Loaded<A: Aggregate>(EventStoreAggregateContext<A>);

impl<A: Aggregate> Loaded<A> {
    /// The aggregate's state as loaded.
    pub fn state(&self) -> &A {
        &self.0.aggregate
    }

    /// The stream's last sequence as loaded (0: no event).
    pub fn sequence(&self) -> usize {
        self.0.current_sequence
    }
}

/// A row written by the same statement as an append
/// ([`Executor::execute_new_with`]), as a data-modifying `WITH` query.
pub trait CoWrite: Send + Sync {
    /// Pushes `name AS (INSERT …)` onto `query`, binding its values.
    fn push_cte<'q>(&'q self, query: &mut QueryBuilder<'q, Postgres>);
}

/// Where the next attempt starts.
enum First<A: Aggregate> {
    /// Read the stream.
    Load,
    /// The caller named a fresh stream: start from the default state.
    New,
    /// A state loaded by the caller.
    Given(EventStoreAggregateContext<A>),
}

/// The context of stream `id` before its first event: the default state
/// after sequence 0.
fn empty_context<A: Aggregate>(id: &str) -> EventStoreAggregateContext<A> {
    EventStoreAggregateContext {
        aggregate_id: id.to_owned(),
        aggregate: A::default(),
        current_sequence: 0,
        current_snapshot: None,
    }
}

/// One row of a read of several streams in one statement
/// ([`Executor::push_load`]): the part `k`, then the event's aggregate type,
/// sequence, type, version and payload.
pub(crate) type LoadRow = (i32, String, i64, String, String, serde_json::Value);

/// Applies one stored event to `ctx`: upcast (as cqrs-es loads), decoded,
/// applied; the context's sequence becomes `sequence`.
fn fold_row<A: Aggregate>(
    ctx: &mut EventStoreAggregateContext<A>,
    sequence: i64,
    event_type: &str,
    event_version: &str,
    payload: serde_json::Value,
) -> Result<(), ExecError<A::Error>> {
    let (_, payload) = domain::upcast::upcast(event_type, event_version, payload);
    let event =
        serde_json::from_value(payload).map_err(|e| ExecError::Store(format!("event payload: {e}")))?;
    ctx.aggregate.apply(event);
    ctx.current_sequence = usize::try_from(sequence).map_err(|e| ExecError::Store(e.to_string()))?;
    Ok(())
}

/// Pause before attempt `attempt + 1`: "full jitter" over an exponential
/// ceiling of 4, 8, 16, 32 … ms, so writers that collided do not collide
/// again in lock step.
pub(crate) fn retry_delay(attempt: u32) -> Duration {
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

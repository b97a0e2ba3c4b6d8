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
use cqrs_es::{Aggregate, AggregateContext, AggregateError, DomainEvent, EventStore};
use domain::consistency::ConsistencyToken;
use postgres_es::PostgresEventRepository;
use sqlx::{PgPool, Postgres, QueryBuilder};

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
            q.push("(SELECT ");
            q.push_bind(i32::try_from(i).unwrap_or(i32::MAX));
            q.push(" AS k, sequence, event_type, event_version, payload FROM events WHERE aggregate_type = ");
            q.push_bind(A::TYPE);
            q.push(" AND aggregate_id = ");
            q.push_bind(*id);
            match (self.tail)(id) {
                Tail::All => {}
                Tail::FromLast(types) => {
                    q.push(
                        " AND sequence >= COALESCE((SELECT max(sequence) FROM events WHERE aggregate_type = ",
                    );
                    q.push_bind(A::TYPE);
                    q.push(" AND aggregate_id = ");
                    q.push_bind(*id);
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
                    q.push_bind(*id);
                    q.push("))");
                }
            }
            q.push(")");
        }
        q.push(" ORDER BY k, sequence");
        let rows: Vec<(i32, i64, String, String, serde_json::Value)> =
            q.build_query_as().fetch_all(&self.pool).await.map_err(|e| ExecError::Store(e.to_string()))?;
        let mut contexts: Vec<EventStoreAggregateContext<A>> =
            ids.iter().map(|id| empty_context(id)).collect();
        for (k, sequence, event_type, event_version, payload) in rows {
            // Older versions through the upcasters, as cqrs-es loads them.
            let (_, payload) = domain::upcast::upcast(&event_type, &event_version, payload);
            let ctx = usize::try_from(k)
                .ok()
                .and_then(|k| contexts.get_mut(k))
                .ok_or_else(|| ExecError::Store("row of an unknown stream".to_owned()))?;
            let event = serde_json::from_value(payload)
                .map_err(|e| ExecError::Store(format!("event payload: {e}")))?;
            ctx.aggregate.apply(event);
            ctx.current_sequence = usize::try_from(sequence).map_err(|e| ExecError::Store(e.to_string()))?;
        }
        Ok(contexts.into_iter().map(Loaded).collect())
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
        let name = metadata.get("command").cloned().unwrap_or_else(|| "unknown".to_owned());
        let result = self.run_attempts(id, command, metadata, first, also).await;
        let outcome = match &result {
            Ok(done) if done.events.is_empty() => "unchanged",
            Ok(_) => "ok",
            Err(ExecError::Domain(_)) => "refused",
            Err(ExecError::Conflict) => "conflict",
            Err(ExecError::Store(_)) => "error",
        };
        metrics::counter!("streamforge_commands_total", "aggregate" => A::TYPE, "command" => name, "outcome" => outcome)
            .increment(1);
        result
    }

    async fn run_attempts(
        &self,
        id: &str,
        command: A::Command,
        metadata: HashMap<String, String>,
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
            match self.append(id, ctx.current_sequence, &events, &metadata, also).await {
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
                Err(Append::Conflict) if assumed_new => {
                    tracing::debug!("stream assumed new already exists; loading it");
                }
                Err(Append::Conflict) if attempt < self.max_attempts => {
                    tracing::debug!(attempt, "aggregate conflict, retrying");
                    metrics::counter!("streamforge_command_retries_total", "aggregate" => A::TYPE)
                        .increment(1);
                    tokio::time::sleep(retry_delay(attempt)).await;
                }
                Err(Append::Conflict) => return Err(ExecError::Conflict),
                Err(Append::Store(e)) => return Err(ExecError::Store(e)),
            }
        }
    }

    /// Appends `events` after sequence `last_sequence` of stream `id` in one
    /// `INSERT` (the columns postgres-es 0.5 writes; Postgres fills
    /// `position`, `txid`, `event_id`, `recorded_at`), preceded by `also`'s
    /// `WITH` query when given. Payload and metadata are sent as `jsonb` and
    /// stored in the `json` columns, as postgres-es does. A violation of the
    /// events' primary key (SQLSTATE 23505, `events_pkey`: a concurrent
    /// append) is [`Append::Conflict`]; the statement then wrote nothing.
    async fn append(
        &self,
        id: &str,
        last_sequence: usize,
        events: &[A::Event],
        metadata: &HashMap<String, String>,
        also: Option<&dyn CoWrite>,
    ) -> Result<i64, Append> {
        let mut insert: QueryBuilder<'_, Postgres> = QueryBuilder::new("");
        if let Some(also) = also {
            insert.push("WITH ");
            also.push_cte(&mut insert);
            insert.push(" ");
        }
        insert.push(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) ",
        );
        let metadata = sqlx::types::Json(metadata);
        let first = i64::try_from(last_sequence).map_err(|e| Append::Store(e.to_string()))? + 1;
        insert.push_values(events.iter().zip(first..), |mut row, (event, sequence)| {
            row.push_bind(A::TYPE)
                .push_bind(id)
                .push_bind(sequence)
                .push_bind(event.event_type())
                .push_bind(event.event_version())
                .push_bind(sqlx::types::Json(event))
                .push_bind(metadata);
        });
        insert.push(" RETURNING position");
        match insert.build_query_scalar::<i64>().fetch_all(&self.pool).await {
            Ok(positions) => {
                positions.into_iter().max().ok_or_else(|| Append::Store("no row appended".to_owned()))
            }
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("23505") && e.constraint() == Some("events_pkey") =>
            {
                Err(Append::Conflict)
            }
            Err(e) => Err(Append::Store(e.to_string())),
        }
    }
}

/// A command handled on one stream whose events are not appended yet
/// ([`Executor::decide`], [`Executor::decide_new`]): appended together
/// with other streams' by [`append_together`], all or none.
pub struct Decided<A: Aggregate> {
    /// The stream's aggregate id.
    pub id: String,
    /// The state after the events.
    pub state: A,
    /// The events the command produced (possibly none).
    pub events: Vec<A::Event>,
    last_sequence: usize,
    metadata: HashMap<String, String>,
}

impl<A: Aggregate> Decided<A> {
    /// The stream's sequence the command was decided on (its events
    /// follow it).
    pub fn sequence(&self) -> usize {
        self.last_sequence
    }
}

impl<A: Aggregate + PartialEq> Decided<A> {
    /// Moves the decision onto `fresh`, a later read of the same stream,
    /// without handling the command again, when `fresh`'s state equals the
    /// state this decision's events left: what came in between did not
    /// change the state (another login's `LoginPasswordAccepted`, say), and
    /// a command's outcome is a function of the state, so handling it again
    /// would decide the same. Answers `fresh` back when the state differs
    /// (decide again then); a decision whose events change the state never
    /// moves, which errs on the side of deciding again.
    ///
    /// # Errors
    /// `fresh`, when the decision cannot move onto it.
    pub fn rebase(&mut self, fresh: Loaded<A>) -> Result<(), Loaded<A>> {
        if fresh.0.aggregate == self.state {
            self.last_sequence = fresh.0.current_sequence;
            Ok(())
        } else {
            Err(fresh)
        }
    }
}

impl<A> Executor<A>
where
    A: Aggregate + Clone,
    A::Command: Clone,
{
    /// Handles `command` on the stream `loaded` without appending: the
    /// caller appends the result with [`append_together`] (and, on
    /// [`Together::Conflict`], decides again from a fresh load).
    ///
    /// # Errors
    /// [`ExecError::Domain`] when the aggregate refuses the command.
    pub async fn decide(
        &self,
        loaded: Loaded<A>,
        command: A::Command,
        metadata: HashMap<String, String>,
    ) -> Result<Decided<A>, ExecError<A::Error>> {
        self.decide_on(loaded.0, command, metadata).await
    }

    /// [`Executor::decide`] on a stream that does not exist yet (a freshly
    /// named id): nothing is read.
    ///
    /// # Errors
    /// As [`Executor::decide`].
    pub async fn decide_new(
        &self,
        id: &str,
        command: A::Command,
        metadata: HashMap<String, String>,
    ) -> Result<Decided<A>, ExecError<A::Error>> {
        self.decide_on(empty_context(id), command, metadata).await
    }

    async fn decide_on(
        &self,
        mut ctx: EventStoreAggregateContext<A>,
        command: A::Command,
        metadata: HashMap<String, String>,
    ) -> Result<Decided<A>, ExecError<A::Error>> {
        let sink = EventSink::default();
        let handled = ctx.aggregate().handle(command, &self.services, &sink).await;
        if handled.is_err() {
            count_command::<A>(&metadata, "refused");
        }
        handled.map_err(ExecError::Domain)?;
        let events = sink.collect().await;
        Ok(Decided {
            id: ctx.aggregate_id,
            state: ctx.aggregate,
            events,
            last_sequence: ctx.current_sequence,
            metadata,
        })
    }
}

/// One stream's part of an [`append_together`]: its rows of `events`.
pub trait DecidedRows: Send + Sync {
    /// How many events it appends.
    fn len(&self) -> usize;
    /// Whether it appends nothing.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Pushes its rows, each `(aggregate_type, aggregate_id, sequence,
    /// event_type, event_version, payload, metadata)`, comma-separated
    /// after `first` rows already pushed.
    fn push_rows<'q>(&'q self, query: &mut QueryBuilder<'q, Postgres>, first: &mut bool);
    /// Counts the command under `outcome` (`streamforge_commands_total`).
    fn count(&self, outcome: &'static str);
}

impl<A: Aggregate> DecidedRows for Decided<A> {
    fn len(&self) -> usize {
        self.events.len()
    }

    fn push_rows<'q>(&'q self, query: &mut QueryBuilder<'q, Postgres>, first: &mut bool) {
        let metadata = sqlx::types::Json(&self.metadata);
        let start = i64::try_from(self.last_sequence).unwrap_or(i64::MAX).saturating_add(1);
        for (event, sequence) in self.events.iter().zip(start..) {
            if !std::mem::take(first) {
                query.push(", ");
            }
            query.push("(");
            let mut row = query.separated(", ");
            row.push_bind(A::TYPE)
                .push_bind(self.id.as_str())
                .push_bind(sequence)
                .push_bind(event.event_type())
                .push_bind(event.event_version())
                .push_bind(sqlx::types::Json(event))
                .push_bind(metadata);
            query.push(")");
        }
    }

    fn count(&self, outcome: &'static str) {
        count_command::<A>(&self.metadata, if self.events.is_empty() { "unchanged" } else { outcome });
    }
}

/// Why [`append_together`] appended nothing.
#[derive(Debug, thiserror::Error)]
pub enum Together {
    /// One of the streams was changed since it was loaded: decide again.
    #[error("a stream was changed concurrently")]
    Conflict,
    #[error("event store error: {0}")]
    Store(String),
}

/// Appends the events of several streams' decided commands, and `also`, in
/// one statement (its own transaction): all of them or none, with one round
/// trip, one commit and one notification for the lot (a password login's
/// three events: `LoginPasswordAccepted`, the code budget's
/// `RequestRecorded` and `OtpIssued` with its delivery record). Returns
/// the position of the last event.
///
/// # Errors
/// [`Together::Conflict`] when a stream moved on (its sequence is taken:
/// nothing was written), [`Together::Store`] for any other failure or when
/// there is nothing to append.
pub async fn append_together(
    pool: &PgPool,
    parts: &[&dyn DecidedRows],
    also: Option<&dyn CoWrite>,
) -> Result<i64, Together> {
    let mut insert: QueryBuilder<'_, Postgres> = QueryBuilder::new("");
    if let Some(also) = also {
        insert.push("WITH ");
        also.push_cte(&mut insert);
        insert.push(" ");
    }
    insert.push(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) VALUES ",
    );
    let mut first = true;
    for part in parts {
        part.push_rows(&mut insert, &mut first);
    }
    if first {
        return Err(Together::Store("nothing to append".to_owned()));
    }
    insert.push(" RETURNING position");
    let result = match insert.build_query_scalar::<i64>().fetch_all(pool).await {
        Ok(positions) => {
            positions.into_iter().max().ok_or_else(|| Together::Store("no row appended".to_owned()))
        }
        Err(sqlx::Error::Database(e))
            if e.code().as_deref() == Some("23505") && e.constraint() == Some("events_pkey") =>
        {
            Err(Together::Conflict)
        }
        Err(e) => Err(Together::Store(e.to_string())),
    };
    let outcome = match &result {
        Ok(_) => "ok",
        Err(Together::Conflict) => "conflict",
        Err(Together::Store(_)) => "error",
    };
    for part in parts {
        part.count(outcome);
    }
    result
}

fn count_command<A: Aggregate>(metadata: &HashMap<String, String>, outcome: &'static str) {
    let name = metadata.get("command").cloned().unwrap_or_else(|| "unknown".to_owned());
    metrics::counter!("streamforge_commands_total", "aggregate" => A::TYPE, "command" => name, "outcome" => outcome)
        .increment(1);
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

/// Why an append wrote nothing.
enum Append {
    /// The stream moved on since it was loaded (primary-key violation).
    Conflict,
    /// Any other database error, as text.
    Store(String),
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

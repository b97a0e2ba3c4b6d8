//! Commands decided on several streams and appended by one statement
//! ([`append_together`]), and that statement itself ([`insert_events`]),
//! which the executor's own single-stream append goes through too.

use std::collections::HashMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::EventStoreAggregateContext;
use cqrs_es::{Aggregate, AggregateContext, DomainEvent};
use sqlx::{PgPool, Postgres, QueryBuilder};

use super::{empty_context, CoWrite, ExecError, Executor, Loaded};

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

/// One stream's rows of an events `INSERT` ([`insert_events`]).
pub trait EventRows: Send + Sync {
    /// Pushes its rows, each `(aggregate_type, aggregate_id, sequence,
    /// event_type, event_version, payload, metadata)`, comma-separated
    /// after `first` rows already pushed.
    fn push_rows<'q>(&'q self, query: &mut QueryBuilder<'q, Postgres>, first: &mut bool);
}

/// One stream's part of an [`append_together`]: its rows, and the command
/// they count under.
pub trait DecidedRows: EventRows {
    /// Counts the command under `outcome` (`streamforge_commands_total`).
    fn count(&self, outcome: &'static str);
}

/// `events` after sequence `last_sequence` of stream `id` of aggregate
/// `A`, every row with `metadata`: what the executor's own append and a
/// [`Decided`] both write.
pub(super) struct StreamRows<'a, A: Aggregate> {
    pub id: &'a str,
    pub last_sequence: usize,
    pub events: &'a [A::Event],
    pub metadata: &'a HashMap<String, String>,
}

impl<A: Aggregate> EventRows for StreamRows<'_, A> {
    fn push_rows<'q>(&'q self, query: &mut QueryBuilder<'q, Postgres>, first: &mut bool) {
        push_stream_rows::<A>(query, first, self.id, self.last_sequence, self.events, self.metadata);
    }
}

impl<A: Aggregate> EventRows for Decided<A> {
    fn push_rows<'q>(&'q self, query: &mut QueryBuilder<'q, Postgres>, first: &mut bool) {
        push_stream_rows::<A>(query, first, &self.id, self.last_sequence, &self.events, &self.metadata);
    }
}

/// The rows of `events` after `last_sequence` of stream `id`.
fn push_stream_rows<'q, A: Aggregate>(
    query: &mut QueryBuilder<'q, Postgres>,
    first: &mut bool,
    id: &'q str,
    last_sequence: usize,
    events: &'q [A::Event],
    metadata: &'q HashMap<String, String>,
) {
    let metadata = sqlx::types::Json(metadata);
    let start = i64::try_from(last_sequence).unwrap_or(i64::MAX).saturating_add(1);
    for (event, sequence) in events.iter().zip(start..) {
        if !std::mem::take(first) {
            query.push(", ");
        }
        query.push("(");
        let mut row = query.separated(", ");
        row.push_bind(A::TYPE)
            .push_bind(id)
            .push_bind(sequence)
            .push_bind(event.event_type())
            .push_bind(event.event_version())
            .push_bind(sqlx::types::Json(event))
            .push_bind(metadata);
        query.push(")");
    }
}

impl<A: Aggregate> DecidedRows for Decided<A> {
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
    let rows: Vec<&dyn EventRows> = parts.iter().map(|p| *p as &dyn EventRows).collect();
    let result = insert_events(pool, &rows, also).await;
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

/// The one statement every append is: `also`'s `WITH` query when given,
/// then one `INSERT` of every part's rows (the columns postgres-es 0.5
/// writes; Postgres fills `position`, `txid`, `event_id`, `recorded_at`).
/// Payload and metadata are sent as `jsonb` and stored in the `json`
/// columns, as postgres-es does. Returns the position of the last event.
///
/// # Errors
/// [`Together::Conflict`] on a violation of the events' primary key
/// (SQLSTATE 23505, `events_pkey`: a concurrent append; the statement then
/// wrote nothing), [`Together::Store`] for any other failure or when there
/// is nothing to append.
pub(super) async fn insert_events(
    pool: &PgPool,
    parts: &[&dyn EventRows],
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
    match insert.build_query_scalar::<i64>().fetch_all(pool).await {
        Ok(positions) => {
            positions.into_iter().max().ok_or_else(|| Together::Store("no row appended".to_owned()))
        }
        Err(sqlx::Error::Database(e))
            if e.code().as_deref() == Some("23505") && e.constraint() == Some("events_pkey") =>
        {
            Err(Together::Conflict)
        }
        Err(e) => Err(Together::Store(e.to_string())),
    }
}

pub(super) fn count_command<A: Aggregate>(metadata: &HashMap<String, String>, outcome: &'static str) {
    let name = metadata.get("command").cloned().unwrap_or_else(|| "unknown".to_owned());
    metrics::counter!("streamforge_commands_total", "aggregate" => A::TYPE, "command" => name, "outcome" => outcome)
        .increment(1);
}

//! The executor's own append (one multi-row `INSERT`) against a real
//! database: it stores what postgres-es stores, and `execute_new` on a
//! stream that exists ends as `execute` would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use chrono::{TimeZone as _, Utc};
use commands::executor::Executor;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::EventStore as _;
use domain::throttle::{Policy, Throttle, ThrottleCommand, ThrottleEvent};
use postgres_es::PostgresEventRepository;
use projections::db::testing::{base_url, create_test_database, drop_test_database};
use sqlx::PgPool;

/// The stored columns of one stream, in order, as text.
async fn rows(pool: &PgPool, id: &str) -> Vec<(i64, String, String, String, String)> {
    sqlx::query_as(
        "SELECT sequence, event_type, event_version, payload::text, metadata::text FROM events
         WHERE aggregate_type = 'throttle' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap()
}

fn metadata() -> HashMap<String, String> {
    HashMap::from([
        ("command".to_owned(), "RecordFailure".to_owned()),
        ("request_id".to_owned(), "r-1".to_owned()),
    ])
}

/// Failures it takes to lock under `PasswordFailures` (its `lock_after`).
const COMMANDS: usize = 20;

/// A command whose events are fixed (the time is given), so two streams
/// can be compared row by row.
fn failure() -> ThrottleCommand {
    ThrottleCommand::RecordFailure {
        policy: Policy::PasswordFailures,
        at: Utc.with_ymd_and_hms(2026, 12, 6, 9, 0, 0).unwrap(),
    }
}

#[tokio::test]
async fn the_append_stores_the_rows_postgres_es_stores() {
    let (pool, url) = create_test_database(&base_url()).await.unwrap();
    let executor: Executor<Throttle> = Executor::new(pool.clone(), ());
    // Enough failures that one command appends two events (the lock).
    let mut ours = Vec::new();
    for _ in 0..COMMANDS {
        ours.extend(executor.execute("ours", failure(), metadata()).await.unwrap().events);
    }
    assert!(ours.iter().any(|e| matches!(e, ThrottleEvent::SubjectLocked { .. })), "{ours:?}");
    assert!(ours.len() > COMMANDS, "one command appended several events: {ours:?}");

    // The same events through postgres-es' own commit, command by command.
    let store: PersistedEventStore<PostgresEventRepository, Throttle> =
        PersistedEventStore::new_event_store(PostgresEventRepository::new(pool.clone()));
    for _ in 0..COMMANDS {
        let mut ctx = store.load_aggregate("theirs").await.unwrap();
        let sink = cqrs_es::event_sink::EventSink::default();
        cqrs_es::Aggregate::handle(cqrs_es::AggregateContext::aggregate(&mut ctx), failure(), &(), &sink)
            .await
            .unwrap();
        store.commit(sink.collect().await, ctx, metadata()).await.unwrap();
    }

    let (a, b) = (rows(&pool, "ours").await, rows(&pool, "theirs").await);
    assert_eq!(a.len(), ours.len());
    assert_eq!(a, b, "same sequences, types, versions, payload and metadata text");
    // Postgres filled the tailing columns; one command's events share a transaction.
    let per_tx: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_id = 'ours' GROUP BY txid ORDER BY min(position)",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(per_tx.len(), COMMANDS, "one transaction per command: {per_tx:?}");
    assert_eq!(per_tx.iter().sum::<i64>(), i64::try_from(a.len()).unwrap());
    pool.close().await;
    drop_test_database(&url).await.unwrap();
}

#[tokio::test]
async fn execute_new_on_an_existing_stream_appends_after_it() {
    let (pool, url) = create_test_database(&base_url()).await.unwrap();
    let executor: Executor<Throttle> = Executor::new(pool.clone(), ());
    executor.execute("taken", failure(), metadata()).await.unwrap();
    // Assumed new, but it is not: the first append conflicts on sequence 1,
    // the command runs again on the loaded state.
    let done = executor.execute_new("taken", failure(), metadata()).await.unwrap();
    assert_eq!(done.state.consecutive_failures, 2, "handled on the loaded state");
    assert_eq!(done.attempts, 1, "the wrong assumption is not a conflict");
    let seqs: Vec<i64> = rows(&pool, "taken").await.into_iter().map(|r| r.0).collect();
    assert_eq!(seqs, vec![1, 2]);

    // On a new stream it appends at sequence 1 without reading.
    let done = executor.execute_new("fresh", failure(), metadata()).await.unwrap();
    assert_eq!(done.state.consecutive_failures, 1);
    assert_eq!(rows(&pool, "fresh").await.len(), 1);
    pool.close().await;
    drop_test_database(&url).await.unwrap();
}

//! The executor's own reads and append (one multi-row `INSERT`) against a
//! real database: it stores what postgres-es stores; `execute_new` on a
//! stream that exists and `execute_loaded` on a stale load end as `execute`
//! would; a co-written row exists exactly when the events do.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use chrono::{TimeZone as _, Utc};
use commands::deliveries::{Delivery, DeliveryStore};
use commands::executor::Executor;
use commands::keys::Secret32;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::EventStore as _;
use domain::session::{Session, SessionCommand};
use domain::throttle::{Policy, Throttle, ThrottleCommand, ThrottleEvent};
use domain::values::Digest;
use postgres_es::PostgresEventRepository;
use projections::db::testing::{base_url, create_test_database, drop_test_database};
use sqlx::PgPool;
use uuid::Uuid;

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

/// Starts session `id` (a stream of another aggregate type under the same id).
async fn start_session(pool: &PgPool, id: Uuid) {
    let sessions: Executor<Session> = Executor::new(pool.clone(), ());
    let cmd = SessionCommand::Start {
        session_id: id,
        user_id: Uuid::new_v4(),
        refresh_hash: Digest("00".repeat(32)),
        at: Utc::now(),
        idle_ttl_secs: 60,
        absolute_ttl_secs: 600,
        client: None,
        quick_factor: false,
    };
    sessions.execute_new(&id.to_string(), cmd, HashMap::new()).await.unwrap();
}

#[tokio::test]
async fn load_with_reads_both_streams_and_a_stale_load_is_retried() {
    let (pool, url) = create_test_database(&base_url()).await.unwrap();
    let throttles: Executor<Throttle> = Executor::new(pool.clone(), ());
    let id = Uuid::new_v4();
    start_session(&pool, id).await;
    for _ in 0..3 {
        throttles.execute(&id.to_string(), failure(), metadata()).await.unwrap();
    }
    let (loaded, session) = throttles.load_with::<Session>(&id.to_string()).await.unwrap();
    assert_eq!(loaded.state().consecutive_failures, 3);
    assert_eq!(session.id, Some(id), "the other stream is folded too");

    // Nobody wrote since: the command runs on the loaded state.
    let done = throttles.execute_loaded(loaded, failure(), metadata()).await.unwrap();
    assert_eq!((done.state.consecutive_failures, done.attempts), (4, 1));

    // A write after the load: the append conflicts, the command is retried
    // on a fresh load and lands after it; no sequence is written twice.
    let (stale, _) = throttles.load_with::<Session>(&id.to_string()).await.unwrap();
    throttles.execute(&id.to_string(), failure(), metadata()).await.unwrap();
    let done = throttles.execute_loaded(stale, failure(), metadata()).await.unwrap();
    assert_eq!((done.state.consecutive_failures, done.attempts), (6, 2));
    let seqs: Vec<i64> = rows(&pool, &id.to_string()).await.into_iter().map(|r| r.0).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<i64>>());
    pool.close().await;
    drop_test_database(&url).await.unwrap();
}

async fn delivery_exists(pool: &PgPool, id: Uuid) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM deliveries WHERE delivery_id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_co_written_row_exists_exactly_when_the_events_do() {
    let (pool, url) = create_test_database(&base_url()).await.unwrap();
    let store = DeliveryStore::new(pool.clone(), Secret32::generate());
    let throttles: Executor<Throttle> = Executor::new(pool.clone(), ());
    let delivery = |to: &str| Delivery {
        channel: "email".into(),
        to: to.into(),
        template: "otp_two_factor".into(),
        code: Some("123456".into()),
        expires_at: None,
    };
    let expires = Utc::now() + chrono::Duration::minutes(10);

    // Appended: the record is there and opens to what was sealed.
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let row = store.seal(a, &delivery("a@example.test"), expires).unwrap();
    throttles.execute_new_with("co-1", failure(), metadata(), &row).await.unwrap();
    assert_eq!(store.get(a).await.unwrap(), Some(delivery("a@example.test")));
    assert_eq!(rows(&pool, "co-1").await.len(), 1);

    // Refused by the aggregate (a success policy given to RecordFailure):
    // neither the event nor the record.
    let row = store.seal(b, &delivery("b@example.test"), expires).unwrap();
    let wrong = ThrottleCommand::RecordFailure { policy: Policy::OtpRequests, at: Utc::now() };
    assert!(throttles.execute_with("co-2", wrong, metadata(), &row).await.is_err());
    assert!(!delivery_exists(&pool, b).await);
    assert!(rows(&pool, "co-2").await.is_empty());

    // Assumed new but existing: the first statement conflicts and writes
    // nothing; the retry writes the event and the record once.
    let row = store.seal(c, &delivery("c@example.test"), expires).unwrap();
    throttles.execute_new_with("co-1", failure(), metadata(), &row).await.unwrap();
    assert!(delivery_exists(&pool, c).await);
    assert_eq!(rows(&pool, "co-1").await.len(), 2);

    // The record's own key taken: an error, and no event either.
    let again = store.seal(a, &delivery("a@example.test"), expires).unwrap();
    let err = throttles.execute_with("co-1", failure(), metadata(), &again).await.unwrap_err();
    assert!(matches!(err, commands::executor::ExecError::Store(_)), "{err:?}");
    assert_eq!(rows(&pool, "co-1").await.len(), 2);
    pool.close().await;
    drop_test_database(&url).await.unwrap();
}

#[tokio::test]
async fn a_throttle_folds_from_its_last_reset_and_reaches_the_same_state() {
    let (pool, url) = create_test_database(&base_url()).await.unwrap();
    let whole: Executor<Throttle> = Executor::new(pool.clone(), ());
    let tail: Executor<Throttle> =
        Executor::new(pool.clone(), ()).with_tail(commands::identity::throttle_tail);
    let id = Policy::OtpFailures.key("email:tail");
    let at = |s: i64| Utc.timestamp_opt(1_900_000_000 + s, 0).unwrap();
    // Rounds of failures, each ended by a success, then failures left standing.
    for round in 0..5 {
        for n in 0..3 {
            let cmd = ThrottleCommand::RecordFailure { policy: Policy::OtpFailures, at: at(round * 10 + n) };
            tail.execute(&id, cmd, metadata()).await.unwrap();
        }
        tail.execute(&id, ThrottleCommand::RecordSuccess { at: at(round * 10 + 5) }, metadata())
            .await
            .unwrap();
    }
    for n in 0..2 {
        let cmd = ThrottleCommand::RecordFailure { policy: Policy::OtpFailures, at: at(100 + n) };
        tail.execute(&id, cmd, metadata()).await.unwrap();
    }
    assert_eq!(rows(&pool, &id).await.len(), 5 * 4 + 2);
    let (a, b) = (whole.load(&id).await.unwrap(), tail.load(&id).await.unwrap());
    assert_eq!(a, b, "folding from the last reset changes nothing");
    assert_eq!(b.consecutive_failures, 2);
    // Request streams keep the last hour: the same answer as the whole fold.
    let requests = Policy::OtpRequests.key("email:tail");
    for s in 0..4 {
        let cmd =
            ThrottleCommand::RecordRequest { policy: Policy::OtpRequests, limits: None, at: at(s * 40) };
        tail.execute(&requests, cmd, metadata()).await.unwrap();
    }
    let (a, b) = (whole.load(&requests).await.unwrap(), tail.load(&requests).await.unwrap());
    assert_eq!(a.recent_requests, b.recent_requests);
    assert_eq!(a.retry_after(Policy::OtpRequests, at(200)), b.retry_after(Policy::OtpRequests, at(200)));
    // Both streams in one read: the same states as read one by one.
    let many = tail.load_many(&[&id, &requests, "never-written"]).await.unwrap();
    assert_eq!(many.len(), 3);
    assert_eq!(many[0].state(), &tail.load(&id).await.unwrap());
    assert_eq!(many[1].state(), &b);
    assert_eq!(many[2].state(), &Throttle::default());
    pool.close().await;
    drop_test_database(&url).await.unwrap();
}

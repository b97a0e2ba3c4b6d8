//! The projector runtime: idempotent application, feed acknowledgement,
//! retries and rebuild (ARCHITECTURE decided 5).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use domain::envelope::Envelope;
use projections::feed::EventFeed;
use projections::pg_feed::{PgFeed, PgFeedConfig};
use projections::runtime::{Applied, ProjectionError, ProjectionRunner, Projector, RunError, RunOptions};
use projections::tail::{self, Cursor};
use serde_json::json;
use sqlx::{PgConnection, PgPool};

use crate::helpers::{eventually, insert_event, settle, TestDb};

/// Counts the events applied per aggregate in its own table and records
/// their sequences; fails on demand `failures` times for aggregate `poison`.
struct Counter {
    failures: AtomicUsize,
    poison: &'static str,
}

impl Counter {
    fn new() -> Arc<Self> {
        Self::failing("", 0)
    }

    fn failing(poison: &'static str, failures: usize) -> Arc<Self> {
        Arc::new(Self { failures: AtomicUsize::new(failures), poison })
    }
}

async fn create_table(pool: &PgPool) {
    sqlx::query(
        "CREATE TABLE test_counts (aggregate_id text PRIMARY KEY, applied int NOT NULL, \
         sequences bigint[] NOT NULL)",
    )
    .execute(pool)
    .await
    .unwrap();
}

#[async_trait]
impl Projector for Counter {
    fn name(&self) -> &'static str {
        "counter"
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        aggregate_type == "test"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["test_counts"]
    }

    async fn apply(&self, conn: &mut PgConnection, env: &Envelope) -> Result<(), ProjectionError> {
        sqlx::query(
            "INSERT INTO test_counts VALUES ($1, 1, ARRAY[$2]) ON CONFLICT (aggregate_id) DO \
             UPDATE SET applied = test_counts.applied + 1, \
             sequences = test_counts.sequences || $2",
        )
        .bind(&env.aggregate_id)
        .bind(env.sequence)
        .execute(&mut *conn)
        .await?;
        if env.aggregate_id == self.poison
            && self.failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
        {
            return Err(anyhow::anyhow!("poisoned on purpose").into());
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        sqlx::query("TRUNCATE test_counts").execute(conn).await?;
        Ok(())
    }
}

async fn counts(pool: &PgPool) -> Vec<(String, i32, Vec<i64>)> {
    sqlx::query_as("SELECT aggregate_id, applied, sequences FROM test_counts ORDER BY aggregate_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn checkpoint(pool: &PgPool, aggregate_id: &str) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT sequence FROM projection_checkpoints WHERE projector = 'counter' \
         AND aggregate_type = 'test' AND aggregate_id = $1",
    )
    .bind(aggregate_id)
    .fetch_optional(pool)
    .await
    .unwrap()
}

fn envelope(aggregate_id: &str, sequence: i64) -> Envelope {
    Envelope {
        event_id: uuid::Uuid::new_v4(),
        aggregate_type: "test".into(),
        aggregate_id: aggregate_id.into(),
        sequence,
        position: sequence,
        event_type: "Happened".into(),
        event_version: "1.0".into(),
        occurred_at: chrono::Utc::now(),
        payload: json!({}),
        metadata: json!({}),
    }
}

#[tokio::test]
async fn duplicate_and_older_envelopes_change_the_read_model_once() {
    let db = TestDb::new().await;
    create_table(&db.pool).await;
    let runner = ProjectionRunner::new(db.pool.clone(), vec![Counter::new()]);
    let once = Applied { applied: 1, skipped: 0 };
    let duplicate = Applied { applied: 0, skipped: 1 };

    assert_eq!(runner.apply_envelope(&envelope("a", 1)).await.unwrap(), once);
    assert_eq!(runner.apply_envelope(&envelope("a", 1)).await.unwrap(), duplicate);
    assert_eq!(runner.apply_envelope(&envelope("a", 2)).await.unwrap(), once);
    assert_eq!(runner.apply_envelope(&envelope("a", 1)).await.unwrap(), duplicate);
    assert_eq!(runner.apply_envelope(&envelope("a", 2)).await.unwrap(), duplicate);
    let mut other = envelope("a", 3);
    other.aggregate_type = "elsewhere".into();
    assert_eq!(runner.apply_envelope(&other).await.unwrap(), Applied::default());

    assert_eq!(counts(&db.pool).await, [("a".to_owned(), 2, vec![1, 2])]);
    assert_eq!(checkpoint(&db.pool, "a").await, Some(2));
    db.drop().await;
}

#[tokio::test]
async fn a_failed_projection_leaves_neither_change_nor_checkpoint() {
    let db = TestDb::new().await;
    create_table(&db.pool).await;
    let runner = ProjectionRunner::new(db.pool.clone(), vec![Counter::failing("p", 1)]);

    let error = runner.apply_envelope(&envelope("p", 1)).await.unwrap_err();
    assert!(matches!(error, RunError::Projector { projector: "counter", sequence: 1, .. }));
    assert!(counts(&db.pool).await.is_empty());
    assert_eq!(checkpoint(&db.pool, "p").await, None);

    runner.apply_envelope(&envelope("p", 1)).await.unwrap();
    assert_eq!(counts(&db.pool).await, [("p".to_owned(), 1, vec![1])]);
    db.drop().await;
}

#[tokio::test]
async fn concurrent_runners_apply_a_first_event_once() {
    let db = TestDb::new().await;
    create_table(&db.pool).await;
    let runner = ProjectionRunner::new(db.pool.clone(), vec![Counter::new()]);
    let env = envelope("c", 1);
    let results = futures::future::join_all((0..8).map(|_| runner.apply_envelope(&env))).await;
    let applied: usize = results.into_iter().map(|r| r.unwrap().applied).sum();
    assert_eq!(applied, 1);
    assert_eq!(counts(&db.pool).await, [("c".to_owned(), 1, vec![1])]);
    db.drop().await;
}

#[tokio::test]
async fn run_once_applies_a_batch_then_commits_the_feed() {
    let db = TestDb::new().await;
    create_table(&db.pool).await;
    let runner = ProjectionRunner::new(db.pool.clone(), vec![Counter::new()]);
    let mut feed = PgFeed::new(db.pool.clone(), PgFeedConfig::new("runner")).await.unwrap();
    for sequence in 1..=3 {
        insert_event(&db.pool, "test", "a", sequence, "Happened", json!({})).await;
    }
    insert_event(&db.pool, "user", "u", 1, "Ignored", json!({})).await;
    settle(&db.pool).await;

    let n = runner.run_once(&mut feed, 10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(n, 4);
    assert_eq!(counts(&db.pool).await, [("a".to_owned(), 3, vec![1, 2, 3])]);
    let stored = tail::load_checkpoint(&db.pool, "feed:runner").await.unwrap();
    assert_eq!(stored, feed.returned());
    assert_ne!(stored, Cursor::ZERO);
    assert_eq!(runner.run_once(&mut feed, 10, Duration::ZERO).await.unwrap(), 0);
    db.drop().await;
}

#[tokio::test]
async fn a_failed_batch_is_redelivered_after_rollback_and_applied_once() {
    let db = TestDb::new().await;
    create_table(&db.pool).await;
    // Fails in the batch transaction and again in the one-by-one retry.
    let runner = ProjectionRunner::new(db.pool.clone(), vec![Counter::failing("b", 2)]);
    let mut feed = PgFeed::new(db.pool.clone(), PgFeedConfig::new("retry")).await.unwrap();
    insert_event(&db.pool, "test", "a", 1, "Happened", json!({})).await;
    insert_event(&db.pool, "test", "b", 1, "Happened", json!({})).await;
    insert_event(&db.pool, "test", "c", 1, "Happened", json!({})).await;
    settle(&db.pool).await;

    let error = runner.run_once(&mut feed, 10, Duration::from_secs(1)).await.unwrap_err();
    assert!(
        matches!(&error, RunError::Projector { projector: "counter", aggregate_id, sequence: 1, .. } if aggregate_id == "b"),
        "the error must name the poison envelope: {error:?}"
    );
    assert_eq!(
        tail::load_checkpoint(&db.pool, "feed:retry").await.unwrap(),
        Cursor::ZERO,
        "feed must not be committed after a failure"
    );
    // The one-by-one retry committed the envelope before the poison one.
    assert_eq!(counts(&db.pool).await, [("a".to_owned(), 1, vec![1])]);
    feed.rollback().await.unwrap();
    assert_eq!(runner.run_once(&mut feed, 10, Duration::from_secs(1)).await.unwrap(), 3);
    assert_eq!(
        counts(&db.pool).await,
        [("a".to_owned(), 1, vec![1]), ("b".to_owned(), 1, vec![1]), ("c".to_owned(), 1, vec![1]),]
    );
    drop(feed);
    db.drop().await;
}

#[tokio::test]
async fn a_transient_batch_failure_is_recovered_envelope_by_envelope() {
    let db = TestDb::new().await;
    create_table(&db.pool).await;
    let runner = ProjectionRunner::new(db.pool.clone(), vec![Counter::failing("b", 1)]);
    let batch = [envelope("a", 1), envelope("b", 1), envelope("c", 1), envelope("a", 2)];
    let applied = runner.apply_batch(&batch).await.unwrap();
    assert_eq!(applied, Applied { applied: 4, skipped: 0 });
    assert_eq!(
        counts(&db.pool).await,
        [("a".to_owned(), 2, vec![1, 2]), ("b".to_owned(), 1, vec![1]), ("c".to_owned(), 1, vec![1]),]
    );
    db.drop().await;
}

#[tokio::test]
async fn a_batch_applies_each_sequence_once_even_with_duplicates_inside() {
    let db = TestDb::new().await;
    create_table(&db.pool).await;
    let runner = ProjectionRunner::new(db.pool.clone(), vec![Counter::new()]);
    runner.apply_envelope(&envelope("b", 1)).await.unwrap();
    let mut other = envelope("x", 1);
    other.aggregate_type = "elsewhere".into();
    let batch = [
        envelope("a", 1),
        envelope("a", 2),
        envelope("a", 1),
        envelope("b", 1),
        other,
        envelope("b", 2),
        envelope("a", 2),
        envelope("a", 3),
    ];
    assert_eq!(runner.apply_batch(&batch).await.unwrap(), Applied { applied: 4, skipped: 3 });
    assert_eq!(counts(&db.pool).await, [("a".to_owned(), 3, vec![1, 2, 3]), ("b".to_owned(), 2, vec![1, 2])]);
    assert_eq!(checkpoint(&db.pool, "a").await, Some(3));
    assert_eq!(checkpoint(&db.pool, "b").await, Some(2));
    // The whole batch again: all duplicates, nothing changes.
    assert_eq!(runner.apply_batch(&batch).await.unwrap(), Applied { applied: 0, skipped: 7 });
    assert_eq!(counts(&db.pool).await, [("a".to_owned(), 3, vec![1, 2, 3]), ("b".to_owned(), 2, vec![1, 2])]);
    db.drop().await;
}

#[tokio::test]
async fn concurrent_batches_over_the_same_aggregates_apply_each_event_once() {
    let db = TestDb::new().await;
    create_table(&db.pool).await;
    let runner = ProjectionRunner::new(db.pool.clone(), vec![Counter::new()]);
    let ids: Vec<String> = (0..20).map(|i| format!("k{i:02}")).collect();
    // Each runner sees every event, aggregates interleaved in its own order.
    let batches: Vec<Vec<Envelope>> = (0..6)
        .map(|r| {
            let mut order: Vec<&String> = ids.iter().collect();
            if r % 2 == 1 {
                order.reverse();
            }
            order.rotate_left(r * 3);
            (1..=3).flat_map(|s| order.iter().map(move |id| envelope(id, s))).collect()
        })
        .collect();
    let results = futures::future::join_all(batches.iter().map(|b| runner.apply_batch(b))).await;
    let applied: usize = results.into_iter().map(|r| r.unwrap().applied).sum();
    assert_eq!(applied, 60);
    let rows = counts(&db.pool).await;
    assert_eq!(rows.len(), 20);
    assert!(rows.iter().all(|(_, n, sequences)| *n == 3 && *sequences == [1, 2, 3]), "{rows:?}");
    db.drop().await;
}

#[tokio::test]
async fn rebuild_resets_and_replays_from_the_store() {
    let db = TestDb::new().await;
    create_table(&db.pool).await;
    let runner = ProjectionRunner::new(db.pool.clone(), vec![Counter::new()]);
    for (aggregate, sequence) in [("a", 1), ("b", 1), ("a", 2), ("a", 3)] {
        insert_event(&db.pool, "test", aggregate, sequence, "Happened", json!({})).await;
    }
    insert_event(&db.pool, "user", "u", 1, "Ignored", json!({})).await;
    settle(&db.pool).await;
    let mut feed = PgFeed::new(db.pool.clone(), PgFeedConfig::new("live")).await.unwrap();
    runner.run_once(&mut feed, 100, Duration::from_secs(1)).await.unwrap();
    // Damage the read model behind the runner's back.
    sqlx::query("UPDATE test_counts SET applied = 99").execute(&db.pool).await.unwrap();

    let stats = runner.rebuild("counter", 2).await.unwrap();
    assert_eq!(stats.read, 4, "only the handled aggregate type is read");
    assert_eq!(stats.applied, 4);
    assert_eq!(stats.aggregates, 2);
    assert_eq!(counts(&db.pool).await, [("a".to_owned(), 3, vec![1, 2, 3]), ("b".to_owned(), 1, vec![1])]);
    assert_eq!(checkpoint(&db.pool, "a").await, Some(3));
    assert!(matches!(runner.rebuild("nope", 10).await, Err(RunError::UnknownProjector(_))));
    db.drop().await;
}

#[tokio::test]
async fn run_keeps_going_after_errors_and_stops_on_shutdown() {
    let db = TestDb::new().await;
    create_table(&db.pool).await;
    let runner =
        ProjectionRunner::new(db.pool.clone(), vec![Counter::failing("b", 2)]).with_options(RunOptions {
            max_wait: Duration::from_millis(200),
            min_backoff: Duration::from_millis(10),
            ..RunOptions::default()
        });
    let mut feed = PgFeed::new(db.pool.clone(), PgFeedConfig::new("loop")).await.unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move { runner.run(&mut feed, shutdown).await });

    for aggregate in ["a", "b", "c"] {
        insert_event(&db.pool, "test", aggregate, 1, "Happened", json!({})).await;
    }
    let pool = db.pool.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let pool = pool.clone();
            async move { counts(&pool).await.len() == 3 }
        })
        .await,
        "runner did not recover"
    );
    // The feed is acknowledged within the commit interval / once idle.
    let last: i64 = sqlx::query_scalar("SELECT max(position) FROM events").fetch_one(&db.pool).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || {
            let pool = pool.clone();
            async move { tail::load_checkpoint(&pool, "feed:loop").await.unwrap().position == last }
        })
        .await,
        "feed never committed"
    );
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    assert!(counts(&db.pool).await.iter().all(|(_, applied, _)| *applied == 1));
    // The status page's row: live again after the failure, every event counted.
    let (state, applied, position): (String, i64, i64) =
        sqlx::query_as("SELECT state, applied, position FROM projection_status WHERE projector = 'counter'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(state, "live");
    // b was parked, then resumed and c caught up from the store: both
    // counted (a, applied by the failed batch's one-by-one retry before the
    // poison envelope, is not).
    assert!(applied >= 2, "{applied}");
    assert_eq!(position, last);
    db.drop().await;
}

#[tokio::test]
async fn a_projector_stuck_on_an_event_reports_it_in_its_status() {
    let db = TestDb::new().await;
    create_table(&db.pool).await;
    let runner =
        ProjectionRunner::new(db.pool.clone(), vec![Counter::failing("b", 1_000)]).with_options(RunOptions {
            max_wait: Duration::from_millis(200),
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            ..RunOptions::default()
        });
    let mut feed = PgFeed::new(db.pool.clone(), PgFeedConfig::new("stuck")).await.unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move { runner.run(&mut feed, shutdown).await });
    insert_event(&db.pool, "test", "b", 1, "Happened", json!({})).await;
    let pool = db.pool.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let pool = pool.clone();
            async move {
                let row: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
                    "SELECT state, failed_event, error FROM projection_status WHERE projector = 'counter'",
                )
                .fetch_optional(&pool)
                .await
                .unwrap();
                row.is_some_and(|(state, event, error)| {
                    state == "failed"
                        && event.as_deref() == Some("test/b#1")
                        && error.is_some_and(|e| e.contains("counter"))
                })
            }
        })
        .await,
        "the failure is not in the status"
    );
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    db.drop().await;
}

#[tokio::test]
async fn a_rebuild_chunk_that_fails_is_replayed_and_a_poison_event_is_named() {
    let db = TestDb::new().await;
    create_table(&db.pool).await;
    for (aggregate, sequence) in [("a", 1), ("p", 1), ("p", 2), ("z", 1)] {
        insert_event(&db.pool, "test", aggregate, sequence, "Happened", json!({})).await;
    }
    settle(&db.pool).await;

    // Fails once: the chunk is replayed event by event and succeeds.
    let runner = ProjectionRunner::new(db.pool.clone(), vec![Counter::failing("p", 1)]);
    let stats = runner.rebuild("counter", 100).await.unwrap();
    assert_eq!(stats.replayed_chunks, 1);
    assert_eq!(
        counts(&db.pool).await,
        [("a".to_owned(), 1, vec![1]), ("p".to_owned(), 2, vec![1, 2]), ("z".to_owned(), 1, vec![1])]
    );
    assert_eq!(checkpoint(&db.pool, "p").await, Some(2));

    // Fails set-based and in the replay: the error names the event.
    let runner = ProjectionRunner::new(db.pool.clone(), vec![Counter::failing("p", 2)]);
    let error = runner.rebuild("counter", 100).await.unwrap_err();
    assert!(
        matches!(&error, RunError::Projector { projector: "counter", aggregate_id, sequence: 1, .. } if aggregate_id == "p"),
        "{error:?}"
    );
    db.drop().await;
}

/// Counts events per aggregate in `test_tally`; never fails.
struct Tally;

#[async_trait]
impl Projector for Tally {
    fn name(&self) -> &'static str {
        "tally"
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        aggregate_type == "test"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["test_tally"]
    }

    async fn apply(&self, conn: &mut PgConnection, env: &Envelope) -> Result<(), ProjectionError> {
        sqlx::query(
            "INSERT INTO test_tally VALUES ($1, 1) ON CONFLICT (aggregate_id) DO \
             UPDATE SET n = test_tally.n + 1",
        )
        .bind(&env.aggregate_id)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

async fn tally(pool: &PgPool) -> Vec<(String, i32)> {
    sqlx::query_as("SELECT aggregate_id, n FROM test_tally ORDER BY aggregate_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_failing_projector_is_parked_while_the_others_go_on_and_catches_up_after_the_fix() {
    let db = TestDb::new().await;
    create_table(&db.pool).await;
    sqlx::query("CREATE TABLE test_tally (aggregate_id text PRIMARY KEY, n int NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    let counter = Counter::failing("b", 1_000_000);
    let options = RunOptions {
        max_wait: Duration::from_millis(100),
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        ..RunOptions::default()
    };
    let runner =
        ProjectionRunner::new(db.pool.clone(), vec![counter.clone(), Arc::new(Tally)]).with_options(options);
    let mut feed = PgFeed::new(db.pool.clone(), PgFeedConfig::new("parking")).await.unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move { runner.run(&mut feed, shutdown).await });

    for aggregate in ["a", "b", "c"] {
        insert_event(&db.pool, "test", aggregate, 1, "Happened", json!({})).await;
    }
    let pool = db.pool.clone();
    // The tally goes on; the counter is parked on b#1 and says so.
    assert!(
        eventually(Duration::from_secs(10), || {
            let pool = pool.clone();
            async move { tally(&pool).await.len() == 3 }
        })
        .await,
        "the healthy projector was held back"
    );
    insert_event(&db.pool, "test", "c", 2, "Happened", json!({})).await;
    insert_event(&db.pool, "test", "d", 1, "Happened", json!({})).await;
    assert!(
        eventually(Duration::from_secs(10), || {
            let pool = pool.clone();
            async move {
                tally(&pool).await == vec![("a".into(), 1), ("b".into(), 1), ("c".into(), 2), ("d".into(), 1)]
            }
        })
        .await,
        "the healthy projector stopped after the other failed"
    );
    let (state, event, parked): (String, Option<String>, bool) = sqlx::query_as(
        "SELECT state, failed_event, parked FROM projection_status WHERE projector = 'counter'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((state.as_str(), event.as_deref(), parked), ("failed", Some("test/b#1"), true));
    let counted: Vec<String> = counts(&db.pool).await.into_iter().map(|(a, _, _)| a).collect();
    assert!(!counted.contains(&"d".to_owned()) && !counted.contains(&"b".to_owned()), "{counted:?}");

    // The fix: the counter resumes from b#1 and catches up from the store,
    // every event once.
    counter.failures.store(0, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || {
            let pool = pool.clone();
            async move { counts(&pool).await.len() == 4 }
        })
        .await,
        "the parked projector never caught up"
    );
    assert_eq!(
        counts(&db.pool).await,
        vec![
            ("a".into(), 1, vec![1]),
            ("b".into(), 1, vec![1]),
            ("c".into(), 2, vec![1, 2]),
            ("d".into(), 1, vec![1]),
        ]
    );
    // Unparked once the catch-up ended (recorded just after its last batch).
    assert!(
        eventually(Duration::from_secs(10), || {
            let pool = pool.clone();
            async move {
                let row: (String, bool) =
                    sqlx::query_as("SELECT state, parked FROM projection_status WHERE projector = 'counter'")
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                row == ("live".to_owned(), false)
            }
        })
        .await,
        "the status still says parked"
    );
    // And the feed goes on for both.
    insert_event(&db.pool, "test", "e", 1, "Happened", json!({})).await;
    assert!(
        eventually(Duration::from_secs(10), || {
            let pool = pool.clone();
            async move { counts(&pool).await.len() == 5 && tally(&pool).await.len() == 5 }
        })
        .await
    );
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    db.drop().await;
}

//! The Postgres-tail feed.

use std::time::{Duration, Instant};

use projections::feed::EventFeed;
use projections::pg_feed::{PgFeed, PgFeedConfig};
use projections::tail::{EventsListener, SharedListener, Wake};
use serde_json::json;

use crate::helpers::{insert_event, settle, TestDb};

fn ids(batch: &[domain::envelope::Envelope]) -> Vec<String> {
    batch.iter().map(|e| format!("{}#{}", e.aggregate_id, e.sequence)).collect()
}

#[tokio::test]
async fn delivers_in_order_and_resumes_from_its_checkpoint() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    for (aggregate, sequence) in [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3)] {
        insert_event(pool, "test", aggregate, sequence, "Happened", json!({})).await;
    }
    settle(pool).await;
    let config = PgFeedConfig::new("resume");
    let wait = Duration::from_millis(200);

    let mut feed = PgFeed::new(pool.clone(), config.clone()).await.unwrap();
    assert_eq!(ids(&feed.next_batch(3, wait).await.unwrap()), ["a#1", "b#1", "a#2"]);
    feed.commit().await.unwrap();
    assert_eq!(ids(&feed.next_batch(3, wait).await.unwrap()), ["b#2", "a#3"]);
    drop(feed); // without committing the second batch

    let mut feed = PgFeed::new(pool.clone(), config.clone()).await.unwrap();
    assert_eq!(ids(&feed.next_batch(10, wait).await.unwrap()), ["b#2", "a#3"]);
    feed.commit().await.unwrap();
    drop(feed);

    let mut feed = PgFeed::new(pool.clone(), config).await.unwrap();
    assert!(feed.next_batch(10, wait).await.unwrap().is_empty());
    insert_event(pool, "test", "a", 4, "Happened", json!({})).await;
    settle(pool).await;
    assert_eq!(ids(&feed.next_batch(10, wait).await.unwrap()), ["a#4"]);

    // Another consumer has its own cursor.
    let mut other = PgFeed::new(pool.clone(), PgFeedConfig::new("other")).await.unwrap();
    assert_eq!(other.next_batch(100, wait).await.unwrap().len(), 6);
    drop((feed, other));
    db.drop().await;
}

#[tokio::test]
async fn rollback_redelivers_the_uncommitted_envelopes() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    for sequence in 1..=3 {
        insert_event(pool, "test", "a", sequence, "Happened", json!({})).await;
    }
    // Other tests' open transactions on the server may hold the tail back.
    settle(pool).await;
    let mut feed = PgFeed::new(pool.clone(), PgFeedConfig::new("rb")).await.unwrap();
    let wait = Duration::from_millis(200);
    assert_eq!(ids(&feed.next_batch(1, wait).await.unwrap()), ["a#1"]);
    feed.commit().await.unwrap();
    assert_eq!(ids(&feed.next_batch(5, wait).await.unwrap()), ["a#2", "a#3"]);
    feed.rollback().await.unwrap();
    assert_eq!(ids(&feed.next_batch(5, wait).await.unwrap()), ["a#2", "a#3"]);
    db.drop().await;
}

#[tokio::test]
async fn filters_by_aggregate_type() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    insert_event(pool, "user", "u", 1, "UserRegistered", json!({})).await;
    insert_event(pool, "session", "s", 1, "SessionStarted", json!({})).await;
    insert_event(pool, "user", "u", 2, "EmailVerified", json!({})).await;
    settle(pool).await;
    let config = PgFeedConfig::new("users").aggregate_types(["user"]);
    let mut feed = PgFeed::new(pool.clone(), config).await.unwrap();
    let batch = feed.next_batch(10, Duration::from_millis(200)).await.unwrap();
    assert_eq!(ids(&batch), ["u#1", "u#2"]);
    drop(feed);
    db.drop().await;
}

#[tokio::test]
async fn an_empty_wait_lasts_about_max_wait() {
    let db = TestDb::new().await;
    let mut feed = PgFeed::new(db.pool.clone(), PgFeedConfig::new("idle")).await.unwrap();
    let started = Instant::now();
    assert!(feed.next_batch(10, Duration::from_millis(300)).await.unwrap().is_empty());
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(290), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    drop(feed);
    db.drop().await;
}

#[tokio::test]
async fn wakes_on_notify_well_under_the_poll_interval() {
    let db = TestDb::new().await;
    let config = PgFeedConfig::new("fast").poll_interval(Duration::from_secs(10));
    let mut feed = PgFeed::new(db.pool.clone(), config).await.unwrap();
    // Settle the first (empty) read, then insert while the feed waits.
    assert!(feed.next_batch(10, Duration::ZERO).await.unwrap().is_empty());

    let pool = db.pool.clone();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        insert_event(&pool, "test", "n", 1, "Happened", json!({})).await;
        Instant::now()
    });
    let batch = feed.next_batch(10, Duration::from_secs(8)).await.unwrap();
    let received = Instant::now();
    let inserted = writer.await.unwrap();
    assert_eq!(ids(&batch), ["n#1"]);
    let latency = received.saturating_duration_since(inserted);
    assert!(latency < Duration::from_millis(500), "woken after {latency:?}");
    db.drop().await;
}

#[tokio::test]
async fn survives_losing_its_listen_connection() {
    let db = TestDb::new().await;
    let config = PgFeedConfig::new("resilient").poll_interval(Duration::from_secs(10));
    let mut feed = PgFeed::new(db.pool.clone(), config).await.unwrap();
    assert!(feed.next_batch(10, Duration::ZERO).await.unwrap().is_empty());

    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(terminated, [true], "one LISTEN connection");

    let pool = db.pool.clone();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        insert_event(&pool, "test", "r", 1, "Happened", json!({})).await;
        Instant::now()
    });
    let mut batch = Vec::new();
    let started = Instant::now();
    while batch.is_empty() && started.elapsed() < Duration::from_secs(8) {
        batch = feed.next_batch(10, Duration::from_secs(8)).await.unwrap();
    }
    let latency = Instant::now().saturating_duration_since(writer.await.unwrap());
    assert_eq!(ids(&batch), ["r#1"]);
    assert!(latency < Duration::from_secs(3), "woken after {latency:?}");
    drop(feed);
    db.drop().await;
}

#[tokio::test]
async fn reads_are_paced_only_while_events_keep_coming() {
    let db = TestDb::new().await;
    let pace = Duration::from_secs(1);
    let config = PgFeedConfig::new("paced").poll_interval(Duration::from_secs(10)).min_read_interval(pace);
    let mut feed = PgFeed::new(db.pool.clone(), config).await.unwrap();
    assert!(feed.next_batch(10, Duration::ZERO).await.unwrap().is_empty());

    // After a quiet spell the first commit is read as soon as notified.
    insert_event(&db.pool, "test", "p", 1, "Happened", json!({})).await;
    // Other tests' open transactions on the server may hold the tail back.
    settle(&db.pool).await;
    let first = Instant::now();
    assert_eq!(ids(&feed.next_batch(10, Duration::from_secs(8)).await.unwrap()), ["p#1"]);
    assert!(first.elapsed() < pace, "an unpaced read waited {:?}", first.elapsed());

    // While events keep coming, the next read waits for the pace: the
    // commits of that second are read together.
    let read = Instant::now();
    for sequence in 2..=4 {
        insert_event(&db.pool, "test", "p", sequence, "Happened", json!({})).await;
    }
    settle(&db.pool).await;
    assert_eq!(ids(&feed.next_batch(10, Duration::from_secs(8)).await.unwrap()), ["p#2", "p#3", "p#4"]);
    // (The pace runs from the previous read's start, a moment before `read`.)
    assert!(read.elapsed() >= pace - Duration::from_millis(300), "paced read after {:?}", read.elapsed());

    // A read that finds nothing ends the pacing.
    assert!(feed.next_batch(10, Duration::from_millis(1_500)).await.unwrap().is_empty());
    insert_event(&db.pool, "test", "p", 5, "Happened", json!({})).await;
    settle(&db.pool).await;
    let quiet = Instant::now();
    assert_eq!(ids(&feed.next_batch(10, Duration::from_secs(8)).await.unwrap()), ["p#5"]);
    assert!(quiet.elapsed() < pace, "a read after a quiet spell waited {:?}", quiet.elapsed());
    drop(feed);
    db.drop().await;
}

#[tokio::test]
async fn notifications_name_the_inserted_types_and_a_typed_wait_passes_over_others() {
    let db = TestDb::new().await;
    let mut listener = EventsListener::new(db.pool.clone());
    assert!(listener.connect().await);
    let session = ["session".to_owned()];

    // Commits of other types do not end a wait for `session` events.
    let pool = db.pool.clone();
    let writer = tokio::spawn(async move {
        for sequence in 1..=5 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            insert_event(&pool, "user", "u", sequence, "Happened", json!({})).await;
        }
    });
    let waited = Instant::now();
    assert_eq!(listener.wait_for(Duration::from_millis(1_500), Some(&session)).await, Wake::Timeout);
    assert!(waited.elapsed() >= Duration::from_millis(1_400));
    writer.await.unwrap();

    // One of its own does, at once; an untyped wait takes any commit.
    let pool = db.pool.clone();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        insert_event(&pool, "session", "s", 1, "Happened", json!({})).await;
        Instant::now()
    });
    assert_eq!(listener.wait_for(Duration::from_secs(8), Some(&session)).await, Wake::Notified);
    let latency = Instant::now().saturating_duration_since(writer.await.unwrap());
    assert!(latency < Duration::from_secs(2), "woken after {latency:?}");
    insert_event(&db.pool, "user", "u", 6, "Happened", json!({})).await;
    assert_eq!(listener.wait(Duration::from_secs(8)).await, Wake::Notified);

    // A typed feed reads its own events after a storm of others.
    let config =
        PgFeedConfig::new("typed").aggregate_types(["session"]).poll_interval(Duration::from_secs(30));
    let mut feed = PgFeed::new(db.pool.clone(), config).await.unwrap();
    settle(&db.pool).await;
    assert_eq!(ids(&feed.next_batch(10, Duration::from_secs(8)).await.unwrap()), ["s#1"]);
    drop((feed, listener));
    db.drop().await;
}

/// The `LISTEN` backends of the test's database.
async fn listen_backends(pool: &sqlx::PgPool) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn feeds_sharing_one_listen_connection_each_wake_on_a_commit_and_after_its_loss() {
    let db = TestDb::new().await;
    let shared = SharedListener::new(&db.pool);
    let mut a = EventsListener::shared(db.pool.clone(), &shared);
    let mut b = EventsListener::shared(db.pool.clone(), &shared);
    let mut typed = EventsListener::shared(db.pool.clone(), &shared);
    let session = ["session".to_owned()];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(a.connect().await && b.connect().await && typed.connect().await) {
        assert!(Instant::now() < deadline, "the shared connection never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Three listeners, one backend.
    assert_eq!(listen_backends(&db.pool).await.len(), 1);
    // A first wake may be the connection's start (notifications before it
    // were missed, so read again); drain it.
    for l in [&mut a, &mut b, &mut typed] {
        l.drain().await;
    }

    // A commit wakes every untyped listener; a typed one passes over it.
    insert_event(&db.pool, "user", "u", 1, "Happened", json!({})).await;
    assert_eq!(a.wait(Duration::from_secs(5)).await, Wake::Notified);
    assert_eq!(b.wait(Duration::from_secs(5)).await, Wake::Notified);
    assert_eq!(typed.wait_for(Duration::from_millis(300), Some(&session)).await, Wake::Timeout);
    insert_event(&db.pool, "session", "s", 1, "Happened", json!({})).await;
    assert_eq!(typed.wait_for(Duration::from_secs(5), Some(&session)).await, Wake::Notified);

    // The shared connection is lost: the listeners are told to read again,
    // and later commits wake them as before.
    a.drain().await;
    b.drain().await;
    for pid in listen_backends(&db.pool).await {
        sqlx::query("SELECT pg_terminate_backend($1)").bind(pid).execute(&db.pool).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // While the connection is down a wait is a poll's pause (Timeout).
        match a.wait(Duration::from_millis(200)).await {
            Wake::Reconnected => break,
            wake => assert!(Instant::now() < deadline, "never told to read again ({wake:?})"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !shared.is_listening() || listen_backends(&db.pool).await.is_empty() {
        assert!(Instant::now() < deadline, "the shared connection never listened again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.drain().await;
    insert_event(&db.pool, "user", "u", 2, "Happened", json!({})).await;
    assert_eq!(a.wait(Duration::from_secs(5)).await, Wake::Notified);

    // A Postgres feed on it reads what a commit brings.
    let config =
        PgFeedConfig::new("on-shared").shared_listener(&shared).poll_interval(Duration::from_secs(30));
    let mut feed = PgFeed::new(db.pool.clone(), config).await.unwrap();
    settle(&db.pool).await;
    assert_eq!(ids(&feed.next_batch(10, Duration::from_secs(5)).await.unwrap()), ["u#1", "s#1", "u#2"]);
    let pool = db.pool.clone();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        insert_event(&pool, "user", "u", 3, "Happened", json!({})).await;
    });
    let waited = Instant::now();
    assert_eq!(ids(&feed.next_batch(10, Duration::from_secs(20)).await.unwrap()), ["u#3"]);
    assert!(waited.elapsed() < Duration::from_secs(5), "woken by the commit, not the 30 s poll");
    writer.await.unwrap();
    assert_eq!(listen_backends(&db.pool).await.len(), 1);
    drop((feed, a, b, typed, shared));
    db.drop().await;
}

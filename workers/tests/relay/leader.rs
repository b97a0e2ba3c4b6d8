//! One relay per checkpoint: the Postgres advisory-lock leader election.

use std::time::Duration;

use rdkafka::consumer::StreamConsumer;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use workers::kafka::{ensure_topics, producer, topic_names};
use workers::relay::{leader_lock_key, LeaderLock, Relay, RelayOptions};

use crate::helpers::{
    compare, fresh_consumer, insert_interleaved, kafka_brokers, receive, settle, stored, unique_prefix,
    wait_for_checkpoint, TestDb,
};

const CHECKPOINT: &str = "relay-leader-test";

fn options() -> RelayOptions {
    RelayOptions {
        batch_size: 10,
        max_in_flight_batches: 4,
        poll_interval: Duration::from_millis(300),
        standby_retry: Duration::from_millis(100),
        ..RelayOptions::default()
    }
}

/// A relay loop on [`CHECKPOINT`] with its own producer.
fn spawn_relay(pool: &PgPool, prefix: &str, options: RelayOptions) -> (watch::Sender<bool>, JoinHandle<()>) {
    let relay = Relay::new(pool.clone(), producer(&kafka_brokers()).unwrap(), prefix.to_owned())
        .with_checkpoint(CHECKPOINT)
        .with_options(options);
    let (stop, shutdown) = watch::channel(false);
    (stop, tokio::spawn(async move { relay.run(shutdown).await }))
}

/// Backend pids of this database's sessions holding the leader lock.
async fn lock_holders(pool: &PgPool) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND ((classid::bigint << 32) | objid::bigint) = $1",
    )
    .bind(leader_lock_key(CHECKPOINT))
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn wait_for_holder(pool: &PgPool, except: Option<i32>) -> i32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let holders = lock_holders(pool).await;
        assert!(holders.len() <= 1, "two sessions hold the leader lock: {holders:?}");
        if let Some(pid) = holders.first().filter(|pid| Some(**pid) != except) {
            return *pid;
        }
        assert!(tokio::time::Instant::now() < deadline, "nobody took the leader lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn receive_all(consumer: &StreamConsumer, expected: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let mut messages = receive(consumer, expected, Duration::from_secs(30)).await;
    // Anything published twice would come now.
    messages.extend(receive(consumer, 1, Duration::from_secs(2)).await);
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_checkpoint_publish_every_event_exactly_once() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    ensure_topics(&kafka_brokers(), &prefix, &["user"], 3, 1).await.unwrap();
    insert_interleaved(&db.pool, "user", "u", 10, 1..=30, 10).await;
    settle(&db.pool).await;

    // Both start on the same backlog at once: without the lock both would
    // read it from the zero checkpoint.
    let (stop_a, a) = spawn_relay(&db.pool, &prefix, options());
    let (stop_b, b) = spawn_relay(&db.pool, &prefix, options());
    wait_for_holder(&db.pool, None).await;
    wait_for_checkpoint(
        &db.pool,
        CHECKPOINT,
        stored(&db.pool).await.last().unwrap().0,
        Duration::from_secs(30),
    )
    .await;
    // New events while both run.
    insert_interleaved(&db.pool, "user", "u", 10, 31..=40, 5).await;
    settle(&db.pool).await;
    let stored = stored(&db.pool).await;
    wait_for_checkpoint(&db.pool, CHECKPOINT, stored.last().unwrap().0, Duration::from_secs(30)).await;
    assert_eq!(lock_holders(&db.pool).await.len(), 1);

    let consumer = fresh_consumer(&topic_names(&prefix, &["user"]));
    let messages = receive_all(&consumer, stored.len()).await;
    let delivered = compare(&stored.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(), &messages);
    assert_eq!(messages.len(), 400, "{delivered:?}");
    assert_eq!((delivered.lost, delivered.duplicated, delivered.out_of_order), (0, 0, 0));

    stop_a.send(true).unwrap();
    stop_b.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), a).await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(5), b).await.unwrap().unwrap();
    assert!(lock_holders(&db.pool).await.is_empty(), "the lock is released at shutdown");
    drop(consumer);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_leader_dies_and_loses_nothing() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    ensure_topics(&kafka_brokers(), &prefix, &["user"], 3, 1).await.unwrap();
    insert_interleaved(&db.pool, "user", "u", 5, 1..=20, 10).await;
    settle(&db.pool).await;

    let (_stop_a, a) = spawn_relay(&db.pool, &prefix, options());
    let leader = wait_for_holder(&db.pool, None).await;
    wait_for_checkpoint(
        &db.pool,
        CHECKPOINT,
        stored(&db.pool).await.last().unwrap().0,
        Duration::from_secs(30),
    )
    .await;
    let (stop_b, b) = spawn_relay(&db.pool, &prefix, options());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(lock_holders(&db.pool).await, [leader], "the standby waits");

    // Kill the leader: its task (and with it the lock connection) is dropped
    // without any cleanup, like a process killed with SIGKILL.
    a.abort();
    let _ = a.await;
    let standby = wait_for_holder(&db.pool, Some(leader)).await;
    assert_ne!(standby, leader);

    insert_interleaved(&db.pool, "user", "u", 5, 21..=40, 10).await;
    settle(&db.pool).await;
    let stored = stored(&db.pool).await;
    wait_for_checkpoint(&db.pool, CHECKPOINT, stored.last().unwrap().0, Duration::from_secs(30)).await;

    let consumer = fresh_consumer(&topic_names(&prefix, &["user"]));
    let messages = receive_all(&consumer, stored.len()).await;
    let delivered = compare(&stored.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(), &messages);
    assert_eq!(delivered.lost, 0, "{delivered:?}");
    assert_eq!(delivered.out_of_order, 0, "{delivered:?}");
    // The leader died idle, with everything checkpointed: nothing twice.
    assert_eq!(delivered.duplicated, 0, "{delivered:?}");

    stop_b.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), b).await.unwrap().unwrap();
    drop(consumer);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_lock_connection_stops_publishing() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    ensure_topics(&kafka_brokers(), &prefix, &["user"], 1, 1).await.unwrap();
    insert_interleaved(&db.pool, "user", "u", 1, 1..=10, 1).await;
    settle(&db.pool).await;
    let consumer = fresh_consumer(&topic_names(&prefix, &["user"]));

    // A long slow poll: only NOTIFY (or losing the lock) wakes the relay.
    let (stop, relay) =
        spawn_relay(&db.pool, &prefix, RelayOptions { poll_interval: Duration::from_secs(30), ..options() });
    let leader = wait_for_holder(&db.pool, None).await;
    assert_eq!(receive(&consumer, 10, Duration::from_secs(20)).await.len(), 10);
    let checkpoint = stored(&db.pool).await.last().unwrap().0;
    wait_for_checkpoint(&db.pool, CHECKPOINT, checkpoint, Duration::from_secs(10)).await;

    // The lock's session dies (server side); another session takes the lock at once.
    let terminated: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(leader).fetch_one(&db.pool).await.unwrap();
    assert!(terminated);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let other = loop {
        if let Some(lock) = LeaderLock::try_acquire(&db.pool, CHECKPOINT).await.unwrap() {
            break lock;
        }
        assert!(tokio::time::Instant::now() < deadline, "the terminated session kept the lock");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };

    // New events notify the relay, which must not publish them.
    insert_interleaved(&db.pool, "user", "u", 1, 11..=20, 1).await;
    settle(&db.pool).await;
    let leaked = receive(&consumer, 1, Duration::from_secs(3)).await;
    assert!(leaked.is_empty(), "published {} event(s) without the lock", leaked.len());
    assert_eq!(crate::helpers::stored(&db.pool).await.len(), 20);
    assert_eq!(projections::tail::load_checkpoint(&db.pool, CHECKPOINT).await.unwrap(), checkpoint);

    // The other session goes away: the relay leads again and catches up.
    drop(other);
    let messages = receive(&consumer, 10, Duration::from_secs(20)).await;
    let sequences: Vec<i64> = messages
        .iter()
        .map(|m| {
            serde_json::from_slice::<domain::envelope::Envelope>(rdkafka::Message::payload(m).unwrap())
                .unwrap()
                .sequence
        })
        .collect();
    assert_eq!(sequences, (11..=20).collect::<Vec<_>>());

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), relay).await.unwrap().unwrap();
    drop(consumer);
    db.drop().await;
}

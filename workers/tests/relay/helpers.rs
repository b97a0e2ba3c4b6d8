use std::time::Duration;

use projections::db::testing;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Message as _};
use sqlx::{PgExecutor, PgPool};

/// A fresh, migrated database; drop it explicitly with [`TestDb::drop`].
pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let (pool, url) =
            testing::create_test_database(&testing::base_url()).await.expect("create test database");
        Self { pool, url }
    }

    /// Closes the pool and drops the database.
    pub async fn drop(self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.pool.close()).await;
        testing::drop_test_database(&self.url).await.expect("drop test database");
    }
}

/// Appends one event with postgres-es' seven-column INSERT.
pub async fn insert_event<'e>(
    executor: impl PgExecutor<'e>,
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: i64,
    event_type: &str,
    body: serde_json::Value,
) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
         event_version, payload, metadata) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(sequence)
    .bind(event_type)
    .bind("1.0")
    .bind(serde_json::json!({ event_type: body }))
    .bind(serde_json::json!({ "request_id": "test" }))
    .execute(executor)
    .await
    .expect("insert event");
}

/// Waits until every committed event is below the cluster-wide xid horizon
/// (other databases' transactions hold it back for a moment).
pub async fn settle(pool: &PgPool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pending: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM events \
             WHERE txid >= pg_snapshot_xmin(pg_current_snapshot()))",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if !pending {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "events never settled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The broker the tests use.
pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// A topic prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("t{}.streamforge.events.", uuid::Uuid::new_v4().simple())
}

/// A consumer of `topics` in a fresh group, from the earliest offset.
pub fn fresh_consumer(topics: &[String]) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", format!("check-{}", uuid::Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).unwrap();
    consumer
}

/// Receives messages until `count` arrived or `timeout` passed.
pub async fn receive(consumer: &StreamConsumer, count: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut messages = Vec::new();
    while messages.len() < count {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(remaining, consumer.recv()).await {
            Err(_) => break,
            Ok(Ok(message)) => messages.push(message.detach()),
            Ok(Err(error)) => eprintln!("consumer error (ignored): {error}"),
        }
    }
    messages
}

/// The key of a message as UTF-8.
pub fn key(message: &OwnedMessage) -> String {
    String::from_utf8(message.key().unwrap_or_default().to_vec()).unwrap()
}

/// Appends `per_aggregate` events to each of `aggregates` aggregates of
/// type `aggregate_type` (ids `<id_prefix><n>`), interleaved, in
/// transactions of `per_transaction` events; sequences start after
/// `first_sequence - 1`.
pub async fn insert_interleaved(
    pool: &PgPool,
    aggregate_type: &str,
    id_prefix: &str,
    aggregates: usize,
    sequences: std::ops::RangeInclusive<i64>,
    per_transaction: usize,
) {
    let mut rows = Vec::new();
    for sequence in sequences {
        for n in 0..aggregates {
            rows.push((format!("{id_prefix}{n}"), sequence));
        }
    }
    for chunk in rows.chunks(per_transaction.max(1)) {
        let mut tx = pool.begin().await.unwrap();
        for (id, sequence) in chunk {
            insert_event(&mut *tx, aggregate_type, id, *sequence, "Changed", serde_json::json!({})).await;
        }
        tx.commit().await.unwrap();
    }
}

/// How the messages received compare with the events stored.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Stored events never received.
    pub lost: usize,
    /// Messages whose event was already received.
    pub duplicated: usize,
    /// First deliveries whose sequence is not above the aggregate's previous one.
    pub out_of_order: usize,
}

/// Compares `messages` (in the order received; Kafka keeps per-partition
/// order, so per-aggregate order is that of each aggregate's messages) with
/// `stored`.
pub fn compare(stored: &[domain::envelope::Envelope], messages: &[OwnedMessage]) -> Delivered {
    use std::collections::{HashMap, HashSet};
    let mut seen = HashSet::new();
    let mut last: HashMap<(String, String), i64> = HashMap::new();
    let mut delivered = Delivered::default();
    for message in messages {
        let envelope: domain::envelope::Envelope =
            serde_json::from_slice(message.payload().unwrap()).unwrap();
        if !seen.insert(envelope.event_id) {
            delivered.duplicated += 1;
            continue;
        }
        let previous =
            last.entry((envelope.aggregate_type.clone(), envelope.aggregate_id.clone())).or_insert(0);
        if envelope.sequence <= *previous {
            delivered.out_of_order += 1;
        }
        *previous = envelope.sequence;
    }
    delivered.lost = stored.iter().filter(|e| !seen.contains(&e.event_id)).count();
    delivered
}

/// Every settled event, in commit-safe order, with its cursor.
pub async fn stored(pool: &PgPool) -> Vec<(projections::tail::Cursor, domain::envelope::Envelope)> {
    projections::tail::read_after(pool, projections::tail::Cursor::ZERO, 1_000_000, None).await.unwrap()
}

/// Waits until checkpoint `name` reaches `cursor`.
pub async fn wait_for_checkpoint(
    pool: &PgPool,
    name: &str,
    cursor: projections::tail::Cursor,
    timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let stored = projections::tail::load_checkpoint(pool, name).await.unwrap();
        if stored == cursor {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "checkpoint `{name}` at {stored:?}, expected {cursor:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

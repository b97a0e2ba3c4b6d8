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

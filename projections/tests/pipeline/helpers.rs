use std::time::Duration;

use projections::db::testing;
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

    /// Closes the pool and drops the database (connections still checked
    /// out, e.g. by a live listener, are terminated by the drop).
    pub async fn drop(self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.pool.close()).await;
        testing::drop_test_database(&self.url).await.expect("drop test database");
    }
}

/// postgres-es' INSERT (seven columns; position, txid, event_id and
/// recorded_at come from their defaults).
pub const INSERT_EVENT: &str = "INSERT INTO events (aggregate_type, aggregate_id, sequence, \
     event_type, event_version, payload, metadata) VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Appends one event the way postgres-es does: the payload externally
/// tagged by the event type.
pub async fn insert_event<'e>(
    executor: impl PgExecutor<'e>,
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: i64,
    event_type: &str,
    body: serde_json::Value,
) {
    sqlx::query(INSERT_EVENT)
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

/// The broker the Kafka tests use.
pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// A topic prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("t{}.streamforge.events.", uuid::Uuid::new_v4().simple())
}

/// Polls `check` until it is true or `timeout` runs out.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every committed event is below the cluster-wide xid horizon,
/// i.e. readable by the tail. Transactions of *other* databases (other
/// tests creating and migrating theirs) hold the horizon back for a moment;
/// never call this while one of the test's own transactions is open.
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

//! The relay: events → Kafka, at least once, checkpointed.

use std::collections::HashMap;
use std::time::Duration;

use domain::envelope::{Envelope, ENVELOPE_SCHEMA_VERSION};
use projections::feed::EventFeed;
use projections::kafka_feed::{KafkaFeed, KafkaFeedConfig};
use projections::tail::{self, Cursor};
use rdkafka::message::{Headers as _, OwnedMessage};
use rdkafka::Message as _;
use serde_json::json;
use workers::kafka::{ensure_topics, producer, topic_names};
use workers::relay::{Relay, RelayOptions};

use crate::helpers::{
    fresh_consumer, insert_event, kafka_brokers, key, receive, settle, unique_prefix, TestDb,
};

fn headers(message: &OwnedMessage) -> HashMap<String, String> {
    let mut map = HashMap::new();
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            let value = String::from_utf8(header.value.unwrap_or_default().to_vec()).unwrap();
            map.insert(header.key.to_owned(), value);
        }
    }
    map
}

#[tokio::test]
async fn publishes_envelopes_keyed_with_headers_once_and_checkpoints() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let brokers = kafka_brokers();
    ensure_topics(&brokers, &prefix, &["user", "session"], 2, 1).await.unwrap();
    ensure_topics(&brokers, &prefix, &["user", "session"], 2, 1).await.expect("existing topics are fine");

    insert_event(&db.pool, "user", "u1", 1, "UserRegistered", json!({"n": 1})).await;
    insert_event(&db.pool, "session", "s1", 1, "SessionStarted", json!({"n": 2})).await;
    insert_event(&db.pool, "user", "u1", 2, "EmailVerified", json!({"n": 3})).await;
    settle(&db.pool).await;
    let stored: Vec<(Cursor, Envelope)> = tail::read_after(&db.pool, Cursor::ZERO, 100, None).await.unwrap();

    let relay = Relay::new(db.pool.clone(), producer(&brokers).unwrap(), prefix.clone());
    assert_eq!(relay.run_once(100).await.unwrap(), 3);
    assert_eq!(tail::load_checkpoint(&db.pool, "relay").await.unwrap(), stored.last().unwrap().0);

    let consumer = fresh_consumer(&topic_names(&prefix, &["user", "session"]));
    let messages = receive(&consumer, 3, Duration::from_secs(30)).await;
    assert_eq!(messages.len(), 3);
    for message in &messages {
        let envelope: Envelope = serde_json::from_slice(message.payload().unwrap()).unwrap();
        let (_, expected) = stored
            .iter()
            .find(|(_, e)| e.event_id == envelope.event_id)
            .expect("published envelope is a stored event");
        assert_eq!(&envelope, expected);
        assert_eq!(message.topic(), format!("{prefix}{}", envelope.aggregate_type));
        assert_eq!(key(message), envelope.aggregate_id);
        let headers = headers(message);
        assert_eq!(headers["event-type"], envelope.event_type);
        assert_eq!(headers["event-version"], envelope.event_version);
        assert_eq!(headers["envelope-version"], ENVELOPE_SCHEMA_VERSION);
    }
    let user_sequences: Vec<i64> = messages
        .iter()
        .map(|m| serde_json::from_slice::<Envelope>(m.payload().unwrap()).unwrap())
        .filter(|e| e.aggregate_id == "u1")
        .map(|e| e.sequence)
        .collect();
    assert_eq!(user_sequences, [1, 2], "per-aggregate order");

    // Nothing new: nothing republished.
    assert_eq!(relay.run_once(100).await.unwrap(), 0);
    assert!(receive(&consumer, 1, Duration::from_secs(2)).await.is_empty());

    // A new event is published alone.
    insert_event(&db.pool, "session", "s1", 2, "SessionRevoked", json!({})).await;
    settle(&db.pool).await;
    assert_eq!(relay.run_once(100).await.unwrap(), 1);
    let messages = receive(&consumer, 2, Duration::from_secs(3)).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(key(&messages[0]), "s1");
    drop(consumer);
    db.drop().await;
}

#[tokio::test]
async fn run_once_publishes_in_batches() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let brokers = kafka_brokers();
    ensure_topics(&brokers, &prefix, &["user"], 1, 1).await.unwrap();
    for sequence in 1..=5 {
        insert_event(&db.pool, "user", "u", sequence, "Changed", json!({})).await;
    }
    settle(&db.pool).await;
    let relay = Relay::new(db.pool.clone(), producer(&brokers).unwrap(), prefix.clone())
        .with_checkpoint("relay-batches");
    assert_eq!(relay.run_once(2).await.unwrap(), 2);
    assert_eq!(relay.run_once(2).await.unwrap(), 2);
    assert_eq!(relay.run_once(2).await.unwrap(), 1);
    assert_eq!(relay.run_once(2).await.unwrap(), 0);
    assert_eq!(
        tail::load_checkpoint(&db.pool, "relay").await.unwrap(),
        Cursor::ZERO,
        "the default checkpoint is untouched"
    );
    let consumer = fresh_consumer(&topic_names(&prefix, &["user"]));
    let messages = receive(&consumer, 6, Duration::from_secs(5)).await;
    let sequences: Vec<i64> = messages
        .iter()
        .map(|m| serde_json::from_slice::<Envelope>(m.payload().unwrap()).unwrap().sequence)
        .collect();
    assert_eq!(sequences, [1, 2, 3, 4, 5]);
    drop(consumer);
    db.drop().await;
}

/// The loop wakes on NOTIFY (slow poll set to 10 s), feeds a KafkaFeed, and
/// stops on shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_loop_relays_new_events_to_a_kafka_feed_promptly() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let brokers = kafka_brokers();
    ensure_topics(&brokers, &prefix, &["user"], 1, 1).await.unwrap();
    let relay = Relay::new(db.pool.clone(), producer(&brokers).unwrap(), prefix.clone())
        .with_options(RelayOptions { poll_interval: Duration::from_secs(10), ..RelayOptions::default() });
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move { relay.run(shutdown).await });

    let config =
        KafkaFeedConfig::for_aggregate_types(brokers.clone(), format!("g-{prefix}"), &prefix, &["user"]);
    let mut feed = KafkaFeed::new(&config).unwrap();
    // Let the relay reach its first wait, then append.
    tokio::time::sleep(Duration::from_millis(500)).await;
    insert_event(&db.pool, "user", "u", 1, "UserRegistered", json!({})).await;
    let inserted = tokio::time::Instant::now();

    let mut received = Vec::new();
    while received.is_empty() && inserted.elapsed() < Duration::from_secs(8) {
        received = feed.next_batch(10, Duration::from_millis(200)).await.unwrap();
    }
    let latency = inserted.elapsed();
    assert_eq!(received.len(), 1, "nothing relayed within 8 s");
    assert_eq!(received[0].aggregate_id, "u");
    // Well under the 10 s slow poll: the relay was woken by NOTIFY.
    assert!(latency < Duration::from_secs(5), "relayed after {latency:?}");
    feed.commit().await.unwrap();

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    drop(feed);
    db.drop().await;
}

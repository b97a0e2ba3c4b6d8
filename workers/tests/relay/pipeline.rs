//! The pipelined relay: many batches in flight, checkpoints stored in order
//! and only after every acknowledgement.

use std::time::Duration;

use projections::tail::{self, Cursor};
use serde_json::json;
use workers::kafka::{ensure_topics, producer, producer_with, topic_names, ProducerConfig};
use workers::relay::{Relay, RelayError, RelayOptions};

use crate::helpers::{
    compare, fresh_consumer, insert_event, insert_interleaved, kafka_brokers, receive, settle, stored,
    unique_prefix, TestDb,
};

/// Small batches, many in flight: the pipeline is exercised over ~140 batches.
fn pipelined(batch_size: usize) -> RelayOptions {
    RelayOptions {
        batch_size,
        max_in_flight_batches: 16,
        max_in_flight_messages: 1_000,
        ..RelayOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_drain_publishes_every_event_once_in_aggregate_order() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let brokers = kafka_brokers();
    ensure_topics(&brokers, &prefix, &["user", "session"], 3, 1).await.unwrap();
    insert_interleaved(&db.pool, "user", "u", 20, 1..=25, 10).await;
    insert_interleaved(&db.pool, "session", "s", 20, 1..=25, 7).await;
    settle(&db.pool).await;
    let stored = stored(&db.pool).await;
    assert_eq!(stored.len(), 1_000);

    let relay = Relay::new(db.pool.clone(), producer(&brokers).unwrap(), prefix.clone())
        .with_checkpoint("pipelined")
        .with_options(pipelined(7));
    let outcome = relay.drain().await.unwrap();
    assert_eq!(outcome.published, 1_000);
    let last = stored.last().unwrap().0;
    assert_eq!(outcome.cursor, last);
    assert_eq!(tail::load_checkpoint(&db.pool, "pipelined").await.unwrap(), last);
    assert_eq!(relay.drain().await.unwrap().published, 0, "nothing new: nothing republished");

    // More events: the next pass starts at the checkpoint.
    insert_interleaved(&db.pool, "user", "u", 20, 26..=30, 3).await;
    settle(&db.pool).await;
    let stored = crate::helpers::stored(&db.pool).await;
    assert_eq!(relay.drain().await.unwrap().published, 100);

    let consumer = fresh_consumer(&topic_names(&prefix, &["user", "session"]));
    let mut messages = receive(&consumer, 1_100, Duration::from_secs(30)).await;
    messages.extend(receive(&consumer, 1, Duration::from_secs(2)).await);
    let delivered = compare(&stored.into_iter().map(|(_, e)| e).collect::<Vec<_>>(), &messages);
    assert_eq!(messages.len(), 1_100, "{delivered:?}");
    assert_eq!(delivered.lost, 0);
    assert_eq!(delivered.duplicated, 0);
    assert_eq!(delivered.out_of_order, 0);
    drop(consumer);
    db.drop().await;
}

/// Batches after the failing one are acknowledged first (their topic
/// exists); the checkpoint must still stop before the unacknowledged event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_failure_does_not_advance_the_checkpoint_past_unacknowledged_events() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let brokers = kafka_brokers();
    ensure_topics(&brokers, &prefix, &["user"], 1, 1).await.unwrap();
    for sequence in 1..=30 {
        insert_event(&db.pool, "user", "u", sequence, "Changed", json!({})).await;
    }
    // No topic for `ghost` (the broker does not create topics): never acknowledged.
    insert_event(&db.pool, "ghost", "g", 1, "Haunted", json!({})).await;
    for sequence in 31..=60 {
        insert_event(&db.pool, "user", "u", sequence, "Changed", json!({})).await;
    }
    settle(&db.pool).await;
    let stored = stored(&db.pool).await;
    let ghost = stored.iter().position(|(_, e)| e.aggregate_type == "ghost").unwrap();
    let before_ghost = stored[ghost - 1].0;

    let failing =
        producer_with(&ProducerConfig { message_timeout_ms: 3_000, ..ProducerConfig::new(&brokers) })
            .unwrap();
    let relay = Relay::new(db.pool.clone(), failing, prefix.clone())
        .with_checkpoint("failing")
        .with_options(pipelined(5));
    let error = relay.drain().await.expect_err("the ghost event is never acknowledged");
    match &error {
        RelayError::Delivery { aggregate_type, aggregate_id, sequence, .. } => {
            assert_eq!((aggregate_type.as_str(), aggregate_id.as_str(), *sequence), ("ghost", "g", 1));
        }
        other => panic!("expected a delivery error, got {other:?}"),
    }
    let checkpoint = tail::load_checkpoint(&db.pool, "failing").await.unwrap();
    assert!(checkpoint < stored[ghost].0, "checkpoint {checkpoint:?} passed the unacknowledged event");
    assert_eq!(checkpoint, before_ghost, "every batch before the failing one was checkpointed");

    // The events after the ghost did reach the topic (so a checkpoint taken
    // from the newest acknowledged batch would have skipped the ghost).
    let consumer = fresh_consumer(&topic_names(&prefix, &["user"]));
    let users = receive(&consumer, 60, Duration::from_secs(20)).await;
    assert!(users.len() > 30, "later batches were acknowledged: {} messages", users.len());
    drop(consumer);

    // Once the topic exists the relay resumes from the checkpoint: the ghost
    // event and everything after it is published; nothing is lost.
    ensure_topics(&brokers, &prefix, &["ghost"], 1, 1).await.unwrap();
    let relay = Relay::new(db.pool.clone(), producer(&brokers).unwrap(), prefix.clone())
        .with_checkpoint("failing")
        .with_options(pipelined(5));
    let outcome = relay.drain().await.unwrap();
    assert_eq!(outcome.published, stored.len() - ghost, "republished from the checkpoint on");
    assert_eq!(outcome.cursor, stored.last().unwrap().0);
    let consumer = fresh_consumer(&topic_names(&prefix, &["user", "ghost"]));
    let messages = receive(&consumer, 1_000, Duration::from_secs(10)).await;
    let delivered = compare(&stored.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(), &messages);
    assert_eq!(delivered.lost, 0, "{delivered:?}");
    assert_eq!(delivered.out_of_order, 0, "{delivered:?}");
    drop(consumer);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_is_down_leaves_the_checkpoint_alone() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    for sequence in 1..=12 {
        insert_event(&db.pool, "user", "u", sequence, "Changed", json!({})).await;
    }
    settle(&db.pool).await;
    // Nothing listens on port 1.
    let down =
        producer_with(&ProducerConfig { message_timeout_ms: 1_500, ..ProducerConfig::new("127.0.0.1:1") })
            .unwrap();
    let relay = Relay::new(db.pool.clone(), down, prefix.clone()).with_options(pipelined(4));
    assert!(matches!(relay.drain().await, Err(RelayError::Delivery { .. })));
    assert_eq!(tail::load_checkpoint(&db.pool, "relay").await.unwrap(), Cursor::ZERO);
    assert!(matches!(relay.run_once(4).await, Err(RelayError::Delivery { .. })));
    assert_eq!(tail::load_checkpoint(&db.pool, "relay").await.unwrap(), Cursor::ZERO);
    db.drop().await;
}

/// `delete_topics_containing` removes exactly the topics whose names hold
/// the marker (a benchmark run's prefix) and leaves the others.
#[tokio::test]
async fn delete_topics_containing_removes_only_the_marked_topics() {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::ClientConfig;

    let brokers = kafka_brokers();
    let marked = unique_prefix();
    let kept = unique_prefix();
    ensure_topics(&brokers, &marked, &["user", "session"], 1, 1).await.unwrap();
    ensure_topics(&brokers, &format!("raw.{marked}"), &["user"], 1, 1).await.unwrap();
    ensure_topics(&brokers, &kept, &["user"], 1, 1).await.unwrap();

    let deleted = workers::kafka::delete_topics_containing(&brokers, &marked).await.unwrap();
    assert_eq!(deleted, 3);

    let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let names: Vec<String> = client
        .fetch_metadata(None, Duration::from_secs(30))
        .unwrap()
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains(&marked)), "marked topics left: {names:?}");
    assert!(names.contains(&format!("{kept}user")), "the other topic went too: {names:?}");
    assert_eq!(workers::kafka::delete_topics_containing(&brokers, &marked).await.unwrap(), 0);
    workers::kafka::delete_topics_containing(&brokers, &kept).await.unwrap();
}

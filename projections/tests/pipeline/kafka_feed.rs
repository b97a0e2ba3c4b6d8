//! The Kafka consumer-group feed, against a real broker (`KAFKA_BROKERS`).

use std::time::Duration;

use domain::envelope::Envelope;
use projections::feed::EventFeed;
use projections::kafka_feed::{KafkaFeed, KafkaFeedConfig};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;

use crate::helpers::{kafka_brokers, unique_prefix};

async fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().unwrap();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &options)
        .await
        .expect("broker reachable at KAFKA_BROKERS");
    for result in results {
        result.expect("topic created");
    }
}

fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap()
}

/// A test envelope of stream `aggregate_id` (shared with `broker_restart`).
pub(crate) fn envelope(aggregate_id: &str, sequence: i64) -> Envelope {
    Envelope {
        event_id: uuid::Uuid::new_v4(),
        aggregate_type: "test".into(),
        aggregate_id: aggregate_id.into(),
        sequence,
        position: sequence,
        event_type: "Happened".into(),
        event_version: "1.0".into(),
        occurred_at: chrono::Utc::now(),
        payload: json!({ "n": sequence }),
        metadata: json!({}),
    }
}

async fn publish(producer: &FutureProducer, topic: &str, key: &str, value: &[u8]) {
    producer
        .send(FutureRecord::to(topic).key(key).payload(value), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("delivered");
}

async fn publish_envelope(producer: &FutureProducer, topic: &str, env: &Envelope) {
    publish(producer, topic, &env.aggregate_id, &serde_json::to_vec(env).unwrap()).await;
}

/// Reads from `feed` until `count` envelopes arrived or 30 s passed.
async fn collect(feed: &mut KafkaFeed, count: usize) -> Vec<Envelope> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut all = Vec::new();
    while all.len() < count && tokio::time::Instant::now() < deadline {
        all.extend(feed.next_batch(100, Duration::from_millis(500)).await.unwrap());
    }
    all
}

/// Keeps reading for `period` and returns whatever arrived.
async fn drain_for(feed: &mut KafkaFeed, period: Duration) -> Vec<Envelope> {
    let deadline = tokio::time::Instant::now() + period;
    let mut all = Vec::new();
    while tokio::time::Instant::now() < deadline {
        all.extend(feed.next_batch(100, Duration::from_millis(200)).await.unwrap());
    }
    all
}

fn ids(batch: &[Envelope]) -> Vec<String> {
    batch.iter().map(|e| format!("{}#{}", e.aggregate_id, e.sequence)).collect()
}

#[tokio::test]
async fn committed_envelopes_are_not_seen_again_by_the_same_group() {
    let topic = format!("{}test", unique_prefix());
    create_topic(&topic, 2).await;
    let producer = producer();
    let sent: Vec<Envelope> = [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3)]
        .into_iter()
        .map(|(id, seq)| envelope(id, seq))
        .collect();
    for (i, env) in sent.iter().enumerate() {
        publish_envelope(&producer, &topic, env).await;
        if i == 2 {
            // A malformed message in the middle is logged and skipped.
            publish(&producer, &topic, "a", b"not an envelope").await;
        }
    }

    let config = KafkaFeedConfig::new(kafka_brokers(), format!("g-{topic}"), [topic.clone()]);
    let mut feed = KafkaFeed::new(&config).unwrap();
    let received = collect(&mut feed, sent.len()).await;
    assert_eq!(received.len(), sent.len(), "got {:?}", ids(&received));
    for aggregate in ["a", "b"] {
        let sequences: Vec<i64> =
            received.iter().filter(|e| e.aggregate_id == aggregate).map(|e| e.sequence).collect();
        let expected: Vec<i64> =
            sent.iter().filter(|e| e.aggregate_id == aggregate).map(|e| e.sequence).collect();
        assert_eq!(sequences, expected, "per-aggregate order of {aggregate}");
    }
    for env in &received {
        assert!(sent.contains(env), "envelope changed in transit: {env:?}");
    }
    feed.commit().await.unwrap();
    drop(feed);

    let mut again = KafkaFeed::new(&config).unwrap();
    let late = envelope("b", 3);
    publish_envelope(&producer, &topic, &late).await;
    let received = collect(&mut again, 1).await;
    let received = [received, drain_for(&mut again, Duration::from_secs(2)).await].concat();
    assert_eq!(ids(&received), ["b#3"], "committed envelopes were redelivered");
}

#[tokio::test]
async fn rollback_redelivers_the_uncommitted_envelopes() {
    let topic = format!("{}test", unique_prefix());
    create_topic(&topic, 1).await;
    let producer = producer();
    for sequence in 1..=3 {
        publish_envelope(&producer, &topic, &envelope("a", sequence)).await;
    }
    let config = KafkaFeedConfig::new(kafka_brokers(), format!("g-{topic}"), [topic.clone()]);
    let mut feed = KafkaFeed::new(&config).unwrap();
    let first = collect(&mut feed, 3).await;
    assert_eq!(ids(&first), ["a#1", "a#2", "a#3"]);
    feed.rollback().await.unwrap();
    let again = collect(&mut feed, 3).await;
    assert_eq!(ids(&again), ["a#1", "a#2", "a#3"]);
    feed.commit().await.unwrap();
    assert!(drain_for(&mut feed, Duration::from_secs(1)).await.is_empty());
}

#[test]
fn a_feed_needs_topics() {
    let config = KafkaFeedConfig::new(kafka_brokers(), "g", Vec::<String>::new());
    assert!(KafkaFeed::new(&config).is_err());
}

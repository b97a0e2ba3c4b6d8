//! [`KafkaFeed`]: the Kafka consumer-group [`EventFeed`] used in production.
//!
//! Offsets are committed manually and synchronously by
//! [`EventFeed::commit`], after the projector transactions (ARCHITECTURE
//! decided 5). Messages are keyed by aggregate id, so per-aggregate order is
//! per-partition order. A message whose value is not an envelope is logged
//! with its topic, partition and offset and skipped (its offset is still
//! committed, so it is not retried forever).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use domain::envelope::Envelope;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::time::Instant;

use crate::feed::{EventFeed, FeedError};

/// `fetch.wait.max.ms` default: brokers (tansu in particular) answer a fetch
/// only when this runs out, so it bounds the consume latency.
pub const DEFAULT_FETCH_WAIT_MAX_MS: u32 = 5;

/// `session.timeout.ms` default.
pub const DEFAULT_SESSION_TIMEOUT_MS: u32 = 10_000;

/// `max.poll.interval.ms` default: 45 s, above the runners' longest
/// back-off (30 s) between two polls. It is also the rebalance timeout a
/// member announces when it joins (librdkafka's default is 300 s). Set
/// while chasing consumers that stood still for minutes after a tansu
/// restart (scripts/chaos); it did not cure that (docs/performance.md,
/// "Fault tests").
pub const DEFAULT_MAX_POLL_INTERVAL_MS: u32 = 45_000;

/// Timeout of a rollback seek.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of a [`KafkaFeed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaFeedConfig {
    /// `bootstrap.servers`, e.g. `127.0.0.1:9092`.
    pub brokers: String,
    /// Consumer group (`group.id`); the committed offsets belong to it.
    pub group_id: String,
    /// Topics to subscribe to (they must exist; see `workers::kafka`).
    pub topics: Vec<String>,
    /// `fetch.wait.max.ms`, milliseconds (default [`DEFAULT_FETCH_WAIT_MAX_MS`]).
    pub fetch_wait_max_ms: u32,
    /// `session.timeout.ms`, milliseconds (default [`DEFAULT_SESSION_TIMEOUT_MS`]).
    pub session_timeout_ms: u32,
    /// Further librdkafka properties, applied last.
    pub extra: Vec<(String, String)>,
}

impl KafkaFeedConfig {
    /// Defaults for group `group_id` reading `topics` from `brokers`.
    pub fn new(
        brokers: impl Into<String>,
        group_id: impl Into<String>,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            brokers: brokers.into(),
            group_id: group_id.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            fetch_wait_max_ms: DEFAULT_FETCH_WAIT_MAX_MS,
            session_timeout_ms: DEFAULT_SESSION_TIMEOUT_MS,
            extra: Vec::new(),
        }
    }

    /// Defaults for group `group_id` reading the topics
    /// `<topic_prefix><aggregate_type>` of `aggregate_types`.
    pub fn for_aggregate_types(
        brokers: impl Into<String>,
        group_id: impl Into<String>,
        topic_prefix: &str,
        aggregate_types: &[&str],
    ) -> Self {
        Self::new(brokers, group_id, aggregate_types.iter().map(|t| format!("{topic_prefix}{t}")))
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("socket.nagle.disable", "true")
            .set("fetch.wait.max.ms", self.fetch_wait_max_ms.to_string())
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set("max.poll.interval.ms", DEFAULT_MAX_POLL_INTERVAL_MS.to_string());
        for (key, value) in &self.extra {
            config.set(key, value);
        }
        config
    }
}

/// Offsets returned since the last commit or rollback, per partition.
#[derive(Debug, Clone, Copy)]
struct Span {
    first: i64,
    last: i64,
}

/// A consumer-group feed. Dropping it leaves the group (blocking briefly).
pub struct KafkaFeed {
    consumer: Arc<StreamConsumer>,
    group_id: String,
    seen: HashMap<(String, i32), Span>,
}

impl std::fmt::Debug for KafkaFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaFeed")
            .field("group_id", &self.group_id)
            .field("uncommitted_partitions", &self.seen.len())
            .finish_non_exhaustive()
    }
}

impl KafkaFeed {
    /// Creates the consumer and subscribes it to `config.topics`
    /// (the group join itself happens while receiving).
    ///
    /// # Errors
    /// [`FeedError::Config`] without topics, [`FeedError::Kafka`] when
    /// librdkafka rejects the configuration or the subscription.
    pub fn new(config: &KafkaFeedConfig) -> Result<Self, FeedError> {
        if config.topics.is_empty() {
            return Err(FeedError::Config("Kafka feed without topics".into()));
        }
        let consumer: StreamConsumer = config.client_config().create()?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(Self { consumer: Arc::new(consumer), group_id: config.group_id.clone(), seen: HashMap::new() })
    }

    /// The consumer group of this feed.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// Records the message's offset and decodes its envelope; `None` (logged)
    /// when the value is not an envelope.
    fn accept(&mut self, message: &BorrowedMessage<'_>) -> Option<Envelope> {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        self.seen
            .entry((topic.to_owned(), partition))
            .and_modify(|span| {
                span.first = span.first.min(offset);
                span.last = span.last.max(offset);
            })
            .or_insert(Span { first: offset, last: offset });
        let Some(value) = message.payload() else {
            tracing::warn!(topic, partition, offset, "skipping Kafka message without value");
            return None;
        };
        match serde_json::from_slice::<Envelope>(value) {
            Ok(envelope) => Some(envelope),
            Err(error) => {
                tracing::warn!(
                    topic, partition, offset, error = %error,
                    "skipping Kafka message that is not an envelope"
                );
                None
            }
        }
    }

    /// The uncommitted partitions still assigned to this consumer, each with
    /// the offset chosen by `pick`; the others are dropped (their new owner
    /// will redeliver them).
    fn assigned_offsets(&self, pick: impl Fn(&Span) -> i64) -> Result<TopicPartitionList, FeedError> {
        let assignment = self.consumer.assignment()?;
        let mut list = TopicPartitionList::new();
        for ((topic, partition), span) in &self.seen {
            if assignment.find_partition(topic, *partition).is_some() {
                list.add_partition_offset(topic, *partition, Offset::Offset(pick(span)))?;
            } else {
                tracing::info!(topic, partition, "partition revoked before commit; skipped");
            }
        }
        Ok(list)
    }
}

#[async_trait]
impl EventFeed for KafkaFeed {
    #[tracing::instrument(level = "debug", skip_all, fields(group = %self.group_id, max))]
    async fn next_batch(&mut self, max: usize, max_wait: Duration) -> Result<Vec<Envelope>, FeedError> {
        let mut batch = Vec::new();
        if max == 0 {
            return Ok(batch);
        }
        let consumer = Arc::clone(&self.consumer);
        let deadline = Instant::now() + max_wait;
        // Wait (until the deadline) for a first envelope…
        while batch.is_empty() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, consumer.recv()).await {
                Err(_elapsed) => return Ok(batch),
                Ok(Err(error)) => return Err(error.into()),
                Ok(Ok(message)) => batch.extend(self.accept(&message)),
            }
        }
        // …then take what is already there, without waiting.
        while batch.len() < max {
            match tokio::time::timeout(Duration::ZERO, consumer.recv()).await {
                Err(_elapsed) => break,
                Ok(Ok(message)) => batch.extend(self.accept(&message)),
                Ok(Err(error)) => {
                    tracing::warn!(error = %error, "Kafka receive failed; returning the partial batch");
                    break;
                }
            }
        }
        Ok(batch)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(group = %self.group_id))]
    async fn commit(&mut self) -> Result<(), FeedError> {
        if self.seen.is_empty() {
            return Ok(());
        }
        let offsets = self.assigned_offsets(|span| span.last + 1)?;
        if offsets.count() > 0 {
            let consumer = Arc::clone(&self.consumer);
            tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync)).await??;
        }
        self.seen.clear();
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(group = %self.group_id))]
    async fn rollback(&mut self) -> Result<(), FeedError> {
        if self.seen.is_empty() {
            return Ok(());
        }
        let offsets = self.assigned_offsets(|span| span.first)?;
        if offsets.count() > 0 {
            let consumer = Arc::clone(&self.consumer);
            let result = tokio::task::spawn_blocking(move || consumer.seek_partitions(offsets, SEEK_TIMEOUT))
                .await??;
            for element in result.elements() {
                element.error()?;
            }
        }
        self.seen.clear();
        Ok(())
    }
}

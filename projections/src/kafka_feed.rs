//! [`KafkaFeed`]: the Kafka consumer-group [`EventFeed`] used in production.
//!
//! Offsets are committed manually and synchronously by
//! [`EventFeed::commit`], after the projector transactions (ARCHITECTURE
//! decided 5). Messages are keyed by aggregate id, so per-aggregate order is
//! per-partition order. A message whose value is not an envelope is logged
//! with its topic, partition and offset and skipped (its offset is still
//! committed, so it is not retried forever).
//!
//! **Stall watchdog.** A consumer group can stand still although its topics
//! hold unread messages: after a broker restart librdkafka may wait for its
//! next metadata refresh, and tansu's group coordinator can complete a
//! generation with an empty assignment or keep a departed leader (found by
//! `scripts/chaos`; docs/performance.md, "Fault tests"). While the feed has
//! received nothing for [`KafkaFeedConfig::stall_timeout`], it compares the
//! group's committed offsets with the partitions' high watermarks; a
//! partition that lags and whose committed offset has not moved since the
//! previous check means nobody consumes it, and the feed replaces its
//! consumer (a new member on a new connection). Repeated replacements
//! without progress back off (doubling, at most 16 × the timeout). (Only
//! the relay's idempotent, non-transactional producer writes these topics,
//! so a caught-up partition's committed offset equals its high watermark;
//! transaction markers would break that.) The watchdog alone, with
//! librdkafka's default settings, also cures the stall of the broker-restart
//! test.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use domain::envelope::Envelope;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
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
/// member announces when it joins (librdkafka's default is 300 s).
pub const DEFAULT_MAX_POLL_INTERVAL_MS: u32 = 45_000;

/// `topic.metadata.refresh.interval.ms`: 10 s instead of librdkafka's
/// 300 s, so a subscription that matched no partition (a broker answering
/// metadata while it starts) is corrected within seconds. Together with
/// [`RECONNECT_BACKOFF_MAX_MS`] it cures the stall after a member died and
/// the broker restarted (`projections/tests/pipeline/broker_restart.rs`:
/// with either one at librdkafka's default the group received nothing for
/// more than 45 s; with both, it resumed after ~15 s).
pub const METADATA_REFRESH_INTERVAL_MS: u32 = 10_000;

/// `reconnect.backoff.max.ms`: 1 s instead of librdkafka's 10 s, so a
/// restarted broker is reconnected to within about a second.
pub const RECONNECT_BACKOFF_MAX_MS: u32 = 1_000;

/// [`KafkaFeedConfig::stall_timeout`] default: 10 s.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Timeout of a rollback seek.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// Timeout of each broker request of a stall check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// How long the feed may receive nothing before it checks whether its
    /// group is stuck (module docs); `None` turns the watchdog off.
    /// Default [`DEFAULT_STALL_TIMEOUT`].
    pub stall_timeout: Option<Duration>,
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
            stall_timeout: Some(DEFAULT_STALL_TIMEOUT),
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
            .set("max.poll.interval.ms", DEFAULT_MAX_POLL_INTERVAL_MS.to_string())
            .set("topic.metadata.refresh.interval.ms", METADATA_REFRESH_INTERVAL_MS.to_string())
            .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS.to_string());
        for (key, value) in &self.extra {
            config.set(key, value);
        }
        config
    }

    /// Whether partitions without a committed offset start at their
    /// beginning (`auto.offset.reset` earliest, the default here).
    fn starts_at_beginning(&self) -> bool {
        let reset = self
            .extra
            .iter()
            .rev()
            .find(|(key, _)| key == "auto.offset.reset")
            .map_or("earliest", |(_, value)| value.as_str());
        matches!(reset, "earliest" | "smallest" | "beginning")
    }

    /// A consumer subscribed to the topics.
    fn subscribe(&self) -> Result<StreamConsumer, FeedError> {
        let consumer: StreamConsumer = self.client_config().create()?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(consumer)
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
    config: KafkaFeedConfig,
    group_id: String,
    seen: HashMap<(String, i32), Span>,
    watchdog: Watchdog,
}

/// State of the stall watchdog (module docs).
#[derive(Debug)]
struct Watchdog {
    /// When a message last arrived (or the consumer was created).
    last_message: Instant,
    /// When the group's progress was last checked.
    last_check: Instant,
    /// Lagging partitions at the last check, with their committed offset.
    lagging: HashMap<(String, i32), i64>,
    /// Replacements since the last message (backs the checks off).
    replacements: u32,
    /// Replacements in all.
    total_replacements: u64,
    /// When a passing consumer error was last logged (at most one per 5 s).
    last_error_log: Option<Instant>,
}

impl Watchdog {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            last_message: now,
            last_check: now,
            lagging: HashMap::new(),
            replacements: 0,
            total_replacements: 0,
            last_error_log: None,
        }
    }

    /// The wait before the next check: the timeout, doubled per replacement
    /// without progress, at most 16 ×.
    fn interval(&self, timeout: Duration) -> Duration {
        timeout * 2u32.pow(self.replacements.min(4))
    }
}

/// A partition: `(topic, partition)`.
pub type PartitionKey = (String, i32);

/// A partition's consumption state at a stall check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionProgress {
    /// The group's committed offset, `None` when it has none.
    pub committed: Option<i64>,
    /// The first offset still on the broker.
    pub low: i64,
    /// The offset the next message will get.
    pub high: i64,
}

/// The partitions that lag and whose committed offset has not moved since
/// `previous` (the lagging partitions of the last check with their committed
/// offset), and the lagging partitions now. Without a committed offset a
/// partition starts at `low` when `from_beginning`, else it is not judged.
pub fn stalled_partitions(
    now: &HashMap<PartitionKey, PartitionProgress>,
    previous: &HashMap<PartitionKey, i64>,
    from_beginning: bool,
) -> (Vec<PartitionKey>, HashMap<PartitionKey, i64>) {
    let mut lagging = HashMap::new();
    let mut stalled = Vec::new();
    for (key, progress) in now {
        let position = match progress.committed {
            Some(offset) => offset.max(progress.low),
            None if from_beginning => progress.low,
            None => continue,
        };
        if position >= progress.high {
            continue;
        }
        lagging.insert(key.clone(), position);
        if previous.get(key) == Some(&position) {
            stalled.push(key.clone());
        }
    }
    stalled.sort();
    (stalled, lagging)
}

/// Reads the group's committed offsets and the watermarks of every
/// partition of `topics` (blocking).
fn group_progress(
    consumer: &StreamConsumer,
    topics: &[String],
) -> Result<HashMap<(String, i32), PartitionProgress>, FeedError> {
    let mut list = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), CHECK_TIMEOUT)?;
        for t in metadata.topics() {
            for p in t.partitions() {
                list.add_partition(t.name(), p.id());
            }
        }
    }
    let committed = consumer.committed_offsets(list, CHECK_TIMEOUT)?;
    let mut progress = HashMap::new();
    for element in committed.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let (low, high) = consumer.fetch_watermarks(topic, partition, CHECK_TIMEOUT)?;
        let committed = match element.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        };
        progress.insert((topic.to_owned(), partition), PartitionProgress { committed, low, high });
    }
    Ok(progress)
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
        let consumer = config.subscribe()?;
        Ok(Self {
            consumer: Arc::new(consumer),
            config: config.clone(),
            group_id: config.group_id.clone(),
            seen: HashMap::new(),
            watchdog: Watchdog::new(),
        })
    }

    /// How many times the stall watchdog replaced the consumer.
    pub fn replacements(&self) -> u64 {
        self.watchdog.total_replacements
    }

    /// The stall watchdog (module docs): when nothing arrived for the stall
    /// timeout, checks the group's progress, and replaces the consumer when
    /// a lagging partition's committed offset has not moved since the last
    /// check. A failed check is logged and tried again later.
    async fn watch_for_stall(&mut self) {
        let Some(timeout) = self.config.stall_timeout else { return };
        let interval = self.watchdog.interval(timeout);
        if self.watchdog.last_message.elapsed() < timeout || self.watchdog.last_check.elapsed() < interval {
            return;
        }
        self.watchdog.last_check = Instant::now();
        let consumer = Arc::clone(&self.consumer);
        let topics = self.config.topics.clone();
        let progress = match tokio::task::spawn_blocking(move || group_progress(&consumer, &topics)).await {
            Ok(Ok(progress)) => progress,
            Ok(Err(error)) => {
                tracing::warn!(group = %self.group_id, error = %crate::runtime::ErrorChain(&error), "stall check failed; trying again later");
                return;
            }
            Err(error) => {
                tracing::warn!(group = %self.group_id, error = %error, "stall check task failed");
                return;
            }
        };
        let (stalled, lagging) =
            stalled_partitions(&progress, &self.watchdog.lagging, self.config.starts_at_beginning());
        self.watchdog.lagging = lagging;
        if stalled.is_empty() {
            return;
        }
        tracing::warn!(
            group = %self.group_id,
            partitions = ?stalled,
            idle_secs = self.watchdog.last_message.elapsed().as_secs(),
            "consumer group stands still on lagging partitions; replacing the consumer"
        );
        match self.config.subscribe() {
            Ok(fresh) => {
                let old = std::mem::replace(&mut self.consumer, Arc::new(fresh));
                // Closing leaves the group; it may block while the broker is slow.
                tokio::task::spawn_blocking(move || drop(old));
                // Offsets taken from the old consumer are redelivered by the new one.
                self.seen.clear();
                self.watchdog.lagging.clear();
                self.watchdog.replacements += 1;
                self.watchdog.total_replacements += 1;
            }
            Err(error) => {
                tracing::warn!(group = %self.group_id, error = %error, "could not replace the consumer")
            }
        }
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
            // Topics carry the stored version; readers see the current one.
            Ok(envelope) => Some(domain::upcast::upcast_envelope(envelope)),
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

/// A consumer outside any consumer group's coordination: every partition
/// of `topics` is assigned to it explicitly, starting at `start` (e.g.
/// [`Offset::Beginning`] or [`Offset::End`]), read with `fetch.wait.max.ms`
/// = `fetch_wait_max_ms`; nothing is committed. For checks and probes that
/// must not depend on the group coordinator (`streamforge chaos verify`).
///
/// # Errors
/// [`FeedError::Kafka`] when the consumer cannot be created or the topics'
/// metadata cannot be read within 30 s; [`FeedError::Config`] when the
/// topics have no partitions.
pub fn assigned_reader(
    brokers: &str,
    topics: &[String],
    start: Offset,
    fetch_wait_max_ms: u32,
) -> Result<StreamConsumer, FeedError> {
    let consumer = unjoined_consumer(brokers, fetch_wait_max_ms)?;
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
        for t in metadata.topics() {
            for p in t.partitions() {
                assignment.add_partition_offset(t.name(), p.id(), start)?;
            }
        }
    }
    if assignment.count() == 0 {
        return Err(FeedError::Config(format!("topics {topics:?} have no partitions")));
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// Like [`assigned_reader`], for one partition only (the freshness bench's
/// probe: on tansu's memory engine each partition in a fetch is work for
/// the broker it measures).
///
/// # Errors
/// [`FeedError::Kafka`] when the consumer cannot be created or assigned.
pub fn partition_reader(
    brokers: &str,
    topic: &str,
    partition: i32,
    start: Offset,
    fetch_wait_max_ms: u32,
) -> Result<StreamConsumer, FeedError> {
    let consumer = unjoined_consumer(brokers, fetch_wait_max_ms)?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, start)?;
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// The consumer of [`assigned_reader`] and [`partition_reader`], before
/// its assignment.
fn unjoined_consumer(brokers: &str, fetch_wait_max_ms: u32) -> Result<StreamConsumer, FeedError> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // librdkafka wants a group id for offset handling; none is joined.
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", fetch_wait_max_ms.to_string())
        .create()?)
}

/// Errors after which the consumer cannot go on (librdkafka's fatal errors,
/// a consumer that was closed); the others are passing states it recovers from.
fn is_fatal(error: &KafkaError) -> bool {
    match error {
        KafkaError::MessageConsumptionFatal(_) => true,
        KafkaError::MessageConsumption(code) => matches!(code, RDKafkaErrorCode::Fatal),
        _ => false,
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
        self.watch_for_stall().await;
        let consumer = Arc::clone(&self.consumer);
        let deadline = Instant::now() + max_wait;
        // Wait (until the deadline) for a first envelope…
        while batch.is_empty() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, consumer.recv()).await {
                Err(_elapsed) => return Ok(batch),
                Ok(Err(error)) if is_fatal(&error) => return Err(error.into()),
                Ok(Err(error)) => {
                    // librdkafka recovers from these itself (broker down,
                    // coordinator moving); failing the step would only add
                    // a rollback and a back-off.
                    if self.watchdog.last_error_log.is_none_or(|at| at.elapsed() > Duration::from_secs(5)) {
                        self.watchdog.last_error_log = Some(Instant::now());
                        tracing::warn!(group = %self.group_id, error = %error, "Kafka consumer error; still waiting");
                    }
                    if remaining.is_zero() {
                        return Ok(batch);
                    }
                    tokio::time::sleep(remaining.min(Duration::from_millis(100))).await;
                }
                Ok(Ok(message)) => {
                    self.watchdog.last_message = Instant::now();
                    self.watchdog.replacements = 0;
                    batch.extend(self.accept(&message));
                }
            }
        }
        // …then take what is already there, without waiting.
        while batch.len() < max {
            match tokio::time::timeout(Duration::ZERO, consumer.recv()).await {
                Err(_elapsed) => break,
                Ok(Ok(message)) => {
                    self.watchdog.last_message = Instant::now();
                    batch.extend(self.accept(&message));
                }
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

//! Kafka plumbing shared by the workers: topic creation and the producer
//! configuration (idempotent, `acks=all`).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

/// `linger.ms` default: how long the producer waits to fill a batch. 1 ms:
/// under load the relay enqueues whole batches, which fill the producer's
/// batches without waiting; at light load it adds directly to freshness.
pub const DEFAULT_LINGER_MS: u32 = 1;

/// `message.timeout.ms` default: how long a message may take to be delivered
/// (retries included) before its delivery fails.
pub const DEFAULT_MESSAGE_TIMEOUT_MS: u32 = 30_000;

/// `max.in.flight.requests.per.connection`: the most an idempotent producer
/// allows (order is kept across retries up to this many requests).
pub const MAX_IN_FLIGHT_REQUESTS: u32 = 5;

/// Timeout of the topic-creation request.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A failure of [`ensure_topics`].
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// The admin client could not be created or the request failed.
    #[error("Kafka admin request failed")]
    Client(#[from] KafkaError),
    /// The broker refused to create a topic.
    #[error("cannot create topic `{topic}`: {code}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
}

/// The topics `<prefix><aggregate_type>` of `aggregate_types`.
pub fn topic_names<S: AsRef<str>>(prefix: &str, aggregate_types: &[S]) -> Vec<String> {
    aggregate_types.iter().map(|t| format!("{prefix}{}", t.as_ref())).collect()
}

/// Creates the topics `<prefix><aggregate_type>` with `partitions`
/// partitions and replication factor `replication`; topics that already
/// exist are fine (their settings are left alone).
///
/// # Errors
/// [`KafkaSetupError`] when the broker is unreachable within 30 s or
/// refuses a topic for another reason than its existence.
#[tracing::instrument(skip_all, fields(brokers, prefix, partitions, replication))]
pub async fn ensure_topics<S: AsRef<str>>(
    brokers: &str,
    prefix: &str,
    aggregate_types: &[S],
    partitions: i32,
    replication: i32,
) -> Result<(), KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let names = topic_names(prefix, aggregate_types);
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(replication)))
        .collect();
    let options =
        AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT)).request_timeout(Some(ADMIN_TIMEOUT));
    for result in admin.create_topics(&topics, &options).await? {
        match result {
            Ok(topic) => tracing::info!(topic, "created Kafka topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaSetupError::CreateTopic { topic, code }),
        }
    }
    Ok(())
}

/// Deletes every topic of the broker whose name contains `marker` (e.g.
/// the unique topic prefix of a benchmark run) and returns how many it
/// asked to delete. Topics the broker cannot delete are logged and left.
/// Apache Kafka deletes asynchronously; tansu at once.
///
/// # Errors
/// [`KafkaSetupError::Client`] when the broker's metadata cannot be read or
/// the request fails (within 30 s).
#[tracing::instrument(skip_all, fields(brokers, marker))]
pub async fn delete_topics_containing(brokers: &str, marker: &str) -> Result<usize, KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let names: Vec<String> = {
        let metadata = admin.inner().fetch_metadata(None, ADMIN_TIMEOUT)?;
        metadata.topics().iter().map(|t| t.name().to_owned()).filter(|t| t.contains(marker)).collect()
    };
    if names.is_empty() {
        return Ok(0);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let options =
        AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT)).request_timeout(Some(ADMIN_TIMEOUT));
    for result in admin.delete_topics(&refs, &options).await? {
        if let Err((topic, code)) = result {
            tracing::warn!(topic, %code, "cannot delete Kafka topic");
        }
    }
    Ok(names.len())
}

/// Settings of the relay's producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerConfig {
    /// `bootstrap.servers`, e.g. `127.0.0.1:9092`.
    pub brokers: String,
    /// `linger.ms`, milliseconds (default [`DEFAULT_LINGER_MS`]).
    pub linger_ms: u32,
    /// `message.timeout.ms`, milliseconds (default [`DEFAULT_MESSAGE_TIMEOUT_MS`]).
    pub message_timeout_ms: u32,
    /// Further librdkafka properties, applied last.
    pub extra: Vec<(String, String)>,
}

impl ProducerConfig {
    /// Defaults for `brokers`.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            linger_ms: DEFAULT_LINGER_MS,
            message_timeout_ms: DEFAULT_MESSAGE_TIMEOUT_MS,
            extra: Vec::new(),
        }
    }
}

/// An idempotent producer (`enable.idempotence=true`, `acks=all`,
/// `max.in.flight.requests.per.connection=5`) with the default
/// [`ProducerConfig`]. Idempotence keeps per-partition order across retries,
/// hence per-aggregate order, with up to 5 produce requests in flight per
/// broker connection (librdkafka refuses more with idempotence). The relay
/// pipelines many batches through these requests.
///
/// # Errors
/// [`KafkaError`] when librdkafka rejects the configuration (the brokers
/// are contacted lazily).
pub fn producer(brokers: &str) -> Result<FutureProducer, KafkaError> {
    producer_with(&ProducerConfig::new(brokers))
}

/// Like [`producer`] with explicit settings.
///
/// # Errors
/// As [`producer`].
pub fn producer_with(config: &ProducerConfig) -> Result<FutureProducer, KafkaError> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", MAX_IN_FLIGHT_REQUESTS.to_string())
        .set("socket.nagle.disable", "true")
        .set("linger.ms", config.linger_ms.to_string())
        .set("message.timeout.ms", config.message_timeout_ms.to_string());
    for (key, value) in &config.extra {
        client.set(key, value);
    }
    client.create()
}

/// One topic as `streamforge topics` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: usize,
    /// Messages held (sum of high − low watermarks).
    pub messages: i64,
    /// `retention.ms` as the broker reports it (`None`: not reported).
    pub retention_ms: Option<String>,
}

/// One consumer group's lag on the topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLag {
    pub group: String,
    /// Messages behind (high watermark − committed offset), over the
    /// partitions it has committed on.
    pub lag: i64,
    /// Partitions it has committed offsets on.
    pub partitions: usize,
}

/// The topics whose name starts with `prefix`, and the lag of every
/// consumer group the broker lists (`ListGroups`, `OffsetFetch`) on them.
/// Retention comes from `DescribeConfigs` where the broker answers it.
///
/// # Errors
/// [`KafkaSetupError::Client`] when the broker cannot be reached (30 s).
pub async fn describe(
    brokers: &str,
    prefix: &str,
) -> Result<(Vec<TopicInfo>, Vec<GroupLag>), KafkaSetupError> {
    use rdkafka::admin::{ConfigResourceResult, ResourceSpecifier};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "streamforge-topics-inspector")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(None, ADMIN_TIMEOUT)?;
    let mut topics = Vec::new();
    let mut partitions: Vec<(String, i32, i64)> = Vec::new();
    for t in metadata.topics().iter().filter(|t| t.name().starts_with(prefix)) {
        let mut messages = 0;
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(t.name(), p.id(), ADMIN_TIMEOUT).unwrap_or((0, 0));
            messages += (high - low).max(0);
            partitions.push((t.name().to_owned(), p.id(), high));
        }
        topics.push(TopicInfo {
            name: t.name().to_owned(),
            partitions: t.partitions().len(),
            messages,
            retention_ms: None,
        });
    }
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    // Retention, where the broker answers DescribeConfigs.
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let resources: Vec<ResourceSpecifier<'_>> =
        topics.iter().map(|t| ResourceSpecifier::Topic(&t.name)).collect();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    if let Ok(results) = admin.describe_configs(resources.iter(), &options).await {
        for (topic, result) in topics.iter_mut().zip(results) {
            let result: ConfigResourceResult = result;
            if let Ok(resource) = result {
                topic.retention_ms = resource.get("retention.ms").and_then(|e| e.value.clone());
            }
        }
    }
    // Every group's committed offsets on those partitions.
    let mut groups = Vec::new();
    let list = consumer.fetch_group_list(None, ADMIN_TIMEOUT)?;
    for g in list.groups() {
        let member: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", g.name())
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, _) in &partitions {
            tpl.add_partition(topic, *partition);
        }
        let Ok(committed) = member.committed_offsets(tpl, ADMIN_TIMEOUT) else { continue };
        let (mut lag, mut n) = (0, 0);
        for e in committed.elements() {
            if let Offset::Offset(at) = e.offset() {
                let high = partitions
                    .iter()
                    .find(|(t, p, _)| t == e.topic() && *p == e.partition())
                    .map_or(at, |(_, _, h)| *h);
                lag += (high - at).max(0);
                n += 1;
            }
        }
        if n > 0 {
            groups.push(GroupLag { group: g.name().to_owned(), lag, partitions: n });
        }
    }
    groups.sort_by(|a, b| a.group.cmp(&b.group));
    Ok((topics, groups))
}

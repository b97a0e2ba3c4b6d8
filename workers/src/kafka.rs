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

//! The relay: publishes every stored event, in commit-safe order, to Kafka
//! as an envelope (ARCHITECTURE decided 2 and 3).
//!
//! Delivery is at least once: a batch's checkpoint (`tail_checkpoints`,
//! name `relay` by default) is stored only after Kafka acknowledged every
//! message of the batch, so a crash republishes at most one batch. Run one
//! relay per checkpoint name; two would publish everything twice.

use std::time::Duration;

use domain::envelope::{Envelope, ENVELOPE_SCHEMA_VERSION};
use projections::runtime::ErrorChain;
use projections::tail::{self, Cursor, EventsListener};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use sqlx::PgPool;
use tokio::sync::watch;

/// Default checkpoint name in `tail_checkpoints`.
pub const DEFAULT_CHECKPOINT: &str = "relay";

/// Kafka header carrying `Envelope::event_type`.
pub const HEADER_EVENT_TYPE: &str = "event-type";
/// Kafka header carrying `Envelope::event_version`.
pub const HEADER_EVENT_VERSION: &str = "event-version";
/// Kafka header carrying [`ENVELOPE_SCHEMA_VERSION`].
pub const HEADER_ENVELOPE_VERSION: &str = "envelope-version";

/// Pause before retrying to enqueue when the producer queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);

/// A failure of [`Relay::run_once`]; nothing of the batch is checkpointed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading events or storing the checkpoint failed.
    #[error("relay database error")]
    Database(#[from] sqlx::Error),
    /// An envelope could not be serialised.
    #[error("cannot serialise the envelope")]
    Serialize(#[from] serde_json::Error),
    /// A message could not be enqueued.
    #[error("cannot enqueue the message")]
    Enqueue(#[source] KafkaError),
    /// Kafka did not acknowledge a message.
    #[error("delivery to `{topic}` failed for {aggregate_type}/{aggregate_id} sequence {sequence}")]
    Delivery {
        /// Destination topic.
        topic: String,
        /// Envelope's aggregate type.
        aggregate_type: String,
        /// Envelope's aggregate id.
        aggregate_id: String,
        /// Envelope's sequence.
        sequence: i64,
        /// The producer's error.
        #[source]
        source: KafkaError,
    },
    /// The producer was dropped before reporting a delivery.
    #[error("producer dropped before the delivery report")]
    Canceled,
}

/// Pacing of [`Relay::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayOptions {
    /// Events per batch (default 500).
    pub batch_size: usize,
    /// Slow-poll interval when no notification arrives (default 1 s).
    pub poll_interval: Duration,
    /// Re-read interval while committed events wait behind an older open
    /// transaction (default 10 ms).
    pub unsettled_retry: Duration,
    /// First back-off after a failed batch (default 100 ms), doubled per
    /// consecutive failure up to `max_backoff` (default 30 s).
    pub min_backoff: Duration,
    /// Longest back-off.
    pub max_backoff: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            unsettled_retry: Duration::from_millis(10),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Publishes the event store to `<topic_prefix><aggregate_type>` topics,
/// keyed by aggregate id.
pub struct Relay {
    pool: PgPool,
    producer: FutureProducer,
    topic_prefix: String,
    checkpoint: String,
    options: RelayOptions,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("topic_prefix", &self.topic_prefix)
            .field("checkpoint", &self.checkpoint)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What one batch did.
struct BatchOutcome {
    published: usize,
    cursor: Cursor,
}

impl Relay {
    /// A relay with checkpoint [`DEFAULT_CHECKPOINT`] and default
    /// [`RelayOptions`]; `topic_prefix` is usually
    /// `domain::envelope::DEFAULT_TOPIC_PREFIX`.
    pub fn new(pool: PgPool, producer: FutureProducer, topic_prefix: impl Into<String>) -> Self {
        Self {
            pool,
            producer,
            topic_prefix: topic_prefix.into(),
            checkpoint: DEFAULT_CHECKPOINT.to_owned(),
            options: RelayOptions::default(),
        }
    }

    /// Uses checkpoint `name` in `tail_checkpoints` instead of `relay`.
    pub fn with_checkpoint(mut self, name: impl Into<String>) -> Self {
        self.checkpoint = name.into();
        self
    }

    /// Replaces the [`RelayOptions`] used by [`Relay::run`].
    pub fn with_options(mut self, options: RelayOptions) -> Self {
        self.options = options;
        self
    }

    /// The checkpoint name.
    pub fn checkpoint(&self) -> &str {
        &self.checkpoint
    }

    /// One step: publishes up to `batch` events after the stored
    /// checkpoint, waits until Kafka acknowledged all of them, then stores
    /// the checkpoint. Returns how many were published (0: nothing new).
    ///
    /// # Errors
    /// [`RelayError`]; the checkpoint then stays where it was, so the batch
    /// is published again (possibly in part twice) by the next step.
    pub async fn run_once(&self, batch: usize) -> Result<usize, RelayError> {
        Ok(self.step(batch).await?.published)
    }

    #[tracing::instrument(skip_all, fields(checkpoint = %self.checkpoint, published))]
    async fn step(&self, batch: usize) -> Result<BatchOutcome, RelayError> {
        let mut cursor = tail::load_checkpoint(&self.pool, &self.checkpoint).await?;
        let rows = tail::read_after(&self.pool, cursor, batch, None).await?;
        if rows.is_empty() {
            return Ok(BatchOutcome { published: 0, cursor });
        }
        let encoded = rows
            .iter()
            .map(|(_, envelope)| Ok((envelope.topic(&self.topic_prefix), serde_json::to_vec(envelope)?)))
            .collect::<Result<Vec<_>, serde_json::Error>>()?;

        let mut deliveries = Vec::with_capacity(rows.len());
        for ((_, envelope), (topic, value)) in rows.iter().zip(&encoded) {
            let record = FutureRecord::to(topic)
                .key(envelope.aggregate_id.as_str())
                .payload(value.as_slice())
                .headers(headers(envelope));
            deliveries.push(self.enqueue(record).await?);
        }
        for (delivery, ((_, envelope), (topic, _))) in deliveries.into_iter().zip(rows.iter().zip(&encoded)) {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((source, _message))) => {
                    return Err(RelayError::Delivery {
                        topic: topic.clone(),
                        aggregate_type: envelope.aggregate_type.clone(),
                        aggregate_id: envelope.aggregate_id.clone(),
                        sequence: envelope.sequence,
                        source,
                    })
                }
                Err(_canceled) => return Err(RelayError::Canceled),
            }
        }
        if let Some((last, _)) = rows.last() {
            cursor = *last;
        }
        tail::store_checkpoint(&self.pool, &self.checkpoint, cursor).await?;
        tracing::Span::current().record("published", rows.len());
        Ok(BatchOutcome { published: rows.len(), cursor })
    }

    /// Enqueues `record`, waiting while the producer queue is full.
    async fn enqueue(&self, record: FutureRecord<'_, str, [u8]>) -> Result<DeliveryFuture, RelayError> {
        let mut record = record;
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                }
                Err((error, _)) => return Err(RelayError::Enqueue(error)),
            }
        }
    }

    /// Runs [`Relay::run_once`] until `shutdown` becomes `true` (or its
    /// sender is dropped): drains while batches are full, then waits for a
    /// `NOTIFY` with a slow-poll fallback. A failed step is logged with its
    /// cause chain and retried after an exponential back-off.
    #[tracing::instrument(skip_all, fields(checkpoint = %self.checkpoint))]
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let options = self.options;
        let batch = options.batch_size.max(1);
        let mut listener = EventsListener::new(self.pool.clone());
        let mut backoff = options.min_backoff;
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            // Listen before reading, so a commit right after the read wakes us.
            listener.connect().await;
            let pause = match self.step(batch).await {
                Ok(outcome) => {
                    backoff = options.min_backoff;
                    if outcome.published == batch {
                        continue;
                    }
                    match tail::has_unsettled_after(&self.pool, outcome.cursor, None).await {
                        Ok(true) => options.unsettled_retry,
                        Ok(false) => options.poll_interval,
                        Err(error) => {
                            tracing::warn!(error = %ErrorChain(&error), "cannot check for unsettled events");
                            options.poll_interval
                        }
                    }
                }
                Err(error) => {
                    tracing::error!(
                        error = %ErrorChain(&error),
                        backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                        "relay step failed; retrying"
                    );
                    let pause = backoff;
                    backoff = (backoff * 2).min(options.max_backoff);
                    tokio::select! {
                        changed = shutdown.changed() => if changed.is_err() { break },
                        () = tokio::time::sleep(pause) => {}
                    }
                    continue;
                }
            };
            tokio::select! {
                changed = shutdown.changed() => if changed.is_err() { break },
                _ = listener.wait(pause) => {}
            }
        }
        tracing::info!("relay stopped");
    }
}

/// The headers of an envelope's message.
fn headers(envelope: &Envelope) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(3)
        .insert(Header { key: HEADER_EVENT_TYPE, value: Some(envelope.event_type.as_str()) })
        .insert(Header { key: HEADER_EVENT_VERSION, value: Some(envelope.event_version.as_str()) })
        .insert(Header { key: HEADER_ENVELOPE_VERSION, value: Some(ENVELOPE_SCHEMA_VERSION) })
}

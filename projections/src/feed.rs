//! The event feed projectors and the notifier read (ARCHITECTURE decided 4):
//! the same envelopes whether they come from Kafka or from the Postgres tail.

use std::time::Duration;

use async_trait::async_trait;
use domain::envelope::Envelope;

/// A failure of an [`EventFeed`]. Feeds log and skip undecodable messages
/// themselves; what reaches the caller is infrastructure trouble, worth a
/// retry after a back-off.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The Postgres tail or its checkpoint failed.
    #[error("Postgres feed database error")]
    Database(#[from] sqlx::Error),
    /// The Kafka client failed (receive, commit, seek).
    #[error("Kafka feed error")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The feed was configured wrongly (e.g. no topics); not retryable.
    #[error("invalid feed configuration: {0}")]
    Config(String),
    /// A blocking Kafka call could not be run (runtime shutting down).
    #[error("feed background task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// A source of envelopes with at-least-once delivery.
///
/// Guarantees of every implementation:
/// - envelopes of one aggregate come in `sequence` order;
/// - after [`EventFeed::commit`], a new feed of the same consumer (group)
///   resumes after everything returned so far;
/// - after [`EventFeed::rollback`] (or without a commit, after a restart),
///   the uncommitted envelopes are delivered again — consumers must be
///   idempotent (projections are: decided 5).
#[async_trait]
pub trait EventFeed: Send {
    /// Returns up to `max` envelopes, waiting at most `max_wait` for the
    /// first one; an empty vector means the wait ran out.
    ///
    /// # Errors
    /// [`FeedError`] when the underlying store or broker fails; envelopes
    /// received before the failure in the same call are not lost — they
    /// are returned by the next call or redelivered after a rollback.
    async fn next_batch(&mut self, max: usize, max_wait: Duration) -> Result<Vec<Envelope>, FeedError>;

    /// Acknowledges every envelope returned so far (durably: Kafka offsets
    /// committed synchronously, or the Postgres checkpoint stored).
    ///
    /// # Errors
    /// [`FeedError`] when the acknowledgement could not be stored; the
    /// envelopes will then be delivered again later.
    async fn commit(&mut self) -> Result<(), FeedError>;

    /// Forgets every envelope returned since the last commit: the next
    /// [`EventFeed::next_batch`] starts again right after the last commit.
    /// Used after a failed batch so that nothing is skipped.
    ///
    /// # Errors
    /// [`FeedError`] when repositioning fails.
    async fn rollback(&mut self) -> Result<(), FeedError>;
}

/// Acknowledges a feed at most every `interval` instead of per batch (the
/// commit's round trip — a synchronous Kafka offset commit, or the
/// Postgres feed's checkpoint — kept off the latency path): a consumer
/// calls [`PacedAcks::after_batch`] after handling each batch. After a
/// crash at most `interval` of batches is delivered again, so only for
/// consumers whose handling is idempotent (the projection runner's
/// checkpoints, the notifier's delivery records).
#[derive(Debug, Clone, Copy)]
pub struct PacedAcks {
    interval: Duration,
    oldest_unacked: Option<tokio::time::Instant>,
}

impl PacedAcks {
    /// Acknowledgements at most every `interval` (zero: every batch).
    pub fn new(interval: Duration) -> Self {
        Self { interval, oldest_unacked: None }
    }

    /// After a batch of `handled` envelopes: commits `feed` once the
    /// oldest unacknowledged batch is `interval` old, or when the feed had
    /// nothing new (an idle feed is never left unacknowledged).
    ///
    /// Answers whether it committed the feed now.
    ///
    /// # Errors
    /// The feed's commit failed; the batches stay unacknowledged.
    pub async fn after_batch(&mut self, feed: &mut dyn EventFeed, handled: usize) -> Result<bool, FeedError> {
        if handled > 0 {
            self.oldest_unacked.get_or_insert_with(tokio::time::Instant::now);
        }
        if let Some(since) = self.oldest_unacked {
            if handled == 0 || since.elapsed() >= self.interval {
                feed.commit().await?;
                self.oldest_unacked = None;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Forgets the unacknowledged batches (the feed was rolled back).
    pub fn forget(&mut self) {
        self.oldest_unacked = None;
    }
}

//! [`PgFeed`]: the Postgres-tail [`EventFeed`], the embedded default that
//! needs no Kafka. It reads the `events` table through the commit-safe
//! cursor ([`crate::tail`]), wakes on `LISTEN streamforge_events` and falls
//! back to a slow poll (ARCHITECTURE decided 12).

use std::time::Duration;

use async_trait::async_trait;
use domain::envelope::Envelope;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::feed::{EventFeed, FeedError};
use crate::tail::{self, Cursor, EventsListener, SharedListener};

/// Events a typed feed walks per read at least (see `tail::read_scanning`).
const SCAN_LIMIT: usize = 1_000;

/// Shortest time between two reads of one feed (default of
/// [`PgFeedConfig::min_read_interval`]).
pub const DEFAULT_MIN_READ_INTERVAL: Duration = Duration::from_millis(25);

/// Poll interval used while no notification arrives.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Re-read interval while committed events wait behind an older open
/// transaction (whose end is not necessarily notified).
pub const DEFAULT_UNSETTLED_RETRY: Duration = Duration::from_millis(10);

/// Settings of a [`PgFeed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgFeedConfig {
    /// Consumer name; the cursor is stored as `feed:<consumer>` in
    /// `tail_checkpoints`. Feeds sharing a name share (and race on) a cursor.
    pub consumer: String,
    /// Only these aggregate types (`None`: all).
    pub aggregate_types: Option<Vec<String>>,
    /// Fallback poll interval when no notification arrives
    /// (default [`DEFAULT_POLL_INTERVAL`]).
    pub poll_interval: Duration,
    /// Re-read interval while newer events wait behind an open transaction
    /// (default [`DEFAULT_UNSETTLED_RETRY`]).
    pub unsettled_retry: Duration,
    /// Shortest time between a read that found new events (of the feed's
    /// types) and the next read (default [`DEFAULT_MIN_READ_INTERVAL`]):
    /// a read sooner after
    /// such a read first waits for the rest, so that under load one read
    /// takes the commits of many transactions (every append notifies)
    /// instead of one read — and one projector transaction, one notifier
    /// claim — per commit. A read that found nothing new does not pace the
    /// next: the first commit after a quiet spell is read as soon as it is
    /// notified. Adds at most this much latency, and only while events
    /// keep coming; zero turns it off.
    pub min_read_interval: Duration,
    /// Where an ephemeral feed starts ([`PgFeedConfig::ephemeral_from`]):
    /// `None` (the default) loads and stores the consumer's cursor in
    /// `tail_checkpoints`.
    pub ephemeral_start: Option<Cursor>,
    /// The process's shared listening connection to wake on, instead of a
    /// connection of the feed's own (see [`SharedListener`]).
    pub shared_listener: Option<SharedListener>,
}

impl PgFeedConfig {
    /// Defaults for consumer `consumer`: all aggregate types, 1 s poll.
    pub fn new(consumer: impl Into<String>) -> Self {
        Self {
            consumer: consumer.into(),
            aggregate_types: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            unsettled_retry: DEFAULT_UNSETTLED_RETRY,
            min_read_interval: DEFAULT_MIN_READ_INTERVAL,
            ephemeral_start: None,
            shared_listener: None,
        }
    }

    /// Wakes on `listener`, the process's one `LISTEN` connection, instead
    /// of listening on a connection of its own: a commit then wakes one
    /// backend for all the feeds of a process.
    pub fn shared_listener(mut self, listener: &SharedListener) -> Self {
        self.shared_listener = Some(listener.clone());
        self
    }

    /// Makes the feed ephemeral, starting after `cursor`: its cursor lives
    /// in memory only (nothing read from or written to
    /// `tail_checkpoints`, one statement fewer per batch), for a node's
    /// own followers that start at the head on every boot and need no
    /// cursor after a restart.
    pub fn ephemeral_from(mut self, cursor: Cursor) -> Self {
        self.ephemeral_start = Some(cursor);
        self
    }

    /// Restricts the feed to these aggregate types.
    pub fn aggregate_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.aggregate_types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the fallback poll interval.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets the shortest time between two reads ([`PgFeedConfig::min_read_interval`]).
    pub fn min_read_interval(mut self, interval: Duration) -> Self {
        self.min_read_interval = interval;
        self
    }
}

/// The Postgres-tail feed of one consumer. Not `Clone`: one instance per
/// consumer name at a time.
#[derive(Debug)]
pub struct PgFeed {
    pool: PgPool,
    checkpoint: String,
    aggregate_types: Option<Vec<String>>,
    poll_interval: Duration,
    unsettled_retry: Duration,
    min_read_interval: Duration,
    /// When the last read that found new events started (`None` after a
    /// read that found nothing): the next read waits for
    /// `min_read_interval` from it.
    last_busy_read: Option<Instant>,
    ephemeral: bool,
    listener: EventsListener,
    committed: Cursor,
    returned: Cursor,
}

impl PgFeed {
    /// The `tail_checkpoints` name of consumer `consumer`: `feed:<consumer>`.
    pub fn checkpoint_name(consumer: &str) -> String {
        format!("feed:{consumer}")
    }

    /// Opens the feed: loads the consumer's checkpoint and starts listening
    /// (a listener failure is logged and retried; the feed polls meanwhile).
    ///
    /// # Errors
    /// [`FeedError::Config`] for an empty consumer name,
    /// [`FeedError::Database`] when the checkpoint cannot be read.
    pub async fn new(pool: PgPool, config: PgFeedConfig) -> Result<Self, FeedError> {
        if config.consumer.is_empty() {
            return Err(FeedError::Config("empty Postgres feed consumer name".into()));
        }
        let checkpoint = Self::checkpoint_name(&config.consumer);
        let committed = match config.ephemeral_start {
            Some(start) => start,
            None => tail::load_checkpoint(&pool, &checkpoint).await?,
        };
        let mut listener = match &config.shared_listener {
            Some(shared) => EventsListener::shared(pool.clone(), shared),
            None => EventsListener::new(pool.clone()),
        };
        listener.connect().await;
        Ok(Self {
            pool,
            checkpoint,
            aggregate_types: config.aggregate_types,
            poll_interval: config.poll_interval,
            unsettled_retry: config.unsettled_retry,
            min_read_interval: config.min_read_interval,
            last_busy_read: None,
            ephemeral: config.ephemeral_start.is_some(),
            listener,
            committed,
            returned: committed,
        })
    }

    /// Cursor of the last committed envelope.
    pub fn committed(&self) -> Cursor {
        self.committed
    }

    /// Cursor of the last envelope returned (committed or not).
    pub fn returned(&self) -> Cursor {
        self.returned
    }
}

#[async_trait]
impl EventFeed for PgFeed {
    #[tracing::instrument(level = "debug", skip_all, fields(feed = %self.checkpoint, max))]
    async fn next_batch(&mut self, max: usize, max_wait: Duration) -> Result<Vec<Envelope>, FeedError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + max_wait;
        let types = self.aggregate_types.as_deref();
        loop {
            // Listen before reading, so a commit right after the read wakes us.
            self.listener.connect().await;
            if let Some(last) = self.last_busy_read {
                let since = last.elapsed();
                if since < self.min_read_interval {
                    tokio::time::sleep(self.min_read_interval - since).await;
                    // The read below covers what was notified meanwhile.
                    self.listener.drain().await;
                }
            }
            let read_at = Instant::now();
            self.last_busy_read = None;
            match types {
                None => {
                    let rows = tail::read_after(&self.pool, self.returned, max, None).await?;
                    if let Some((cursor, _)) = rows.last() {
                        self.last_busy_read = Some(read_at);
                        self.returned = *cursor;
                        return Ok(rows.into_iter().map(|(_, envelope)| envelope).collect());
                    }
                }
                Some(types) => {
                    // Walk every type, so the cursor passes unwanted events
                    // once (see `tail::read_scanning`).
                    let scanned =
                        tail::read_scanning(&self.pool, self.returned, max.max(SCAN_LIMIT), types).await?;
                    if let Some(to) = scanned.scanned_to {
                        self.returned = to;
                    }
                    if !scanned.envelopes.is_empty() {
                        self.last_busy_read = Some(read_at);
                        return Ok(scanned.envelopes.into_iter().map(|(_, envelope)| envelope).collect());
                    }
                    if scanned.scanned >= max.max(SCAN_LIMIT) {
                        continue;
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            // The cursor is past every settled event, so this walks only the
            // few rows of transactions still settling. A typed feed minds
            // only its own types, here and in the notifications it wakes
            // on: other types' commits (a login's, for the revocation
            // follower) are passed over until one of its own comes, or the
            // poll, when one read walks past them all.
            let pause = if tail::has_unsettled_after(&self.pool, self.returned, types).await? {
                self.unsettled_retry
            } else {
                self.poll_interval
            };
            self.listener.wait_for(pause.min(deadline - now), types).await;
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(feed = %self.checkpoint))]
    async fn commit(&mut self) -> Result<(), FeedError> {
        if self.returned != self.committed && !self.ephemeral {
            tail::store_checkpoint(&self.pool, &self.checkpoint, self.returned).await?;
        }
        self.committed = self.returned;
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), FeedError> {
        self.returned = self.committed;
        Ok(())
    }
}

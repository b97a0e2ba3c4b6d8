//! The relay: publishes every stored event, in commit-safe order, to Kafka
//! as an envelope (ARCHITECTURE decided 2 and 3).
//!
//! **Pipelined, at least once.** The relay reads batches after its
//! checkpoint (`tail_checkpoints`, name `relay` by default) and enqueues
//! them to the producer without waiting: up to
//! [`RelayOptions::max_in_flight_batches`] batches and
//! [`RelayOptions::max_in_flight_messages`] messages are outstanding at
//! once. A batch's checkpoint is stored only once Kafka acknowledged every
//! message of that batch *and of every batch before it* (batches complete in
//! read order), so the checkpoint never passes an unacknowledged event. On
//! any failure the in-flight state is dropped and the relay starts again
//! from the stored checkpoint; what was in flight may be published twice
//! (consumers are idempotent, decided 5).
//!
//! **Order.** Messages are enqueued in commit-safe order, keyed by aggregate
//! id, to an idempotent producer (`acks=all`, at most 5 requests in flight
//! per connection, see [`crate::kafka`]), which keeps per-partition order
//! across retries: per-aggregate order holds on the topic.
//!
//! **One relay per checkpoint.** [`Relay::run`] publishes only while it
//! holds the [`LeaderLock`] of its checkpoint: a Postgres session-level
//! advisory lock taken with `pg_try_advisory_lock` on a dedicated
//! connection. A standby relay retries every
//! [`RelayOptions::standby_retry`] and takes over when the leader's session
//! ends (process killed, connection lost). The leader reads events and
//! stores its checkpoint *through the lock connection*, so once that
//! connection is gone it can neither read further events nor move the
//! checkpoint: it stops publishing (at most its in-flight window, already
//! enqueued, still goes out) and returns to standby.

use std::collections::HashMap;
use std::time::Duration;

use commands::keys::SubjectPseudonyms;
use domain::envelope::ENVELOPE_SCHEMA_VERSION;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt as _, StreamExt as _};
use projections::runtime::ErrorChain;
use projections::tail::{self, Cursor, EncodedEnvelope, EventsListener};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use sqlx::{Connection as _, PgConnection, PgPool};
use subject::add_subject;
use tokio::sync::watch;

mod subject;

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

/// Longest wait for the liveness probe of the lock connection.
const LOCK_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A failure of a relay step; nothing after the last stored checkpoint is
/// considered published.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading events or storing the checkpoint failed (with a
    /// [`LeaderLock`]: possibly because its connection is gone).
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

/// Pacing and pipelining of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayOptions {
    /// Events per read and per checkpoint (default 2,000; values below 1
    /// count as 1).
    pub batch_size: usize,
    /// Batches enqueued and not yet fully acknowledged, at most (default
    /// 64; values below 1 count as 1, i.e. stop-and-wait).
    pub max_in_flight_batches: usize,
    /// Messages enqueued and not yet acknowledged, at most (default 90,000;
    /// one batch is always allowed). Keep it below the producer's
    /// `queue.buffering.max.messages` (100,000 by default). The relay holds
    /// each in-flight envelope until its acknowledgement: about 50 MiB at
    /// the default with ~600-byte envelopes. With 20,000 (and 1,000-event
    /// batches) the relay waited on acknowledgements: 0.36–0.41 × librdkafka
    /// against 0.58–0.61 now (docs/performance.md, relay).
    pub max_in_flight_messages: usize,
    /// Slow-poll interval when no notification arrives (default 1 s).
    pub poll_interval: Duration,
    /// Re-read interval while committed events wait behind an older open
    /// transaction (default 3 ms).
    pub unsettled_retry: Duration,
    /// First back-off after a failed step (default 100 ms), doubled per
    /// consecutive failure up to `max_backoff` (default 30 s).
    pub min_backoff: Duration,
    /// Longest back-off.
    pub max_backoff: Duration,
    /// How often a standby relay tries to take the [`LeaderLock`] (default
    /// 1 s); also the pause after the lock connection could not be opened.
    pub standby_retry: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch_size: 2_000,
            max_in_flight_batches: 64,
            max_in_flight_messages: 90_000,
            poll_interval: Duration::from_secs(1),
            unsettled_retry: Duration::from_millis(3),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            standby_retry: Duration::from_secs(1),
        }
    }
}

/// The advisory-lock key (`pg_try_advisory_lock(bigint)`) that elects the
/// relay of checkpoint `checkpoint`: FNV-1a 64 of
/// `streamforge.relay/<checkpoint>`, as a signed 64-bit integer. Stable
/// across versions and Postgres releases. In `pg_locks` it shows as
/// `locktype = 'advisory'`, `classid` = high 32 bits, `objid` = low 32
/// bits, `objsubid = 1`. Two names colliding would only make their relays
/// exclude each other.
pub fn leader_lock_key(checkpoint: &str) -> i64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = b"streamforge.relay/"
        .iter()
        .chain(checkpoint.as_bytes())
        .fold(OFFSET, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(PRIME));
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// Leadership of one relay checkpoint: a session-level advisory lock
/// ([`leader_lock_key`]) held by a dedicated Postgres connection (not
/// taken from the pool) for as long as the value lives. Dropping it closes
/// the connection, which releases the lock at once on the server; so does
/// the process dying. Not usable behind a transaction-mode connection
/// pooler (session locks need a session).
pub struct LeaderLock {
    conn: PgConnection,
    key: i64,
    checkpoint: String,
}

impl std::fmt::Debug for LeaderLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderLock").field("checkpoint", &self.checkpoint).field("key", &self.key).finish()
    }
}

impl LeaderLock {
    /// Opens a dedicated connection with `pool`'s connect options and tries
    /// `pg_try_advisory_lock(leader_lock_key(checkpoint))` on it, once.
    /// `Ok(None)`: another session holds the lock (the connection is
    /// closed again).
    ///
    /// # Errors
    /// The connection or the query failed.
    pub async fn try_acquire(pool: &PgPool, checkpoint: &str) -> Result<Option<Self>, sqlx::Error> {
        let options = pool.connect_options();
        let mut conn = PgConnection::connect_with(&options).await?;
        let key = leader_lock_key(checkpoint);
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut conn).await?;
        if locked {
            Ok(Some(Self { conn, key, checkpoint: checkpoint.to_owned() }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    /// Waits until the lock is taken, retrying every `retry`; `None` when
    /// `shutdown` becomes `true` (or its sender is dropped) first.
    /// Connection errors are logged and retried.
    pub async fn acquire(
        pool: &PgPool,
        checkpoint: &str,
        retry: Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Self> {
        let mut announced = false;
        loop {
            if *shutdown.borrow_and_update() {
                return None;
            }
            match Self::try_acquire(pool, checkpoint).await {
                Ok(Some(lock)) => return Some(lock),
                Ok(None) => {
                    if !announced {
                        tracing::info!(checkpoint, "another relay leads this checkpoint; standing by");
                        announced = true;
                    }
                }
                Err(error) => {
                    tracing::warn!(checkpoint, error = %ErrorChain(&error), "cannot try the relay leader lock");
                }
            }
            tokio::select! {
                changed = shutdown.changed() => if changed.is_err() { return None },
                () = tokio::time::sleep(retry) => {}
            }
        }
    }

    /// The checkpoint this lock elects a relay for.
    pub fn checkpoint(&self) -> &str {
        &self.checkpoint
    }

    /// The advisory-lock key ([`leader_lock_key`]).
    pub fn key(&self) -> i64 {
        self.key
    }

    /// Whether the lock is still held: its session answers a query within
    /// 5 s. A session lock lasts as long as its session, so `true` proves
    /// it; `false` means the lock must be considered lost (drop it).
    pub async fn is_held(&mut self) -> bool {
        let probe = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&mut self.conn);
        matches!(tokio::time::timeout(LOCK_PROBE_TIMEOUT, probe).await, Ok(Ok(1)))
    }

    /// Releases the lock and closes its connection (dropping does the
    /// same, less politely).
    pub async fn release(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(self.key).execute(&mut self.conn).await;
        let _ = self.conn.close().await;
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
    /// Pseudonymous subject ids (issue 18), when configured.
    pseudonyms: Option<SubjectPseudonyms>,
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

/// Bounds of one pipelined pass.
#[derive(Debug, Clone, Copy)]
struct Limits {
    batch_size: usize,
    max_in_flight_batches: usize,
    max_in_flight_messages: usize,
    /// Stop reading after this many batches (`run_once`).
    max_batches: Option<usize>,
}

/// A batch whose every message was acknowledged.
struct Acked {
    last: Cursor,
    count: usize,
}

type BatchFuture = BoxFuture<'static, Result<Acked, RelayError>>;

/// What a pipelined pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainOutcome {
    /// Events acknowledged and checkpointed by this pass.
    pub published: usize,
    /// The checkpoint stored at the end of the pass.
    pub cursor: Cursor,
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
            pseudonyms: None,
        }
    }

    /// Adds the pseudonymous `subject` and its `subject_key` to every
    /// envelope that concerns a user (docs/envelope.md "Subject").
    pub fn with_pseudonyms(mut self, pseudonyms: SubjectPseudonyms) -> Self {
        self.pseudonyms = Some(pseudonyms);
        self
    }

    /// Uses checkpoint `name` in `tail_checkpoints` instead of `relay`.
    pub fn with_checkpoint(mut self, name: impl Into<String>) -> Self {
        self.checkpoint = name.into();
        self
    }

    /// Replaces the [`RelayOptions`].
    pub fn with_options(mut self, options: RelayOptions) -> Self {
        self.options = options;
        self
    }

    /// The checkpoint name.
    pub fn checkpoint(&self) -> &str {
        &self.checkpoint
    }

    /// The options in use.
    pub fn options(&self) -> RelayOptions {
        self.options
    }

    /// One stop-and-wait step, without leader election: publishes up to
    /// `batch` events after the stored checkpoint, waits until Kafka
    /// acknowledged all of them, then stores the checkpoint. Returns how
    /// many were published (0: nothing new).
    ///
    /// # Errors
    /// [`RelayError`]; the checkpoint then stays where it was, so the batch
    /// is published again (possibly in part twice) by the next step.
    pub async fn run_once(&self, batch: usize) -> Result<usize, RelayError> {
        let limits = Limits {
            batch_size: batch.max(1),
            max_in_flight_batches: 1,
            max_in_flight_messages: 1,
            max_batches: Some(1),
        };
        let mut conn = self.pool.acquire().await?;
        Ok(self.pipeline(&mut conn, limits, None).await?.published)
    }

    /// One pipelined pass, without leader election (tests, tools, a relay
    /// known to be alone): from the stored checkpoint until no settled
    /// event is left, with up to the configured batches in flight,
    /// storing each batch's checkpoint once it and all batches before it
    /// are acknowledged. Waits for every acknowledgement before returning.
    ///
    /// # Errors
    /// [`RelayError`] at the first failure; the in-flight batches are
    /// abandoned and the checkpoint stays after the last batch that was
    /// completely acknowledged.
    pub async fn drain(&self) -> Result<DrainOutcome, RelayError> {
        let mut conn = self.pool.acquire().await?;
        self.pipeline(&mut conn, self.limits(), None).await
    }

    /// [`Relay::drain`] as the leader: reads and checkpoints through
    /// `lock`'s connection, so it fails (and publishes nothing further)
    /// once the lock's session is gone.
    ///
    /// # Errors
    /// As [`Relay::drain`]; a [`RelayError::Database`] may mean the lock
    /// was lost (check [`LeaderLock::is_held`]).
    pub async fn drain_as_leader(&self, lock: &mut LeaderLock) -> Result<DrainOutcome, RelayError> {
        self.pipeline(&mut lock.conn, self.limits(), None).await
    }

    /// [`Relay::drain_as_leader`], reading again as soon as `listener`
    /// reports a commit even while acknowledgements are outstanding (instead
    /// of after the next acknowledgement), which takes the producer's
    /// acknowledgement round trip off the commit → publish latency.
    async fn drain_listening(
        &self,
        lock: &mut LeaderLock,
        listener: &mut EventsListener,
    ) -> Result<DrainOutcome, RelayError> {
        self.pipeline(&mut lock.conn, self.limits(), Some(listener)).await
    }

    fn limits(&self) -> Limits {
        Limits {
            batch_size: self.options.batch_size.max(1),
            max_in_flight_batches: self.options.max_in_flight_batches.max(1),
            max_in_flight_messages: self.options.max_in_flight_messages.max(1),
            max_batches: None,
        }
    }

    /// The pipeline: reads and enqueues batches while the in-flight bounds
    /// allow, and stores the checkpoint of the newest batch whose
    /// acknowledgements (and its predecessors') are all in. It reads again
    /// after a short read once an acknowledgement came in, and stops when
    /// a read found nothing new and nothing is in flight.
    #[tracing::instrument(skip_all, fields(checkpoint = %self.checkpoint, published))]
    async fn pipeline(
        &self,
        conn: &mut PgConnection,
        limits: Limits,
        mut listener: Option<&mut EventsListener>,
    ) -> Result<DrainOutcome, RelayError> {
        let mut stored = tail::load_checkpoint(&mut *conn, &self.checkpoint).await?;
        let mut read_cursor = stored;
        let mut in_flight: FuturesOrdered<BatchFuture> = FuturesOrdered::new();
        let mut in_flight_messages = 0usize;
        let mut batches_read = 0usize;
        let mut published = 0usize;
        // The last read returned a short batch: wait for an acknowledgement
        // (time for new commits) before reading again.
        let mut caught_up = false;
        let mut topics = TopicNames::new(&self.topic_prefix);

        loop {
            let budget_left = limits.max_batches.is_none_or(|max| batches_read < max);
            let room = in_flight.len() < limits.max_in_flight_batches
                && (in_flight.is_empty()
                    || in_flight_messages + limits.batch_size <= limits.max_in_flight_messages);
            let can_read = budget_left && room && !caught_up;

            let mut acked: Option<Cursor> = None;
            if !can_read {
                // Caught up with batches in flight: a new commit is worth a
                // read before their acknowledgements arrive (when the bounds
                // leave room for another batch).
                let listen = caught_up && budget_left && room && !in_flight.is_empty();
                let next = match listener.as_deref_mut() {
                    Some(listener) if listen => tokio::select! {
                        next = in_flight.next() => Some(next),
                        _ = listener.wait(Duration::from_secs(1)) => None,
                    },
                    _ => Some(in_flight.next().await),
                };
                match next {
                    // A commit was announced: read again.
                    None => {
                        caught_up = false;
                        continue;
                    }
                    Some(None) => break,
                    Some(Some(result)) => {
                        let batch = result?;
                        in_flight_messages -= batch.count;
                        published += batch.count;
                        acked = Some(batch.last);
                    }
                }
            }
            // Whatever else completed meanwhile: one checkpoint write for all.
            while let Some(Some(result)) = in_flight.next().now_or_never() {
                let batch = result?;
                in_flight_messages -= batch.count;
                published += batch.count;
                acked = Some(batch.last);
            }
            if let Some(cursor) = acked {
                tail::store_checkpoint(&mut *conn, &self.checkpoint, cursor).await?;
                stored = cursor;
                caught_up = false;
            }
            if !can_read {
                continue;
            }

            let rows = tail::read_after_encoded(&mut *conn, read_cursor, limits.batch_size).await?;
            batches_read += 1;
            caught_up = rows.len() < limits.batch_size;
            let Some(last) = rows.last() else {
                continue;
            };
            read_cursor = last.cursor;
            in_flight_messages += rows.len();
            in_flight.push_back(self.enqueue_batch(rows, &mut topics).await?);
        }
        tracing::Span::current().record("published", published);
        metrics::counter!("streamforge_relay_published_total").increment(published as u64);
        Ok(DrainOutcome { published, cursor: stored })
    }

    /// Enqueues every row and returns the future of the whole batch's
    /// acknowledgement.
    async fn enqueue_batch(
        &self,
        mut rows: Vec<EncodedEnvelope>,
        topics: &mut TopicNames,
    ) -> Result<BatchFuture, RelayError> {
        if let Some(pseudonyms) = &self.pseudonyms {
            for row in &mut rows {
                add_subject(row, pseudonyms);
            }
        }
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in &rows {
            let record = FutureRecord::to(topics.get(&row.aggregate_type))
                .key(row.aggregate_id.as_str())
                .payload(row.value.as_slice())
                .headers(headers(&row.event_type, &row.event_version));
            deliveries.push(self.enqueue(record).await?);
        }
        let prefix = self.topic_prefix.clone();
        Ok(async move {
            let count = rows.len();
            for (delivery, row) in deliveries.into_iter().zip(&rows) {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((source, _message))) => {
                        return Err(RelayError::Delivery {
                            topic: format!("{prefix}{}", row.aggregate_type),
                            aggregate_type: row.aggregate_type.clone(),
                            aggregate_id: row.aggregate_id.clone(),
                            sequence: row.sequence,
                            source,
                        })
                    }
                    Err(_canceled) => return Err(RelayError::Canceled),
                }
            }
            let last = rows.last().map_or(Cursor::ZERO, |row| row.cursor);
            Ok(Acked { last, count })
        }
        .boxed())
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

    /// Runs until `shutdown` becomes `true` (or its sender is dropped):
    /// stands by until it holds the checkpoint's [`LeaderLock`], then
    /// leads: drains ([`Relay::drain_as_leader`]), waits for a `NOTIFY`
    /// with a slow-poll fallback, and again. A failed pass is logged with
    /// its cause chain and retried from the stored checkpoint after an
    /// exponential back-off; when the lock's connection is found dead the
    /// relay stops publishing and stands by again.
    #[tracing::instrument(skip_all, fields(checkpoint = %self.checkpoint))]
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let retry = self.options.standby_retry;
        while let Some(mut lock) =
            LeaderLock::acquire(&self.pool, &self.checkpoint, retry, &mut shutdown).await
        {
            tracing::info!("relay leads its checkpoint");
            match self.lead(&mut lock, &mut shutdown).await {
                Leadership::Shutdown => {
                    lock.release().await;
                    break;
                }
                Leadership::Lost => {
                    tracing::warn!("relay lost its leader lock connection; stopped publishing, standing by");
                    drop(lock);
                }
            }
        }
        tracing::info!("relay stopped");
    }

    /// The leader's loop; returns on shutdown or when the lock is lost.
    async fn lead(&self, lock: &mut LeaderLock, shutdown: &mut watch::Receiver<bool>) -> Leadership {
        let options = self.options;
        let mut listener = EventsListener::new(self.pool.clone());
        let mut backoff = options.min_backoff;
        loop {
            if *shutdown.borrow_and_update() {
                return Leadership::Shutdown;
            }
            // Listen before reading, so a commit right after the read wakes us.
            listener.connect().await;
            let pause = match self.drain_listening(lock, &mut listener).await {
                Ok(outcome) => {
                    backoff = options.min_backoff;
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
                    if matches!(error, RelayError::Database(_)) && !lock.is_held().await {
                        return Leadership::Lost;
                    }
                    tracing::error!(
                        error = %ErrorChain(&error),
                        backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                        "relay pass failed; restarting from the stored checkpoint"
                    );
                    let pause = backoff;
                    backoff = (backoff * 2).min(options.max_backoff);
                    tokio::select! {
                        changed = shutdown.changed() => if changed.is_err() { return Leadership::Shutdown },
                        () = tokio::time::sleep(pause) => {}
                    }
                    continue;
                }
            };
            tokio::select! {
                changed = shutdown.changed() => if changed.is_err() { return Leadership::Shutdown },
                _ = listener.wait(pause) => {}
            }
        }
    }
}

/// Why [`Relay::lead`] returned.
enum Leadership {
    Shutdown,
    Lost,
}

/// `<prefix><aggregate_type>`, built once per aggregate type.
struct TopicNames {
    prefix: String,
    names: HashMap<String, String>,
}

impl TopicNames {
    fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned(), names: HashMap::new() }
    }

    fn get(&mut self, aggregate_type: &str) -> &str {
        if !self.names.contains_key(aggregate_type) {
            self.names.insert(aggregate_type.to_owned(), format!("{}{aggregate_type}", self.prefix));
        }
        self.names.get(aggregate_type).map_or("", String::as_str)
    }
}

/// The headers of an envelope's message.
fn headers(event_type: &str, event_version: &str) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(3)
        .insert(Header { key: HEADER_EVENT_TYPE, value: Some(event_type) })
        .insert(Header { key: HEADER_EVENT_VERSION, value: Some(event_version) })
        .insert(Header { key: HEADER_ENVELOPE_VERSION, value: Some(ENVELOPE_SCHEMA_VERSION) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(leader_lock_key("relay"), leader_lock_key("relay"));
        assert_ne!(leader_lock_key("relay"), leader_lock_key("relay-2"));
        assert_ne!(leader_lock_key(""), leader_lock_key("relay"));
    }
}

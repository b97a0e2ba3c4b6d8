//! Reading the event store for a rebuild, whole streams at a time.
//!
//! A rebuild reads every *settled* event (ARCHITECTURE decided 2) of the
//! aggregate types a projector handles, in the events primary-key order
//! `(aggregate_type, aggregate_id, sequence)`, in chunks that never split an
//! aggregate's stream. Each [`RebuildChunk`] is handed to
//! [`crate::runtime::Projector::rebuild_chunk`], which can fold each stream
//! in memory into its final read-model row and write all rows of the chunk
//! with a few set-based statements.
//!
//! "Settled" is fixed once per rebuild as a [`Horizon`]: the `xmin` of a
//! snapshot taken at its start. Every transaction with a lower xid has ended,
//! and an aggregate's later events always carry a higher xid than its
//! earlier ones (see [`crate::tail`]), so the events below the horizon form,
//! per aggregate, a complete prefix of its stream. The checkpoints a rebuild
//! stores are the last sequence of that prefix, so a live runner started
//! afterwards applies exactly the events committed later.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use domain::envelope::Envelope;
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row as _};
use uuid::Uuid;

use crate::error::ProjectionError;

/// The commit-safe horizon of a rebuild: `pg_snapshot_xmin` of a snapshot
/// (an `xid8`, carried as `i64`). Only events with `txid` below it are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Horizon(pub i64);

impl Horizon {
    /// The horizon now: `pg_snapshot_xmin(pg_current_snapshot())`.
    ///
    /// # Errors
    /// Any database error.
    pub async fn now<'e, E: PgExecutor<'e>>(executor: E) -> Result<Self, sqlx::Error> {
        let xmin: i64 = sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(executor)
            .await?;
        Ok(Self(xmin))
    }
}

/// One stored event as a rebuild reads it: the envelope's fields, with the
/// payload and the metadata still as the JSON text the store holds (the
/// payload in serde's externally tagged form `{"<EventType>": {...}}`, as
/// postgres-es writes it). They are parsed only when needed:
/// [`StoredEvent::decode`] straight into the event enum,
/// [`StoredEvent::to_envelope`] into the full [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// `events.event_id`.
    pub event_id: Uuid,
    /// `events.aggregate_type`.
    pub aggregate_type: String,
    /// `events.aggregate_id`.
    pub aggregate_id: String,
    /// `events.sequence` (≥ 0, ascending within a stream).
    pub sequence: i64,
    /// `events.position`.
    pub position: i64,
    /// `events.event_type`.
    pub event_type: String,
    /// `events.event_version`.
    pub event_version: String,
    /// `events.recorded_at` (the envelope's `occurred_at`).
    pub occurred_at: DateTime<Utc>,
    /// `events.payload` as JSON text (externally tagged).
    pub payload: String,
    /// `events.metadata` as JSON text.
    pub metadata: String,
}

impl StoredEvent {
    /// The [`Envelope`] of this event, exactly as the feeds deliver it
    /// (`Envelope::from_stored`, then the upcasters of
    /// [`domain::upcast`] for an older version).
    ///
    /// # Errors
    /// [`ProjectionError::Decode`] when the payload or metadata text is not
    /// JSON (the `json` column type makes that impossible in practice).
    pub fn to_envelope(&self) -> Result<Envelope, ProjectionError> {
        let decode_error = |source| ProjectionError::Decode {
            event_type: self.event_type.clone(),
            event_version: self.event_version.clone(),
            source,
        };
        let payload: serde_json::Value = serde_json::from_str(&self.payload).map_err(decode_error)?;
        let metadata: serde_json::Value = serde_json::from_str(&self.metadata).map_err(decode_error)?;
        Ok(domain::upcast::upcast_envelope(Envelope::from_stored(
            self.event_id,
            self.aggregate_type.clone(),
            self.aggregate_id.clone(),
            self.sequence,
            self.position,
            self.event_type.clone(),
            self.event_version.clone(),
            self.occurred_at,
            payload,
            metadata,
        )))
    }

    /// Decodes the payload into the event enum `E`, with the same result as
    /// `self.to_envelope()?.decode::<E>()` but without the intermediate
    /// `serde_json::Value`s: the stored text is parsed directly, and only if
    /// that fails or yields a variant other than `event_type` does it take
    /// the envelope's way (so odd payloads decode, or fail, identically).
    ///
    /// # Errors
    /// [`ProjectionError::Decode`] when the payload does not match `E`.
    pub fn decode<E: DomainEvent>(&self) -> Result<E, ProjectionError> {
        let current = !domain::upcast::has_upcaster(&self.event_type, &self.event_version);
        match serde_json::from_str::<E>(&self.payload) {
            Ok(event) if current && event.event_type() == self.event_type => Ok(event),
            _ => {
                let envelope = self.to_envelope()?;
                envelope.decode().map_err(|e| ProjectionError::decode(&envelope, e))
            }
        }
    }
}

/// Complete streams of one aggregate type: every settled event of each of
/// its aggregates, in ascending `sequence`; aggregates in ascending id
/// order. A chunk never holds part of a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildChunk {
    events: Vec<StoredEvent>,
    /// End (exclusive) of each stream in `events`.
    ends: Vec<usize>,
}

/// One aggregate's events inside a [`RebuildChunk`].
#[derive(Debug, Clone, Copy)]
pub struct Stream<'a> {
    /// The aggregate type.
    pub aggregate_type: &'a str,
    /// The aggregate id.
    pub aggregate_id: &'a str,
    /// Its events, ascending `sequence`, never empty.
    pub events: &'a [StoredEvent],
}

impl Stream<'_> {
    /// The sequence of the stream's last event (its checkpoint after the rebuild).
    pub fn last_sequence(&self) -> i64 {
        self.events.last().map_or(-1, |e| e.sequence)
    }
}

impl RebuildChunk {
    /// A chunk of `events` already ordered by `(aggregate_type,
    /// aggregate_id, sequence)`; streams are split where the aggregate
    /// changes. Meant for tests and custom drivers; the runner builds chunks
    /// from the store itself.
    pub fn from_events(events: Vec<StoredEvent>) -> Self {
        let mut ends = Vec::new();
        for i in 1..events.len() {
            if (events[i].aggregate_type.as_str(), events[i].aggregate_id.as_str())
                != (events[i - 1].aggregate_type.as_str(), events[i - 1].aggregate_id.as_str())
            {
                ends.push(i);
            }
        }
        if !events.is_empty() {
            ends.push(events.len());
        }
        Self { events, ends }
    }

    /// Every event of the chunk, stream after stream.
    pub fn events(&self) -> &[StoredEvent] {
        &self.events
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the chunk holds no event.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The streams of the chunk, in order.
    pub fn streams(&self) -> impl ExactSizeIterator<Item = Stream<'_>> + '_ {
        (0..self.ends.len()).map(move |k| {
            let start = k.checked_sub(1).map_or(0, |previous| self.ends[previous]);
            let events = &self.events[start..self.ends[k]];
            let first = &events[0];
            Stream { aggregate_type: &first.aggregate_type, aggregate_id: &first.aggregate_id, events }
        })
    }

    /// The checkpoint of each stream: `(aggregate_type, aggregate_id, last sequence)`.
    pub fn checkpoints(&self) -> impl Iterator<Item = (&str, &str, i64)> + '_ {
        self.streams().map(|s| (s.aggregate_type, s.aggregate_id, s.last_sequence()))
    }
}

/// Aggregate types present in the store, ascending (a loose index scan over
/// the events primary key: one index probe per type).
///
/// # Errors
/// Any database error.
pub async fn aggregate_types<'e, E: PgExecutor<'e>>(executor: E) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH RECURSIVE t(aggregate_type) AS (
             (SELECT aggregate_type FROM events ORDER BY aggregate_type LIMIT 1)
             UNION ALL
             SELECT (SELECT e.aggregate_type FROM events e WHERE e.aggregate_type > t.aggregate_type
                     ORDER BY e.aggregate_type LIMIT 1)
             FROM t WHERE t.aggregate_type IS NOT NULL)
         SELECT aggregate_type FROM t WHERE aggregate_type IS NOT NULL",
    )
    .fetch_all(executor)
    .await
}

pub(crate) const COLUMNS: &str =
    "SELECT event_id, aggregate_type, aggregate_id, sequence, position, event_type, \
     event_version, recorded_at, payload::text, metadata::text FROM events";

/// The statement that reads the next events of a rebuild: binds `$1`
/// aggregate type, `$2` the last aggregate id done (`>=` when `first`, with
/// `''`), `$3` the [`Horizon`], `$4` the limit. Public so that tests and
/// operators can `EXPLAIN` it (an index scan of `events_pkey`).
pub fn read_streams_sql(first: bool) -> String {
    let op = if first { ">=" } else { ">" };
    format!(
        "{COLUMNS} WHERE aggregate_type = $1 AND aggregate_id {op} $2 AND txid < $3::text::xid8 \
         ORDER BY aggregate_id, sequence LIMIT $4"
    )
}

pub(crate) fn stored_event(row: &PgRow) -> Result<StoredEvent, sqlx::Error> {
    Ok(StoredEvent {
        event_id: row.try_get(0)?,
        aggregate_type: row.try_get(1)?,
        aggregate_id: row.try_get(2)?,
        sequence: row.try_get(3)?,
        position: row.try_get(4)?,
        event_type: row.try_get(5)?,
        event_version: row.try_get(6)?,
        occurred_at: row.try_get(7)?,
        payload: row.try_get(8)?,
        metadata: row.try_get(9)?,
    })
}

/// Reads one aggregate type's settled streams chunk by chunk (see the
/// module docs). Each [`StreamReader::next_chunk`] reads about `chunk_size`
/// events: a read that ends inside a stream leaves that stream to the next
/// chunk, and a single stream longer than `chunk_size` is read whole.
#[derive(Debug, Clone)]
pub struct StreamReader {
    aggregate_type: String,
    horizon: Horizon,
    chunk_size: usize,
    after: Option<String>,
    done: bool,
}

impl StreamReader {
    /// A reader of the streams of `aggregate_type` below `horizon`, about
    /// `chunk_size` (at least 2) events per chunk.
    pub fn new(aggregate_type: impl Into<String>, horizon: Horizon, chunk_size: usize) -> Self {
        Self {
            aggregate_type: aggregate_type.into(),
            horizon,
            chunk_size: chunk_size.max(2),
            after: None,
            done: false,
        }
    }

    /// The next chunk, or `None` after the last.
    ///
    /// # Errors
    /// Any database error; the reader can be called again (it has not moved).
    pub async fn next_chunk<'c, E>(&mut self, executor: E) -> Result<Option<RebuildChunk>, sqlx::Error>
    where
        E: PgExecutor<'c> + Copy,
    {
        if self.done {
            return Ok(None);
        }
        let limit = i64::try_from(self.chunk_size).unwrap_or(i64::MAX);
        let rows = sqlx::query(&read_streams_sql(self.after.is_none()))
            .bind(&self.aggregate_type)
            .bind(self.after.as_deref().unwrap_or(""))
            .bind(self.horizon.0)
            .bind(limit)
            .fetch_all(executor)
            .await?;
        let full = rows.len() >= self.chunk_size;
        let mut events = rows.iter().map(stored_event).collect::<Result<Vec<_>, _>>()?;
        if !full {
            self.done = true;
        } else if let Some(last) = events.last() {
            let last_id = last.aggregate_id.clone();
            let cut = events.iter().rposition(|e| e.aggregate_id != last_id).map_or(0, |i| i + 1);
            if cut > 0 {
                // The last stream may continue: leave it to the next chunk.
                events.truncate(cut);
            } else {
                // One stream fills the chunk: read the rest of it.
                let last_sequence = last.sequence;
                let rest = sqlx::query(&format!(
                    "{COLUMNS} WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 \
                     AND txid < $4::text::xid8 ORDER BY sequence"
                ))
                .bind(&self.aggregate_type)
                .bind(&last_id)
                .bind(last_sequence)
                .bind(self.horizon.0)
                .fetch_all(executor)
                .await?;
                for row in &rest {
                    events.push(stored_event(row)?);
                }
            }
        }
        match events.last() {
            Some(last) => self.after = Some(last.aggregate_id.clone()),
            None => {
                self.done = true;
                return Ok(None);
            }
        }
        Ok(Some(RebuildChunk::from_events(events)))
    }
}

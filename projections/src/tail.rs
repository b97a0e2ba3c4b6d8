//! The commit-safe cursor over the `events` table (ARCHITECTURE decided 2).
//!
//! `position` alone is not a safe cursor: a transaction can commit a lower
//! position after a higher one was read. Rows are therefore read in
//! `(txid, position)` order and only below `pg_snapshot_xmin` of the reading
//! statement's snapshot, i.e. only rows of transactions that are no longer in
//! flight. Rolled-back transactions leave gaps that are never waited for.
//!
//! Per-aggregate order holds because an append transaction obtains its xid at
//! its first write, after the aggregate's previous events were committed and
//! loaded (each append is a statement of its own: `commands::executor`).
//!
//! The relay (`workers::relay`) and [`crate::pg_feed::PgFeed`] both read
//! through [`read_after`] and keep their cursor in `tail_checkpoints`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::envelope::Envelope;
use sqlx::postgres::{PgListener, PgRow};
use sqlx::{PgExecutor, PgPool, Row as _};
use uuid::Uuid;

mod shared;

pub use shared::SharedListener;

/// Channel the `events` insert trigger notifies after commit.
pub const EVENTS_CHANNEL: &str = "streamforge_events";

/// A point in the commit-safe total order of events: the writing
/// transaction's id (`xid8`, carried as `i64`; real xids stay far below
/// 2^63) and the row's `position`. The zero cursor precedes every event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    /// `events.txid` of the last row read (`xid8`).
    pub txid: i64,
    /// `events.position` of the last row read.
    pub position: i64,
}

impl Cursor {
    /// Before every event.
    pub const ZERO: Cursor = Cursor { txid: 0, position: 0 };
}

// The xid8 → bigint column must not be called `txid`: `ORDER BY txid` would
// then sort by the output column and miss `events_cursor_idx`.
const SELECT_COLUMNS: &str = "SELECT txid::text::bigint AS cursor_txid, position, event_id, \
     aggregate_type, aggregate_id, sequence, event_type, event_version, recorded_at, \
     payload, metadata FROM events";

const SETTLED: &str = "(txid, position) > ($1::text::xid8, $2) \
     AND txid < pg_snapshot_xmin(pg_current_snapshot())";

/// Reads at most `limit` events after `cursor` in commit-safe order,
/// optionally only those whose `aggregate_type` is in `aggregate_types`.
/// Each envelope comes with its own cursor; store the last one to resume.
///
/// An empty result means nothing settled is available yet (see
/// [`has_unsettled_after`] to tell "nothing new" from "blocked by an older
/// transaction still open").
///
/// # Errors
/// Any database error.
pub async fn read_after<'e, E>(
    executor: E,
    cursor: Cursor,
    limit: usize,
    aggregate_types: Option<&[String]>,
) -> Result<Vec<(Cursor, Envelope)>, sqlx::Error>
where
    E: PgExecutor<'e>,
{
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let sql = read_after_sql(aggregate_types.is_some());
    let query = sqlx::query(&sql).bind(cursor.txid).bind(cursor.position);
    let query = match aggregate_types {
        None => query,
        Some(types) => query.bind(types),
    };
    let rows = query.bind(limit).fetch_all(executor).await?;
    rows.iter().map(envelope_from_row).collect()
}

/// What [`read_scanning`] read: the envelopes of the wanted aggregate
/// types, and the cursor of the last settled event it scanned (of any
/// type), from where the next read goes on.
#[derive(Debug, Clone, Default)]
pub struct Scanned {
    /// The wanted envelopes, each with its cursor, in commit-safe order.
    pub envelopes: Vec<(Cursor, Envelope)>,
    /// The last settled event scanned (`None`: nothing settled after the
    /// cursor).
    pub scanned_to: Option<Cursor>,
    /// Events scanned, wanted or not (`< scan_limit`: caught up).
    pub scanned: usize,
}

/// Like [`read_after`] filtered by `aggregate_types`, but it walks the next
/// `scan_limit` settled events of **every** type and reports how far it
/// got ([`Scanned::scanned_to`]), so a feed of a few types moves its cursor
/// past the events of other types instead of scanning them again on every
/// read. (Filtering in the statement, as [`read_after`] does, costs a walk
/// over every unwanted event after the cursor per read: 0.8 ms per read
/// and growing for the typed feeds of a node under a login load, the
/// largest share of Postgres' CPU; issue 14.) Unwanted rows come back with
/// only their cursor (payload and metadata stay unread).
///
/// # Errors
/// Any database error.
pub async fn read_scanning<'e, E>(
    executor: E,
    cursor: Cursor,
    scan_limit: usize,
    aggregate_types: &[String],
) -> Result<Scanned, sqlx::Error>
where
    E: PgExecutor<'e>,
{
    let limit = i64::try_from(scan_limit).unwrap_or(i64::MAX);
    let rows = sqlx::query(&read_scanning_sql())
        .bind(cursor.txid)
        .bind(cursor.position)
        .bind(aggregate_types)
        .bind(limit)
        .fetch_all(executor)
        .await?;
    let mut out = Scanned { scanned: rows.len(), ..Scanned::default() };
    for row in &rows {
        let at = Cursor { txid: row.try_get("cursor_txid")?, position: row.try_get("position")? };
        out.scanned_to = Some(at);
        if row.try_get::<bool, _>("wanted")? {
            out.envelopes.push(envelope_from_row(row)?);
        }
    }
    Ok(out)
}

/// The statement [`read_scanning`] runs: `$1` cursor txid, `$2` cursor
/// position, `$3` the wanted aggregate types, `$4` the scan limit; it walks
/// `events_cursor_idx` and reads payload and metadata of wanted rows only.
pub fn read_scanning_sql() -> String {
    format!(
        "SELECT txid::text::bigint AS cursor_txid, position, aggregate_type = ANY($3) AS wanted, event_id, \
         aggregate_type, aggregate_id, sequence, event_type, event_version, recorded_at, \
         CASE WHEN aggregate_type = ANY($3) THEN payload ELSE 'null'::json END AS payload, \
         CASE WHEN aggregate_type = ANY($3) THEN metadata ELSE 'null'::json END AS metadata \
         FROM events WHERE {SETTLED} ORDER BY txid, position LIMIT $4"
    )
}

/// The statement [`read_after`] runs: binds `$1` cursor txid, `$2` cursor
/// position, then (when `filtered`) `$3` the aggregate types, and last the
/// limit. Public so that tests and operators can `EXPLAIN` it (it must use
/// `events_cursor_idx`).
pub fn read_after_sql(filtered: bool) -> String {
    if filtered {
        format!(
            "{SELECT_COLUMNS} WHERE {SETTLED} AND aggregate_type = ANY($3) \
             ORDER BY txid, position LIMIT $4"
        )
    } else {
        format!("{SELECT_COLUMNS} WHERE {SETTLED} ORDER BY txid, position LIMIT $3")
    }
}

fn envelope_from_row(row: &PgRow) -> Result<(Cursor, Envelope), sqlx::Error> {
    let cursor = Cursor { txid: row.try_get("cursor_txid")?, position: row.try_get("position")? };
    let envelope = domain::upcast::upcast_envelope(Envelope::from_stored(
        row.try_get::<Uuid, _>("event_id")?,
        row.try_get("aggregate_type")?,
        row.try_get("aggregate_id")?,
        row.try_get("sequence")?,
        cursor.position,
        row.try_get("event_type")?,
        row.try_get("event_version")?,
        row.try_get::<DateTime<Utc>, _>("recorded_at")?,
        row.try_get::<serde_json::Value, _>("payload")?,
        row.try_get::<serde_json::Value, _>("metadata")?,
    ));
    Ok((cursor, envelope))
}

/// One stored event with its envelope already encoded: what the relay
/// publishes. `value` is the envelope's JSON (the [`Envelope`] fields in
/// their serde order; `payload` and `metadata` are the stored JSON as
/// Postgres renders it, not decoded and re-encoded). It decodes to exactly
/// the [`Envelope`] that [`read_after`] returns for the same row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEnvelope {
    /// The row's cursor.
    pub cursor: Cursor,
    /// `aggregate_type`; the topic suffix.
    pub aggregate_type: String,
    /// `aggregate_id`; the Kafka key.
    pub aggregate_id: String,
    /// 1-based sequence in the stream.
    pub sequence: i64,
    /// Header `event-type`.
    pub event_type: String,
    /// Header `event-version`.
    pub event_version: String,
    /// The envelope, JSON bytes.
    pub value: Vec<u8>,
    /// The user the event concerns ([`subject_of`]), for the relay's
    /// pseudonymous `subject` (issue 18); never published as is.
    pub subject: Option<Uuid>,
}

/// The user an event concerns, for the analysts' pseudonymous subject id
/// (docs/envelope.md "Subject"): the acting user (`metadata.actor`) when
/// there is one; else the aggregate id of the streams kept per user
/// (`user`, `passkeys`, `totp`, `access`); else the payload's `user_id`,
/// `owner_id` or `author_id`. `None` for events that concern no user (a
/// throttle, an expired registration's reservation, …). `payload` is the
/// untagged payload text, `metadata` the metadata text.
pub fn subject_of(aggregate_type: &str, aggregate_id: &str, payload: &str, metadata: &str) -> Option<Uuid> {
    #[derive(serde::Deserialize)]
    struct Meta {
        actor: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Owner {
        user_id: Option<serde_json::Value>,
        owner_id: Option<serde_json::Value>,
        author_id: Option<serde_json::Value>,
    }
    let parse = |s: &str| Uuid::parse_str(s).ok();
    if let Some(actor) = serde_json::from_str::<Meta>(metadata).ok().and_then(|m| m.actor) {
        if let Some(id) = parse(&actor) {
            return Some(id);
        }
    }
    if matches!(aggregate_type, "user" | "passkeys" | "totp" | "access") {
        if let Some(id) = parse(aggregate_id) {
            return Some(id);
        }
    }
    let owner = serde_json::from_str::<Owner>(payload).ok()?;
    [owner.user_id, owner.owner_id, owner.author_id]
        .into_iter()
        .flatten()
        .find_map(|v| v.as_str().and_then(parse))
}

/// Like [`read_after`] (unfiltered), but returns each envelope encoded
/// ([`EncodedEnvelope`]): the stored JSON text of the payload — unwrapped
/// from postgres-es' externally tagged form `{"<EventType>": {...}}` as
/// [`Envelope::from_stored`] does — and of the metadata is copied into the
/// envelope as is. This spares the relay a decode into `serde_json::Value`
/// and an encode per event (the tag is checked by a scan that allocates
/// nothing; unusual payloads take the decoding path).
///
/// # Errors
/// Any database error.
pub async fn read_after_encoded<'e, E>(
    executor: E,
    cursor: Cursor,
    limit: usize,
) -> Result<Vec<EncodedEnvelope>, sqlx::Error>
where
    E: PgExecutor<'e>,
{
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let sql = format!(
        "SELECT txid::text::bigint AS cursor_txid, position, event_id, aggregate_type, \
         aggregate_id, sequence, event_type, event_version, recorded_at, \
         payload::text AS payload_text, metadata::text AS metadata_text \
         FROM events WHERE {SETTLED} ORDER BY txid, position LIMIT $3"
    );
    let rows =
        sqlx::query(&sql).bind(cursor.txid).bind(cursor.position).bind(limit).fetch_all(executor).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.push(encoded_from_row(row)?);
    }
    Ok(out)
}

fn encoded_from_row(row: &PgRow) -> Result<EncodedEnvelope, sqlx::Error> {
    let cursor = Cursor { txid: row.try_get("cursor_txid")?, position: row.try_get("position")? };
    let event_id: Uuid = row.try_get("event_id")?;
    let aggregate_type: String = row.try_get("aggregate_type")?;
    let aggregate_id: String = row.try_get("aggregate_id")?;
    let sequence: i64 = row.try_get("sequence")?;
    let event_type: String = row.try_get("event_type")?;
    let event_version: String = row.try_get("event_version")?;
    let occurred_at: DateTime<Utc> = row.try_get("recorded_at")?;
    let stored: &str = row.try_get("payload_text")?;
    let metadata: &str = row.try_get("metadata_text")?;
    let payload = untagged_payload(stored, &event_type).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;

    let mut value = Vec::with_capacity(192 + payload.len() + metadata.len());
    let encode = |value: &mut Vec<u8>, key: &str, field: &dyn erased::Json| -> Result<(), sqlx::Error> {
        value.push(if value.is_empty() { b'{' } else { b',' });
        value.push(b'"');
        value.extend_from_slice(key.as_bytes());
        value.extend_from_slice(b"\":");
        field.write(value).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    };
    encode(&mut value, "event_id", &event_id)?;
    encode(&mut value, "aggregate_type", &aggregate_type)?;
    encode(&mut value, "aggregate_id", &aggregate_id)?;
    encode(&mut value, "sequence", &sequence)?;
    encode(&mut value, "position", &cursor.position)?;
    encode(&mut value, "event_type", &event_type)?;
    encode(&mut value, "event_version", &event_version)?;
    encode(&mut value, "occurred_at", &occurred_at)?;
    value.extend_from_slice(b",\"payload\":");
    value.extend_from_slice(payload.as_bytes());
    value.extend_from_slice(b",\"metadata\":");
    value.extend_from_slice(metadata.as_bytes());
    value.push(b'}');
    let subject = subject_of(&aggregate_type, &aggregate_id, &payload, metadata);
    Ok(EncodedEnvelope {
        cursor,
        aggregate_type,
        aggregate_id,
        sequence,
        event_type,
        event_version,
        value,
        subject,
    })
}

/// The payload text inside postgres-es' tag: `{"<event_type>": X}` → `X`
/// (borrowed) when the text is exactly one member named `event_type`;
/// anything else is decoded and treated like [`Envelope::from_stored`]
/// does (a one-member object with that key is unwrapped, else kept).
///
/// # Errors
/// The stored text is not JSON.
fn untagged_payload<'a>(
    stored: &'a str,
    event_type: &str,
) -> Result<std::borrow::Cow<'a, str>, serde_json::Error> {
    use serde::de::IgnoredAny;

    let fast = || -> Option<&'a str> {
        let plain = !event_type.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20);
        let body = stored.trim_start().strip_prefix('{')?.trim_start();
        let rest = body.strip_prefix('"')?.strip_prefix(event_type)?.strip_prefix('"')?;
        let rest = rest.trim_start().strip_prefix(':')?.trim_start();
        if !plain {
            return None;
        }
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<IgnoredAny>();
        values.next()?.ok()?;
        let end = values.byte_offset();
        (rest[end..].trim() == "}").then(|| &rest[..end])
    };
    if let Some(inner) = fast() {
        return Ok(std::borrow::Cow::Borrowed(inner));
    }
    let value: serde_json::Value = serde_json::from_str(stored)?;
    Ok(match value {
        serde_json::Value::Object(mut map) if map.len() == 1 && map.contains_key(event_type) => {
            std::borrow::Cow::Owned(map.remove(event_type).unwrap_or(serde_json::Value::Null).to_string())
        }
        _ => std::borrow::Cow::Borrowed(stored),
    })
}

/// Serialises one envelope field with serde (the same output as the
/// derived `Serialize` of [`Envelope`]) behind one object-safe trait.
mod erased {
    pub trait Json {
        fn write(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error>;
    }

    impl<T: serde::Serialize> Json for T {
        fn write(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
            serde_json::to_writer(out, self)
        }
    }
}

/// Whether committed events exist after `cursor` that [`read_after`] cannot
/// return yet because an older transaction is still in flight. Tailers use
/// it to retry soon instead of waiting for the slow poll, since the older
/// transaction's end is not necessarily notified.
///
/// # Errors
/// Any database error.
pub async fn has_unsettled_after<'e, E>(
    executor: E,
    cursor: Cursor,
    aggregate_types: Option<&[String]>,
) -> Result<bool, sqlx::Error>
where
    E: PgExecutor<'e>,
{
    let sql = has_unsettled_after_sql(aggregate_types.is_some());
    let query = sqlx::query_scalar(&sql).bind(cursor.txid).bind(cursor.position);
    let query = match aggregate_types {
        None => query,
        Some(types) => query.bind(types),
    };
    query.fetch_one(executor).await
}

/// The statement [`has_unsettled_after`] runs: binds `$1` cursor txid, `$2`
/// cursor position, then (when `filtered`) `$3` the aggregate types.
/// Public so that tests and operators can `EXPLAIN` it: it must walk
/// `events_cursor_idx` from the cursor. The `ORDER BY … LIMIT 1` in a
/// scalar subquery is what makes the planner do so (inside `EXISTS`
/// Postgres drops both): a bare `EXISTS` was planned as a sequential scan
/// whenever the statistics promised many rows after the cursor (the rows
/// there are the newest, so it read the whole table: 3–7 ms per call at
/// 5,000 events in `bench freshness`, growing with the store).
pub fn has_unsettled_after_sql(filtered: bool) -> String {
    let types = if filtered { " AND aggregate_type = ANY($3)" } else { "" };
    format!(
        "SELECT COALESCE((SELECT true FROM events WHERE (txid, position) > ($1::text::xid8, $2){types} \
         ORDER BY txid, position LIMIT 1), false)"
    )
}

/// The stored cursor of tailer `name` in `tail_checkpoints`, or
/// [`Cursor::ZERO`] when it has none.
///
/// # Errors
/// Any database error.
pub async fn load_checkpoint<'e, E>(executor: E, name: &str) -> Result<Cursor, sqlx::Error>
where
    E: PgExecutor<'e>,
{
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT last_txid::text::bigint, last_position FROM tail_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(executor)
            .await?;
    Ok(row.map_or(Cursor::ZERO, |(txid, position)| Cursor { txid, position }))
}

/// Stores (upserts) the cursor of tailer `name` in `tail_checkpoints`.
///
/// # Errors
/// Any database error.
pub async fn store_checkpoint<'e, E>(executor: E, name: &str, cursor: Cursor) -> Result<(), sqlx::Error>
where
    E: PgExecutor<'e>,
{
    sqlx::query(
        "INSERT INTO tail_checkpoints (name, last_txid, last_position, updated_at) \
         VALUES ($1, $2::text::xid8, $3, now()) \
         ON CONFLICT (name) DO UPDATE SET last_txid = EXCLUDED.last_txid, \
         last_position = EXCLUDED.last_position, updated_at = EXCLUDED.updated_at",
    )
    .bind(name)
    .bind(cursor.txid)
    .bind(cursor.position)
    .execute(executor)
    .await?;
    Ok(())
}

/// Whether a notification with `payload` (the aggregate types of an
/// insert, comma-separated; empty: unknown) concerns a reader of `types`.
fn concerns(payload: &str, types: Option<&[String]>) -> bool {
    match types {
        None => true,
        Some(_) if payload.is_empty() => true,
        Some(types) => payload.split(',').any(|t| types.iter().any(|wanted| wanted == t)),
    }
}

/// A connection of `pool` listening on [`EVENTS_CHANNEL`] (an
/// [`EventsListener`]'s own, or a [`SharedListener`]'s).
///
/// # Errors
/// The connection or the `LISTEN` failed.
async fn listen_on(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(EVENTS_CHANNEL).await?;
    Ok(listener)
}

/// Why [`EventsListener::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// At least one notification arrived (all buffered ones were drained).
    Notified,
    /// The timeout ran out without a notification.
    Timeout,
    /// The listening connection was lost or could not be used;
    /// notifications may have been missed, so read again.
    Reconnected,
}

/// `LISTEN streamforge_events` on a connection of the pool, reconnecting
/// after errors instead of failing: a tailer waits on it between reads and
/// falls back to its poll interval while it is down.
///
/// Call [`EventsListener::connect`] (or a first [`EventsListener::wait`])
/// *before* the read whose emptiness makes you wait, so that no commit
/// between the read and the wait goes unnoticed.
pub struct EventsListener {
    pool: PgPool,
    listener: Option<PgListener>,
    /// Subscribed to a process-wide connection instead of one of its own
    /// ([`EventsListener::shared`]).
    shared: Option<Subscription>,
}

/// An [`EventsListener`]'s subscription to a [`SharedListener`].
struct Subscription {
    hub: std::sync::Arc<shared::Hub>,
    notes: Option<tokio::sync::broadcast::Receiver<shared::Note>>,
}

impl std::fmt::Debug for EventsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsListener")
            .field("listening", &self.is_listening())
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

impl EventsListener {
    /// A listener on `pool` (not yet connected; it holds one pooled
    /// connection once connected).
    pub fn new(pool: PgPool) -> Self {
        Self { pool, listener: None, shared: None }
    }

    /// A listener that takes its notifications from `shared`, the
    /// process's one listening connection, instead of a connection of its
    /// own. It behaves as one of its own: subscribed at
    /// [`EventsListener::connect`], woken with [`Wake::Reconnected`] when
    /// the shared connection listens again after a loss, polling while it
    /// is down.
    pub fn shared(pool: PgPool, shared: &SharedListener) -> Self {
        Self { pool, listener: None, shared: Some(Subscription { hub: shared.hub(), notes: None }) }
    }

    /// Whether the listening connection is currently up.
    pub fn is_listening(&self) -> bool {
        match &self.shared {
            Some(s) => s.notes.is_some() && s.hub.is_listening(),
            None => self.listener.is_some(),
        }
    }

    /// Connects and listens if not already done. Returns whether it is
    /// listening; a failure is logged and retried at the next call.
    pub async fn connect(&mut self) -> bool {
        if let Some(s) = &mut self.shared {
            if s.notes.is_none() {
                s.notes = Some(s.hub.subscribe());
            }
            return s.hub.is_listening();
        }
        if self.listener.is_some() {
            return true;
        }
        match listen_on(&self.pool).await {
            Ok(listener) => {
                self.listener = Some(listener);
                true
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot LISTEN {EVENTS_CHANNEL}; polling meanwhile");
                false
            }
        }
    }

    /// Consumes the notifications already received, without waiting (a
    /// read that follows covers them).
    pub async fn drain(&mut self) {
        if let Some(notes) = self.shared.as_mut().and_then(|s| s.notes.as_mut()) {
            while let Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) = notes.try_recv() {
            }
            return;
        }
        if let Some(listener) = self.listener.as_mut() {
            while let Ok(Ok(Some(_))) = tokio::time::timeout(Duration::ZERO, listener.try_recv()).await {}
        }
    }

    /// Waits at most `timeout` for a notification. While the listener is
    /// down it reconnects first and otherwise just sleeps `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> Wake {
        self.wait_for(timeout, None).await
    }

    /// [`EventsListener::wait`] for a commit of events of `types` only
    /// (`None`: any): a notification naming only other aggregate types (the
    /// payload lists the types of the insert, comma-separated) is passed
    /// over; one with an empty payload counts.
    pub async fn wait_for(&mut self, timeout: Duration, types: Option<&[String]>) -> Wake {
        if self.shared.is_some() {
            return self.wait_shared(timeout, types).await;
        }
        if !self.connect().await {
            tokio::time::sleep(timeout).await;
            return Wake::Timeout;
        }
        let Some(listener) = self.listener.as_mut() else {
            return Wake::Reconnected;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let received = loop {
            match tokio::time::timeout_at(deadline, listener.try_recv()).await {
                Ok(Ok(Some(notification))) if !concerns(notification.payload(), types) => continue,
                other => break other,
            }
        };
        match received {
            Err(_elapsed) => Wake::Timeout,
            Ok(Ok(Some(_))) => {
                // Drain what is already there: one read serves them all.
                while let Ok(Ok(Some(_))) = tokio::time::timeout(Duration::ZERO, listener.try_recv()).await {}
                Wake::Notified
            }
            Ok(Ok(None)) => {
                tracing::debug!("LISTEN connection lost and re-established");
                Wake::Reconnected
            }
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "LISTEN connection failed; reconnecting");
                self.listener = None;
                tokio::time::sleep(timeout.min(Duration::from_millis(250))).await;
                Wake::Reconnected
            }
        }
    }

    /// [`EventsListener::wait_for`] on the shared connection.
    async fn wait_shared(&mut self, timeout: Duration, types: Option<&[String]>) -> Wake {
        use tokio::sync::broadcast::error::RecvError;
        // Subscribed even while the shared connection is down (at start,
        // after a loss): it says `Reconnected` once it listens again, which
        // ends this wait; until then the timeout is the poll.
        self.connect().await;
        let Some(notes) = self.shared.as_mut().and_then(|s| s.notes.as_mut()) else {
            return Wake::Reconnected;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let received = loop {
            match tokio::time::timeout_at(deadline, notes.recv()).await {
                Ok(Ok(shared::Note::Payload(payload))) if !concerns(&payload, types) => continue,
                other => break other,
            }
        };
        match received {
            Err(_elapsed) => Wake::Timeout,
            Ok(Ok(shared::Note::Payload(_)) | Err(RecvError::Lagged(_))) => {
                self.drain().await;
                Wake::Notified
            }
            Ok(Ok(shared::Note::Reconnected)) => Wake::Reconnected,
            Ok(Err(RecvError::Closed)) => {
                if let Some(s) = self.shared.as_mut() {
                    s.notes = None;
                }
                tokio::time::sleep(timeout.min(Duration::from_millis(250))).await;
                Wake::Reconnected
            }
        }
    }
}

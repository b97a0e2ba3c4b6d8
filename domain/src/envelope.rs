//! The envelope: the one shape every event takes outside the store
//! (ARCHITECTURE decided 3). It is the Kafka message value, the Postgres
//! feed item and the replay record, serialised as JSON.
//!
//! This is a public contract for analysts; see `docs/envelope.md`.
//! [`ENVELOPE_SCHEMA_VERSION`] is bumped on any incompatible change.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the envelope contract itself (not of the payloads, which carry
/// their own `event_version`). Also sent as the Kafka header `envelope-version`.
pub const ENVELOPE_SCHEMA_VERSION: &str = "1";

/// Default Kafka topic prefix; the topic of an event is
/// `<prefix><aggregate_type>`, e.g. `streamforge.events.user`.
pub const DEFAULT_TOPIC_PREFIX: &str = "streamforge.events.";

/// One stored event as published.
///
/// - `event_id`: unique id of the event (stable across re-deliveries).
/// - `aggregate_type`, `aggregate_id`: the stream; Kafka key = `aggregate_id`.
/// - `sequence`: 1-based position inside the aggregate's stream.
/// - `position`: global store position (gaps allowed; order by `(txid, position)`).
/// - `event_type`, `event_version`: name and schema version of `payload`.
/// - `occurred_at`: append time (RFC 3339, UTC).
/// - `payload`: the event body (personal fields sealed, never secrets).
/// - `metadata`: string map (request id, actor) — never personal data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub position: i64,
    pub event_type: String,
    pub event_version: String,
    pub occurred_at: DateTime<Utc>,
    pub payload: serde_json::Value,
    pub metadata: serde_json::Value,
}

impl Envelope {
    /// Builds the envelope from a stored row. postgres-es stores an event as
    /// serde's externally tagged form `{"<EventType>": {...}}`; the envelope
    /// carries the inner object only, since `event_type` already names it.
    #[allow(clippy::too_many_arguments)]
    pub fn from_stored(
        event_id: Uuid,
        aggregate_type: String,
        aggregate_id: String,
        sequence: i64,
        position: i64,
        event_type: String,
        event_version: String,
        occurred_at: DateTime<Utc>,
        stored_payload: serde_json::Value,
        metadata: serde_json::Value,
    ) -> Self {
        let payload = match stored_payload {
            serde_json::Value::Object(mut map) if map.len() == 1 && map.contains_key(&event_type) => {
                map.remove(&event_type).unwrap_or(serde_json::Value::Null)
            }
            other => other,
        };
        Self {
            event_id,
            aggregate_type,
            aggregate_id,
            sequence,
            position,
            event_type,
            event_version,
            occurred_at,
            payload,
            metadata,
        }
    }

    /// Decodes the payload back into an aggregate's event enum `E`
    /// (externally tagged by `event_type`).
    ///
    /// # Errors
    /// Returns the serde error when the payload does not match `E`.
    pub fn decode<E: serde::de::DeserializeOwned>(&self) -> Result<E, serde_json::Error> {
        let mut map = serde_json::Map::with_capacity(1);
        map.insert(self.event_type.clone(), self.payload.clone());
        serde_json::from_value(serde_json::Value::Object(map))
    }

    /// Kafka topic for this envelope under `prefix`.
    pub fn topic(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.aggregate_type)
    }
}

/// Reserved event type (issue 18): published on the `user` topic when a
/// person is erased, payload `{subject_id, erased_at}`; every consumer
/// must then purge what it derived about the subject (docs/envelope.md
/// "Erasure"). Nothing emits it yet: the privacy issue will.
pub const SUBJECT_ERASED: &str = "SubjectErased";

/// Aggregate types that exist, i.e. the topics the relay creates at start.
pub const AGGREGATE_TYPES: &[&str] = &[
    "user",
    "otp_challenge",
    "session",
    "throttle",
    "passkeys",
    "totp",
    "device_pin",
    "relationship",
    "track",
    "engagement",
    "comment",
    "inbox",
    "role",
    "access",
    "moderation",
];

//! History for admins (issue 18): the event log filtered, and any
//! aggregate's state folded from its events up to a time or a position.
//!
//! Personal fields (sealed strings, `v1.…`) are opened for the admin while
//! the subject's key exists and shown as `"[erased]"` after; hashes and
//! secrets (fields whose name contains `hash`, `secret` or `token`) are never
//! opened. The caller records every read that opened something
//! (`AccessService::record_history_read`).

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::values::Sealed;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::vault::{Vault, VaultError};

/// Most events per page of the log.
pub const MAX_PAGE: i64 = 1_000;

/// One stored event as the admin sees it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StoredEvent {
    pub position: i64,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// `{"<EventType>": {…fields}}` as stored.
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

/// Filters of the log (all optional).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    pub event_type: Option<String>,
    /// `metadata.actor`.
    pub actor: Option<Uuid>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub after_position: Option<i64>,
}

const COLUMNS: &str = "position, event_id, aggregate_type, aggregate_id, sequence, event_type, event_version,
                       payload::jsonb AS payload, metadata::jsonb AS metadata, recorded_at";

/// The log, ascending by position, at most `limit` (≤ [`MAX_PAGE`]).
///
/// # Errors
/// Database errors.
pub async fn events(pool: &PgPool, f: &EventFilter, limit: i64) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM events
         WHERE ($1::text IS NULL OR aggregate_type = $1)
           AND ($2::text IS NULL OR aggregate_id = $2)
           AND ($3::text IS NULL OR event_type = $3)
           AND ($4::text IS NULL OR metadata->>'actor' = $4)
           AND ($5::timestamptz IS NULL OR recorded_at >= $5)
           AND ($6::timestamptz IS NULL OR recorded_at < $6)
           AND ($7::bigint IS NULL OR position > $7)
         ORDER BY position LIMIT $8"
    ))
    .bind(f.aggregate_type.as_deref())
    .bind(f.aggregate_id.as_deref())
    .bind(f.event_type.as_deref())
    .bind(f.actor.map(|a| a.to_string()))
    .bind(f.from)
    .bind(f.to)
    .bind(f.after_position)
    .bind(limit.clamp(1, MAX_PAGE))
    .fetch_all(pool)
    .await
}

/// A point in history: a time (`recorded_at ≤`) or a position (`≤`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    Now,
    Time(DateTime<Utc>),
    Position(i64),
}

/// Why a fold failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("no such aggregate type")]
    UnknownType,
    #[error("an event does not decode: {0}")]
    Decode(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The aggregate's events up to `as_of` and the state they fold to
/// (`None` when it has none by then).
///
/// # Errors
/// `UnknownType`, `Decode`, `Db`.
pub async fn fold_as_of(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
    as_of: AsOf,
) -> Result<Option<(Value, Vec<StoredEvent>)>, HistoryError> {
    if !domain::envelope::AGGREGATE_TYPES.contains(&aggregate_type) {
        return Err(HistoryError::UnknownType);
    }
    let (time, position) = match as_of {
        AsOf::Now => (None, None),
        AsOf::Time(t) => (Some(t), None),
        AsOf::Position(p) => (None, Some(p)),
    };
    let events: Vec<StoredEvent> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM events WHERE aggregate_type = $1 AND aggregate_id = $2
           AND ($3::timestamptz IS NULL OR recorded_at <= $3) AND ($4::bigint IS NULL OR position <= $4)
         ORDER BY sequence"
    ))
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(time)
    .bind(position)
    .fetch_all(pool)
    .await?;
    if events.is_empty() {
        return Ok(None);
    }
    use domain::{access, catalog, identity, moderation, social};
    let state = match aggregate_type {
        "user" => fold::<identity::user::User>(&events),
        "otp_challenge" => fold::<identity::otp::OtpChallenge>(&events),
        "session" => fold::<identity::session::Session>(&events),
        "throttle" => fold::<identity::throttle::Throttle>(&events),
        "passkeys" => fold::<identity::passkey::Passkeys>(&events),
        "totp" => fold::<identity::totp::Totp>(&events),
        "device_pin" => fold::<identity::pin::DevicePin>(&events),
        "relationship" => fold::<social::relationship::Relationship>(&events),
        "track" => fold::<catalog::track::Track>(&events),
        "engagement" => fold::<social::engagement::Engagement>(&events),
        "comment" => fold::<social::comment::Comment>(&events),
        "inbox" => fold::<social::inbox::Inbox>(&events),
        "role" => fold::<access::role::Role>(&events),
        "access" => fold::<access::grants::Grants>(&events),
        "moderation" => fold::<moderation::Case>(&events),
        _ => return Err(HistoryError::UnknownType),
    }?;
    Ok(Some((state, events)))
}

fn fold<A: Aggregate>(events: &[StoredEvent]) -> Result<Value, HistoryError> {
    let mut state = A::default();
    for e in events {
        let (_, payload) = domain::upcast::upcast(&e.event_type, &e.event_version, e.payload.clone());
        let event: A::Event = serde_json::from_value(payload)
            .map_err(|err| HistoryError::Decode(format!("{} #{}: {err}", e.event_type, e.sequence)))?;
        state.apply(event);
    }
    serde_json::to_value(&state).map_err(|e| HistoryError::Decode(e.to_string()))
}

/// What [`reveal`] opened.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Revealed {
    /// Subjects whose personal fields were opened (the read to record).
    pub opened: Vec<Uuid>,
    /// Sealed fields whose subject's key is gone.
    pub erased: usize,
}

/// Opens the sealed personal fields of `value` in place, trying as subject
/// the aggregate id and the user ids the event names (`user_id`,
/// `owner_id`, `author_id`, `reporter`); a field whose subject key is gone
/// becomes `"[erased]"`. Never opens fields named like a hash, secret or
/// token.
///
/// # Errors
/// [`VaultError::Db`].
pub async fn reveal(vault: &Vault, aggregate_id: &str, value: &mut Value) -> Result<Revealed, VaultError> {
    let mut candidates: Vec<Uuid> = aggregate_id.split(':').filter_map(|p| p.parse().ok()).collect();
    collect_ids(value, &mut candidates);
    candidates.dedup();
    let mut out = Revealed::default();
    open_in(vault, &candidates, value, &mut out).await?;
    out.opened.sort_unstable();
    out.opened.dedup();
    Ok(out)
}

fn collect_ids(value: &Value, out: &mut Vec<Uuid>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if matches!(k.as_str(), "user_id" | "owner_id" | "author_id" | "reporter") {
                    if let Some(id) = v.as_str().and_then(|s| s.parse().ok()) {
                        if !out.contains(&id) {
                            out.push(id);
                        }
                    }
                }
                collect_ids(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_ids(v, out)),
        _ => {}
    }
}

fn open_in<'a>(
    vault: &'a Vault,
    candidates: &'a [Uuid],
    value: &'a mut Value,
    out: &'a mut Revealed,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), VaultError>> + Send + 'a>> {
    Box::pin(async move {
        match value {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    let key = k.to_ascii_lowercase();
                    if key.contains("hash") || key.contains("secret") || key.contains("token") {
                        continue;
                    }
                    if let Some(s) = v.as_str().filter(|s| s.starts_with("v1.")) {
                        let sealed = Sealed(s.to_owned());
                        let mut key_gone = false;
                        let mut opened = None;
                        for subject in candidates {
                            match vault.open(*subject, &sealed).await {
                                Ok(Some(plain)) => {
                                    opened = Some((plain, *subject));
                                    break;
                                }
                                Ok(None) => key_gone = true,
                                Err(VaultError::Corrupt) => {}
                                Err(e) => return Err(e),
                            }
                        }
                        match opened {
                            Some((plain, subject)) => {
                                *v = Value::String(plain);
                                out.opened.push(subject);
                            }
                            None if key_gone => {
                                *v = Value::String("[erased]".to_owned());
                                out.erased += 1;
                            }
                            None => {}
                        }
                    } else {
                        open_in(vault, candidates, v, out).await?;
                    }
                }
            }
            Value::Array(items) => {
                for v in items.iter_mut() {
                    open_in(vault, candidates, v, out).await?;
                }
            }
            _ => {}
        }
        Ok(())
    })
}

//! History for admins (issue 18, first part): the event log and any
//! aggregate's state as of a time or a position. Personal fields are
//! opened while the subject's key exists (`"[erased]"` after), and every
//! read that opened some is recorded (`HistoryRead`).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use commands::history::{self, AsOf, EventFilter, HistoryError, StoredEvent};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{AuditRead, Authorized};
use crate::error::{ApiError, ErrorBody};
use crate::extract::ValidQuery;
use crate::routes::auth::meta;
use crate::routes::paging;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/events", get(list_events))
        .route("/api/admin/aggregates/{kind}/{id}", get(aggregate_as_of))
        .route("/api/admin/event-types", get(event_types))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventTypeView {
    pub aggregate_type: String,
    pub event_type: String,
    /// Versions with a schema (each under `schemas/`).
    pub versions: Vec<String>,
    /// The current version's JSON Schema (closed; draft 2020-12).
    pub schema: serde_json::Value,
}

/// The event catalogue: every event type with its aggregate type, versions
/// and JSON Schema (`admin.audit.read`).
#[utoipa::path(get, path = "/api/admin/event-types", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = [EventTypeView]), (status = 403, description = "forbidden", body = ErrorBody)))]
pub async fn event_types(_: Authorized<AuditRead>) -> Json<Vec<EventTypeView>> {
    Json(
        domain::schema::event_schemas()
            .into_iter()
            .map(|s| EventTypeView {
                aggregate_type: s.aggregate_type.to_owned(),
                event_type: s.event_type,
                versions: (1..=s.version.parse::<u32>().unwrap_or(1)).map(|v| v.to_string()).collect(),
                schema: s.schema,
            })
            .collect(),
    )
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct EventQuery {
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    pub event_type: Option<String>,
    /// The acting user (`metadata.actor`).
    pub actor: Option<Uuid>,
    /// Recorded at or after (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Recorded before (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// From a previous page's `next_after_position`.
    pub after_position: Option<i64>,
    /// 1–1,000 (default 100).
    pub limit: Option<i64>,
}

/// One event of the log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    pub position: i64,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// The event's fields, personal ones opened (or `"[erased]"`).
    pub payload: serde_json::Value,
    pub metadata: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    pub items: Vec<EventView>,
    /// Pass as `after_position` for the next page; `null` on the last.
    pub next_after_position: Option<i64>,
}

/// Opens the personal fields of `events`; returns them and the subjects opened.
async fn reveal_all(
    state: &AppState,
    events: Vec<StoredEvent>,
) -> Result<(Vec<EventView>, Vec<Uuid>), ApiError> {
    let mut opened = Vec::new();
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let mut payload = e.payload;
        let revealed = history::reveal(&state.identity.vault, &e.aggregate_id, &mut payload).await?;
        opened.extend(revealed.opened);
        // The stored payload is `{"<EventType>": {…}}`: show the fields.
        let payload = match payload {
            serde_json::Value::Object(mut m) if m.len() == 1 && m.contains_key(&e.event_type) => {
                m.remove(&e.event_type).unwrap_or_default()
            }
            other => other,
        };
        out.push(EventView {
            position: e.position,
            event_id: e.event_id,
            aggregate_type: e.aggregate_type,
            aggregate_id: e.aggregate_id,
            sequence: e.sequence,
            event_type: e.event_type,
            event_version: e.event_version,
            payload,
            metadata: e.metadata,
            recorded_at: e.recorded_at,
        });
    }
    opened.sort_unstable();
    opened.dedup();
    Ok((out, opened))
}

/// The event log, ascending by position, filtered (`admin.audit.read`).
#[utoipa::path(get, path = "/api/admin/events", tag = "admin", security(("bearer" = [])),
    params(EventQuery),
    responses((status = 200, body = EventPage), (status = 403, description = "forbidden", body = ErrorBody),
        (status = 422, description = "validation_failed (limit)", body = ErrorBody)))]
pub async fn list_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    who: Authorized<AuditRead>,
    ValidQuery(q): ValidQuery<EventQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=history::MAX_PAGE).contains(&limit) {
        return Err(paging::invalid("limit", "must be 1 to 1000"));
    }
    let filter = EventFilter {
        aggregate_type: q.aggregate_type,
        aggregate_id: q.aggregate_id,
        event_type: q.event_type,
        actor: q.actor,
        from: q.from,
        to: q.to,
        after_position: q.after_position,
    };
    let events = history::events(&state.read, &filter, limit).await?;
    let full = events.len() as i64 == limit;
    let (items, opened) = reveal_all(&state, events).await?;
    let reader = who.user.user_id;
    state.access.record_history_read(reader, opened, "events", &meta(&headers, Some(reader))).await?;
    let next_after_position = if full { items.last().map(|e| e.position) } else { None };
    Ok(Json(EventPage { items, next_after_position }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AsOfQuery {
    /// RFC 3339 time, or an event position; now when absent.
    pub as_of: Option<String>,
}

/// A path's aggregate type and id.
#[derive(Debug, Deserialize)]
pub struct AggregatePath {
    pub kind: String,
    pub id: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AggregateView {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The last sequence folded.
    pub version: i64,
    /// The state folded from `events` (personal fields still sealed).
    pub state: serde_json::Value,
    /// The events it was folded from, personal fields opened.
    pub events: Vec<EventView>,
}

/// An aggregate's state as of a time or a position, and its events up to
/// then (`admin.audit.read`). Every aggregate type.
#[utoipa::path(get, path = "/api/admin/aggregates/{kind}/{id}", tag = "admin", security(("bearer" = [])),
    params(("kind" = String, Path), ("id" = String, Path), AsOfQuery),
    responses((status = 200, body = AggregateView), (status = 403, description = "forbidden", body = ErrorBody),
        (status = 404, description = "aggregate_not_found (none by then)", body = ErrorBody),
        (status = 422, description = "validation_failed (as_of, type)", body = ErrorBody)))]
pub async fn aggregate_as_of(
    State(state): State<AppState>,
    headers: HeaderMap,
    who: Authorized<AuditRead>,
    Path(p): Path<AggregatePath>,
    ValidQuery(q): ValidQuery<AsOfQuery>,
) -> Result<Json<AggregateView>, ApiError> {
    let as_of = match q.as_of.as_deref() {
        None => AsOf::Now,
        Some(s) => match (s.parse::<i64>(), DateTime::parse_from_rfc3339(s)) {
            (Ok(p), _) => AsOf::Position(p),
            (_, Ok(t)) => AsOf::Time(t.with_timezone(&Utc)),
            _ => return Err(paging::invalid("as_of", "must be an RFC 3339 time or an event position")),
        },
    };
    let folded = history::fold_as_of(&state.read, &p.kind, &p.id, as_of).await.map_err(|e| match e {
        HistoryError::UnknownType => paging::invalid("type", "is not an aggregate type"),
        HistoryError::Decode(m) => ApiError::internal(m),
        HistoryError::Db(e) => ApiError::from(e),
    })?;
    let Some((folded_state, events)) = folded else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "aggregate_not_found", "no events by then"));
    };
    let version = events.last().map_or(0, |e| e.sequence);
    let (events, opened) = reveal_all(&state, events).await?;
    let reader = who.user.user_id;
    let what = format!("aggregate {}:{}", p.kind, p.id);
    state.access.record_history_read(reader, opened, &what, &meta(&headers, Some(reader))).await?;
    Ok(Json(AggregateView {
        aggregate_type: p.kind,
        aggregate_id: p.id,
        version,
        state: folded_state,
        events,
    }))
}

//! Projection status for admins (issue 18): `GET /api/admin/projections`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Authorized, Replay};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/admin/projections", get(status))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProjectionStatus {
    pub name: String,
    /// `live`, `failed` (see `error`, `failed_event`) or `idle` (nothing
    /// applied yet).
    pub state: String,
    /// Position of the last event applied.
    pub position: Option<i64>,
    /// Events appended to the store after it (all types; an upper bound of
    /// this projector's backlog).
    pub lag_events: i64,
    /// Milliseconds between the last event applied and now, when behind; 0
    /// when caught up.
    pub behind_ms: i64,
    /// Events applied since the status was first recorded.
    pub applied: i64,
    /// Smoothed events per second over recent batches.
    pub events_per_second: f64,
    pub last_event_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// `type/id#sequence` of the event it is stuck on.
    pub failed_event: Option<String>,
}

type Row = (String, Option<i64>, Option<DateTime<Utc>>, i64, f64, String, Option<String>, Option<String>);

/// Every projector's progress, lag and state (`admin.replay`).
#[utoipa::path(get, path = "/api/admin/projections", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = [ProjectionStatus]), (status = 403, description = "forbidden", body = ErrorBody)))]
pub async fn status(
    State(state): State<AppState>,
    _: Authorized<Replay>,
) -> Result<Json<Vec<ProjectionStatus>>, ApiError> {
    // The head: the identity sequence's last value (O(1), no scan).
    let head: Option<i64> =
        sqlx::query_scalar("SELECT pg_sequence_last_value(pg_get_serial_sequence('events', 'position'))")
            .fetch_one(&state.read)
            .await?;
    let head = head.unwrap_or(0);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT projector, position, last_event_at, applied, rate, state, error, failed_event FROM projection_status",
    )
    .fetch_all(&state.read)
    .await?;
    let mut names: Vec<&'static str> = crate::app::App::projectors().iter().map(|p| p.name()).collect();
    names.push("home_feed");
    let now = Utc::now();
    let out = names
        .into_iter()
        .map(|name| match rows.iter().find(|r| r.0 == name) {
            Some((_, position, last_event_at, applied, rate, st, error, failed_event)) => {
                let lag_events = (head - position.unwrap_or(0)).max(0);
                let behind_ms = if lag_events > 0 {
                    last_event_at.map_or(0, |t| (now - t).num_milliseconds().max(0))
                } else {
                    0
                };
                ProjectionStatus {
                    name: name.to_owned(),
                    state: st.clone(),
                    position: *position,
                    lag_events,
                    behind_ms,
                    applied: *applied,
                    events_per_second: *rate,
                    last_event_at: *last_event_at,
                    error: error.clone(),
                    failed_event: failed_event.clone(),
                }
            }
            None => ProjectionStatus {
                name: name.to_owned(),
                state: "idle".to_owned(),
                position: None,
                lag_events: head,
                behind_ms: 0,
                applied: 0,
                events_per_second: 0.0,
                last_event_at: None,
                error: None,
                failed_event: None,
            },
        })
        .collect();
    Ok(Json(out))
}

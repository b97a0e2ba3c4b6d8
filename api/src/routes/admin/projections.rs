//! Projection status and shadow rebuilds for admins (issue 18):
//! `GET /api/admin/projections`, `POST /api/admin/projections/{name}/rebuild`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use projections::runtime::{ErrorChain, ReplayGuard, ReplayOptions};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Authorized, Replay};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/projections", get(status))
        .route("/api/admin/projections/{name}/rebuild", post(rebuild))
}

/// A shadow rebuild's progress (`rebuild_*` of `projection_status`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RebuildStatus {
    /// `running`, `done` or `failed`.
    pub state: String,
    /// Events written to the shadow tables so far.
    pub done: i64,
    /// Settled events to copy, counted at the start.
    pub total: i64,
    /// `done / total` in percent, at most 100.
    pub percent: f64,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

/// Answer of `POST /api/admin/projections/{name}/rebuild`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RebuildStarted {
    pub name: String,
    /// Always `rebuilding`: follow it on `GET /api/admin/projections`.
    pub state: String,
}

/// Starts a shadow rebuild of projector `name` (`admin.replay`; see
/// `projections::runtime::ReplayGuard` and docs/history.md): the read model
/// is rebuilt from the store into shadow tables while the live one keeps
/// serving and consuming, then swapped in atomically. 202 at once; 404
/// `projector_not_found`; 409 `rebuild_running` while a rebuild of it runs
/// on any node.
#[utoipa::path(post, path = "/api/admin/projections/{name}/rebuild", tag = "admin", security(("bearer" = [])),
    params(("name" = String, Path, description = "projector name, as listed by GET /api/admin/projections")),
    responses((status = 202, body = RebuildStarted), (status = 403, description = "forbidden", body = ErrorBody),
        (status = 404, description = "no such projector", body = ErrorBody),
        (status = 409, description = "a rebuild of it is running", body = ErrorBody)))]
pub async fn rebuild(
    State(state): State<AppState>,
    admin: Authorized<Replay>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<RebuildStarted>), ApiError> {
    let Some(projector) = state.replay.projector(&name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "projector_not_found",
            "no projector has that name",
        ));
    };
    let Some(guard) = ReplayGuard::acquire(&state.read, projector.name()).await? else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "rebuild_running",
            "a rebuild of this projector is running",
        ));
    };
    tracing::info!(projector = projector.name(), admin = %admin.user.user_id, "shadow rebuild started");
    let runner = state.replay.clone();
    tokio::spawn(async move {
        match runner.replay(&guard, ReplayOptions::default(), &|_| {}).await {
            Ok(stats) => tracing::info!(projector = guard.name(), ?stats, "shadow rebuild swapped in"),
            Err(error) => {
                tracing::error!(projector = guard.name(), error = %ErrorChain(&error), "shadow rebuild failed")
            }
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(RebuildStarted { name: projector.name().to_owned(), state: "rebuilding".to_owned() }),
    ))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProjectionStatus {
    pub name: String,
    /// `live`, `rebuilding` (a shadow rebuild runs: see `rebuild`),
    /// `failed` (see `error`, `failed_event`; the projector is parked while
    /// the others of its runner go on) or `idle` (nothing applied yet).
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
    /// The last (or running) shadow rebuild, if any.
    pub rebuild: Option<RebuildStatus>,
}

#[derive(sqlx::FromRow)]
struct Row {
    projector: String,
    position: Option<i64>,
    last_event_at: Option<DateTime<Utc>>,
    applied: i64,
    rate: f64,
    state: String,
    error: Option<String>,
    failed_event: Option<String>,
    rebuild_state: Option<String>,
    rebuild_done: i64,
    rebuild_total: i64,
    rebuild_error: Option<String>,
    rebuild_started_at: Option<DateTime<Utc>>,
    rebuild_finished_at: Option<DateTime<Utc>>,
}

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
        "SELECT projector, position, last_event_at, applied, rate, state, error, failed_event, rebuild_state,
                rebuild_done, rebuild_total, rebuild_error, rebuild_started_at, rebuild_finished_at
         FROM projection_status",
    )
    .fetch_all(&state.read)
    .await?;
    let names = state.replay.names();
    let now = Utc::now();
    let out = names
        .into_iter()
        .map(|name| match rows.iter().find(|r| r.projector == name) {
            Some(row) => {
                let lag_events = (head - row.position.unwrap_or(0)).max(0);
                let behind_ms = if lag_events > 0 {
                    row.last_event_at.map_or(0, |t| (now - t).num_milliseconds().max(0))
                } else {
                    0
                };
                let rebuild = row.rebuild_state.as_ref().map(|st| RebuildStatus {
                    state: st.clone(),
                    done: row.rebuild_done,
                    total: row.rebuild_total,
                    percent: if row.rebuild_total > 0 {
                        (row.rebuild_done as f64 * 100.0 / row.rebuild_total as f64).min(100.0)
                    } else if st == "running" {
                        0.0
                    } else {
                        100.0
                    },
                    started_at: row.rebuild_started_at,
                    finished_at: row.rebuild_finished_at,
                    error: row.rebuild_error.clone(),
                });
                let live_state = if row.state != "failed" && row.rebuild_state.as_deref() == Some("running") {
                    "rebuilding".to_owned()
                } else {
                    row.state.clone()
                };
                ProjectionStatus {
                    name: name.to_owned(),
                    state: live_state,
                    position: row.position,
                    lag_events,
                    behind_ms,
                    applied: row.applied,
                    events_per_second: row.rate,
                    last_event_at: row.last_event_at,
                    error: row.error.clone(),
                    failed_event: row.failed_event.clone(),
                    rebuild,
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
                rebuild: None,
            },
        })
        .collect();
    Ok(Json(out))
}

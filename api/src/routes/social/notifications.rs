//! Notifications (issue 16): `GET /api/notifications`, `GET
//! /api/notifications/unread`, `POST /api/notifications/read`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, NaiveDate, Utc};
use projections::social::notifications as rm;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::consistency::{self, ReadAfter, ReadModel};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ValidJson, ValidQuery};
use crate::routes::auth::meta;
use crate::routes::paging;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/notifications", get(list))
        .route("/api/notifications/unread", get(unread))
        .route("/api/notifications/read", post(mark_read))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct NotificationQuery {
    /// From a previous page's `next_cursor`.
    pub cursor: Option<DateTime<Utc>>,
    /// 1–100 (default 50).
    pub limit: Option<i64>,
}

/// "A and 12 others liked …": one kind, one track, one UTC day.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NotificationGroup {
    /// `follow`, `like`, `repost`, `comment`, `reply`; `report_resolved`
    /// (a report of yours was acted on: `detail.outcome`) or `moderation`
    /// (a moderator acted on your account or content: `detail.action`,
    /// `detail.reason`, `detail.until`). Moderation notices name no actor.
    pub kind: String,
    /// The track (none for follows).
    pub track_id: Option<Uuid>,
    pub day: NaiveDate,
    /// The newest three actors, newest first.
    pub actors: Vec<Uuid>,
    /// How many in the group.
    pub count: i64,
    pub latest_at: DateTime<Utc>,
    pub unread: bool,
    /// What a moderation notice says; absent for the social kinds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NotificationPage {
    pub items: Vec<NotificationGroup>,
    /// Pass as `cursor` for older groups; `null` on the last page.
    pub next_cursor: Option<DateTime<Utc>>,
}

/// The caller's notifications, grouped per kind, track and day, newest
/// first; users the caller mutes or blocks (or who block them) are left out.
#[utoipa::path(get, path = "/api/notifications", tag = "engagement", security(("bearer" = [])),
    params(NotificationQuery, ("X-Consistency-Token" = Option<String>, Header)),
    responses((status = 200, body = NotificationPage), (status = 503, description = "consistency_timeout", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    read_after: ReadAfter,
    ValidQuery(q): ValidQuery<NotificationQuery>,
) -> Result<Json<NotificationPage>, ApiError> {
    read_after.wait(&state, &[ReadModel::Notifications, ReadModel::Graph]).await?;
    let limit = paging::limit(q.limit)?;
    let rows = rm::groups(&state.read, user.user_id, q.cursor, limit).await?;
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|g| g.latest_at)).flatten();
    let items = rows
        .into_iter()
        .map(|g| NotificationGroup {
            kind: g.kind,
            track_id: g.track_id,
            day: g.day,
            actors: g.actors.into_iter().filter(|a| !a.is_nil()).collect(),
            count: g.count,
            latest_at: g.latest_at,
            unread: g.unread,
            detail: g.detail,
        })
        .collect();
    Ok(Json(NotificationPage { items, next_cursor }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UnreadResponse {
    /// Notifications after the read mark (mutes and blocks applied).
    pub unread: i64,
}

/// How many notifications are unread.
#[utoipa::path(get, path = "/api/notifications/unread", tag = "engagement", security(("bearer" = [])),
    params(("X-Consistency-Token" = Option<String>, Header)),
    responses((status = 200, body = UnreadResponse)))]
pub async fn unread(
    State(state): State<AppState>,
    user: AuthUser,
    read_after: ReadAfter,
) -> Result<Json<UnreadResponse>, ApiError> {
    read_after.wait(&state, &[ReadModel::Notifications, ReadModel::Graph]).await?;
    Ok(Json(UnreadResponse { unread: rm::unread(&state.read, user.user_id).await? }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct MarkReadRequest {
    /// Everything up to this time (a group's `latest_at`) is read.
    pub up_to: DateTime<Utc>,
}

/// Mark notifications read up to a time (marks only move forward).
#[utoipa::path(post, path = "/api/notifications/read", tag = "engagement", security(("bearer" = [])),
    request_body = MarkReadRequest,
    responses((status = 204, description = "read", headers(("X-Consistency-Token" = String)))))]
pub async fn mark_read(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    ValidJson(req): ValidJson<MarkReadRequest>,
) -> Result<Response, ApiError> {
    let done =
        state.engagement.mark_read(user.user_id, req.up_to, &meta(&headers, Some(user.user_id))).await?;
    Ok((StatusCode::NO_CONTENT, consistency::headers(done.token.as_ref())).into_response())
}

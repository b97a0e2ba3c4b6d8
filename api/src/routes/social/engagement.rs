//! Likes, reposts and timestamped comments (issue 16): commands answer
//! `X-Consistency-Token`, lists accept it back.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use commands::social::engagement::{Engage, EngageError};
use projections::social::engagement::{self as rm, CommentCursor, CommentOrder};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::require_visible;
use crate::auth::{AuthUser, MaybeUser};
use crate::consistency::{self, ReadAfter, ReadModel};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{IdPath, ValidJson, ValidQuery};
use crate::routes::auth::meta;
use crate::routes::catalog::tracks::{track_not_found, visible_track, SecretQuery};
use crate::routes::paging::{self, invalid};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/tracks/{id}/like", post(like).delete(unlike))
        .route("/api/tracks/{id}/repost", post(repost).delete(unrepost))
        .route("/api/tracks/{id}/likers", get(likers))
        .route("/api/users/{id}/likes", get(user_likes))
        .route("/api/users/{id}/reposts", get(user_reposts))
        .route("/api/tracks/{id}/comments", post(post_comment).get(list_comments))
        .route("/api/comments/{id}", delete(delete_comment))
}

impl From<EngageError> for ApiError {
    fn from(e: EngageError) -> Self {
        match e {
            EngageError::TrackNotFound => track_not_found(),
            EngageError::CommentNotFound => {
                ApiError::new(StatusCode::NOT_FOUND, "comment_not_found", e.to_string())
            }
            EngageError::NotAllowed => ApiError::new(StatusCode::FORBIDDEN, "not_allowed", e.to_string()),
            EngageError::Invalid { field, reason } => invalid(field, reason),
            EngageError::Conflict => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            EngageError::Internal(cause) => ApiError::internal(cause),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EngagedResponse {
    pub track_id: Uuid,
    /// `true` after a like (or repost).
    pub active: bool,
}

async fn engage(
    state: &AppState,
    headers: &HeaderMap,
    user: Uuid,
    track: Uuid,
    engage: Engage,
    secret: Option<&str>,
) -> Result<Response, ApiError> {
    let done = state.engagement.engage(user, track, engage, secret, &meta(headers, Some(user))).await?;
    let token = consistency::headers(done.token.as_ref());
    Ok(match engage {
        Engage::Like | Engage::Repost => {
            let status = if done.changed { StatusCode::CREATED } else { StatusCode::OK };
            (status, token, Json(EngagedResponse { track_id: track, active: true })).into_response()
        }
        Engage::Unlike | Engage::Unrepost => (StatusCode::NO_CONTENT, token).into_response(),
    })
}

/// Like a track (the design card's `LikeTrack`): 201 when new, 200 when
/// already liked (no event). Private tracks need `?secret_token=`; a
/// track whose owner and you block one another answers 404.
#[utoipa::path(post, path = "/api/tracks/{id}/like", tag = "engagement", security(("bearer" = [])),
    params(("id" = Uuid, Path), SecretQuery),
    responses((status = 201, body = EngagedResponse, headers(("X-Consistency-Token" = String))),
        (status = 200, description = "already liked", body = EngagedResponse),
        (status = 404, description = "track_not_found", body = ErrorBody)))]
pub async fn like(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    IdPath(id): IdPath,
    ValidQuery(q): ValidQuery<SecretQuery>,
) -> Result<Response, ApiError> {
    engage(&state, &headers, user.user_id, id, Engage::Like, q.secret_token.as_deref()).await
}

/// Take a like back (204 also when there was none; no event then).
#[utoipa::path(delete, path = "/api/tracks/{id}/like", tag = "engagement", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 204, description = "not liked (now or before)")))]
pub async fn unlike(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    engage(&state, &headers, user.user_id, id, Engage::Unlike, None).await
}

/// Repost a track to your followers: 201 when new, 200 when already
/// reposted. Same access rules as a like.
#[utoipa::path(post, path = "/api/tracks/{id}/repost", tag = "engagement", security(("bearer" = [])),
    params(("id" = Uuid, Path), SecretQuery),
    responses((status = 201, body = EngagedResponse, headers(("X-Consistency-Token" = String))),
        (status = 200, description = "already reposted", body = EngagedResponse),
        (status = 404, description = "track_not_found", body = ErrorBody)))]
pub async fn repost(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    IdPath(id): IdPath,
    ValidQuery(q): ValidQuery<SecretQuery>,
) -> Result<Response, ApiError> {
    engage(&state, &headers, user.user_id, id, Engage::Repost, q.secret_token.as_deref()).await
}

/// Take a repost back (204 also when there was none).
#[utoipa::path(delete, path = "/api/tracks/{id}/repost", tag = "engagement", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 204, description = "not reposted (now or before)")))]
pub async fn unrepost(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    engage(&state, &headers, user.user_id, id, Engage::Unrepost, None).await
}

/// Paging of an engagement list.
#[derive(Debug, Deserialize, IntoParams)]
pub struct EngagementPageQuery {
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// 1–100 (default 50).
    pub limit: Option<i64>,
    /// For a private track: its secret token.
    pub secret_token: Option<String>,
}

fn page_params(q: &EngagementPageQuery) -> Result<(Option<paging::Position>, i64), ApiError> {
    Ok((paging::keyset(q.cursor.as_deref())?, paging::limit(q.limit)?))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EngagementItem {
    pub user_id: Uuid,
    pub track_id: Uuid,
    /// When the like or repost was made.
    pub at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EngagementPage {
    pub items: Vec<EngagementItem>,
    pub next_cursor: Option<String>,
}

fn engagement_page(rows: Vec<rm::EngagementItem>, limit: i64, by_user: bool) -> EngagementPage {
    let next_cursor =
        paging::next_cursor(&rows, limit, |r| (r.since, if by_user { r.track_id } else { r.user_id }));
    let items = rows
        .into_iter()
        .map(|r| EngagementItem { user_id: r.user_id, track_id: r.track_id, at: r.since })
        .collect();
    EngagementPage { items, next_cursor }
}

/// Who liked a track, newest first (the track's visibility rules apply).
#[utoipa::path(get, path = "/api/tracks/{id}/likers", tag = "engagement",
    params(("id" = Uuid, Path), EngagementPageQuery, ("X-Consistency-Token" = Option<String>, Header)),
    responses((status = 200, body = EngagementPage), (status = 404, description = "track_not_found", body = ErrorBody)))]
pub async fn likers(
    State(state): State<AppState>,
    viewer: MaybeUser,
    read_after: ReadAfter,
    IdPath(id): IdPath,
    ValidQuery(q): ValidQuery<EngagementPageQuery>,
) -> Result<Json<EngagementPage>, ApiError> {
    read_after.wait(&state, &[ReadModel::Engagement, ReadModel::Tracks]).await?;
    let (cursor, limit) = page_params(&q)?;
    visible_track(&state, viewer.0.map(|u| u.user_id), id, q.secret_token.as_deref()).await?;
    let rows = rm::likers(&state.read, id, cursor, limit).await?;
    Ok(Json(engagement_page(rows, limit, false)))
}

async fn user_list(
    state: &AppState,
    viewer: MaybeUser,
    read_after: ReadAfter,
    id: Uuid,
    q: &EngagementPageQuery,
    reposts: bool,
) -> Result<Json<EngagementPage>, ApiError> {
    let viewer = viewer.0.map(|u| u.user_id);
    require_visible(state, viewer, id).await?;
    read_after.wait(state, &[ReadModel::Engagement, ReadModel::Tracks]).await?;
    let (cursor, limit) = page_params(q)?;
    if !projections::social::graph::profile_exists(&state.read, id).await? {
        return Err(super::user_not_found());
    }
    let rows = rm::user_engagements(&state.read, id, reposts, viewer, cursor, limit).await?;
    Ok(Json(engagement_page(rows, limit, true)))
}

/// The tracks a user liked, newest first (private tracks only for their owner).
#[utoipa::path(get, path = "/api/users/{id}/likes", tag = "engagement",
    params(("id" = Uuid, Path), EngagementPageQuery, ("X-Consistency-Token" = Option<String>, Header)),
    responses((status = 200, body = EngagementPage), (status = 404, description = "user_not_found", body = ErrorBody)))]
pub async fn user_likes(
    State(state): State<AppState>,
    viewer: MaybeUser,
    read_after: ReadAfter,
    IdPath(id): IdPath,
    ValidQuery(q): ValidQuery<EngagementPageQuery>,
) -> Result<Json<EngagementPage>, ApiError> {
    user_list(&state, viewer, read_after, id, &q, false).await
}

/// The tracks a user reposted, newest first.
#[utoipa::path(get, path = "/api/users/{id}/reposts", tag = "engagement",
    params(("id" = Uuid, Path), EngagementPageQuery, ("X-Consistency-Token" = Option<String>, Header)),
    responses((status = 200, body = EngagementPage), (status = 404, description = "user_not_found", body = ErrorBody)))]
pub async fn user_reposts(
    State(state): State<AppState>,
    viewer: MaybeUser,
    read_after: ReadAfter,
    IdPath(id): IdPath,
    ValidQuery(q): ValidQuery<EngagementPageQuery>,
) -> Result<Json<EngagementPage>, ApiError> {
    user_list(&state, viewer, read_after, id, &q, true).await
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CommentRequest {
    /// 1–1,000 characters.
    pub body: String,
    /// The moment of the track it is about, 0 ≤ t ≤ the track's duration
    /// (milliseconds); `null` for an untimed comment.
    pub timestamp_ms: Option<i64>,
    /// A top-level comment of the same track (replies are one level deep).
    pub reply_to: Option<Uuid>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CommentResponse {
    pub id: Uuid,
    pub track_id: Uuid,
    pub author_id: Uuid,
    /// `null` once deleted (the comment stays as a tombstone for its replies).
    pub body: Option<String>,
    pub timestamp_ms: Option<i64>,
    pub reply_to: Option<Uuid>,
    pub deleted: bool,
    pub created_at: DateTime<Utc>,
}

/// Comment on a track, optionally at a moment of it and as a reply.
#[utoipa::path(post, path = "/api/tracks/{id}/comments", tag = "engagement", security(("bearer" = [])),
    params(("id" = Uuid, Path), SecretQuery), request_body = CommentRequest,
    responses((status = 201, body = CommentResponse, headers(("X-Consistency-Token" = String))),
        (status = 404, description = "track_not_found", body = ErrorBody),
        (status = 422, description = "validation_failed: body, timestamp_ms or reply_to", body = ErrorBody)))]
pub async fn post_comment(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    IdPath(id): IdPath,
    ValidQuery(q): ValidQuery<SecretQuery>,
    ValidJson(req): ValidJson<CommentRequest>,
) -> Result<Response, ApiError> {
    let body = domain::social::comment::parse_body(&req.body)?;
    let done = state
        .engagement
        .comment(
            user.user_id,
            id,
            body.clone(),
            req.timestamp_ms,
            req.reply_to,
            q.secret_token.as_deref(),
            &meta(&headers, Some(user.user_id)),
        )
        .await?;
    let comment = CommentResponse {
        id: done.comment_id.ok_or_else(|| ApiError::internal("comment without id"))?,
        track_id: id,
        author_id: user.user_id,
        body: Some(body),
        timestamp_ms: req.timestamp_ms,
        reply_to: req.reply_to,
        deleted: false,
        created_at: Utc::now(),
    };
    Ok((StatusCode::CREATED, consistency::headers(done.token.as_ref()), Json(comment)).into_response())
}

/// Paging and order of a comment list.
#[derive(Debug, Deserialize, IntoParams)]
pub struct CommentQuery {
    /// `timestamp` (by the moment of the track, untimed last; default) or `newest`.
    pub order: Option<String>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// 1–100 (default 50).
    pub limit: Option<i64>,
    /// For a private track: its secret token.
    pub secret_token: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CommentPage {
    pub items: Vec<CommentResponse>,
    pub next_cursor: Option<String>,
}

/// A track's comments; those of users you block or who block you are left out.
#[utoipa::path(get, path = "/api/tracks/{id}/comments", tag = "engagement",
    params(("id" = Uuid, Path), CommentQuery, ("X-Consistency-Token" = Option<String>, Header)),
    responses((status = 200, body = CommentPage), (status = 404, description = "track_not_found", body = ErrorBody)))]
pub async fn list_comments(
    State(state): State<AppState>,
    viewer: MaybeUser,
    read_after: ReadAfter,
    IdPath(id): IdPath,
    ValidQuery(q): ValidQuery<CommentQuery>,
) -> Result<Json<CommentPage>, ApiError> {
    read_after.wait(&state, &[ReadModel::Engagement, ReadModel::Tracks]).await?;
    let viewer = viewer.0.map(|u| u.user_id);
    let order = match q.order.as_deref().unwrap_or("timestamp") {
        "timestamp" => CommentOrder::Timestamp,
        "newest" => CommentOrder::Newest,
        _ => return Err(invalid("order", "must be timestamp or newest")),
    };
    let limit = paging::limit(q.limit)?;
    let cursor = match &q.cursor {
        Some(c) => {
            Some(parse_comment_cursor(c).ok_or_else(|| invalid("cursor", "is not a cursor of this list"))?)
        }
        None => None,
    };
    visible_track(&state, viewer, id, q.secret_token.as_deref()).await?;
    let rows = rm::comments(&state.read, id, order, cursor, viewer, limit).await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| {
            rows.last().map(|r| {
                let t = r.timestamp_ms.map_or_else(|| "-".to_owned(), |t| t.to_string());
                format!("{t}_{}_{}", r.posted_at.timestamp_micros(), r.comment_id)
            })
        })
        .flatten();
    let items = rows
        .into_iter()
        .map(|r| CommentResponse {
            id: r.comment_id,
            track_id: r.track_id,
            author_id: r.author_id,
            body: r.body,
            timestamp_ms: r.timestamp_ms,
            reply_to: r.reply_to,
            deleted: r.deleted,
            created_at: r.posted_at,
        })
        .collect();
    Ok(Json(CommentPage { items, next_cursor }))
}

fn parse_comment_cursor(c: &str) -> Option<CommentCursor> {
    let mut parts = c.splitn(3, '_');
    let t = parts.next()?;
    let timestamp_ms = if t == "-" { None } else { Some(t.parse().ok()?) };
    let posted_at = DateTime::from_timestamp_micros(parts.next()?.parse().ok()?)?;
    let comment_id = parts.next()?.parse().ok()?;
    Some(CommentCursor { timestamp_ms, posted_at, comment_id })
}

/// Delete a comment: its author or the track's owner. Replies stay; the
/// body is gone.
#[utoipa::path(delete, path = "/api/comments/{id}", tag = "engagement", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "deleted", headers(("X-Consistency-Token" = String))),
        (status = 403, description = "not_allowed", body = ErrorBody),
        (status = 404, description = "comment_not_found", body = ErrorBody)))]
pub async fn delete_comment(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    let done = state.engagement.delete_comment(user.user_id, id, &meta(&headers, Some(user.user_id))).await?;
    Ok((StatusCode::NO_CONTENT, consistency::headers(done.token.as_ref())).into_response())
}

//! Tracks' metadata: `POST /api/tracks`, `GET|PUT|DELETE /api/tracks/{id}`,
//! `GET /api/users/{id}/tracks`. A private track is visible to its owner
//! and to holders of its secret token (`?secret_token=`) only, and never
//! listed or counted for others.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use commands::catalog::CatalogError;
use domain::catalog::track::{TrackMetadata, TrackPatch, Visibility};
use projections::catalog::tracks::{self, TrackRow};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{AuthUser, MaybeUser};
use crate::consistency::{self, ReadAfter, ReadModel};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{IdPath, ValidJson, ValidQuery};
use crate::routes::auth::meta;
use crate::routes::paging;
use crate::routes::social::require_visible;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/tracks", post(create_track))
        .route("/api/tracks/{id}", get(get_track).put(update_track).delete(delete_track))
        .route("/api/users/{id}/tracks", get(list_user_tracks))
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::NotFound => track_not_found(),
            CatalogError::NotOwner => ApiError::new(StatusCode::FORBIDDEN, "not_track_owner", e.to_string()),
            CatalogError::Conflict => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            CatalogError::Internal(cause) => ApiError::internal(cause),
        }
    }
}

/// 404 `track_not_found`.
pub fn track_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "track_not_found", "no such track")
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateTrackRequest {
    /// 1–100 characters, no control characters.
    #[schema(example = "Night Drive")]
    pub title: String,
    /// At most 4,000 characters.
    pub description: Option<String>,
    /// At most 50 characters.
    pub genre: Option<String>,
    /// At most 10, each 1–30 characters.
    pub tags: Option<Vec<String>>,
    /// 1 ms to 24 h (86,400,000 ms).
    #[schema(example = 180000)]
    pub duration_ms: i64,
    /// `public` (default) or `private`.
    pub visibility: Option<String>,
}

/// Counters of a track (plays stay 0 until plays exist).
#[derive(Debug, Serialize, Deserialize, ToSchema, Default)]
pub struct TrackCounts {
    pub likes: i64,
    pub reposts: i64,
    pub comments: i64,
    pub plays: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TrackResponse {
    pub id: Uuid,
    pub owner_id: Uuid,
    /// Unique per owner; the page is `/{username}/{slug}`.
    pub slug: String,
    pub title: String,
    pub description: String,
    pub genre: String,
    pub tags: Vec<String>,
    pub duration_ms: i64,
    /// `public` or `private`.
    pub visibility: String,
    /// `no_audio` until audio uploads exist.
    pub processing: String,
    pub counts: TrackCounts,
    /// The private link's token (≥ 128 bits), shown to the owner only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_token: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Shown to the owner only, when moderation hides the track.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moderation: Option<ModerationNotice>,
}

fn response(row: TrackRow, secret_token: Option<String>) -> TrackResponse {
    TrackResponse {
        id: row.track_id,
        owner_id: row.owner_id,
        slug: row.slug,
        title: row.title,
        description: row.description,
        genre: row.genre,
        tags: row.tags,
        duration_ms: row.duration_ms,
        visibility: row.visibility,
        processing: row.processing,
        counts: TrackCounts {
            likes: row.likes_count,
            reposts: row.reposts_count,
            comments: row.comments_count,
            plays: 0,
        },
        secret_token,
        created_at: row.created_at,
        updated_at: row.updated_at,
        moderation: None,
    }
}

/// The write side's state as a response (answers a command at once,
/// without waiting for the read model).
fn from_state(
    t: &domain::catalog::track::Track,
    secret: Option<String>,
    at: DateTime<Utc>,
) -> Option<TrackResponse> {
    let m = t.metadata.clone()?;
    Some(TrackResponse {
        id: t.id?,
        owner_id: t.owner_id?,
        slug: t.slug.clone(),
        title: m.title,
        description: m.description,
        genre: m.genre,
        tags: m.tags,
        duration_ms: m.duration_ms,
        visibility: t.visibility?.as_str().to_owned(),
        processing: t.processing.as_str().to_owned(),
        counts: TrackCounts::default(),
        secret_token: secret,
        created_at: t.created_at.unwrap_or(at),
        updated_at: at,
        moderation: None,
    })
}

/// Publish a track's metadata (audio comes with a later issue: `processing`
/// is `no_audio`). A private track gets a secret token; its link is
/// `/{username}/{slug}?secret_token=…`.
#[utoipa::path(post, path = "/api/tracks", tag = "tracks", security(("bearer" = [])), request_body = CreateTrackRequest,
    responses((status = 201, body = TrackResponse, headers(("X-Consistency-Token" = String))),
        (status = 422, description = "validation_failed naming the field", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn create_track(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    ValidJson(req): ValidJson<CreateTrackRequest>,
) -> Result<Response, ApiError> {
    let metadata = TrackMetadata::parse(
        &req.title,
        req.description.as_deref().unwrap_or_default(),
        req.genre.as_deref().unwrap_or_default(),
        req.tags.as_deref().unwrap_or_default(),
        req.duration_ms,
    )?;
    let visibility = Visibility::parse(req.visibility.as_deref().unwrap_or("public"))?;
    let done =
        state.catalog.create(user.user_id, metadata, visibility, &meta(&headers, Some(user.user_id))).await?;
    let body = from_state(&done.track, done.secret_token, Utc::now())
        .ok_or_else(|| ApiError::internal("created track without state"))?;
    Ok((StatusCode::CREATED, consistency::headers(done.token.as_ref()), Json(body)).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct SecretQuery {
    /// The private link's token.
    pub secret_token: Option<String>,
}

/// A track: public ones for everyone (but users hidden by a block), private
/// ones for the owner and holders of the secret token.
#[utoipa::path(get, path = "/api/tracks/{id}", tag = "tracks",
    params(("id" = Uuid, Path), SecretQuery, ("X-Consistency-Token" = Option<String>, Header)),
    responses((status = 200, body = TrackResponse), (status = 404, description = "track_not_found", body = ErrorBody),
        (status = 503, description = "consistency_timeout", body = ErrorBody)))]
pub async fn get_track(
    State(state): State<AppState>,
    viewer: MaybeUser,
    read_after: ReadAfter,
    IdPath(id): IdPath,
    ValidQuery(q): ValidQuery<SecretQuery>,
) -> Result<Json<TrackResponse>, ApiError> {
    read_after.wait(&state, &[ReadModel::Tracks, ReadModel::Engagement]).await?;
    let viewer = viewer.0.map(|u| u.user_id);
    let (row, token) = visible_track(&state, viewer, id, q.secret_token.as_deref()).await?;
    let owner_looking = viewer == Some(row.owner_id);
    let notice =
        if owner_looking { moderation_notice(&state, row.track_id, row.owner_id).await? } else { None };
    let mut body = response(row, token.filter(|_| owner_looking));
    body.moderation = notice;
    Ok(Json(body))
}

/// What moderation did to a track, as its owner is told.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModerationNotice {
    /// Hidden by a moderator: others do not see it.
    pub hidden: bool,
    /// The owner's account is suspended until then: others do not see it.
    pub owner_suspended_until: Option<DateTime<Utc>>,
}

/// The track's and its owner's moderation state (their case streams: the
/// write side), `None` when neither applies.
async fn moderation_notice(
    state: &AppState,
    track: uuid::Uuid,
    owner: uuid::Uuid,
) -> Result<Option<ModerationNotice>, ApiError> {
    use domain::moderation::{Subject, SubjectKind};
    let hidden = state.moderation.case(Subject { kind: SubjectKind::Track, id: track }).await?.hidden;
    let suspended =
        commands::moderation::suspended_until(&state.read, owner).await.map_err(ApiError::internal)?;
    Ok((hidden || suspended.is_some())
        .then_some(ModerationNotice { hidden, owner_suspended_until: suspended }))
}

/// The track `id` if `viewer` may see it — public (and no block between
/// them and the owner), theirs, or private with the right `secret_token`
/// (compared in constant time) — with its secret token in clear when the
/// owner looks or a token was given; 404 `track_not_found` otherwise.
///
/// # Errors
/// The 404 above, or 500.
pub async fn visible_track(
    state: &AppState,
    viewer: Option<Uuid>,
    id: Uuid,
    secret_token: Option<&str>,
) -> Result<(TrackRow, Option<String>), ApiError> {
    let row = tracks::find_track(&state.read, id).await?.ok_or_else(track_not_found)?;
    let owner_looking = viewer == Some(row.owner_id);
    require_visible(state, viewer, row.owner_id).await.map_err(|_| track_not_found())?;
    let token = match (&row.secret_token_sealed, owner_looking || secret_token.is_some()) {
        (Some(sealed), true) => state.catalog.open_sealed_token(row.owner_id, sealed).await?,
        _ => None,
    };
    if !owner_looking && moderation_notice(state, row.track_id, row.owner_id).await?.is_some() {
        // Hidden by a moderator, or its owner suspended (issue 17).
        return Err(track_not_found());
    }
    if row.visibility != "public" && !owner_looking {
        // Constant-time comparison (no early exit on the first difference).
        let given = domain::values::Digest(secret_token.unwrap_or_default().to_owned());
        let matches = token.as_ref().is_some_and(|t| domain::values::Digest(t.clone()).ct_eq(&given));
        if !matches {
            return Err(track_not_found());
        }
    }
    Ok((row, token))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateTrackRequest {
    pub title: Option<String>,
    pub description: Option<String>,
    pub genre: Option<String>,
    pub tags: Option<Vec<String>>,
    pub duration_ms: Option<i64>,
    /// `public` or `private`.
    pub visibility: Option<String>,
}

/// Change a track's metadata (owner only). Absent fields stay as they are.
#[utoipa::path(put, path = "/api/tracks/{id}", tag = "tracks", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = UpdateTrackRequest,
    responses((status = 200, body = TrackResponse, headers(("X-Consistency-Token" = String))),
        (status = 403, description = "not_track_owner", body = ErrorBody),
        (status = 404, description = "track_not_found", body = ErrorBody),
        (status = 422, description = "validation_failed naming the field", body = ErrorBody)))]
pub async fn update_track(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    IdPath(id): IdPath,
    ValidJson(req): ValidJson<UpdateTrackRequest>,
) -> Result<Response, ApiError> {
    use domain::catalog::track::TrackMetadata as M;
    // Validate each given field with the creation rules.
    let check = M::parse(
        req.title.as_deref().unwrap_or("x"),
        req.description.as_deref().unwrap_or_default(),
        req.genre.as_deref().unwrap_or_default(),
        req.tags.as_deref().unwrap_or_default(),
        req.duration_ms.unwrap_or(1),
    )?;
    let patch = TrackPatch {
        title: req.title.as_ref().map(|_| check.title.clone()),
        description: req.description.as_ref().map(|_| check.description.clone()),
        genre: req.genre.as_ref().map(|_| check.genre.clone()),
        tags: req.tags.as_ref().map(|_| check.tags.clone()),
        duration_ms: req.duration_ms,
        visibility: req.visibility.as_deref().map(Visibility::parse).transpose()?,
    };
    let done = state.catalog.update(user.user_id, id, patch, &meta(&headers, Some(user.user_id))).await?;
    let mut body = from_state(&done.track, done.secret_token, Utc::now()).ok_or_else(track_not_found)?;
    let (likes, reposts, comments) = projections::social::engagement::track_counts(&state.read, id).await?;
    body.counts = TrackCounts { likes, reposts, comments, plays: 0 };
    Ok((StatusCode::OK, consistency::headers(done.token.as_ref()), Json(body)).into_response())
}

/// Delete a track (owner only): it disappears from every list and count.
#[utoipa::path(delete, path = "/api/tracks/{id}", tag = "tracks", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "deleted", headers(("X-Consistency-Token" = String))),
        (status = 403, description = "not_track_owner", body = ErrorBody),
        (status = 404, description = "track_not_found", body = ErrorBody)))]
pub async fn delete_track(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    let done = state.catalog.delete(user.user_id, id, &meta(&headers, Some(user.user_id))).await?;
    Ok((StatusCode::NO_CONTENT, consistency::headers(done.token.as_ref())).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct TrackPageQuery {
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// 1–100 (default 50).
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TrackPage {
    pub items: Vec<TrackResponse>,
    pub next_cursor: Option<String>,
}

/// A user's tracks, newest first (their private ones only for themselves).
#[utoipa::path(get, path = "/api/users/{id}/tracks", tag = "tracks",
    params(("id" = Uuid, Path), TrackPageQuery, ("X-Consistency-Token" = Option<String>, Header)),
    responses((status = 200, body = TrackPage), (status = 404, description = "user_not_found", body = ErrorBody),
        (status = 503, description = "consistency_timeout", body = ErrorBody)))]
pub async fn list_user_tracks(
    State(state): State<AppState>,
    viewer: MaybeUser,
    read_after: ReadAfter,
    IdPath(id): IdPath,
    ValidQuery(q): ValidQuery<TrackPageQuery>,
) -> Result<Json<TrackPage>, ApiError> {
    let viewer = viewer.0.map(|u| u.user_id);
    require_visible(&state, viewer, id).await?;
    read_after.wait(&state, &[ReadModel::Tracks, ReadModel::Engagement]).await?;
    let (limit, cursor) = (paging::limit(q.limit)?, paging::keyset(q.cursor.as_deref())?);
    let rows = tracks::list_owner_tracks(&state.read, id, viewer == Some(id), cursor, limit).await?;
    if rows.is_empty() && !projections::social::graph::profile_exists(&state.read, id).await? {
        return Err(crate::routes::social::user_not_found());
    }
    let next_cursor = paging::next_cursor(&rows, limit, |r| (r.created_at, r.track_id));
    Ok(Json(TrackPage { items: rows.into_iter().map(|r| response(r, None)).collect(), next_cursor }))
}

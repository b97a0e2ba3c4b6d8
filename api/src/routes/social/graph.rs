//! Follow, block and mute (`/api/users/{id}/follow|block|mute`), the
//! follower / following / block lists and suggestions. Commands answer
//! `X-Consistency-Token`; lists accept it back (ARCHITECTURE decided 13).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use commands::social::{Relation, SocialError};
use projections::social::graph::{self, EdgeCursor, EdgeList};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::require_visible;
use crate::auth::{AuthUser, MaybeUser};
use crate::consistency::{self, ReadAfter, ReadModel};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{IdPath, ValidQuery};
use crate::routes::auth::meta;
use crate::routes::paging;
pub use crate::routes::paging::invalid;
use crate::state::AppState;

/// Most suggestions (issue 15).
pub const MAX_SUGGESTIONS: i64 = 50;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/users/{id}/follow", post(follow).delete(unfollow))
        .route("/api/users/{id}/block", post(block).delete(unblock))
        .route("/api/users/{id}/mute", post(mute).delete(unmute))
        .route("/api/users/{id}/followers", get(followers))
        .route("/api/users/{id}/following", get(following))
        .route("/api/users/me/blocks", get(blocks))
        .route("/api/users/me/suggestions", get(suggestions))
}

/// The state of an edge after a command.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FollowResponse {
    pub user_id: Uuid,
    /// Always `true` after a follow.
    pub following: bool,
}

/// Follow a user (the design card's `FollowUser`). 201 when new, 200 when
/// already following (no new event). Refused for oneself (422), an unknown
/// user or one who blocks you (404), and one you block (403 `blocked`:
/// unblock first).
#[utoipa::path(post, path = "/api/users/{id}/follow", tag = "social", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "the user to follow")),
    responses((status = 201, body = FollowResponse, headers(("X-Consistency-Token" = String))),
        (status = 200, description = "already following", body = FollowResponse),
        (status = 403, description = "blocked: you block this user", body = ErrorBody),
        (status = 404, description = "user_not_found", body = ErrorBody),
        (status = 422, description = "self_relation", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn follow(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    let meta = meta(&headers, Some(user.user_id));
    match state.social.relate(user.user_id, Relation::Follow, id, &meta).await {
        Ok(done) => {
            let status = if done.changed { StatusCode::CREATED } else { StatusCode::OK };
            let body = FollowResponse { user_id: id, following: true };
            Ok((status, consistency::headers(done.token.as_ref()), Json(body)).into_response())
        }
        // Blocked by them: nothing to tell (404, as their profile answers).
        Err(SocialError::Blocked)
            if !state.social.relationship(user.user_id, id).await?.blocks(user.user_id, id) =>
        {
            Err(super::user_not_found())
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs a relation command that answers 204 (with the token when it wrote).
async fn no_content(
    state: &AppState,
    headers: &HeaderMap,
    actor: Uuid,
    relation: Relation,
    id: Uuid,
) -> Result<Response, ApiError> {
    let done = state.social.relate(actor, relation, id, &meta(headers, Some(actor))).await?;
    Ok((StatusCode::NO_CONTENT, consistency::headers(done.token.as_ref())).into_response())
}

/// Stop following a user; 204 whether or not you followed them (no event
/// then).
#[utoipa::path(delete, path = "/api/users/{id}/follow", tag = "social", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "not following (now or before)"),
        (status = 422, description = "self_relation", body = ErrorBody)))]
pub async fn unfollow(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    no_content(&state, &headers, user.user_id, Relation::Unfollow, id).await
}

/// Block a user: the follows both ways end in the same write, new follows
/// between you are refused, and each side's profile, tracks and lists
/// answer 404 to the other. Private: the blocked user is not told.
#[utoipa::path(post, path = "/api/users/{id}/block", tag = "social", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "blocked (now or before)"),
        (status = 404, description = "user_not_found", body = ErrorBody),
        (status = 422, description = "self_relation", body = ErrorBody)))]
pub async fn block(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    no_content(&state, &headers, user.user_id, Relation::Block, id).await
}

/// Lift your block of a user (follows do not come back).
#[utoipa::path(delete, path = "/api/users/{id}/block", tag = "social", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "not blocked (now or before)"),
        (status = 422, description = "self_relation", body = ErrorBody)))]
pub async fn unblock(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    no_content(&state, &headers, user.user_id, Relation::Unblock, id).await
}

/// Mute a user: private; hides them from your feed and notifications only.
#[utoipa::path(post, path = "/api/users/{id}/mute", tag = "social", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "muted (now or before)"),
        (status = 404, description = "user_not_found", body = ErrorBody),
        (status = 422, description = "self_relation", body = ErrorBody)))]
pub async fn mute(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    no_content(&state, &headers, user.user_id, Relation::Mute, id).await
}

/// Unmute a user.
#[utoipa::path(delete, path = "/api/users/{id}/mute", tag = "social", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "not muted (now or before)"),
        (status = 422, description = "self_relation", body = ErrorBody)))]
pub async fn unmute(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    no_content(&state, &headers, user.user_id, Relation::Unmute, id).await
}

/// Paging of a list.
#[derive(Debug, Deserialize, IntoParams)]
pub struct PageQuery {
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// 1–100 (default 50).
    pub limit: Option<i64>,
}

impl PageQuery {
    /// The cursor and limit, or 422 naming the field ([`paging`]).
    ///
    /// # Errors
    /// 422 `validation_failed` (`cursor` or `limit`).
    pub fn parse(&self) -> Result<(Option<EdgeCursor>, i64), ApiError> {
        let cursor =
            paging::keyset(self.cursor.as_deref())?.map(|(since, user_id)| EdgeCursor { since, user_id });
        Ok((cursor, paging::limit(self.limit)?))
    }
}

/// One user of a list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserItem {
    pub user_id: Uuid,
    pub username: Option<String>,
    /// When the follow (or block) was made.
    pub since: DateTime<Utc>,
}

/// A page of users, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserPage {
    pub items: Vec<UserItem>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

async fn page(state: &AppState, list: EdgeList, user: Uuid, q: &PageQuery) -> Result<UserPage, ApiError> {
    let (cursor, limit) = q.parse()?;
    let rows =
        graph::list_edges(&state.read, list, user, cursor, limit).await?.ok_or_else(super::user_not_found)?;
    let next_cursor = paging::next_cursor(&rows, limit, |r| (r.since, r.user_id));
    let items = rows
        .into_iter()
        .map(|r| UserItem { user_id: r.user_id, username: r.username, since: r.since })
        .collect();
    Ok(UserPage { items, next_cursor })
}

/// Who follows a user, newest first (keyset pages: new follows never shift
/// later pages). 404 for an unknown user, or between blocked users.
#[utoipa::path(get, path = "/api/users/{id}/followers", tag = "social",
    params(("id" = Uuid, Path), PageQuery,
        ("X-Consistency-Token" = Option<String>, Header, description = "answer only once this write is visible")),
    responses((status = 200, body = UserPage), (status = 404, description = "user_not_found", body = ErrorBody),
        (status = 503, description = "consistency_timeout", body = ErrorBody)))]
pub async fn followers(
    State(state): State<AppState>,
    viewer: MaybeUser,
    read_after: ReadAfter,
    IdPath(id): IdPath,
    ValidQuery(q): ValidQuery<PageQuery>,
) -> Result<Json<UserPage>, ApiError> {
    require_visible(&state, viewer.0.map(|u| u.user_id), id).await?;
    read_after.wait(&state, &[ReadModel::Graph, ReadModel::Profiles]).await?;
    Ok(Json(page(&state, EdgeList::Followers, id, &q).await?))
}

/// Whom a user follows, newest first.
#[utoipa::path(get, path = "/api/users/{id}/following", tag = "social",
    params(("id" = Uuid, Path), PageQuery,
        ("X-Consistency-Token" = Option<String>, Header, description = "answer only once this write is visible")),
    responses((status = 200, body = UserPage), (status = 404, description = "user_not_found", body = ErrorBody),
        (status = 503, description = "consistency_timeout", body = ErrorBody)))]
pub async fn following(
    State(state): State<AppState>,
    viewer: MaybeUser,
    read_after: ReadAfter,
    IdPath(id): IdPath,
    ValidQuery(q): ValidQuery<PageQuery>,
) -> Result<Json<UserPage>, ApiError> {
    require_visible(&state, viewer.0.map(|u| u.user_id), id).await?;
    read_after.wait(&state, &[ReadModel::Graph, ReadModel::Profiles]).await?;
    Ok(Json(page(&state, EdgeList::Following, id, &q).await?))
}

/// The users you block, newest first (only you see this list).
#[utoipa::path(get, path = "/api/users/me/blocks", tag = "social", security(("bearer" = [])),
    params(PageQuery, ("X-Consistency-Token" = Option<String>, Header)),
    responses((status = 200, body = UserPage), (status = 503, description = "consistency_timeout", body = ErrorBody)))]
pub async fn blocks(
    State(state): State<AppState>,
    user: AuthUser,
    read_after: ReadAfter,
    ValidQuery(q): ValidQuery<PageQuery>,
) -> Result<Json<UserPage>, ApiError> {
    read_after.wait(&state, &[ReadModel::Graph]).await?;
    Ok(Json(page(&state, EdgeList::Blocks, user.user_id, &q).await?))
}

/// A suggested account.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SuggestionItem {
    pub user_id: Uuid,
    pub username: Option<String>,
    /// How many of the people you follow follow them.
    pub followed_by_your_follows: i64,
    pub followers_count: i64,
}

/// Accounts to follow: friends of friends, ranked by how many of the
/// people you follow follow them, ties by follower count; never yourself,
/// anyone you follow, block, mute or who blocks you; at most 50.
#[utoipa::path(get, path = "/api/users/me/suggestions", tag = "social", security(("bearer" = [])),
    params(("X-Consistency-Token" = Option<String>, Header)),
    responses((status = 200, body = Vec<SuggestionItem>),
        (status = 503, description = "consistency_timeout", body = ErrorBody)))]
pub async fn suggestions(
    State(state): State<AppState>,
    user: AuthUser,
    read_after: ReadAfter,
) -> Result<Json<Vec<SuggestionItem>>, ApiError> {
    read_after.wait(&state, &[ReadModel::Graph, ReadModel::Profiles]).await?;
    let rows = graph::suggestions(&state.read, user.user_id, MAX_SUGGESTIONS).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| SuggestionItem {
                user_id: r.user_id,
                username: r.username,
                followed_by_your_follows: r.mutuals,
                followers_count: r.followers_count,
            })
            .collect(),
    ))
}

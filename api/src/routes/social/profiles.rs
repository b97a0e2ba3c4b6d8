//! Public profiles (`/api/users/{id}`, `/api/users/by-username/{username}`),
//! the handle change (`PUT /api/users/me/username`) and the slug resolver
//! (`/api/resolve`, seed 002).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use domain::values::{Sealed, Username};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{require_visible, user_not_found};
use crate::auth::{AuthUser, MaybeUser};
use crate::consistency::{self, ReadAfter, ReadModel};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{IdPath, ValidJson, ValidQuery};
use crate::routes::auth::meta;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/users/{id}", get(get_profile))
        .route("/api/users/by-username/{username}", get(get_profile_by_username))
        .route("/api/users/me/username", put(put_username))
        .route("/api/resolve", get(resolve))
}

/// A user as everyone may see them.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PublicProfile {
    pub id: Uuid,
    pub username: Option<String>,
    pub display_name: Option<String>,
    pub bio: Option<String>,
    /// `null` until the media issue adds avatars.
    pub avatar_url: Option<String>,
    pub followers_count: i64,
    pub following_count: i64,
    /// Public tracks (all of them for the owner looking).
    pub tracks_count: i64,
    /// For a signed-in viewer: the viewer follows this user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub followed_by_me: Option<bool>,
    /// For a signed-in viewer: this user follows the viewer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub follows_me: Option<bool>,
    /// For a signed-in viewer: the viewer blocks this user (always false
    /// when shown: a block hides the profile both ways).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<bool>,
}

async fn open(state: &AppState, user: Uuid, sealed: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(sealed) = sealed else { return Ok(None) };
    Ok(state.identity.vault.open(user, &Sealed(sealed)).await?)
}

/// The public profile of `id` as `viewer` sees it.
async fn public_profile(
    state: &AppState,
    viewer: Option<Uuid>,
    id: Uuid,
    read_after: &ReadAfter,
) -> Result<PublicProfile, ApiError> {
    // The pair's stream (write side), read once: it decides whether a
    // block hides the profile and gives the viewer's flags.
    let between = match viewer.filter(|v| *v != id) {
        Some(v) => Some(state.social.relationship(v, id).await?),
        None => None,
    };
    if between.as_ref().is_some_and(domain::social::relationship::Relationship::any_block) {
        return Err(user_not_found());
    }
    read_after
        .wait(state, &[ReadModel::Profiles, ReadModel::Graph, ReadModel::Tracks, ReadModel::Moderation])
        .await?;
    let row = projections::social::graph::public_profile(&state.read, id, viewer == Some(id))
        .await?
        .ok_or_else(user_not_found)?;
    let viewer_flag = |f: &dyn Fn(&domain::social::relationship::Relationship, Uuid) -> bool| {
        between.as_ref().zip(viewer).map(|(r, v)| f(r, v))
    };
    Ok(PublicProfile {
        id,
        username: row.username,
        display_name: open(state, id, row.name_sealed).await?,
        bio: open(state, id, row.bio_sealed).await?,
        avatar_url: None,
        followers_count: row.followers_count,
        following_count: row.following_count,
        tracks_count: row.tracks_count,
        followed_by_me: viewer_flag(&|r, v| r.follows(v, id)),
        follows_me: viewer_flag(&|r, v| r.follows(id, v)),
        blocked: viewer_flag(&|r, v| r.blocks(v, id)),
    })
}

/// A user's public profile. With a bearer token, also how the viewer and
/// the user relate. 404 for an unknown user, or between blocked users.
#[utoipa::path(get, path = "/api/users/{id}", tag = "social",
    params(("id" = Uuid, Path), ("X-Consistency-Token" = Option<String>, Header)),
    responses((status = 200, body = PublicProfile), (status = 404, description = "user_not_found", body = ErrorBody),
        (status = 503, description = "consistency_timeout", body = ErrorBody)))]
pub async fn get_profile(
    State(state): State<AppState>,
    viewer: MaybeUser,
    read_after: ReadAfter,
    IdPath(id): IdPath,
) -> Result<Json<PublicProfile>, ApiError> {
    Ok(Json(public_profile(&state, viewer.0.map(|u| u.user_id), id, &read_after).await?))
}

/// A user's public profile by handle (case-insensitive).
#[utoipa::path(get, path = "/api/users/by-username/{username}", tag = "social",
    params(("username" = String, Path), ("X-Consistency-Token" = Option<String>, Header)),
    responses((status = 200, body = PublicProfile), (status = 404, description = "user_not_found", body = ErrorBody),
        (status = 503, description = "consistency_timeout", body = ErrorBody)))]
pub async fn get_profile_by_username(
    State(state): State<AppState>,
    viewer: MaybeUser,
    read_after: ReadAfter,
    axum::extract::Path(username): axum::extract::Path<String>,
) -> Result<Json<PublicProfile>, ApiError> {
    let id = owner_of(&state, &username).await?.ok_or_else(user_not_found)?;
    Ok(Json(public_profile(&state, viewer.0.map(|u| u.user_id), id, &read_after).await?))
}

/// The account whose current handle is `username` (write side).
async fn owner_of(state: &AppState, username: &str) -> Result<Option<Uuid>, ApiError> {
    let Ok(username) = Username::parse_lookup(username) else { return Ok(None) };
    Ok(state.identity.handle_holder(&username).await?)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UsernameRequest {
    /// 3–30 characters of `a-z 0-9 _`, case-folded, not only digits, not reserved.
    #[schema(example = "night_owl")]
    pub username: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsernameResponse {
    pub username: String,
}

/// Change your handle. The old one stays yours (held) for 30 days, so links
/// to it do not move to someone else at once; 409 `username_taken` if
/// someone else has (or held) the new one.
#[utoipa::path(put, path = "/api/users/me/username", tag = "users", security(("bearer" = [])),
    request_body = UsernameRequest,
    responses((status = 200, body = UsernameResponse, headers(("X-Consistency-Token" = String))),
        (status = 409, description = "username_taken", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn put_username(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    ValidJson(req): ValidJson<UsernameRequest>,
) -> Result<Response, ApiError> {
    let username = Username::parse(&req.username)?;
    let done =
        state.identity.change_username(user.user_id, &username, &meta(&headers, Some(user.user_id))).await?;
    let body = UsernameResponse { username: username.as_str().to_owned() };
    Ok((StatusCode::OK, consistency::headers(done.token.as_ref()), Json(body)).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ResolveQuery {
    /// A site path: `/{username}` or `/{username}/{track-slug}` (a full URL
    /// is accepted; its path is used).
    pub url: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Resolved {
    /// `user` or `track`.
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Uuid,
}

/// Resolve a public URL path to the resource's type and id (seed 002's slug
/// resolver). Private tracks, and users hidden from the viewer by a block,
/// do not resolve (404).
#[utoipa::path(get, path = "/api/resolve", tag = "social",
    params(ResolveQuery, ("X-Consistency-Token" = Option<String>, Header)),
    responses((status = 200, body = Resolved), (status = 404, description = "not_found", body = ErrorBody)))]
pub async fn resolve(
    State(state): State<AppState>,
    viewer: MaybeUser,
    read_after: ReadAfter,
    ValidQuery(q): ValidQuery<ResolveQuery>,
) -> Result<Json<Resolved>, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "nothing at this address");
    read_after.wait(&state, &[ReadModel::Profiles, ReadModel::Tracks]).await?;
    let path =
        q.url.split_once("://").map_or(q.url.as_str(), |(_, rest)| rest.find('/').map_or("", |i| &rest[i..]));
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let viewer = viewer.0.map(|u| u.user_id);
    let (user, slug) = match parts.as_slice() {
        [user] => (*user, None),
        [user, slug] => (*user, Some(*slug)),
        _ => return Err(not_found()),
    };
    let owner = owner_of(&state, user).await?.ok_or_else(not_found)?;
    require_visible(&state, viewer, owner).await.map_err(|_| not_found())?;
    let Some(slug) = slug else { return Ok(Json(Resolved { kind: "user".to_owned(), id: owner })) };
    let track = projections::catalog::tracks::find_by_slug(&state.read, owner, slug)
        .await?
        .filter(|t| t.visibility == "public" || viewer == Some(owner))
        .ok_or_else(not_found)?;
    Ok(Json(Resolved { kind: "track".to_owned(), id: track.track_id }))
}

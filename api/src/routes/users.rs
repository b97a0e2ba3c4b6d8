//! `/api/users/me`: the caller's profile, read from the profiles read model
//! (personal fields opened with the subject key on the way out).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::values::{Bio, DisplayName, Sealed};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ValidJson;
use crate::routes::auth::meta;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/users/me", get(get_me).put(put_me))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProfileResponse {
    pub user_id: Uuid,
    pub email: String,
    pub name: String,
    pub bio: Option<String>,
    pub email_verified: bool,
    pub created_at: DateTime<Utc>,
}

async fn open(state: &AppState, user: Uuid, sealed: String) -> Result<String, ApiError> {
    state
        .identity
        .vault
        .open(user, &Sealed(sealed))
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "profile_not_found", "profile not found"))
}

async fn load_profile(state: &AppState, user_id: Uuid) -> Result<ProfileResponse, ApiError> {
    let row = projections::profiles::find_profile(&state.read, user_id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "profile_not_found", "profile not found"))?;
    let bio = match row.bio_sealed {
        Some(b) => Some(open(state, user_id, b).await?),
        None => None,
    };
    Ok(ProfileResponse {
        user_id,
        email: open(state, user_id, row.email_sealed).await?,
        name: open(state, user_id, row.name_sealed).await?,
        bio,
        email_verified: row.email_verified,
        created_at: row.created_at,
    })
}

/// The caller's profile.
#[utoipa::path(get, path = "/api/users/me", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = ProfileResponse), (status = 401, body = ErrorBody),
        (status = 404, description = "not projected yet", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn get_me(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<ProfileResponse>, ApiError> {
    Ok(Json(load_profile(&state, user.user_id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateProfileRequest {
    /// 1–100 characters.
    pub name: Option<String>,
    /// At most 1,000 characters.
    pub bio: Option<String>,
}

/// Change name and/or bio; answers the profile with the change applied.
#[utoipa::path(put, path = "/api/users/me", tag = "users", security(("bearer" = [])), request_body = UpdateProfileRequest,
    responses((status = 200, body = ProfileResponse), (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn put_me(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    ValidJson(req): ValidJson<UpdateProfileRequest>,
) -> Result<Json<ProfileResponse>, ApiError> {
    let name = req.name.as_deref().map(DisplayName::parse).transpose()?;
    let bio = req.bio.as_deref().map(Bio::parse).transpose()?;
    if name.is_none() && bio.is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "give name and/or bio",
        ));
    }
    state
        .identity
        .update_profile(user.user_id, name.as_ref(), bio.as_ref(), &meta(&headers, Some(user.user_id)))
        .await?;
    // The read model may not have the change yet: answer with it applied.
    let mut profile = load_profile(&state, user.user_id).await?;
    if let Some(n) = name {
        profile.name = n.as_str().to_owned();
    }
    if let Some(b) = bio {
        profile.bio = Some(b.as_str().to_owned());
    }
    Ok(Json(profile))
}

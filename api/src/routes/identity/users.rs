//! `/api/users/me`: the caller's profile, read from the profiles read model
//! (personal fields opened with the subject key on the way out).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::otp::OtpChannel;
use domain::values::{Bio, DisplayName, OtpCode, PhoneNumber, Sealed};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ValidJson;
use crate::routes::auth::meta;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/users/me", get(get_me).put(put_me))
        .route("/api/users/me/phone", post(add_phone).delete(remove_phone))
        .route("/api/users/me/phone/verify", post(verify_phone))
        .route("/api/users/me/two-factor", put(set_two_factor))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProfileResponse {
    pub user_id: Uuid,
    /// The public handle (change it with `PUT /api/users/me/username`).
    pub username: Option<String>,
    /// `null` for accounts made by phone.
    pub email: Option<String>,
    pub name: Option<String>,
    pub bio: Option<String>,
    pub email_verified: bool,
    /// E.164.
    pub phone: Option<String>,
    pub phone_verified: bool,
    /// `email` or `sms`.
    pub two_factor_channel: String,
    pub created_at: DateTime<Utc>,
}

/// Opens a sealed field; an erased subject reads as "not found".
async fn open(state: &AppState, user: Uuid, sealed: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(sealed) = sealed else { return Ok(None) };
    state
        .identity
        .vault
        .open(user, &Sealed(sealed))
        .await?
        .map(Some)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "profile_not_found", "profile not found"))
}

async fn load_profile(state: &AppState, user_id: Uuid) -> Result<ProfileResponse, ApiError> {
    let row = projections::profiles::find_profile(&state.read, user_id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "profile_not_found", "profile not found"))?;
    Ok(ProfileResponse {
        user_id,
        username: row.username,
        email: open(state, user_id, row.email_sealed).await?,
        name: open(state, user_id, row.name_sealed).await?,
        bio: open(state, user_id, row.bio_sealed).await?,
        email_verified: row.email_verified,
        phone: open(state, user_id, row.phone_sealed).await?,
        phone_verified: row.phone_verified,
        two_factor_channel: row.two_factor_channel,
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
    // Answer from the command's result, not the read model: the change is
    // committed even when the projector has not caught up (or is down).
    let user_id = user.user_id;
    let account = state
        .identity
        .update_profile(user_id, name.as_ref(), bio.as_ref(), &meta(&headers, Some(user_id)))
        .await?;
    let sealed = |s: Option<Sealed>| s.map(|s| s.0);
    let profile = ProfileResponse {
        user_id,
        username: account.username.as_ref().map(|u| u.as_str().to_owned()),
        email: open(&state, user_id, sealed(account.email)).await?,
        name: open(&state, user_id, sealed(account.name)).await?,
        bio: open(&state, user_id, sealed(account.bio)).await?,
        email_verified: account.email_verified,
        phone: open(&state, user_id, sealed(account.phone)).await?,
        phone_verified: account.phone_verified,
        two_factor_channel: account.two_factor_channel.as_str().to_owned(),
        created_at: account.registered_at.unwrap_or_else(Utc::now),
    };
    Ok(Json(profile))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct AddPhoneRequest {
    /// E.164 with country code, e.g. `+14155550123`.
    #[schema(example = "+14155550123")]
    pub phone: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PhoneChallengeResponse {
    pub challenge_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// Attach a phone number; a 6-digit code is sent by SMS (5 min). The number
/// is pending (no login route, nothing reserved) until verified. A number
/// another account uses gets the same answer and its owner a notice.
#[utoipa::path(post, path = "/api/users/me/phone", tag = "users", security(("bearer" = [])), request_body = AddPhoneRequest,
    responses((status = 202, body = PhoneChallengeResponse), (status = 401, body = ErrorBody),
        (status = 403, description = "reauthentication_required", body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, description = "too_many_attempts", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn add_phone(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    ValidJson(req): ValidJson<AddPhoneRequest>,
) -> Result<(StatusCode, Json<PhoneChallengeResponse>), ApiError> {
    user.require_recent_auth()?;
    let phone = PhoneNumber::parse(&req.phone)?;
    let c = state.identity.add_phone(user.user_id, &phone, &meta(&headers, Some(user.user_id))).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(PhoneChallengeResponse { challenge_id: c.challenge_id, expires_at: c.expires_at }),
    ))
}

/// Remove the caller's phone (verified and pending): it stops being a sign-in
/// route and SMS channel at once; requires an authentication within the
/// last 5 minutes.
#[utoipa::path(delete, path = "/api/users/me/phone", tag = "users", security(("bearer" = [])),
    responses((status = 204, description = "removed (or there was none)"), (status = 401, body = ErrorBody),
        (status = 403, description = "reauthentication_required", body = ErrorBody),
        (status = 409, description = "last_sign_in_method: the account has no email to sign in with", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn remove_phone(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
) -> Result<StatusCode, ApiError> {
    user.require_recent_auth()?;
    state.identity.remove_phone(user.user_id, &meta(&headers, Some(user.user_id))).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct VerifyPhoneRequest {
    #[schema(example = "123456")]
    pub code: String,
}

/// Verify the pending phone number with the SMS code.
#[utoipa::path(post, path = "/api/users/me/phone/verify", tag = "users", security(("bearer" = [])), request_body = VerifyPhoneRequest,
    responses((status = 204, description = "verified"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn verify_phone(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    ValidJson(req): ValidJson<VerifyPhoneRequest>,
) -> Result<StatusCode, ApiError> {
    let code = OtpCode::parse(&req.code)?;
    state.identity.verify_phone(user.user_id, &code, &meta(&headers, Some(user.user_id))).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Where two-factor codes go.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TwoFactorChannel {
    Email,
    /// Needs a verified phone.
    Sms,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TwoFactorRequest {
    pub channel: TwoFactorChannel,
}

/// Choose where two-factor codes are sent.
#[utoipa::path(put, path = "/api/users/me/two-factor", tag = "users", security(("bearer" = [])), request_body = TwoFactorRequest,
    responses((status = 204, description = "changed"), (status = 401, body = ErrorBody),
        (status = 409, description = "phone_not_verified", body = ErrorBody), (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn set_two_factor(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    ValidJson(req): ValidJson<TwoFactorRequest>,
) -> Result<StatusCode, ApiError> {
    user.require_recent_auth()?;
    let channel = match req.channel {
        TwoFactorChannel::Email => OtpChannel::Email,
        TwoFactorChannel::Sms => OtpChannel::Sms,
    };
    state.identity.set_two_factor_channel(user.user_id, channel, &meta(&headers, Some(user.user_id))).await?;
    Ok(StatusCode::NO_CONTENT)
}

//! Sessions and devices of the caller (ASVS 10.4.9), logout everywhere,
//! the session check for returning clients (seed 003), and step-up
//! re-authentication (ASVS 7.5.1).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use commands::identity::ClientInfo;
use domain::session::RevocationReason;
use domain::values::{OtpCode, Password, Sealed};
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
        .route("/api/users/me/sessions", get(list_sessions))
        .route("/api/users/me/sessions/{session_id}", delete(delete_session))
        .route("/api/users/me/devices", get(list_devices))
        .route("/api/auth/logout-all", post(logout_all))
        .route("/api/auth/check-session", get(check_session))
        .route("/api/auth/reauthenticate", post(reauthenticate))
        .route("/api/auth/reauthenticate/code", post(reauthenticate_code))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionItem {
    pub session_id: Uuid,
    pub device_id: Option<String>,
    pub device_label: Option<String>,
    pub user_agent: Option<String>,
    /// e.g. `203.0.113.0/24`.
    pub ip_prefix: Option<String>,
    /// `active` or `revoked`.
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The session of this request.
    pub current: bool,
}

async fn client_of(state: &AppState, user: Uuid, sealed: Option<String>) -> ClientInfo {
    let Some(sealed) = sealed else { return ClientInfo::default() };
    match state.identity.vault.open(user, &Sealed(sealed)).await {
        Ok(Some(json)) => serde_json::from_str(&json).unwrap_or_default(),
        _ => ClientInfo::default(),
    }
}

async fn sessions_of(state: &AppState, user: &AuthUser) -> Result<Vec<SessionItem>, ApiError> {
    let rows = projections::sessions::list_sessions(&state.read, user.user_id).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let client = client_of(state, user.user_id, row.client_sealed).await;
        out.push(SessionItem {
            session_id: row.session_id,
            device_id: client.device_id,
            device_label: client.device_label,
            user_agent: client.user_agent,
            ip_prefix: client.ip_prefix,
            status: row.status,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            expires_at: row.expires_at,
            current: row.session_id == user.session_id,
        });
    }
    Ok(out)
}

/// The caller's sessions (active, and revoked in the last 30 days), newest first.
#[utoipa::path(get, path = "/api/users/me/sessions", tag = "sessions", security(("bearer" = [])),
    responses((status = 200, body = [SessionItem]), (status = 401, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn list_sessions(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<SessionItem>>, ApiError> {
    Ok(Json(sessions_of(&state, &user).await?))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceItem {
    /// Client-generated id (`X-Device-Id` at login).
    pub device_id: String,
    pub device_label: Option<String>,
    /// Latest use by any session of the device.
    pub last_used_at: DateTime<Utc>,
    pub active_sessions: usize,
}

/// The caller's devices, from the sessions that named one (`X-Device-Id`).
#[utoipa::path(get, path = "/api/users/me/devices", tag = "sessions", security(("bearer" = [])),
    responses((status = 200, body = [DeviceItem]), (status = 401, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn list_devices(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<DeviceItem>>, ApiError> {
    let mut devices: Vec<DeviceItem> = Vec::new();
    for s in sessions_of(&state, &user).await? {
        let Some(id) = s.device_id else { continue };
        let active = usize::from(s.status == "active");
        match devices.iter_mut().find(|d| d.device_id == id) {
            Some(d) => {
                d.last_used_at = d.last_used_at.max(s.last_used_at);
                d.active_sessions += active;
                if d.device_label.is_none() {
                    d.device_label = s.device_label;
                }
            }
            None => devices.push(DeviceItem {
                device_id: id,
                device_label: s.device_label,
                last_used_at: s.last_used_at,
                active_sessions: active,
            }),
        }
    }
    devices.sort_by_key(|d| std::cmp::Reverse(d.last_used_at));
    Ok(Json(devices))
}

/// Revoke one of the caller's sessions.
#[utoipa::path(delete, path = "/api/users/me/sessions/{session_id}", tag = "sessions", security(("bearer" = [])),
    params(("session_id" = Uuid, Path)),
    responses((status = 204, description = "revoked"), (status = 401, body = ErrorBody),
        (status = 404, description = "not_found (also for ids that are not UUIDs)", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn delete_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    Path(session_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    // A malformed id names no session of the caller: the same 404 as an
    // unknown one (JSON, unlike axum's plain-text path rejection).
    let session_id = Uuid::parse_str(&session_id)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not_found", "not found"))?;
    state
        .identity
        .revoke_session(
            user.user_id,
            session_id,
            RevocationReason::Logout,
            &meta(&headers, Some(user.user_id)),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// End every session of the caller, this one included.
#[utoipa::path(post, path = "/api/auth/logout-all", tag = "sessions", security(("bearer" = [])),
    responses((status = 204, description = "all sessions revoked"), (status = 401, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn logout_all(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
) -> Result<StatusCode, ApiError> {
    let m = meta(&headers, Some(user.user_id));
    state.identity.revoke_all_sessions(user.user_id, RevocationReason::Logout, &m).await?;
    // The current session even if the read model has not listed it yet.
    state.identity.revoke_session(user.user_id, user.session_id, RevocationReason::Logout, &m).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CheckSessionResponse {
    pub valid: bool,
    pub session_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Quick factors this client may use to come back without a full login:
    /// `passkey` (the account has one), `pin` (this device, `X-Device-Id`, has one).
    pub quick_factors: Vec<String>,
}

/// Whether the bearer token's session is valid, and which quick factors the
/// client may offer (seed 003). Always 200.
#[utoipa::path(get, path = "/api/auth/check-session", tag = "sessions",
    responses((status = 200, body = CheckSessionResponse)))]
#[tracing::instrument(skip_all)]
pub async fn check_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: Result<AuthUser, ApiError>,
) -> Result<Json<CheckSessionResponse>, ApiError> {
    let Ok(user) = user else {
        return Ok(Json(CheckSessionResponse {
            valid: false,
            session_id: None,
            user_id: None,
            expires_at: None,
            quick_factors: vec![],
        }));
    };
    let row = projections::sessions::find_session(&state.read, user.session_id).await?;
    let device = headers.get("x-device-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let quick_factors = projections::factors::quick_factors(&state.read, user.user_id, device).await?;
    Ok(Json(CheckSessionResponse {
        valid: row.as_ref().is_none_or(|r| r.status == "active" && r.idle_expires_at > Utc::now()),
        session_id: Some(user.session_id),
        user_id: Some(user.user_id),
        expires_at: row.map(|r| r.idle_expires_at),
        quick_factors,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ReauthenticateRequest {
    /// Either the password…
    pub password: Option<String>,
    /// …or a step-up challenge (`/api/auth/reauthenticate/code`) and its code.
    pub challenge_id: Option<Uuid>,
    pub code: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccessTokenResponse {
    /// With a fresh `auth_time`: sensitive changes are allowed for 5 minutes.
    pub access_token: String,
    pub token_type: String,
    /// Seconds.
    pub expires_in: i64,
}

/// Prove a factor again before a sensitive change (ASVS 7.5.1).
#[utoipa::path(post, path = "/api/auth/reauthenticate", tag = "sessions", security(("bearer" = [])), request_body = ReauthenticateRequest,
    responses((status = 200, body = AccessTokenResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn reauthenticate(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    ValidJson(req): ValidJson<ReauthenticateRequest>,
) -> Result<Json<AccessTokenResponse>, ApiError> {
    let m = meta(&headers, Some(user.user_id));
    let done = match (req.password, req.challenge_id, req.code) {
        (Some(p), None, None) => {
            let password = Password::parse_for_login(&p)?;
            state.identity.reauthenticate_with_password(user.user_id, user.session_id, &password, &m).await?
        }
        (None, Some(challenge_id), Some(code)) => {
            let code = OtpCode::parse(&code)?;
            state
                .identity
                .reauthenticate_with_code(user.user_id, user.session_id, challenge_id, &code, &m)
                .await?
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "give either password, or challenge_id and code",
            ))
        }
    };
    Ok(Json(AccessTokenResponse {
        access_token: done.access_token,
        token_type: "Bearer".into(),
        expires_in: done.expires_in,
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StepUpChallenge {
    pub challenge_id: Uuid,
    /// `email` or `sms`.
    pub channel: String,
    pub expires_at: DateTime<Utc>,
}

/// Send a step-up code on the account's two-factor channel.
#[utoipa::path(post, path = "/api/auth/reauthenticate/code", tag = "sessions", security(("bearer" = [])),
    responses((status = 202, body = StepUpChallenge), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn reauthenticate_code(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
) -> Result<(StatusCode, Json<StepUpChallenge>), ApiError> {
    let c =
        state.identity.start_reauthentication_code(user.user_id, &meta(&headers, Some(user.user_id))).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(StepUpChallenge {
            challenge_id: c.challenge_id,
            channel: c.channel.as_str().to_owned(),
            expires_at: c.expires_at,
        }),
    ))
}

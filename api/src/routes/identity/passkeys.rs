//! Passkeys (WebAuthn): registration by a signed-in user after a recent
//! authentication (ASVS 7.5.1), login with or without a username, list and
//! removal. Each ceremony is two calls: `…/start` returns the options for
//! `navigator.credentials.create()` / `.get()` and a `ceremony_id`;
//! `…/finish` takes the browser's answer (as `PublicKeyCredential.toJSON()`
//! gives it) and that id. Ceremonies expire after 5 minutes and finish once.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use commands::passkeys::{CeremonyStart, PasskeyError, PublicKeyCredential, RegisterPublicKeyCredential};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ValidJson;
use crate::routes::auth::{meta, token_response, TokenResponse};
use crate::state::AppState;

/// The passkey routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/auth/passkeys/register/start", post(register_start))
        .route("/api/auth/passkeys/register/finish", post(register_finish))
        .route("/api/auth/passkeys/login/start", post(login_start))
        .route("/api/auth/passkeys/login/finish", post(login_finish))
        .route("/api/users/me/passkeys", get(list_passkeys))
        .route("/api/users/me/passkeys/{credential_id}", delete(delete_passkey))
}

impl From<PasskeyError> for ApiError {
    fn from(e: PasskeyError) -> Self {
        use PasskeyError as E;
        let (status, code) = match &e {
            E::InvalidCeremony => (StatusCode::BAD_REQUEST, "invalid_ceremony"),
            E::Rejected => (StatusCode::UNAUTHORIZED, "passkey_rejected"),
            E::CounterRegressed => (StatusCode::UNAUTHORIZED, "passkey_counter_regressed"),
            E::AlreadyRegistered => (StatusCode::CONFLICT, "passkey_exists"),
            E::TooMany => (StatusCode::CONFLICT, "too_many_passkeys"),
            E::NotFound => (StatusCode::NOT_FOUND, "passkey_not_found"),
            E::InvalidLabel => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            E::Identity(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        };
        if let E::Identity(inner) = e {
            return inner.into();
        }
        let mut err = Self::new(status, code, e.to_string());
        if matches!(e, E::InvalidLabel) {
            err.field = Some("label");
        }
        err
    }
}

/// A started ceremony.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CeremonyResponse {
    /// Send it back with the answer to `…/finish`.
    pub ceremony_id: Uuid,
    /// `CredentialCreationOptions` (registration) or
    /// `CredentialRequestOptions` (login) for the WebAuthn browser API,
    /// binary fields as base64url.
    #[schema(value_type = Object)]
    pub options: serde_json::Value,
    /// The ceremony must finish before this instant (5 minutes).
    pub expires_at: DateTime<Utc>,
}

impl From<CeremonyStart> for CeremonyResponse {
    fn from(c: CeremonyStart) -> Self {
        Self { ceremony_id: c.ceremony_id, options: c.options, expires_at: c.expires_at }
    }
}

/// Start registering a passkey for the caller; requires an authentication
/// within the last 5 minutes.
#[utoipa::path(post, path = "/api/auth/passkeys/register/start", tag = "passkeys", security(("bearer" = [])),
    responses((status = 200, body = CeremonyResponse), (status = 401, body = ErrorBody),
        (status = 403, description = "reauthentication_required", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn register_start(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<CeremonyResponse>, ApiError> {
    user.require_recent_auth()?;
    Ok(Json(state.passkeys.start_registration(user.user_id).await?.into()))
}

/// The browser's answer to a registration.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterFinishRequest {
    pub ceremony_id: Uuid,
    /// The `PublicKeyCredential` from `navigator.credentials.create()`, as JSON.
    #[schema(value_type = Object)]
    pub credential: RegisterPublicKeyCredential,
    /// The user's name for this passkey, at most 64 characters.
    #[schema(example = "Laptop")]
    pub label: Option<String>,
}

/// A passkey of the caller.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PasskeyItem {
    /// base64url (no padding).
    pub credential_id: String,
    pub label: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Finish registering a passkey; only its public key is stored.
#[utoipa::path(post, path = "/api/auth/passkeys/register/finish", tag = "passkeys", security(("bearer" = [])),
    request_body = RegisterFinishRequest,
    responses((status = 201, body = PasskeyItem),
        (status = 400, description = "invalid_ceremony", body = ErrorBody),
        (status = 401, description = "passkey_rejected", body = ErrorBody),
        (status = 403, description = "reauthentication_required", body = ErrorBody),
        (status = 409, description = "passkey_exists / too_many_passkeys", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn register_finish(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    ValidJson(req): ValidJson<RegisterFinishRequest>,
) -> Result<(StatusCode, Json<PasskeyItem>), ApiError> {
    user.require_recent_auth()?;
    let done = state
        .passkeys
        .finish_registration(
            user.user_id,
            req.ceremony_id,
            &req.credential,
            req.label.as_deref(),
            &meta(&headers, Some(user.user_id)),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(PasskeyItem {
            credential_id: done.credential_id,
            label: done.label,
            created_at: done.created_at,
            last_used_at: None,
        }),
    ))
}

/// Who is signing in, if the client knows.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct LoginStartRequest {
    /// The WebAuthn user handle (= user id). Omit for a usernameless login:
    /// the authenticator then offers its discoverable passkeys.
    #[serde(default)]
    pub user_id: Option<Uuid>,
}

/// Start a passkey login (send `{}` for usernameless).
#[utoipa::path(post, path = "/api/auth/passkeys/login/start", tag = "passkeys", request_body = LoginStartRequest,
    responses((status = 200, body = CeremonyResponse), (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn login_start(
    State(state): State<AppState>,
    ValidJson(req): ValidJson<LoginStartRequest>,
) -> Result<Json<CeremonyResponse>, ApiError> {
    Ok(Json(state.passkeys.start_login(req.user_id).await?.into()))
}

/// The browser's answer to a login.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginFinishRequest {
    pub ceremony_id: Uuid,
    /// The `PublicKeyCredential` from `navigator.credentials.get()`, as JSON.
    #[schema(value_type = Object)]
    pub credential: PublicKeyCredential,
}

/// Finish a passkey login; starts a session like `/api/auth/verify-otp`.
#[utoipa::path(post, path = "/api/auth/passkeys/login/finish", tag = "passkeys", request_body = LoginFinishRequest,
    responses((status = 200, description = "tokens; also sets the __Host-refresh cookie", body = TokenResponse),
        (status = 400, description = "invalid_ceremony", body = ErrorBody),
        (status = 401, description = "passkey_rejected / passkey_counter_regressed", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn login_finish(
    State(state): State<AppState>,
    headers: HeaderMap,
    ValidJson(req): ValidJson<LoginFinishRequest>,
) -> Result<Response, ApiError> {
    let pair = state.passkeys.finish_login(req.ceremony_id, &req.credential, &meta(&headers, None)).await?;
    Ok(token_response(pair))
}

/// The caller's passkeys, oldest first.
#[utoipa::path(get, path = "/api/users/me/passkeys", tag = "passkeys", security(("bearer" = [])),
    responses((status = 200, body = [PasskeyItem]), (status = 401, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn list_passkeys(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<PasskeyItem>>, ApiError> {
    let rows = projections::passkeys::list_passkeys(&state.read, user.user_id).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let label = match row.label {
            Some(sealed) => state.passkeys.open_label(user.user_id, &sealed).await?,
            None => None,
        };
        out.push(PasskeyItem {
            credential_id: row.credential_id,
            label,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
        });
    }
    Ok(Json(out))
}

/// Remove one of the caller's passkeys; requires an authentication within
/// the last 5 minutes.
#[utoipa::path(delete, path = "/api/users/me/passkeys/{credential_id}", tag = "passkeys", security(("bearer" = [])),
    params(("credential_id" = String, Path, description = "base64url credential id")),
    responses((status = 204, description = "removed"), (status = 401, body = ErrorBody),
        (status = 403, description = "reauthentication_required", body = ErrorBody),
        (status = 404, description = "passkey_not_found", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn delete_passkey(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    Path(credential_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    user.require_recent_auth()?;
    state.passkeys.remove(user.user_id, &credential_id, &meta(&headers, Some(user.user_id))).await?;
    Ok(StatusCode::NO_CONTENT)
}

//! Strong factors of issue 4 that live beside passwords: the device PIN
//! (seed 003: come back on a known device by PIN) and TOTP (RFC 6238) as
//! the second factor instead of a mailed code, with recovery codes.
//! Setting or removing a factor needs a fresh authentication (ASVS 7.5.1).

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use commands::identity::FactorError;
use domain::pin::DeviceId;
use domain::totp::RecoveryCode;
use domain::values::{OtpCode, Pin};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ValidJson;
use crate::routes::auth::{meta, token_response, TokenResponse};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/auth/pin", post(set_pin).delete(delete_pin))
        .route("/api/auth/pin/verify", post(verify_pin))
        .route("/api/auth/verify-recovery-code", post(verify_recovery_code))
        .route("/api/users/me/totp", post(start_totp).delete(disable_totp))
        .route("/api/users/me/totp/confirm", post(confirm_totp))
}

impl From<FactorError> for ApiError {
    fn from(e: FactorError) -> Self {
        use FactorError as E;
        let (status, code) = match &e {
            E::Identity(_) => match e {
                E::Identity(inner) => return inner.into(),
                other => return Self::internal(other),
            },
            E::InvalidPin => (StatusCode::UNAUTHORIZED, "invalid_pin"),
            E::PinNotSet => (StatusCode::NOT_FOUND, "pin_not_set"),
            E::ReauthenticationRequired => (StatusCode::FORBIDDEN, "reauthentication_required"),
            E::TotpAlreadyEnabled => (StatusCode::CONFLICT, "totp_already_enabled"),
            E::TotpNotPending => (StatusCode::CONFLICT, "totp_not_pending"),
            E::TotpNotEnabled => (StatusCode::NOT_FOUND, "totp_not_enabled"),
        };
        Self::new(status, code, e.to_string())
    }
}

// ---- device PIN ------------------------------------------------------------

#[derive(Debug, Deserialize, ToSchema)]
pub struct SetPinRequest {
    /// The client-generated device id (as sent in `X-Device-Id`), 1–64 characters.
    #[schema(example = "7f9c2ba4-phone")]
    pub device_id: String,
    /// 4–8 digits.
    #[schema(example = "482913")]
    pub pin: String,
}

/// The secret a device keeps with its PIN.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SetPinResponse {
    /// 256 random bits (base64url, 43 characters), shown once: the device
    /// stores it (keychain / keystore) and sends it with the PIN to
    /// `/api/auth/pin/verify`; only its SHA-256 is kept. Setting the PIN
    /// again issues a new one.
    pub device_secret: String,
}

/// Set (or replace) this device's PIN. Needs an authentication within the
/// last 5 minutes. A PIN disabled after 5 wrong attempts is set again only
/// after a full login (password and second factor) that followed the lock.
/// Answers the device secret PIN sign-in needs (possession of the device).
#[utoipa::path(post, path = "/api/auth/pin", tag = "factors", security(("bearer" = [])), request_body = SetPinRequest,
    responses((status = 200, description = "PIN set", body = SetPinResponse), (status = 401, body = ErrorBody),
        (status = 403, description = "reauthentication_required", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn set_pin(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    ValidJson(req): ValidJson<SetPinRequest>,
) -> Result<Json<SetPinResponse>, ApiError> {
    user.require_recent_auth()?;
    let device = DeviceId::parse(&req.device_id)?;
    let pin = Pin::parse(&req.pin)?;
    let device_secret = state
        .identity
        .set_pin(user.user_id, user.session_id, &device, &pin, &meta(&headers, Some(user.user_id)))
        .await?;
    Ok(Json(SetPinResponse { device_secret }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct VerifyPinRequest {
    pub device_id: String,
    /// 4–8 digits.
    pub pin: String,
    /// The secret `/api/auth/pin` answered when the PIN was set.
    pub device_secret: String,
    /// Optional: the account, when several have a PIN on this device
    /// (default: the one that set a PIN there last).
    pub user_id: Option<Uuid>,
}

/// Sign in on a known device with its PIN (seed 003); starts a session like
/// `/api/auth/verify-otp`. Needs the device secret with the PIN. Wrong PIN,
/// wrong secret, unknown device and disabled PIN all answer 401
/// `invalid_pin`; 5 wrong PINs disable the device's PIN, and wrong PINs
/// across all of an account's devices share a further cap (429).
#[utoipa::path(post, path = "/api/auth/pin/verify", tag = "factors", request_body = VerifyPinRequest,
    responses((status = 200, description = "tokens; also sets the __Host-refresh cookie", body = TokenResponse),
        (status = 401, description = "invalid_pin", body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn verify_pin(
    State(state): State<AppState>,
    headers: HeaderMap,
    ValidJson(req): ValidJson<VerifyPinRequest>,
) -> Result<Response, ApiError> {
    let device = DeviceId::parse(&req.device_id)?;
    let pin = Pin::parse(&req.pin)?;
    let pair = state
        .identity
        .verify_pin(&device, req.user_id, &pin, &req.device_secret, &meta(&headers, None))
        .await?;
    Ok(token_response(pair))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DevicePinQuery {
    /// The device whose PIN to remove; defaults to the `X-Device-Id` header.
    pub device_id: Option<String>,
}

/// Remove a device's PIN (`?device_id=`, or the `X-Device-Id` header).
#[utoipa::path(delete, path = "/api/auth/pin", tag = "factors", security(("bearer" = [])), params(DevicePinQuery),
    responses((status = 204, description = "removed"), (status = 401, body = ErrorBody),
        (status = 404, description = "pin_not_set", body = ErrorBody), (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn delete_pin(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    Query(q): Query<DevicePinQuery>,
) -> Result<StatusCode, ApiError> {
    let m = meta(&headers, Some(user.user_id));
    let raw = q.device_id.or_else(|| m.client.device_id.clone()).unwrap_or_default();
    let device = DeviceId::parse(&raw)?;
    state.identity.remove_pin(user.user_id, &device, &m).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- TOTP --------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TotpEnrollmentResponse {
    /// Base32 secret, to type into an authenticator app by hand. Shown once.
    pub secret: String,
    /// `otpauth://totp/…` URI (what the QR code encodes).
    pub otpauth_uri: String,
    /// The URI as a QR code (an SVG document).
    pub qr_svg: String,
}

/// Start TOTP enrollment: a new secret, its `otpauth://` URI and QR code.
/// Not in force until confirmed. Needs an authentication within 5 minutes.
#[utoipa::path(post, path = "/api/users/me/totp", tag = "factors", security(("bearer" = [])),
    responses((status = 200, body = TotpEnrollmentResponse), (status = 401, body = ErrorBody),
        (status = 403, description = "reauthentication_required", body = ErrorBody),
        (status = 409, description = "totp_already_enabled", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn start_totp(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
) -> Result<Json<TotpEnrollmentResponse>, ApiError> {
    user.require_recent_auth()?;
    let e = state.identity.start_totp_enrollment(user.user_id, &meta(&headers, Some(user.user_id))).await?;
    Ok(Json(TotpEnrollmentResponse { secret: e.secret, otpauth_uri: e.otpauth_uri, qr_svg: e.qr_svg }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ConfirmTotpRequest {
    /// The authenticator app's current 6-digit code.
    #[schema(example = "123456")]
    pub code: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecoveryCodesResponse {
    /// 10 single-use codes (`XXXX-XXXX`), shown this once only.
    pub recovery_codes: Vec<String>,
}

/// Confirm enrollment with a current code: TOTP becomes the second factor
/// at login (no more mailed codes). Returns the recovery codes, once.
#[utoipa::path(post, path = "/api/users/me/totp/confirm", tag = "factors", security(("bearer" = [])), request_body = ConfirmTotpRequest,
    responses((status = 200, body = RecoveryCodesResponse), (status = 400, description = "invalid_code", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 409, description = "totp_not_pending / totp_already_enabled", body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn confirm_totp(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
    ValidJson(req): ValidJson<ConfirmTotpRequest>,
) -> Result<Json<RecoveryCodesResponse>, ApiError> {
    let code = OtpCode::parse(&req.code)?;
    let recovery_codes =
        state.identity.confirm_totp(user.user_id, &code, &meta(&headers, Some(user.user_id))).await?;
    Ok(Json(RecoveryCodesResponse { recovery_codes }))
}

/// Turn TOTP off; logins go back to mailed codes. Needs an authentication
/// within 5 minutes.
#[utoipa::path(delete, path = "/api/users/me/totp", tag = "factors", security(("bearer" = [])),
    responses((status = 204, description = "disabled"), (status = 401, body = ErrorBody),
        (status = 403, description = "reauthentication_required", body = ErrorBody),
        (status = 404, description = "totp_not_enabled", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn disable_totp(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
) -> Result<StatusCode, ApiError> {
    user.require_recent_auth()?;
    state.identity.disable_totp(user.user_id, &meta(&headers, Some(user.user_id))).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct VerifyRecoveryCodeRequest {
    /// A `totp` login challenge (from `/api/auth/login`).
    pub challenge_id: Uuid,
    /// A recovery code, `XXXX-XXXX`; each works once.
    #[schema(example = "7KQ2-M9XD")]
    pub code: String,
}

/// Answer a `totp` login challenge with a recovery code instead of the
/// app's code (lost device); starts a session like `/api/auth/verify-otp`.
#[utoipa::path(post, path = "/api/auth/verify-recovery-code", tag = "factors", request_body = VerifyRecoveryCodeRequest,
    responses((status = 200, description = "tokens; also sets the __Host-refresh cookie", body = TokenResponse),
        (status = 400, description = "invalid_code / code_expired", body = ErrorBody),
        (status = 403, description = "challenge_locked", body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn verify_recovery_code(
    State(state): State<AppState>,
    headers: HeaderMap,
    ValidJson(req): ValidJson<VerifyRecoveryCodeRequest>,
) -> Result<Response, ApiError> {
    let code = RecoveryCode::parse(&req.code)?;
    let pair = state.identity.verify_recovery_code(req.challenge_id, &code, &meta(&headers, None)).await?;
    Ok(token_response(pair))
}

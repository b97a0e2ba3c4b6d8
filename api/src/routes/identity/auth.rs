//! `/api/auth/*`: registration, email verification, login with an emailed
//! second factor, refresh-token rotation, logout and the current session.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use commands::identity::{LoginStep, RequestMeta, TokenPair, DEVICE_COOKIE, DEVICE_COOKIE_TTL_SECS};
use domain::session::RevocationReason;
use domain::values::{
    DisplayName, EmailAddress, InvalidValue, OtpCode, Password, PersonName, PhoneNumber, Username,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::cookies;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ValidJson;
use crate::state::AppState;

/// Name of the refresh-token cookie (`__Host-` prefix: Secure, Path=/, no Domain).
pub const REFRESH_COOKIE: &str = "__Host-refresh";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/auth/register", post(register))
        .route("/api/auth/verify-email", post(verify_email))
        .route("/api/auth/verify-email/resend", post(resend_verification))
        .route("/api/auth/login", post(login))
        .route("/api/auth/verify-otp", post(verify_otp))
        .route("/api/auth/refresh", post(refresh))
        .route("/api/auth/logout", post(logout))
        .route("/api/auth/session", get(session))
        .route("/api/auth/request-otp", post(request_otp))
        .route("/api/auth/otp/resend", post(resend_otp))
        .route("/api/auth/password-reset/request", post(password_reset_request))
        .route("/api/auth/password-reset/verify", post(password_reset_verify))
        .route("/api/auth/password-reset/complete", post(password_reset_complete))
}

/// Internal header carrying the peer's IP prefix, set by the server from the
/// connection (any incoming value is removed first; see `http::peer_ip`).
pub const PEER_PREFIX_HEADER: &str = "x-streamforge-peer-prefix";

fn header_str(headers: &HeaderMap, name: &str, max_chars: usize) -> Option<String> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    (!v.is_empty()).then(|| v.chars().filter(|c| !c.is_control()).take(max_chars).collect())
}

pub(crate) fn meta(headers: &HeaderMap, actor: Option<Uuid>) -> RequestMeta {
    RequestMeta {
        request_id: headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned),
        actor,
        client: commands::identity::ClientInfo {
            device_id: header_str(headers, "x-device-id", 64),
            device_label: header_str(headers, "x-device-label", 100),
            user_agent: header_str(headers, "user-agent", 256),
            ip_prefix: header_str(headers, PEER_PREFIX_HEADER, 64),
        },
        causation_id: None,
        client_request_id: headers
            .get(crate::http::CLIENT_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterRequest {
    /// 254 bytes at most.
    #[schema(example = "ann@example.com")]
    pub email: String,
    /// 8–256 characters, not a common password.
    #[schema(example = "correct horse battery staple")]
    pub password: String,
    /// Display name, 1–100 characters; optional when `first_name` and
    /// `last_name` are given (then "first last").
    #[schema(example = "Ann")]
    pub name: Option<String>,
    /// The handle: 3–30 characters of `a-z 0-9 _` (case-folded), not only
    /// digits, not reserved; a generated `user-` + 8 digits when absent.
    /// 409 `username_taken` if someone has it.
    #[schema(example = "ann_k")]
    pub username: Option<String>,
    /// 1–50 characters (seed 001); give both or neither. Sealed.
    pub first_name: Option<String>,
    /// 1–50 characters; sealed.
    pub last_name: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RegisterResponse {
    pub user_id: Uuid,
}

/// Register an account; a 6-digit verification code is mailed (10 min).
/// An already registered email gets the same answer (its owner is told by mail).
#[utoipa::path(post, path = "/api/auth/register", tag = "auth", request_body = RegisterRequest,
    responses(
        (status = 201, description = "registered (or already registered)", body = RegisterResponse),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, description = "invalid field", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    ValidJson(req): ValidJson<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    let email = EmailAddress::parse(&req.email)?;
    let password = Password::parse(&req.password)?;
    let username = req.username.as_deref().map(Username::parse).transpose()?;
    let names = match (req.first_name.as_deref(), req.last_name.as_deref()) {
        (Some(first), Some(last)) => {
            Some((PersonName::parse("first_name", first)?, PersonName::parse("last_name", last)?))
        }
        (None, None) => None,
        (None, Some(_)) => return Err(ApiError::from(InvalidValue::required("first_name"))),
        (Some(_), None) => return Err(ApiError::from(InvalidValue::required("last_name"))),
    };
    let name = match (&req.name, &names) {
        (Some(name), _) => DisplayName::parse(name)?,
        (None, Some((first, last))) => DisplayName::parse(&format!("{} {}", first.as_str(), last.as_str()))?,
        (None, None) => DisplayName::parse("")?,
    };
    let extras = commands::identity::RegistrationExtras { username, names };
    let user_id = state.identity.register(&email, &password, &name, &extras, &meta(&headers, None)).await?;
    Ok((StatusCode::CREATED, Json(RegisterResponse { user_id })))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct VerifyEmailRequest {
    pub email: String,
    /// The 6-digit code from the mail.
    #[schema(example = "123456")]
    pub code: String,
}

/// Verify the email address with the mailed code.
#[utoipa::path(post, path = "/api/auth/verify-email", tag = "auth", request_body = VerifyEmailRequest,
    responses((status = 204, description = "verified"),
        (status = 400, description = "invalid_code / code_expired", body = ErrorBody),
        (status = 403, description = "challenge_locked", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn verify_email(
    State(state): State<AppState>,
    headers: HeaderMap,
    ValidJson(req): ValidJson<VerifyEmailRequest>,
) -> Result<StatusCode, ApiError> {
    let email = EmailAddress::parse(&req.email)?;
    let code = OtpCode::parse(&req.code)?;
    state.identity.verify_email(&email, &code, &meta(&headers, None)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Mail a new email-verification code (the old one stops working). Always
/// 202, for known, verified and unknown addresses alike (no enumeration);
/// processed after answering.
#[utoipa::path(post, path = "/api/auth/verify-email/resend", tag = "auth", request_body = ResetRequest,
    responses((status = 202, description = "accepted"), (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn resend_verification(
    State(state): State<AppState>,
    headers: HeaderMap,
    ValidJson(req): ValidJson<ResetRequest>,
) -> Result<StatusCode, ApiError> {
    let email = EmailAddress::parse(&req.email)?;
    let (identity, meta) = (state.identity.clone(), meta(&headers, None));
    Ok(after_answering("verification resend", async move {
        identity.resend_email_verification(&email, &meta).await
    }))
}

/// Answers 202 at once and does `work` afterwards, so the response time
/// says nothing about the account (SECURITY.md "Enumeration"); a failure is
/// logged with `what`.
fn after_answering<F>(what: &'static str, work: F) -> StatusCode
where
    F: std::future::Future<Output = Result<(), commands::IdentityError>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = work.await {
            tracing::error!(error = %e, what, "request failed after its answer");
        }
    });
    StatusCode::ACCEPTED
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    /// The email address, or the username (same answers, same timing).
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    /// Answer it at `/api/auth/verify-otp`.
    pub challenge_id: Uuid,
    /// Where the code was sent: `email`.
    pub channel: String,
    pub expires_at: DateTime<Utc>,
}

/// Password step of login; mails a 6-digit second-factor code.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse),
        (status = 401, description = "invalid_credentials", body = ErrorBody),
        (status = 403, description = "email_not_verified", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    ValidJson(req): ValidJson<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    // A username signs in with its account's email; an unknown one gets
    // an address no account has (the same work, the same answer).
    let email = if req.email.contains('@') {
        EmailAddress::parse(&req.email).ok()
    } else {
        match Username::parse_lookup(&req.email) {
            Ok(username) => Some(state.identity.login_email_for(&username).await?),
            Err(_) => None,
        }
    };
    // A value that cannot be a valid account answers like a wrong password.
    let (Some(email), Ok(password)) = (email, Password::parse_for_login(&req.password)) else {
        state.identity.hasher.verify_dummy(&req.password).await;
        return Err(commands::IdentityError::InvalidCredentials.into());
    };
    let device = device_cookie(&headers);
    let c = state.identity.start_login(&email, &password, device.as_deref(), &meta(&headers, None)).await?;
    Ok(Json(LoginResponse {
        challenge_id: c.challenge_id,
        channel: c.channel.as_str().to_owned(),
        expires_at: c.expires_at,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct VerifyOtpRequest {
    pub challenge_id: Uuid,
    #[schema(example = "123456")]
    pub code: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// JWT (EdDSA, `typ` at+jwt).
    pub access_token: String,
    /// Opaque; also set as the `__Host-refresh` cookie. Single use.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Access-token lifetime in seconds.
    pub expires_in: i64,
    pub session_id: Uuid,
}

pub(crate) fn token_response(pair: TokenPair) -> Response {
    let max_age = (pair.refresh_expires_at - Utc::now()).num_seconds().max(0);
    let cookie = pair.refresh_token.clone();
    let body = TokenResponse {
        access_token: pair.access_token,
        refresh_token: pair.refresh_token,
        token_type: "Bearer".to_owned(),
        expires_in: pair.expires_in,
        session_id: pair.session_id,
    };
    let mut res = Json(body).into_response();
    cookies::set(&mut res, REFRESH_COOKIE, cookie, max_age);
    res
}

/// The phone code was right, but the account needs a stronger factor
/// before a session starts (an SMS code is one factor).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SecondFactorResponse {
    /// `totp`: answer `challenge_id` at `/api/auth/verify-otp` with the
    /// authenticator app's code (or a recovery code); `passkey`: sign in
    /// with a passkey (`/api/auth/passkeys/login/start` with `user_id`).
    pub second_factor: String,
    pub challenge_id: Option<Uuid>,
    pub expires_at: Option<DateTime<Utc>>,
    pub user_id: Option<Uuid>,
}

/// Answer the second-factor or phone-login challenge; starts a session
/// (or, for a phone code on an account with TOTP or passkeys, names the
/// second step).
#[utoipa::path(post, path = "/api/auth/verify-otp", tag = "auth", request_body = VerifyOtpRequest,
    responses((status = 200, description = "tokens (also sets the __Host-refresh cookie), or the second step a phone code needs",
            content((TokenResponse), (SecondFactorResponse))),
        (status = 400, description = "invalid_code / code_expired", body = ErrorBody),
        (status = 403, description = "challenge_locked", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn verify_otp(
    State(state): State<AppState>,
    headers: HeaderMap,
    ValidJson(req): ValidJson<VerifyOtpRequest>,
) -> Result<Response, ApiError> {
    let code = OtpCode::parse(&req.code)?;
    let step = state.identity.verify_otp(req.challenge_id, &code, &meta(&headers, None)).await?;
    Ok(match step {
        LoginStep::Session(pair) => {
            let user_id = pair.user_id;
            with_device_cookie(token_response(pair), &state, &headers, user_id)
        }
        LoginStep::Totp(c) => Json(SecondFactorResponse {
            second_factor: "totp".to_owned(),
            challenge_id: Some(c.challenge_id),
            expires_at: Some(c.expires_at),
            user_id: None,
        })
        .into_response(),
        LoginStep::Passkey { user_id } => Json(SecondFactorResponse {
            second_factor: "passkey".to_owned(),
            challenge_id: None,
            expires_at: None,
            user_id: Some(user_id),
        })
        .into_response(),
    })
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct RefreshRequest {
    /// Omit to use the `__Host-refresh` cookie.
    pub refresh_token: Option<String>,
}

/// The device cookie a request carries (`__Host-device`, or the
/// `X-Device-Cookie` header for clients without a cookie store).
pub(crate) fn device_cookie(headers: &HeaderMap) -> Option<String> {
    cookies::read(headers, DEVICE_COOKIE)
        .or_else(|| headers.get("x-device-cookie").and_then(|v| v.to_str().ok()).map(str::to_owned))
}

/// Adds a device cookie of `user_id` to a sign-in's answer unless the
/// request already carries a valid one (OWASP device cookies: this device
/// is then not locked out by password failures from elsewhere).
pub(crate) fn with_device_cookie(
    mut res: Response,
    state: &AppState,
    headers: &HeaderMap,
    user_id: Uuid,
) -> Response {
    if device_cookie(headers).is_some_and(|c| state.identity.device_of(user_id, &c).is_some()) {
        return res;
    }
    cookies::set(&mut res, DEVICE_COOKIE, state.identity.new_device_cookie(user_id), DEVICE_COOKIE_TTL_SECS);
    res
}

/// Rotate the refresh token (body or cookie). The old token dies; presenting
/// it again revokes the whole session (RFC 9700 §4.14.2).
#[utoipa::path(post, path = "/api/auth/refresh", tag = "auth", request_body(content = RefreshRequest, description = "optional when the cookie is sent"),
    responses((status = 200, body = TokenResponse),
        (status = 400, body = ErrorBody),
        (status = 401, description = "invalid_refresh_token / refresh_token_reused / session_revoked / session_expired", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let from_body = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let req: RefreshRequest = serde_json::from_slice(&body).map_err(|_| {
            ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", "the body is not valid JSON")
        })?;
        req.refresh_token
    };
    let token = from_body.or_else(|| cookies::read(&headers, REFRESH_COOKIE)).ok_or_else(|| {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_refresh_token", "no refresh token")
    })?;
    let pair = state.identity.refresh(&token, &meta(&headers, None)).await?;
    Ok(token_response(pair))
}

/// End the caller's session; its access and refresh tokens stop working.
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204, description = "logged out; clears the cookie"), (status = 401, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
) -> Result<Response, ApiError> {
    state
        .identity
        .revoke_session(
            user.user_id,
            user.session_id,
            RevocationReason::Logout,
            &meta(&headers, Some(user.user_id)),
        )
        .await?;
    let mut res = StatusCode::NO_CONTENT.into_response();
    cookies::set(&mut res, REFRESH_COOKIE, String::new(), 0);
    Ok(res)
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionResponse {
    pub session_id: Uuid,
    pub user_id: Uuid,
    /// `active` or `revoked`.
    pub status: String,
    /// Refresh rotations so far.
    pub generation: i64,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    /// Ends unless refreshed before.
    pub idle_expires_at: DateTime<Utc>,
    /// Absolute end.
    pub expires_at: DateTime<Utc>,
}

/// The caller's session, from the sessions read model.
#[utoipa::path(get, path = "/api/auth/session", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = SessionResponse), (status = 401, body = ErrorBody),
        (status = 404, description = "not projected yet", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
pub async fn session(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<SessionResponse>, ApiError> {
    let row = projections::sessions::find_session(&state.read, user.session_id)
        .await?
        .filter(|r| r.user_id == user.user_id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "session_not_found", "session not found"))?;
    Ok(Json(SessionResponse {
        session_id: row.session_id,
        user_id: row.user_id,
        status: row.status,
        generation: row.generation,
        created_at: row.created_at,
        last_used_at: row.last_used_at,
        idle_expires_at: row.idle_expires_at,
        expires_at: row.expires_at,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RequestOtpRequest {
    /// E.164 with country code.
    #[schema(example = "+14155550123")]
    pub phone: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChallengeResponse {
    /// Answer it at `/api/auth/verify-otp`.
    pub challenge_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// Phone sign-up / login without a password (seed 003): a 6-digit code by
/// SMS (5 min). The first correct code creates the account. At most 3 codes
/// per number per hour, 30 s apart.
#[utoipa::path(post, path = "/api/auth/request-otp", tag = "auth", request_body = RequestOtpRequest,
    responses((status = 202, body = ChallengeResponse), (status = 422, description = "invalid phone", body = ErrorBody),
        (status = 429, description = "too_many_attempts; see Retry-After", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn request_otp(
    State(state): State<AppState>,
    headers: HeaderMap,
    ValidJson(req): ValidJson<RequestOtpRequest>,
) -> Result<(StatusCode, Json<ChallengeResponse>), ApiError> {
    let phone = PhoneNumber::parse(&req.phone)?;
    let c = state.identity.request_phone_otp(&phone, &meta(&headers, None)).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ChallengeResponse { challenge_id: c.challenge_id, expires_at: c.expires_at }),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ResendRequest {
    pub challenge_id: Uuid,
}

/// Send a new code for a pending challenge (the old code stops working).
/// Same answer for unknown challenges; 429 within the cooldown or past 3 per hour.
#[utoipa::path(post, path = "/api/auth/otp/resend", tag = "auth", request_body = ResendRequest,
    responses((status = 202, description = "accepted"), (status = 422, body = ErrorBody),
        (status = 429, description = "too_many_attempts; see Retry-After", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn resend_otp(
    State(state): State<AppState>,
    headers: HeaderMap,
    ValidJson(req): ValidJson<ResendRequest>,
) -> Result<StatusCode, ApiError> {
    state.identity.resend(req.challenge_id, &meta(&headers, None)).await?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ResetRequest {
    pub email: String,
}

/// Ask for a password-reset code by mail. Always 202 (no enumeration).
/// The body is `{email}`.
#[utoipa::path(post, path = "/api/auth/password-reset/request", tag = "auth", request_body = ResetRequest,
    responses((status = 202, description = "accepted"), (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn password_reset_request(
    State(state): State<AppState>,
    headers: HeaderMap,
    ValidJson(req): ValidJson<ResetRequest>,
) -> Result<StatusCode, ApiError> {
    let email = EmailAddress::parse(&req.email)?;
    let (identity, meta) = (state.identity.clone(), meta(&headers, None));
    Ok(after_answering("password reset request", async move {
        identity.request_password_reset(&email, &meta).await
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ResetVerifyRequest {
    pub email: String,
    #[schema(example = "123456")]
    pub code: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ResetTokenResponse {
    /// JWT with `typ` `reset+jwt`; single use.
    pub reset_token: String,
    /// Lifetime in seconds.
    pub expires_in: i64,
}

/// Exchange the mailed reset code for a short-lived reset token.
#[utoipa::path(post, path = "/api/auth/password-reset/verify", tag = "auth", request_body = ResetVerifyRequest,
    responses((status = 200, body = ResetTokenResponse),
        (status = 400, description = "invalid_code / code_expired", body = ErrorBody),
        (status = 403, description = "challenge_locked", body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn password_reset_verify(
    State(state): State<AppState>,
    headers: HeaderMap,
    ValidJson(req): ValidJson<ResetVerifyRequest>,
) -> Result<Json<ResetTokenResponse>, ApiError> {
    let email = EmailAddress::parse(&req.email)?;
    let code = OtpCode::parse(&req.code)?;
    let (reset_token, expires_in) =
        state.identity.verify_password_reset(&email, &code, &meta(&headers, None)).await?;
    Ok(Json(ResetTokenResponse { reset_token, expires_in }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ResetCompleteRequest {
    pub reset_token: String,
    /// 8–256 characters, not a common password.
    pub new_password: String,
}

/// Set a new password; every session of the account ends and a notice is mailed.
#[utoipa::path(post, path = "/api/auth/password-reset/complete", tag = "auth", request_body = ResetCompleteRequest,
    responses((status = 204, description = "password changed"),
        (status = 401, description = "invalid_reset_token", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn password_reset_complete(
    State(state): State<AppState>,
    headers: HeaderMap,
    ValidJson(req): ValidJson<ResetCompleteRequest>,
) -> Result<StatusCode, ApiError> {
    let password = Password::parse(&req.new_password).map_err(|e| {
        let mut err = ApiError::from(e);
        err.field = Some("new_password");
        err
    })?;
    state.identity.complete_password_reset(&req.reset_token, &password, &meta(&headers, None)).await?;
    Ok(StatusCode::NO_CONTENT)
}

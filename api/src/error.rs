//! One error type for every handler: a status and a JSON body
//! `{"code": "snake_case", "message": "…"}` (plus `field` for validation).
//! Infrastructure failures are logged with their cause and answered with an
//! opaque 500.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use commands::IdentityError;
use domain::values::InvalidValue;
use serde::Serialize;
use utoipa::ToSchema;

/// The JSON body of every error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `invalid_credentials`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The offending request field, for validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An HTTP error.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<&'static str>,
    /// Seconds, sent as `Retry-After` (429).
    pub retry_after: Option<i64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), field: None, retry_after: None }
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 500, with the cause logged (never sent).
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_owned(),
            message: self.message,
            field: self.field.map(str::to_owned),
        };
        let mut res = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

/// 422 `validation_failed` naming the field.
impl From<InvalidValue> for ApiError {
    fn from(e: InvalidValue) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "validation_failed",
            message: e.to_string(),
            field: Some(e.field),
            retry_after: None,
        }
    }
}

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> Self {
        use IdentityError as E;
        let (status, code) = match &e {
            E::AccountSuspended { .. } => (StatusCode::FORBIDDEN, "account_suspended"),
            E::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            E::EmailNotVerified => (StatusCode::FORBIDDEN, "email_not_verified"),
            E::InvalidCode => (StatusCode::BAD_REQUEST, "invalid_code"),
            E::CodeExpired => (StatusCode::BAD_REQUEST, "code_expired"),
            E::ChallengeLocked => (StatusCode::FORBIDDEN, "challenge_locked"),
            E::InvalidRefreshToken => (StatusCode::UNAUTHORIZED, "invalid_refresh_token"),
            E::RefreshTokenReused => (StatusCode::UNAUTHORIZED, "refresh_token_reused"),
            E::SessionExpired => (StatusCode::UNAUTHORIZED, "session_expired"),
            E::SessionRevoked => (StatusCode::UNAUTHORIZED, "session_revoked"),
            E::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            E::UsernameTaken => {
                let mut err = Self::new(StatusCode::CONFLICT, "username_taken", e.to_string());
                err.field = Some("username");
                return err;
            }
            E::Conflict => (StatusCode::CONFLICT, "conflict"),
            E::Throttled { retry_after_secs } => {
                let mut err = Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_attempts", e.to_string());
                err.retry_after = Some(*retry_after_secs);
                return err;
            }
            E::InvalidResetToken => (StatusCode::UNAUTHORIZED, "invalid_reset_token"),
            E::PhoneUnavailable => (StatusCode::CONFLICT, "phone_unavailable"),
            E::PhoneNotVerified => (StatusCode::CONFLICT, "phone_not_verified"),
            E::LastSignInMethod => (StatusCode::CONFLICT, "last_sign_in_method"),
            E::PhoneNotSupported => (StatusCode::UNPROCESSABLE_ENTITY, "phone_not_supported"),
            E::Internal(cause) => return Self::internal(cause),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::internal(e)
    }
}

impl From<commands::vault::VaultError> for ApiError {
    fn from(e: commands::vault::VaultError) -> Self {
        Self::internal(e)
    }
}

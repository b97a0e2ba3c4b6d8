//! Bearer authentication: verifies the access token (EdDSA only, `typ`
//! `at+jwt`, `exp iss aud sub`; RFC 8725) and refuses tokens of sessions the
//! sessions read model knows as revoked, so logout takes effect as soon as
//! the revocation is projected (milliseconds; ASVS 7.4.1) rather than at
//! token expiry.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated caller.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    pub user_id: Uuid,
    pub session_id: Uuid,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        let claims = state
            .tokens
            .verify_access(token.trim())
            .map_err(|_| ApiError::unauthorized("invalid or expired access token"))?;
        if projections::sessions::is_revoked(&state.read, claims.sid).await? {
            return Err(ApiError::unauthorized("the session has been revoked"));
        }
        Ok(Self { user_id: claims.sub, session_id: claims.sid })
    }
}

//! Bearer authentication: verifies the access token (EdDSA only, `typ`
//! `at+jwt`, `exp iss aud sub`; RFC 8725) and refuses tokens of revoked
//! sessions, so logout takes effect within milliseconds (ASVS 7.4.1) rather
//! than at token expiry. The node's in-memory revocation set
//! ([`crate::revocations`]) answers alone while it is known complete (seeded
//! and checked against the event store, feed alive): no database round trip
//! per request. Otherwise the sessions read model is asked as well (fail
//! closed).

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use uuid::Uuid;

use crate::error::ApiError;
use crate::revocations::Revocation;
use crate::state::AppState;

/// How recent the last authentication must be for sensitive changes (email,
/// phone, password, two-factor settings, passkeys, PIN): 5 minutes
/// (ASVS 7.5.1).
pub const STEP_UP_MAX_AGE_SECS: i64 = 300;

/// The authenticated caller.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    pub user_id: Uuid,
    pub session_id: Uuid,
    /// When the user last proved a factor (`auth_time` claim), seconds
    /// since the Unix epoch.
    pub auth_time: i64,
}

impl AuthUser {
    /// 403 `reauthentication_required` unless the user authenticated within
    /// [`STEP_UP_MAX_AGE_SECS`]; re-authenticate at `/api/auth/reauthenticate`.
    ///
    /// # Errors
    /// The 403 above.
    pub fn require_recent_auth(&self) -> Result<(), ApiError> {
        let age = chrono::Utc::now().timestamp() - self.auth_time;
        if age > STEP_UP_MAX_AGE_SECS {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "reauthentication_required",
                "confirm your identity again (POST /api/auth/reauthenticate) and retry",
            ));
        }
        Ok(())
    }
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
        let revoked = match state.revoked.status(claims.sid, claims.sub) {
            Revocation::Revoked => true,
            Revocation::NotRevoked => false,
            // The in-memory set is not known complete: ask the read model,
            // and the user's cutoff row (written with its event).
            Revocation::Unknown => {
                projections::sessions::is_revoked(&state.read, claims.sid).await?
                    || commands::identity::is_cut_off(&state.read, claims.sub, claims.sid).await?
            }
        };
        if revoked {
            return Err(ApiError::unauthorized("the session has been revoked"));
        }
        Ok(Self { user_id: claims.sub, session_id: claims.sid, auth_time: claims.auth_time })
    }
}

/// The caller if a bearer token is sent (it must then be valid: 401
/// otherwise), `None` for an anonymous request. For public reads that
/// show more to a signed-in viewer.
#[derive(Debug, Clone, Copy)]
pub struct MaybeUser(pub Option<AuthUser>);

impl FromRequestParts<AppState> for MaybeUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            return Ok(Self(None));
        }
        AuthUser::from_request_parts(parts, state).await.map(|u| Self(Some(u)))
    }
}

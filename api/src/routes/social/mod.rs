//! The social context's routes (ARCHITECTURE decided 15): the graph
//! (follow, block, mute, lists, suggestions) and public profiles.

pub mod graph;
pub mod profiles;

use axum::http::StatusCode;
use commands::social::SocialError;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// 404 `user_not_found`.
pub fn user_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "user_not_found", "no such user")
}

impl From<SocialError> for ApiError {
    fn from(e: SocialError) -> Self {
        match e {
            SocialError::UserNotFound => user_not_found(),
            SocialError::SelfRelation => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "self_relation", e.to_string())
            }
            SocialError::Blocked => ApiError::new(StatusCode::FORBIDDEN, "blocked", e.to_string()),
            SocialError::Conflict => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            SocialError::Internal(cause) => ApiError::internal(cause),
        }
    }
}

/// Whether `user` exists and is visible to `viewer`: 404 `user_not_found`
/// otherwise — also when either blocks the other (each side's profile,
/// tracks and lists answer 404 to the other; issue 15). Decided on the
/// write side: the pair's relationship stream and the user stream.
///
/// # Errors
/// The 404 above, or 500.
pub async fn require_visible(state: &AppState, viewer: Option<Uuid>, user: Uuid) -> Result<(), ApiError> {
    if !state.social.exists(user).await? {
        return Err(user_not_found());
    }
    if let Some(viewer) = viewer.filter(|v| *v != user) {
        if state.social.relationship(viewer, user).await?.any_block() {
            return Err(user_not_found());
        }
    }
    Ok(())
}

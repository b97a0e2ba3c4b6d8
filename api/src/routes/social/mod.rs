//! The social context's routes (ARCHITECTURE decided 15): the graph
//! (follow, block, mute, lists, suggestions) and public profiles.

pub mod engagement;
pub mod feed;
pub mod graph;
pub mod notifications;
pub mod profiles;
pub mod stream;

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

/// 404 `user_not_found` when either of `viewer` and `user` blocks the other
/// (each side's profile, tracks and lists answer 404 to the other; issue
/// 15). Decided on the write side: the pair's relationship stream, read
/// only for a signed-in viewer other than the user. Whether `user` exists
/// at all is for the caller's read-model query to tell.
///
/// # Errors
/// The 404 above, or 500.
pub async fn require_visible(state: &AppState, viewer: Option<Uuid>, user: Uuid) -> Result<(), ApiError> {
    if let Some(viewer) = viewer.filter(|v| *v != user) {
        if state.social.relationship(viewer, user).await?.any_block() {
            return Err(user_not_found());
        }
    }
    Ok(())
}

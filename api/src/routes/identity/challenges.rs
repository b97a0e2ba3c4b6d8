//! `/api/auth/challenges/{challenge_id}`: where a one-time-code challenge
//! stands — verified or locked, and whether its code was delivered — read
//! from the challenges read model. The id is an unguessable random UUID
//! handed only to the client that started the challenge, so no token is
//! needed; the answer never names the recipient or the subject.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// The challenge routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/auth/challenges/{challenge_id}", get(get_challenge))
}

/// A challenge as the client sees it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChallengeStatusResponse {
    /// The challenge id, as returned when the code was requested.
    pub challenge_id: Uuid,
    /// Where the code goes: `email` or `sms`.
    #[schema(example = "email")]
    pub channel: String,
    /// `pending` (awaiting the code), `verified` (answered) or `locked`
    /// (too many wrong codes).
    #[schema(example = "pending")]
    pub status: String,
    /// `pending` (being sent, possibly retrying), `delivered` (handed to
    /// the mail server or SMS provider) or `failed` (gave up: request a new code).
    #[schema(example = "delivered")]
    pub delivery: String,
    /// When the current code stops working (RFC 3339, UTC).
    pub expires_at: DateTime<Utc>,
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "challenge_not_found", "no such challenge")
}

/// The status of a one-time-code challenge and of its code's delivery.
/// Eventually consistent: right after the code is requested the challenge
/// may briefly answer 404.
#[utoipa::path(get, path = "/api/auth/challenges/{challenge_id}", tag = "auth",
    params(("challenge_id" = Uuid, Path, description = "the id returned with the challenge")),
    responses((status = 200, body = ChallengeStatusResponse),
        (status = 404, description = "challenge_not_found (also for ids that are not UUIDs)", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn get_challenge(
    State(state): State<AppState>,
    Path(challenge_id): Path<String>,
) -> Result<Json<ChallengeStatusResponse>, ApiError> {
    let challenge_id = Uuid::parse_str(&challenge_id).map_err(|_| not_found())?;
    let row =
        projections::challenges::find_challenge(&state.read, challenge_id).await?.ok_or_else(not_found)?;
    Ok(Json(ChallengeStatusResponse {
        challenge_id: row.challenge_id,
        channel: row.channel,
        status: row.status,
        delivery: row.delivery,
        expires_at: row.expires_at,
    }))
}

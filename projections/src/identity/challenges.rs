//! The `challenges` read model (`rm_challenges`): one row per one-time-code
//! challenge, built from `otp_challenge` events, so a client can see whether
//! its code was delivered (`GET /api/auth/challenges/{id}`). It holds no
//! recipient, no subject and no code: only purpose, channel, status, the
//! delivery outcome (with its secret-free reason) and the expiry.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::envelope::Envelope;
use domain::otp::{OtpChallenge, OtpEvent};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::profiles::aggregate_uuid;
use crate::runtime::{ProjectionError, Projector};

/// Projects `otp_challenge` events into `rm_challenges`.
pub struct ChallengesProjector;

#[async_trait]
impl Projector for ChallengesProjector {
    fn name(&self) -> &'static str {
        "challenges"
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        aggregate_type == <OtpChallenge as cqrs_es::Aggregate>::TYPE
    }

    async fn apply(&self, conn: &mut PgConnection, env: &Envelope) -> Result<(), ProjectionError> {
        let event: OtpEvent = env.decode().map_err(|e| ProjectionError::decode(env, e))?;
        let at = env.occurred_at;
        match event {
            OtpEvent::OtpIssued { challenge_id, purpose, channel, expires_at, .. } => {
                let purpose = serde_json::to_value(purpose).map_err(|e| ProjectionError::decode(env, e))?;
                sqlx::query(
                    "INSERT INTO rm_challenges
                         (challenge_id, purpose, channel, status, delivery, expires_at, updated_at)
                     VALUES ($1, $2, $3, 'pending', 'pending', $4, $5)
                     ON CONFLICT (challenge_id) DO NOTHING",
                )
                .bind(challenge_id)
                .bind(purpose.as_str().unwrap_or_default())
                .bind(channel.as_str())
                .bind(expires_at)
                .bind(at)
                .execute(conn)
                .await?;
            }
            OtpEvent::OtpReissued { expires_at, .. } => {
                sqlx::query(
                    "UPDATE rm_challenges SET delivery = 'pending', delivery_error = NULL,
                            expires_at = $2, updated_at = $3
                     WHERE challenge_id = $1",
                )
                .bind(aggregate_uuid(env)?)
                .bind(expires_at)
                .bind(at)
                .execute(conn)
                .await?;
            }
            OtpEvent::OtpVerified { .. } => set_status(conn, env, "verified").await?,
            OtpEvent::OtpChallengeLocked { .. } => set_status(conn, env, "locked").await?,
            OtpEvent::OtpDelivered { .. } => set_delivery(conn, env, "delivered", None).await?,
            OtpEvent::OtpDeliveryFailed { reason, .. } => {
                set_delivery(conn, env, "failed", Some(&reason)).await?;
            }
            OtpEvent::OtpVerificationFailed { .. } => {}
        }
        Ok(())
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_challenges"]
    }
}

async fn set_status(conn: &mut PgConnection, env: &Envelope, status: &str) -> Result<(), ProjectionError> {
    sqlx::query("UPDATE rm_challenges SET status = $2, updated_at = $3 WHERE challenge_id = $1")
        .bind(aggregate_uuid(env)?)
        .bind(status)
        .bind(env.occurred_at)
        .execute(conn)
        .await?;
    Ok(())
}

async fn set_delivery(
    conn: &mut PgConnection,
    env: &Envelope,
    delivery: &str,
    error: Option<&str>,
) -> Result<(), ProjectionError> {
    sqlx::query(
        "UPDATE rm_challenges SET delivery = $2, delivery_error = $3, updated_at = $4 WHERE challenge_id = $1",
    )
    .bind(aggregate_uuid(env)?)
    .bind(delivery)
    .bind(error)
    .bind(env.occurred_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A row of `rm_challenges`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ChallengeRow {
    /// The challenge (aggregate) id.
    pub challenge_id: Uuid,
    /// `email_verification`, `phone_verification`, `two_factor`, `login` or
    /// `password_reset`.
    pub purpose: String,
    /// `email` or `sms`.
    pub channel: String,
    /// `pending`, `verified` or `locked`.
    pub status: String,
    /// `pending`, `delivered` or `failed`.
    pub delivery: String,
    /// Secret-free reason of a failed delivery (e.g. `twilio: 400 code 21211`).
    pub delivery_error: Option<String>,
    /// When the current code stops working.
    pub expires_at: DateTime<Utc>,
    /// Time of the last event applied (its append time).
    pub updated_at: DateTime<Utc>,
}

/// The challenge `challenge_id`, if projected.
///
/// # Errors
/// Database errors.
pub async fn find_challenge(pool: &PgPool, challenge_id: Uuid) -> Result<Option<ChallengeRow>, sqlx::Error> {
    sqlx::query_as::<_, ChallengeRow>(
        "SELECT challenge_id, purpose, channel, status, delivery, delivery_error, expires_at, updated_at
         FROM rm_challenges WHERE challenge_id = $1",
    )
    .bind(challenge_id)
    .fetch_optional(pool)
    .await
}

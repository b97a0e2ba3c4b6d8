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
use crate::runtime::{apply_one_by_one, ProjectionError, Projector};

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

    /// Set-based: every `OtpIssued` of the batch in one `INSERT`, then
    /// every later change in one `UPDATE` — two statements per batch
    /// instead of one per event. Exactly what [`Projector::apply`] leaves:
    /// `OtpIssued` is a challenge's first event (sequence 1; otherwise the
    /// batch goes one by one), so inserting first keeps each challenge's
    /// order; the changes go together only when no challenge has two of
    /// them in the batch (else one by one, in feed order).
    async fn apply_many(
        &self,
        conn: &mut PgConnection,
        envelopes: &[&Envelope],
    ) -> Result<(), ProjectionError> {
        let mut issued = IssuedRows::default();
        let mut changes = ChangeRows::default();
        let mut changed = Vec::with_capacity(envelopes.len());
        for env in envelopes {
            let event: OtpEvent = env.decode().map_err(|e| ProjectionError::decode(env, e))?;
            let id = || aggregate_uuid(env);
            let at = env.occurred_at;
            match event {
                OtpEvent::OtpIssued { .. } if env.sequence != 1 => {
                    return apply_one_by_one(self, conn, envelopes).await
                }
                OtpEvent::OtpIssued { challenge_id, purpose, channel, expires_at, .. } => {
                    let purpose =
                        serde_json::to_value(purpose).map_err(|e| ProjectionError::decode(env, e))?;
                    issued.ids.push(challenge_id);
                    issued.purposes.push(purpose.as_str().unwrap_or_default().to_owned());
                    issued.channels.push(channel.as_str().to_owned());
                    issued.expires.push(expires_at);
                    issued.at.push(at);
                }
                OtpEvent::OtpReissued { expires_at, .. } => {
                    changes.push(id()?, None, Some("pending"), None, Some(expires_at), at);
                }
                OtpEvent::OtpVerified { .. } => changes.push(id()?, Some("verified"), None, None, None, at),
                OtpEvent::OtpChallengeLocked { .. } => {
                    changes.push(id()?, Some("locked"), None, None, None, at)
                }
                OtpEvent::OtpDelivered { .. } => changes.push(id()?, None, Some("delivered"), None, None, at),
                OtpEvent::OtpDeliveryFailed { reason, .. } => {
                    changes.push(id()?, None, Some("failed"), Some(reason), None, at);
                }
                OtpEvent::OtpVerificationFailed { .. } => continue,
            }
            if !matches!(env.event_type.as_str(), "OtpIssued") {
                changed.push(*env);
            }
        }
        if !issued.ids.is_empty() {
            sqlx::query(
                "INSERT INTO rm_challenges
                     (challenge_id, purpose, channel, status, delivery, expires_at, updated_at)
                 SELECT u.id, u.purpose, u.channel, 'pending', 'pending', u.expires_at, u.at
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[])
                     AS u(id, purpose, channel, expires_at, at)
                 ON CONFLICT (challenge_id) DO NOTHING",
            )
            .bind(&issued.ids)
            .bind(&issued.purposes)
            .bind(&issued.channels)
            .bind(&issued.expires)
            .bind(&issued.at)
            .execute(&mut *conn)
            .await?;
        }
        let mut distinct = changes.ids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() < changes.ids.len() {
            // A challenge changed twice in the batch: in feed order.
            return apply_one_by_one(self, conn, &changed).await;
        }
        if !changes.ids.is_empty() {
            sqlx::query(
                "UPDATE rm_challenges c SET
                     status = COALESCE(u.status, c.status),
                     delivery = COALESCE(u.delivery, c.delivery),
                     delivery_error = CASE WHEN u.delivery IS NULL THEN c.delivery_error ELSE u.delivery_error END,
                     expires_at = COALESCE(u.expires_at, c.expires_at),
                     updated_at = u.at
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[])
                     AS u(id, status, delivery, delivery_error, expires_at, at)
                 WHERE c.challenge_id = u.id",
            )
            .bind(&changes.ids)
            .bind(&changes.statuses)
            .bind(&changes.deliveries)
            .bind(&changes.errors)
            .bind(&changes.expires)
            .bind(&changes.at)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_challenges"]
    }
}

/// The `OtpIssued` rows of a batch, column by column.
#[derive(Default)]
struct IssuedRows {
    ids: Vec<Uuid>,
    purposes: Vec<String>,
    channels: Vec<String>,
    expires: Vec<DateTime<Utc>>,
    at: Vec<DateTime<Utc>>,
}

/// The later changes of a batch, column by column (`None`: unchanged).
#[derive(Default)]
struct ChangeRows {
    ids: Vec<Uuid>,
    statuses: Vec<Option<&'static str>>,
    deliveries: Vec<Option<&'static str>>,
    errors: Vec<Option<String>>,
    expires: Vec<Option<DateTime<Utc>>>,
    at: Vec<DateTime<Utc>>,
}

impl ChangeRows {
    fn push(
        &mut self,
        id: Uuid,
        status: Option<&'static str>,
        delivery: Option<&'static str>,
        error: Option<String>,
        expires: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) {
        self.ids.push(id);
        self.statuses.push(status);
        self.deliveries.push(delivery);
        self.errors.push(error);
        self.expires.push(expires);
        self.at.push(at);
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

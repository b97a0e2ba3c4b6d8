//! The `profiles` read model (`rm_profiles`): one row per user, built from
//! `user` events. Personal fields stay sealed with the subject key; the api
//! opens them on read (so erasure shreds this table too).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::envelope::Envelope;
use domain::user::{User, UserEvent};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::runtime::{ProjectionError, Projector};

/// Projects `user` events into `rm_profiles`.
pub struct ProfilesProjector;

#[async_trait]
impl Projector for ProfilesProjector {
    fn name(&self) -> &'static str {
        "profiles"
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        aggregate_type == <User as cqrs_es::Aggregate>::TYPE
    }

    async fn apply(&self, conn: &mut PgConnection, env: &Envelope) -> Result<(), ProjectionError> {
        let event: UserEvent = env.decode().map_err(|e| ProjectionError::decode(env, e))?;
        match event {
            UserEvent::UserRegistered { user_id, email, name, registered_at, .. } => {
                sqlx::query(
                    "INSERT INTO rm_profiles (user_id, email_sealed, name_sealed, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $4)
                     ON CONFLICT (user_id) DO NOTHING",
                )
                .bind(user_id)
                .bind(email.0)
                .bind(name.0)
                .bind(registered_at)
                .execute(conn)
                .await?;
            }
            UserEvent::EmailVerified { verified_at, .. } => {
                sqlx::query(
                    "UPDATE rm_profiles SET email_verified = true, updated_at = $2 WHERE user_id = $1",
                )
                .bind(aggregate_uuid(env)?)
                .bind(verified_at)
                .execute(conn)
                .await?;
            }
            UserEvent::ProfileUpdated { name, bio, updated_at } => {
                sqlx::query(
                    "UPDATE rm_profiles SET name_sealed = COALESCE($2, name_sealed),
                            bio_sealed = COALESCE($3, bio_sealed), updated_at = $4
                     WHERE user_id = $1",
                )
                .bind(aggregate_uuid(env)?)
                .bind(name.map(|s| s.0))
                .bind(bio.map(|s| s.0))
                .bind(updated_at)
                .execute(conn)
                .await?;
            }
            UserEvent::UserRegisteredWithPhone { user_id, phone, registered_at, .. } => {
                sqlx::query(
                    "INSERT INTO rm_profiles (user_id, phone_sealed, phone_verified, two_factor_channel,
                                              created_at, updated_at)
                     VALUES ($1, $2, true, 'sms', $3, $3)
                     ON CONFLICT (user_id) DO NOTHING",
                )
                .bind(user_id)
                .bind(phone.0)
                .bind(registered_at)
                .execute(conn)
                .await?;
            }
            UserEvent::PhoneAdded { phone, added_at, .. } => {
                sqlx::query(
                    "UPDATE rm_profiles SET phone_sealed = $2, phone_verified = false,
                            two_factor_channel = CASE WHEN two_factor_channel = 'sms' THEN 'email'
                                                      ELSE two_factor_channel END,
                            updated_at = $3
                     WHERE user_id = $1",
                )
                .bind(aggregate_uuid(env)?)
                .bind(phone.0)
                .bind(added_at)
                .execute(conn)
                .await?;
            }
            UserEvent::PhoneVerified { verified_at, .. } => {
                sqlx::query(
                    "UPDATE rm_profiles SET phone_verified = true, updated_at = $2 WHERE user_id = $1",
                )
                .bind(aggregate_uuid(env)?)
                .bind(verified_at)
                .execute(conn)
                .await?;
            }
            UserEvent::TwoFactorChannelChanged { channel, changed_at } => {
                sqlx::query(
                    "UPDATE rm_profiles SET two_factor_channel = $2, updated_at = $3 WHERE user_id = $1",
                )
                .bind(aggregate_uuid(env)?)
                .bind(channel.as_str())
                .bind(changed_at)
                .execute(conn)
                .await?;
            }
            UserEvent::DuplicateRegistrationAttempted { .. }
            | UserEvent::EmailChallengeReplaced { .. }
            | UserEvent::RefreshTokenReuseNoticed { .. }
            | UserEvent::PasswordReset { .. }
            | UserEvent::PasswordResetRequested { .. }
            | UserEvent::LoginPasswordAccepted { .. } => {}
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        sqlx::query("TRUNCATE rm_profiles").execute(conn).await?;
        Ok(())
    }
}

pub(crate) fn aggregate_uuid(env: &Envelope) -> Result<Uuid, ProjectionError> {
    Uuid::parse_str(&env.aggregate_id)
        .map_err(|_| ProjectionError::Other(anyhow::anyhow!("aggregate id is not a UUID")))
}

/// A row of `rm_profiles`, fields still sealed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProfileRow {
    pub user_id: Uuid,
    pub email_sealed: Option<String>,
    pub name_sealed: Option<String>,
    pub bio_sealed: Option<String>,
    pub email_verified: bool,
    pub phone_sealed: Option<String>,
    pub phone_verified: bool,
    /// `email` or `sms`.
    pub two_factor_channel: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The profile of `user_id`, if projected.
///
/// # Errors
/// Database errors.
pub async fn find_profile(pool: &PgPool, user_id: Uuid) -> Result<Option<ProfileRow>, sqlx::Error> {
    sqlx::query_as::<_, ProfileRow>(
        "SELECT user_id, email_sealed, name_sealed, bio_sealed, email_verified, phone_sealed,
                phone_verified, two_factor_channel, created_at, updated_at
         FROM rm_profiles WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(pool)
    .await
}

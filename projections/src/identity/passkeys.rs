//! The `passkeys` read model (`rm_passkeys`): one row per registered
//! passkey, built from `passkeys` events. The api lists a user's passkeys
//! from it, and `GET /api/auth/check-session` offers the `passkey` quick
//! factor when a user has one ([`crate::factors::quick_factors`]).
//!
//! `label` holds the label as the event carries it: sealed with the user's
//! key (personal data, ARCHITECTURE decided 7); the api opens it. No key
//! material is projected — the public credential stays in the event store.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::envelope::Envelope;
use domain::passkey::{PasskeyEvent, Passkeys};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::profiles::aggregate_uuid;
use crate::runtime::{ProjectionError, Projector};

/// Projects `passkeys` events into `rm_passkeys`.
pub struct PasskeysProjector;

#[async_trait]
impl Projector for PasskeysProjector {
    fn name(&self) -> &'static str {
        "passkeys"
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        aggregate_type == <Passkeys as cqrs_es::Aggregate>::TYPE
    }

    async fn apply(&self, conn: &mut PgConnection, env: &Envelope) -> Result<(), ProjectionError> {
        let event: PasskeyEvent = env.decode().map_err(|e| ProjectionError::decode(env, e))?;
        match event {
            PasskeyEvent::PasskeyRegistered { user_id, credential_id, label, registered_at, .. } => {
                sqlx::query(
                    "INSERT INTO rm_passkeys (credential_id, user_id, label, created_at)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (credential_id) DO NOTHING",
                )
                .bind(credential_id)
                .bind(user_id)
                .bind(label.map(|l| l.0))
                .bind(registered_at)
                .execute(conn)
                .await?;
            }
            PasskeyEvent::PasskeyUsed { credential_id, used_at, .. } => {
                sqlx::query(
                    "UPDATE rm_passkeys SET last_used_at = GREATEST(COALESCE(last_used_at, $3), $3)
                     WHERE credential_id = $1 AND user_id = $2",
                )
                .bind(credential_id)
                .bind(aggregate_uuid(env)?)
                .bind(used_at)
                .execute(conn)
                .await?;
            }
            PasskeyEvent::PasskeyCounterRegressed { .. } => {}
            PasskeyEvent::PasskeyRemoved { credential_id, .. } => {
                sqlx::query("DELETE FROM rm_passkeys WHERE credential_id = $1 AND user_id = $2")
                    .bind(credential_id)
                    .bind(aggregate_uuid(env)?)
                    .execute(conn)
                    .await?;
            }
        }
        Ok(())
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_passkeys"]
    }
}

/// A row of `rm_passkeys`, label still sealed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PasskeyRow {
    /// base64url (no padding).
    pub credential_id: String,
    pub user_id: Uuid,
    /// Sealed with the user's key.
    pub label: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// The passkeys of `user_id`, oldest first.
///
/// # Errors
/// Database errors.
pub async fn list_passkeys(pool: &PgPool, user_id: Uuid) -> Result<Vec<PasskeyRow>, sqlx::Error> {
    sqlx::query_as::<_, PasskeyRow>(
        "SELECT credential_id, user_id, label, created_at, last_used_at
         FROM rm_passkeys WHERE user_id = $1 ORDER BY created_at, credential_id",
    )
    .bind(user_id)
    .fetch_all(pool)
    .await
}

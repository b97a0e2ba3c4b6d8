//! The `sessions` read model (`rm_sessions`): one row per session (refresh
//! token family), built from `session` events. The api serves
//! `GET /api/auth/session` from it and checks revocation of access tokens
//! against it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::envelope::Envelope;
use domain::session::{Session, SessionEvent};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::profiles::aggregate_uuid;
use crate::runtime::{ProjectionError, Projector};

/// Projects `session` events into `rm_sessions`.
pub struct SessionsProjector;

#[async_trait]
impl Projector for SessionsProjector {
    fn name(&self) -> &'static str {
        "sessions"
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        aggregate_type == <Session as cqrs_es::Aggregate>::TYPE
    }

    async fn apply(&self, conn: &mut PgConnection, env: &Envelope) -> Result<(), ProjectionError> {
        let event: SessionEvent = env.decode().map_err(|e| ProjectionError::decode(env, e))?;
        match event {
            SessionEvent::SessionStarted {
                session_id,
                user_id,
                started_at,
                idle_expires_at,
                expires_at,
                client,
                ..
            } => {
                sqlx::query(
                    "INSERT INTO rm_sessions (session_id, user_id, status, generation, created_at,
                                              last_used_at, idle_expires_at, expires_at, client_sealed,
                                              authenticated_at)
                     VALUES ($1, $2, 'active', 0, $3, $3, $4, $5, $6, $3)
                     ON CONFLICT (session_id) DO NOTHING",
                )
                .bind(session_id)
                .bind(user_id)
                .bind(started_at)
                .bind(idle_expires_at)
                .bind(expires_at)
                .bind(client.map(|c| c.0))
                .execute(conn)
                .await?;
            }
            SessionEvent::SessionReauthenticated { reauthenticated_at } => {
                sqlx::query(
                    "UPDATE rm_sessions SET authenticated_at = $2, last_used_at = GREATEST(last_used_at, $2)
                     WHERE session_id = $1",
                )
                .bind(aggregate_uuid(env)?)
                .bind(reauthenticated_at)
                .execute(conn)
                .await?;
            }
            SessionEvent::SessionRefreshed { generation, refreshed_at, idle_expires_at, .. } => {
                sqlx::query(
                    "UPDATE rm_sessions SET generation = $2, last_used_at = $3, idle_expires_at = $4
                     WHERE session_id = $1",
                )
                .bind(aggregate_uuid(env)?)
                .bind(i64::try_from(generation).unwrap_or(i64::MAX))
                .bind(refreshed_at)
                .bind(idle_expires_at)
                .execute(conn)
                .await?;
            }
            SessionEvent::RefreshTokenReuseDetected { .. } => {}
            SessionEvent::SessionRevoked { reason, revoked_at } => {
                sqlx::query(
                    "UPDATE rm_sessions SET status = 'revoked', revoked_at = $2, revoked_reason = $3
                     WHERE session_id = $1",
                )
                .bind(aggregate_uuid(env)?)
                .bind(revoked_at)
                .bind(reason.as_str())
                .execute(conn)
                .await?;
            }
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        sqlx::query("TRUNCATE rm_sessions").execute(conn).await?;
        Ok(())
    }
}

/// A row of `rm_sessions`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub session_id: Uuid,
    pub user_id: Uuid,
    /// `active` or `revoked`.
    pub status: String,
    pub generation: i64,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub idle_expires_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_reason: Option<String>,
    /// Sealed JSON client description (see `SessionStarted`).
    pub client_sealed: Option<String>,
    pub authenticated_at: Option<DateTime<Utc>>,
}

/// The session `session_id`, if projected.
///
/// # Errors
/// Database errors.
pub async fn find_session(pool: &PgPool, session_id: Uuid) -> Result<Option<SessionRow>, sqlx::Error> {
    sqlx::query_as::<_, SessionRow>(
        "SELECT session_id, user_id, status, generation, created_at, last_used_at, idle_expires_at,
                expires_at, revoked_at, revoked_reason, client_sealed, authenticated_at
         FROM rm_sessions WHERE session_id = $1",
    )
    .bind(session_id)
    .fetch_optional(pool)
    .await
}

/// Whether `session_id` is known to be revoked (unknown = not yet projected = not revoked).
///
/// # Errors
/// Database errors.
pub async fn is_revoked(pool: &PgPool, session_id: Uuid) -> Result<bool, sqlx::Error> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM rm_sessions WHERE session_id = $1")
        .bind(session_id)
        .fetch_optional(pool)
        .await?;
    Ok(status.as_deref() == Some("revoked"))
}

/// The sessions of `user_id`, newest first (active and revoked within the
/// last 30 days), at most 100.
///
/// # Errors
/// Database errors.
pub async fn list_sessions(pool: &PgPool, user_id: Uuid) -> Result<Vec<SessionRow>, sqlx::Error> {
    sqlx::query_as::<_, SessionRow>(
        "SELECT session_id, user_id, status, generation, created_at, last_used_at, idle_expires_at,
                expires_at, revoked_at, revoked_reason, client_sealed, authenticated_at
         FROM rm_sessions
         WHERE user_id = $1 AND (status = 'active' OR revoked_at > now() - interval '30 days')
         ORDER BY created_at DESC LIMIT 100",
    )
    .bind(user_id)
    .fetch_all(pool)
    .await
}

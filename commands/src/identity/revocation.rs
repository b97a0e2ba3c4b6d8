//! Revoking every session of an account, decided on the write side
//! (ARCHITECTURE decided 14): the user's `AllSessionsRevoked` event and its
//! `session_cutoffs` row are one statement, so a session the read model has
//! not seen yet (or started while the projector was down) is revoked too.
//! Refresh and step-up consult the row; every API node learns it from the
//! feed and the store check (`api::revocations`).

use chrono::{DateTime, Utc};
use domain::session::{RevocationReason, SessionCommand};
use domain::user::UserCommand;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{internal, map_user, IdentityError, IdentityService, RequestMeta};
use crate::executor::CoWrite;

/// The `session_cutoffs` row of an `AllSessionsRevoked` event, written by
/// its append (a later cutoff never moves back).
struct SessionCutoff {
    user_id: Uuid,
    revoked_before: DateTime<Utc>,
}

impl CoWrite for SessionCutoff {
    fn push_cte<'q>(&'q self, query: &mut QueryBuilder<'q, Postgres>) {
        query.push("cutoff AS (INSERT INTO session_cutoffs (user_id, revoked_before) VALUES (");
        query.push_bind(self.user_id);
        query.push(", ");
        query.push_bind(self.revoked_before);
        query.push(
            ") ON CONFLICT (user_id) DO UPDATE SET revoked_before = \
             GREATEST(session_cutoffs.revoked_before, EXCLUDED.revoked_before))",
        );
    }
}

/// When session `session_id` started: its id is a UUIDv7 minted at the
/// start (millisecond precision); the Unix epoch for any other id, which
/// every cutoff then covers (fail closed).
pub fn session_started_at(session_id: Uuid) -> DateTime<Utc> {
    session_id
        .get_timestamp()
        .and_then(|ts| {
            let (secs, nanos) = ts.to_unix();
            DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
        })
        .unwrap_or(DateTime::UNIX_EPOCH)
}

/// Whether session `session_id` of `user_id` started before the user's
/// revocation cutoff (one primary-key read of `session_cutoffs`).
///
/// # Errors
/// Database errors.
pub async fn is_cut_off(pool: &PgPool, user_id: Uuid, session_id: Uuid) -> Result<bool, sqlx::Error> {
    let cutoff: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT revoked_before FROM session_cutoffs WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(pool)
            .await?;
    Ok(cutoff.is_some_and(|c| session_started_at(session_id) < c))
}

impl IdentityService {
    /// Revokes every session of `user_id` started until now (ASVS 7.4.2):
    /// an `AllSessionsRevoked` event on the user and its cutoff row, in one
    /// statement — authoritative whatever the sessions read model lists.
    /// The sessions the read model does list are then revoked one by one
    /// too (best effort: their streams and the list show it). Returns how
    /// many were.
    ///
    /// # Errors
    /// `NotFound`, `Internal`.
    pub async fn revoke_all_sessions(
        &self,
        user_id: Uuid,
        reason: RevocationReason,
        meta: &RequestMeta,
    ) -> Result<usize, IdentityError> {
        let now = Utc::now();
        let cutoff = SessionCutoff { user_id, revoked_before: now };
        let cmd = UserCommand::RevokeAllSessions { reason, at: now };
        self.users
            .execute_with(&user_id.to_string(), cmd, meta.to_map("RevokeAllSessions"), &cutoff)
            .await
            .map_err(map_user)?;
        let ids: Vec<Uuid> =
            sqlx::query_scalar("SELECT session_id FROM rm_sessions WHERE user_id = $1 AND status = 'active'")
                .bind(user_id)
                .fetch_all(&self.pool)
                .await
                .map_err(internal)?;
        let mut revoked = 0;
        for id in &ids {
            let cmd = SessionCommand::Revoke { reason, at: Utc::now() };
            match self.sessions.execute(&id.to_string(), cmd, meta.to_map("RevokeSession")).await {
                Ok(_) => revoked += 1,
                Err(e) => tracing::warn!(session_id = %id, error = %e, "session left to its cutoff"),
            }
        }
        Ok(revoked)
    }

    /// Refuses (`SessionRevoked`) a session that an `AllSessionsRevoked`
    /// covers, recording the revocation on its stream if it is not there yet.
    pub(crate) async fn refuse_if_cut_off(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        if !is_cut_off(&self.pool, user_id, session_id).await.map_err(internal)? {
            return Ok(());
        }
        let cmd = SessionCommand::Revoke { reason: RevocationReason::Logout, at: Utc::now() };
        let _ = self.sessions.execute(&session_id.to_string(), cmd, meta.to_map("RevokeSession")).await;
        Err(IdentityError::SessionRevoked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sessions_start_is_read_from_its_v7_id() {
        let before = Utc::now() - chrono::Duration::milliseconds(2);
        let started = session_started_at(Uuid::now_v7());
        assert!(started >= before && started <= Utc::now(), "{started}");
        assert_eq!(session_started_at(Uuid::new_v4()), DateTime::UNIX_EPOCH);
    }
}

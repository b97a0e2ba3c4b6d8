use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{RevocationReason, SessionCommand, SessionEvent};
use crate::values::Digest;

/// Refusals of a `Session`; `code()` is the stable API error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the session already exists")]
    AlreadyStarted,
    #[error("no such session")]
    NotFound,
    #[error("the session has been revoked")]
    Revoked,
    #[error("the session has expired")]
    Expired,
    #[error("the refresh token is not valid")]
    InvalidRefreshToken,
    #[error("lifetimes must be positive")]
    InvalidLifetime,
}

impl SessionError {
    /// Stable snake_case code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlreadyStarted => "session_exists",
            Self::NotFound => "session_not_found",
            Self::Revoked => "session_revoked",
            Self::Expired => "session_expired",
            Self::InvalidRefreshToken => "invalid_refresh_token",
            Self::InvalidLifetime => "invalid_lifetime",
        }
    }
}

/// Lifecycle of a session.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionStatus {
    #[default]
    Absent,
    Active,
    Revoked,
}

/// State of one session / refresh-token family.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub status: SessionStatus,
    pub current_hash: Option<Digest>,
    /// Hashes of every rotated-out token of the family (reuse detection).
    pub spent_hashes: Vec<Digest>,
    pub generation: u64,
    pub idle_ttl_secs: i64,
    pub idle_expires_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Last time the user proved a factor (login or step-up).
    pub authenticated_at: Option<DateTime<Utc>>,
}

impl Aggregate for Session {
    const TYPE: &'static str = "session";
    type Command = SessionCommand;
    type Event = SessionEvent;
    type Error = SessionError;
    type Services = ();

    async fn handle(
        &mut self,
        command: SessionCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), SessionError> {
        match command {
            SessionCommand::Start {
                session_id,
                user_id,
                refresh_hash,
                at,
                idle_ttl_secs,
                absolute_ttl_secs,
                client,
                quick_factor,
            } => {
                if self.status != SessionStatus::Absent {
                    return Err(SessionError::AlreadyStarted);
                }
                if idle_ttl_secs <= 0 || absolute_ttl_secs <= 0 {
                    return Err(SessionError::InvalidLifetime);
                }
                let expires_at = at + Duration::seconds(absolute_ttl_secs);
                let idle_expires_at = (at + Duration::seconds(idle_ttl_secs)).min(expires_at);
                let event = SessionEvent::SessionStarted {
                    session_id,
                    user_id,
                    refresh_hash,
                    started_at: at,
                    idle_expires_at,
                    expires_at,
                    client,
                    quick_factor,
                };
                sink.write(event, self).await;
                // The idle lifetime is state, not part of the event contract.
                self.idle_ttl_secs = idle_ttl_secs;
            }
            SessionCommand::Refresh { presented_hash, new_hash, at } => {
                match self.status {
                    SessionStatus::Absent => return Err(SessionError::NotFound),
                    SessionStatus::Revoked => return Err(SessionError::Revoked),
                    SessionStatus::Active => {}
                }
                if self.spent_hashes.iter().any(|h| h.ct_eq(&presented_hash)) {
                    sink.write(SessionEvent::RefreshTokenReuseDetected { detected_at: at }, self).await;
                    let revoked = SessionEvent::SessionRevoked {
                        reason: RevocationReason::RefreshTokenReuse,
                        revoked_at: at,
                    };
                    sink.write(revoked, self).await;
                    return Ok(());
                }
                if !self.current_hash.as_ref().is_some_and(|h| h.ct_eq(&presented_hash)) {
                    return Err(SessionError::InvalidRefreshToken);
                }
                let expired =
                    self.expires_at.is_none_or(|e| at >= e) || self.idle_expires_at.is_none_or(|e| at >= e);
                if expired {
                    return Err(SessionError::Expired);
                }
                let expires_at = self.expires_at.unwrap_or(at);
                let idle_expires_at = (at + Duration::seconds(self.idle_ttl_secs)).min(expires_at);
                let event = SessionEvent::SessionRefreshed {
                    refresh_hash: new_hash,
                    generation: self.generation + 1,
                    refreshed_at: at,
                    idle_expires_at,
                };
                sink.write(event, self).await;
            }
            SessionCommand::Reauthenticate { at } => match self.status {
                SessionStatus::Absent => return Err(SessionError::NotFound),
                SessionStatus::Revoked => return Err(SessionError::Revoked),
                SessionStatus::Active => {
                    sink.write(SessionEvent::SessionReauthenticated { reauthenticated_at: at }, self).await;
                }
            },
            SessionCommand::Revoke { reason, at } => match self.status {
                SessionStatus::Absent => return Err(SessionError::NotFound),
                // Revoking twice is harmless and changes nothing.
                SessionStatus::Revoked => {}
                SessionStatus::Active => {
                    sink.write(SessionEvent::SessionRevoked { reason, revoked_at: at }, self).await;
                }
            },
        }
        Ok(())
    }

    fn apply(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::SessionStarted {
                session_id,
                user_id,
                refresh_hash,
                started_at,
                idle_expires_at,
                expires_at,
                quick_factor,
                ..
            } => {
                self.id = Some(session_id);
                self.authenticated_at = (!quick_factor).then_some(started_at);
                self.user_id = Some(user_id);
                self.status = SessionStatus::Active;
                self.current_hash = Some(refresh_hash);
                self.idle_ttl_secs = (idle_expires_at - started_at).num_seconds();
                self.idle_expires_at = Some(idle_expires_at);
                self.expires_at = Some(expires_at);
            }
            SessionEvent::SessionRefreshed { refresh_hash, generation, idle_expires_at, .. } => {
                if let Some(old) = self.current_hash.replace(refresh_hash) {
                    self.spent_hashes.push(old);
                }
                self.generation = generation;
                self.idle_expires_at = Some(idle_expires_at);
            }
            SessionEvent::RefreshTokenReuseDetected { .. } => {}
            SessionEvent::SessionReauthenticated { reauthenticated_at } => {
                self.authenticated_at = Some(reauthenticated_at);
            }
            SessionEvent::SessionRevoked { .. } => self.status = SessionStatus::Revoked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type SessionTest = TestFramework<Session>;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }
    fn d(s: &str) -> Digest {
        Digest(s.into())
    }
    const DAY: i64 = 86_400;
    fn started() -> SessionEvent {
        SessionEvent::SessionStarted {
            session_id: Uuid::from_u128(3),
            user_id: Uuid::from_u128(1),
            refresh_hash: d("r0"),
            started_at: t(0),
            idle_expires_at: t(30 * DAY),
            expires_at: t(90 * DAY),
            client: None,
            quick_factor: false,
        }
    }
    fn refreshed(hash: &str, generation: u64, at: i64) -> SessionEvent {
        SessionEvent::SessionRefreshed {
            refresh_hash: d(hash),
            generation,
            refreshed_at: t(at),
            idle_expires_at: t(at + 30 * DAY),
        }
    }

    #[test]
    fn start_sets_idle_and_absolute_expiry() {
        SessionTest::with(())
            .given_no_previous_events()
            .when(SessionCommand::Start {
                session_id: Uuid::from_u128(3),
                user_id: Uuid::from_u128(1),
                refresh_hash: d("r0"),
                at: t(0),
                idle_ttl_secs: 30 * DAY,
                absolute_ttl_secs: 90 * DAY,
                client: None,
                quick_factor: false,
            })
            .then_expect_events(vec![started()]);
    }

    #[test]
    fn refresh_rotates() {
        SessionTest::with(())
            .given(vec![started()])
            .when(SessionCommand::Refresh { presented_hash: d("r0"), new_hash: d("r1"), at: t(100) })
            .then_expect_events(vec![refreshed("r1", 1, 100)]);
    }

    #[test]
    fn reuse_of_a_spent_token_revokes_the_family() {
        SessionTest::with(())
            .given(vec![started(), refreshed("r1", 1, 100)])
            .when(SessionCommand::Refresh { presented_hash: d("r0"), new_hash: d("r2"), at: t(200) })
            .then_expect_events(vec![
                SessionEvent::RefreshTokenReuseDetected { detected_at: t(200) },
                SessionEvent::SessionRevoked {
                    reason: RevocationReason::RefreshTokenReuse,
                    revoked_at: t(200),
                },
            ]);
    }

    #[test]
    fn revoked_family_refuses_even_the_current_token() {
        SessionTest::with(())
            .given(vec![
                started(),
                refreshed("r1", 1, 100),
                SessionEvent::SessionRevoked {
                    reason: RevocationReason::RefreshTokenReuse,
                    revoked_at: t(200),
                },
            ])
            .when(SessionCommand::Refresh { presented_hash: d("r1"), new_hash: d("r2"), at: t(300) })
            .then_expect_error(SessionError::Revoked);
    }

    #[test]
    fn unknown_token_is_refused_without_revoking() {
        SessionTest::with(())
            .given(vec![started()])
            .when(SessionCommand::Refresh { presented_hash: d("zz"), new_hash: d("r1"), at: t(100) })
            .then_expect_error(SessionError::InvalidRefreshToken);
    }

    #[test]
    fn idle_and_absolute_expiry() {
        SessionTest::with(())
            .given(vec![started()])
            .when(SessionCommand::Refresh { presented_hash: d("r0"), new_hash: d("r1"), at: t(30 * DAY) })
            .then_expect_error(SessionError::Expired);
        // Refreshing every 20 days keeps it alive until the absolute limit.
        SessionTest::with(())
            .given(vec![
                started(),
                refreshed("r1", 1, 20 * DAY),
                refreshed("r2", 2, 40 * DAY),
                refreshed("r3", 3, 60 * DAY),
                refreshed("r4", 4, 80 * DAY),
            ])
            .when(SessionCommand::Refresh { presented_hash: d("r4"), new_hash: d("r5"), at: t(90 * DAY) })
            .then_expect_error(SessionError::Expired);
    }

    #[test]
    fn refresh_near_the_end_is_capped_by_absolute_expiry() {
        let mut s = Session::default();
        s.apply(started());
        s.apply(refreshed("r1", 1, 80 * DAY));
        SessionTest::with(())
            .given(vec![started(), refreshed("r1", 1, 80 * DAY)])
            .when(SessionCommand::Refresh { presented_hash: d("r1"), new_hash: d("r2"), at: t(85 * DAY) })
            .then_expect_events(vec![SessionEvent::SessionRefreshed {
                refresh_hash: d("r2"),
                generation: 2,
                refreshed_at: t(85 * DAY),
                idle_expires_at: t(90 * DAY),
            }]);
    }

    #[test]
    fn revoke_is_idempotent() {
        SessionTest::with(())
            .given(vec![started()])
            .when(SessionCommand::Revoke { reason: RevocationReason::Logout, at: t(5) })
            .then_expect_events(vec![SessionEvent::SessionRevoked {
                reason: RevocationReason::Logout,
                revoked_at: t(5),
            }]);
        SessionTest::with(())
            .given(vec![
                started(),
                SessionEvent::SessionRevoked { reason: RevocationReason::Logout, revoked_at: t(5) },
            ])
            .when(SessionCommand::Revoke { reason: RevocationReason::Logout, at: t(6) })
            .then_expect_events(vec![]);
    }
}

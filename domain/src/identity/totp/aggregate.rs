use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{TotpCommand, TotpEvent};
use crate::values::{Digest, Sealed};

/// Refusals of a `Totp`; `code()` is the stable API error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TotpError {
    #[error("TOTP is already enabled; disable it first")]
    AlreadyEnabled,
    #[error("no TOTP enrollment is pending")]
    NotPending,
    #[error("TOTP is not enabled")]
    NotEnabled,
    #[error("the code is not valid")]
    InvalidCode,
}

impl TotpError {
    /// Stable snake_case code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlreadyEnabled => "totp_already_enabled",
            Self::NotPending => "totp_not_pending",
            Self::NotEnabled => "totp_not_enabled",
            Self::InvalidCode => "invalid_code",
        }
    }
}

/// Lifecycle of a user's TOTP factor.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TotpStatus {
    #[default]
    Absent,
    /// Enrollment started, not yet confirmed.
    Pending,
    Enabled,
    Disabled,
}

/// State of one user's TOTP factor.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Totp {
    pub user_id: Option<Uuid>,
    pub status: TotpStatus,
    /// The current secret, sealed with the user's key.
    pub secret: Option<Sealed>,
    /// The latest step used; codes of this or an earlier step are refused.
    pub last_step: Option<u64>,
    /// Hashes of the recovery codes not used yet.
    pub recovery_codes: Vec<Digest>,
}

impl Totp {
    /// Whether TOTP replaces the mailed code at login.
    pub fn is_enabled(&self) -> bool {
        self.status == TotpStatus::Enabled
    }

    fn fresh(&self, step: u64) -> bool {
        self.last_step.is_none_or(|last| step > last)
    }
}

impl Aggregate for Totp {
    const TYPE: &'static str = "totp";
    type Command = TotpCommand;
    type Event = TotpEvent;
    type Error = TotpError;
    type Services = ();

    async fn handle(
        &mut self,
        command: TotpCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), TotpError> {
        match command {
            TotpCommand::StartEnrollment { user_id, secret, at } => {
                if self.status == TotpStatus::Enabled {
                    return Err(TotpError::AlreadyEnabled);
                }
                sink.write(TotpEvent::TotpEnrollmentStarted { user_id, secret, started_at: at }, self).await;
            }
            TotpCommand::Confirm { matched_step, recovery_codes, at } => {
                match self.status {
                    TotpStatus::Pending => {}
                    TotpStatus::Enabled => return Err(TotpError::AlreadyEnabled),
                    TotpStatus::Absent | TotpStatus::Disabled => return Err(TotpError::NotPending),
                }
                let step = matched_step.filter(|s| self.fresh(*s)).ok_or(TotpError::InvalidCode)?;
                sink.write(TotpEvent::TotpEnabled { recovery_codes, step, enabled_at: at }, self).await;
            }
            TotpCommand::UseCode { matched_step, at } => {
                if self.status != TotpStatus::Enabled {
                    return Err(TotpError::NotEnabled);
                }
                let event = match matched_step {
                    Some(step) if self.fresh(step) => TotpEvent::TotpCodeAccepted { step, accepted_at: at },
                    Some(_) => TotpEvent::TotpCodeRejected { replayed: true, rejected_at: at },
                    None => TotpEvent::TotpCodeRejected { replayed: false, rejected_at: at },
                };
                sink.write(event, self).await;
            }
            TotpCommand::UseRecoveryCode { code, at } => {
                if self.status != TotpStatus::Enabled {
                    return Err(TotpError::NotEnabled);
                }
                // Every stored hash is compared (no early exit).
                let found = self.recovery_codes.iter().fold(false, |hit, h| h.ct_eq(&code) | hit);
                if found {
                    let remaining = u32::try_from(self.recovery_codes.len().saturating_sub(1)).unwrap_or(0);
                    sink.write(TotpEvent::RecoveryCodeUsed { code, remaining, used_at: at }, self).await;
                } else {
                    sink.write(TotpEvent::RecoveryCodeRejected { rejected_at: at }, self).await;
                }
            }
            TotpCommand::Disable { at } => match self.status {
                TotpStatus::Pending | TotpStatus::Enabled => {
                    sink.write(TotpEvent::TotpDisabled { disabled_at: at }, self).await;
                }
                TotpStatus::Absent | TotpStatus::Disabled => return Err(TotpError::NotEnabled),
            },
        }
        Ok(())
    }

    fn apply(&mut self, event: TotpEvent) {
        match event {
            TotpEvent::TotpEnrollmentStarted { user_id, secret, .. } => {
                self.user_id = Some(user_id);
                self.status = TotpStatus::Pending;
                self.secret = Some(secret);
                // A new secret: steps of the old one say nothing about it.
                self.last_step = None;
                self.recovery_codes.clear();
            }
            TotpEvent::TotpEnabled { recovery_codes, step, .. } => {
                self.status = TotpStatus::Enabled;
                self.recovery_codes = recovery_codes;
                self.last_step = Some(step);
            }
            TotpEvent::TotpCodeAccepted { step, .. } => self.last_step = Some(step),
            TotpEvent::TotpCodeRejected { .. } | TotpEvent::RecoveryCodeRejected { .. } => {}
            TotpEvent::RecoveryCodeUsed { code, .. } => self.recovery_codes.retain(|h| h != &code),
            TotpEvent::TotpDisabled { .. } => {
                self.status = TotpStatus::Disabled;
                self.secret = None;
                self.recovery_codes.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use cqrs_es::test::TestFramework;

    type TotpTest = TestFramework<Totp>;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }
    fn d(s: &str) -> Digest {
        Digest(s.into())
    }
    fn started() -> TotpEvent {
        TotpEvent::TotpEnrollmentStarted {
            user_id: Uuid::from_u128(1),
            secret: Sealed("v1.sealed".into()),
            started_at: t(0),
        }
    }
    fn enabled() -> TotpEvent {
        TotpEvent::TotpEnabled { recovery_codes: vec![d("r1"), d("r2")], step: 100, enabled_at: t(10) }
    }
    fn use_code(step: Option<u64>, at: i64) -> TotpCommand {
        TotpCommand::UseCode { matched_step: step, at: t(at) }
    }

    #[test]
    fn enrollment_seals_the_secret_and_confirmation_enables() {
        TotpTest::with(())
            .given_no_previous_events()
            .when(TotpCommand::StartEnrollment {
                user_id: Uuid::from_u128(1),
                secret: Sealed("v1.sealed".into()),
                at: t(0),
            })
            .then_expect_events(vec![started()]);
        TotpTest::with(())
            .given(vec![started()])
            .when(TotpCommand::Confirm {
                matched_step: Some(100),
                recovery_codes: vec![d("r1"), d("r2")],
                at: t(10),
            })
            .then_expect_events(vec![enabled()]);
    }

    #[test]
    fn a_wrong_confirmation_code_is_refused() {
        TotpTest::with(())
            .given(vec![started()])
            .when(TotpCommand::Confirm { matched_step: None, recovery_codes: vec![], at: t(10) })
            .then_expect_error(TotpError::InvalidCode);
        TotpTest::with(())
            .given_no_previous_events()
            .when(TotpCommand::Confirm { matched_step: Some(1), recovery_codes: vec![], at: t(10) })
            .then_expect_error(TotpError::NotPending);
    }

    #[test]
    fn enrolling_again_while_enabled_is_refused() {
        TotpTest::with(())
            .given(vec![started(), enabled()])
            .when(TotpCommand::StartEnrollment {
                user_id: Uuid::from_u128(1),
                secret: Sealed("v1.other".into()),
                at: t(20),
            })
            .then_expect_error(TotpError::AlreadyEnabled);
    }

    #[test]
    fn a_step_is_accepted_once_only() {
        TotpTest::with(())
            .given(vec![started(), enabled()])
            .when(use_code(Some(101), 40))
            .then_expect_events(vec![TotpEvent::TotpCodeAccepted { step: 101, accepted_at: t(40) }]);
        // The same step again, and an earlier one, are replays.
        for step in [101, 100] {
            TotpTest::with(())
                .given(vec![
                    started(),
                    enabled(),
                    TotpEvent::TotpCodeAccepted { step: 101, accepted_at: t(40) },
                ])
                .when(use_code(Some(step), 41))
                .then_expect_events(vec![TotpEvent::TotpCodeRejected { replayed: true, rejected_at: t(41) }]);
        }
        // The confirming code's step is used up too.
        TotpTest::with(())
            .given(vec![started(), enabled()])
            .when(use_code(Some(100), 12))
            .then_expect_events(vec![TotpEvent::TotpCodeRejected { replayed: true, rejected_at: t(12) }]);
    }

    #[test]
    fn a_wrong_code_is_recorded() {
        TotpTest::with(())
            .given(vec![started(), enabled()])
            .when(use_code(None, 40))
            .then_expect_events(vec![TotpEvent::TotpCodeRejected { replayed: false, rejected_at: t(40) }]);
        TotpTest::with(())
            .given(vec![started()])
            .when(use_code(Some(5), 40))
            .then_expect_error(TotpError::NotEnabled);
    }

    #[test]
    fn recovery_codes_are_single_use() {
        TotpTest::with(())
            .given(vec![started(), enabled()])
            .when(TotpCommand::UseRecoveryCode { code: d("r2"), at: t(50) })
            .then_expect_events(vec![TotpEvent::RecoveryCodeUsed {
                code: d("r2"),
                remaining: 1,
                used_at: t(50),
            }]);
        TotpTest::with(())
            .given(vec![
                started(),
                enabled(),
                TotpEvent::RecoveryCodeUsed { code: d("r2"), remaining: 1, used_at: t(50) },
            ])
            .when(TotpCommand::UseRecoveryCode { code: d("r2"), at: t(51) })
            .then_expect_events(vec![TotpEvent::RecoveryCodeRejected { rejected_at: t(51) }]);
    }

    #[test]
    fn disable_voids_secret_and_codes_and_allows_a_new_enrollment() {
        TotpTest::with(())
            .given(vec![started(), enabled()])
            .when(TotpCommand::Disable { at: t(60) })
            .then_expect_events(vec![TotpEvent::TotpDisabled { disabled_at: t(60) }]);
        let disabled = vec![started(), enabled(), TotpEvent::TotpDisabled { disabled_at: t(60) }];
        TotpTest::with(())
            .given(disabled.clone())
            .when(TotpCommand::UseRecoveryCode { code: d("r1"), at: t(61) })
            .then_expect_error(TotpError::NotEnabled);
        TotpTest::with(())
            .given(disabled.clone())
            .when(TotpCommand::Disable { at: t(61) })
            .then_expect_error(TotpError::NotEnabled);
        TotpTest::with(())
            .given(disabled)
            .when(TotpCommand::StartEnrollment {
                user_id: Uuid::from_u128(1),
                secret: Sealed("v1.new".into()),
                at: t(62),
            })
            .then_expect_events(vec![TotpEvent::TotpEnrollmentStarted {
                user_id: Uuid::from_u128(1),
                secret: Sealed("v1.new".into()),
                started_at: t(62),
            }]);
    }
}

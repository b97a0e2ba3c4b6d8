use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{OtpChannel, OtpCommand, OtpEvent, OtpPurpose};
use crate::values::{Digest, Sealed};

/// Wrong codes that lock a challenge (seed 003; SECURITY.md).
pub const MAX_FAILED_ATTEMPTS: u32 = 3;

/// Refusals of an `OtpChallenge`; `code()` is the stable API error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtpError {
    #[error("the challenge already exists")]
    AlreadyIssued,
    #[error("no such challenge")]
    NotFound,
    #[error("the code has expired")]
    Expired,
    #[error("the challenge is locked after too many wrong codes")]
    Locked,
    #[error("the code was already used")]
    AlreadyUsed,
    #[error("the expiry must be after the issue time")]
    InvalidExpiry,
}

impl OtpError {
    /// Stable snake_case code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlreadyIssued => "challenge_exists",
            Self::NotFound => "challenge_not_found",
            Self::Expired => "code_expired",
            Self::Locked => "challenge_locked",
            Self::AlreadyUsed => "code_already_used",
            Self::InvalidExpiry => "invalid_expiry",
        }
    }
}

/// Lifecycle of a challenge.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChallengeStatus {
    #[default]
    Absent,
    Pending,
    Verified,
    Locked,
}

/// State of one challenge.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct OtpChallenge {
    pub id: Option<Uuid>,
    pub subject_id: Option<Uuid>,
    pub attempts_key: Option<String>,
    pub recipient: Option<Sealed>,
    pub issued_at: Option<DateTime<Utc>>,
    pub purpose: Option<OtpPurpose>,
    pub channel: Option<OtpChannel>,
    pub code_mac: Option<Digest>,
    pub expires_at: Option<DateTime<Utc>>,
    pub failed_attempts: u32,
    pub status: ChallengeStatus,
    pub delivery: DeliveryStatus,
}

/// Where the code's delivery stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    #[default]
    Pending,
    Delivered,
    Failed,
}

impl Aggregate for OtpChallenge {
    const TYPE: &'static str = "otp_challenge";
    type Command = OtpCommand;
    type Event = OtpEvent;
    type Error = OtpError;
    type Services = ();

    async fn handle(
        &mut self,
        command: OtpCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), OtpError> {
        match command {
            OtpCommand::Request {
                challenge_id,
                delivery_id,
                subject_id,
                attempts_key,
                recipient,
                purpose,
                channel,
                code_mac,
                issued_at,
                expires_at,
            } => {
                if self.status != ChallengeStatus::Absent {
                    return Err(OtpError::AlreadyIssued);
                }
                if expires_at <= issued_at {
                    return Err(OtpError::InvalidExpiry);
                }
                let event = OtpEvent::OtpIssued {
                    challenge_id,
                    delivery_id,
                    subject_id,
                    attempts_key,
                    recipient,
                    purpose,
                    channel,
                    code_mac,
                    issued_at,
                    expires_at,
                };
                sink.write(event, self).await;
            }
            OtpCommand::Reissue { delivery_id, code_mac, issued_at, expires_at } => {
                match self.status {
                    ChallengeStatus::Absent => return Err(OtpError::NotFound),
                    ChallengeStatus::Verified => return Err(OtpError::AlreadyUsed),
                    ChallengeStatus::Locked => return Err(OtpError::Locked),
                    ChallengeStatus::Pending => {}
                }
                if expires_at <= issued_at {
                    return Err(OtpError::InvalidExpiry);
                }
                let event = OtpEvent::OtpReissued { delivery_id, code_mac, issued_at, expires_at };
                sink.write(event, self).await;
            }
            OtpCommand::Verify { candidate_mac, at } => {
                match self.status {
                    ChallengeStatus::Absent => return Err(OtpError::NotFound),
                    ChallengeStatus::Verified => return Err(OtpError::AlreadyUsed),
                    ChallengeStatus::Locked => return Err(OtpError::Locked),
                    ChallengeStatus::Pending => {}
                }
                if self.expires_at.is_none_or(|e| at >= e) {
                    return Err(OtpError::Expired);
                }
                let matches = self.code_mac.as_ref().is_some_and(|m| m.ct_eq(&candidate_mac));
                if matches {
                    sink.write(OtpEvent::OtpVerified { verified_at: at }, self).await;
                } else {
                    let failed_attempts = self.failed_attempts.saturating_add(1);
                    sink.write(OtpEvent::OtpVerificationFailed { failed_attempts, failed_at: at }, self)
                        .await;
                    if failed_attempts >= MAX_FAILED_ATTEMPTS {
                        sink.write(OtpEvent::OtpChallengeLocked { locked_at: at }, self).await;
                    }
                }
            }
            OtpCommand::RecordDelivery { attempts, at } => {
                if self.status == ChallengeStatus::Absent {
                    return Err(OtpError::NotFound);
                }
                // Recorded once; a redelivered notice changes nothing.
                if self.delivery == DeliveryStatus::Pending {
                    sink.write(OtpEvent::OtpDelivered { attempts, delivered_at: at }, self).await;
                }
            }
            OtpCommand::RecordDeliveryFailure { attempts, reason, at } => {
                if self.status == ChallengeStatus::Absent {
                    return Err(OtpError::NotFound);
                }
                if self.delivery == DeliveryStatus::Pending {
                    let reason: String = reason.chars().take(200).collect();
                    sink.write(OtpEvent::OtpDeliveryFailed { attempts, reason, failed_at: at }, self).await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: OtpEvent) {
        match event {
            OtpEvent::OtpIssued {
                challenge_id,
                subject_id,
                attempts_key,
                recipient,
                purpose,
                channel,
                code_mac,
                issued_at,
                expires_at,
                ..
            } => {
                self.recipient = Some(recipient);
                self.id = Some(challenge_id);
                self.subject_id = Some(subject_id);
                self.attempts_key = Some(attempts_key);
                self.purpose = Some(purpose);
                self.channel = Some(channel);
                self.code_mac = Some(code_mac);
                self.issued_at = Some(issued_at);
                self.expires_at = Some(expires_at);
                self.status = ChallengeStatus::Pending;
            }
            OtpEvent::OtpReissued { code_mac, issued_at, expires_at, .. } => {
                self.code_mac = Some(code_mac);
                self.issued_at = Some(issued_at);
                self.expires_at = Some(expires_at);
                self.delivery = DeliveryStatus::Pending;
            }
            OtpEvent::OtpVerified { .. } => self.status = ChallengeStatus::Verified,
            OtpEvent::OtpVerificationFailed { failed_attempts, .. } => {
                self.failed_attempts = failed_attempts;
            }
            OtpEvent::OtpChallengeLocked { .. } => self.status = ChallengeStatus::Locked,
            OtpEvent::OtpDelivered { .. } => self.delivery = DeliveryStatus::Delivered,
            OtpEvent::OtpDeliveryFailed { .. } => self.delivery = DeliveryStatus::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type OtpTest = TestFramework<OtpChallenge>;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }
    fn issued() -> OtpEvent {
        OtpEvent::OtpIssued {
            challenge_id: Uuid::from_u128(5),
            delivery_id: Uuid::from_u128(5),
            subject_id: Uuid::from_u128(1),
            attempts_key: "user:1".into(),
            recipient: Sealed("r".into()),
            purpose: OtpPurpose::TwoFactor,
            channel: OtpChannel::Email,
            code_mac: Digest("good".into()),
            issued_at: t(0),
            expires_at: t(600),
        }
    }
    fn verify(mac: &str, at: i64) -> OtpCommand {
        OtpCommand::Verify { candidate_mac: Digest(mac.into()), at: t(at) }
    }

    #[test]
    fn request_issues_once() {
        OtpTest::with(())
            .given_no_previous_events()
            .when(OtpCommand::Request {
                challenge_id: Uuid::from_u128(5),
                delivery_id: Uuid::from_u128(5),
                subject_id: Uuid::from_u128(1),
                attempts_key: "user:1".into(),
                recipient: Sealed("r".into()),
                purpose: OtpPurpose::TwoFactor,
                channel: OtpChannel::Email,
                code_mac: Digest("good".into()),
                issued_at: t(0),
                expires_at: t(600),
            })
            .then_expect_events(vec![issued()]);
        OtpTest::with(())
            .given(vec![issued()])
            .when(OtpCommand::Request {
                challenge_id: Uuid::from_u128(5),
                delivery_id: Uuid::from_u128(5),
                subject_id: Uuid::from_u128(1),
                attempts_key: "user:1".into(),
                recipient: Sealed("r".into()),
                purpose: OtpPurpose::TwoFactor,
                channel: OtpChannel::Email,
                code_mac: Digest("other".into()),
                issued_at: t(1),
                expires_at: t(601),
            })
            .then_expect_error(OtpError::AlreadyIssued);
    }

    #[test]
    fn right_code_verifies_once() {
        OtpTest::with(())
            .given(vec![issued()])
            .when(verify("good", 10))
            .then_expect_events(vec![OtpEvent::OtpVerified { verified_at: t(10) }]);
        OtpTest::with(())
            .given(vec![issued(), OtpEvent::OtpVerified { verified_at: t(10) }])
            .when(verify("good", 11))
            .then_expect_error(OtpError::AlreadyUsed);
    }

    #[test]
    fn third_wrong_code_locks() {
        OtpTest::with(()).given(vec![issued()]).when(verify("bad", 10)).then_expect_events(vec![
            OtpEvent::OtpVerificationFailed { failed_attempts: 1, failed_at: t(10) },
        ]);
        OtpTest::with(())
            .given(vec![
                issued(),
                OtpEvent::OtpVerificationFailed { failed_attempts: 1, failed_at: t(10) },
                OtpEvent::OtpVerificationFailed { failed_attempts: 2, failed_at: t(11) },
            ])
            .when(verify("bad", 12))
            .then_expect_events(vec![
                OtpEvent::OtpVerificationFailed { failed_attempts: 3, failed_at: t(12) },
                OtpEvent::OtpChallengeLocked { locked_at: t(12) },
            ]);
    }

    #[test]
    fn locked_challenge_refuses_even_the_right_code() {
        OtpTest::with(())
            .given(vec![
                issued(),
                OtpEvent::OtpVerificationFailed { failed_attempts: 3, failed_at: t(12) },
                OtpEvent::OtpChallengeLocked { locked_at: t(12) },
            ])
            .when(verify("good", 13))
            .then_expect_error(OtpError::Locked);
    }

    #[test]
    fn expired_code_is_refused() {
        OtpTest::with(())
            .given(vec![issued()])
            .when(verify("good", 600))
            .then_expect_error(OtpError::Expired);
    }

    #[test]
    fn delivery_outcome_is_recorded_once() {
        OtpTest::with(())
            .given(vec![issued()])
            .when(OtpCommand::RecordDelivery { attempts: 1, at: t(1) })
            .then_expect_events(vec![OtpEvent::OtpDelivered { attempts: 1, delivered_at: t(1) }]);
        OtpTest::with(())
            .given(vec![issued(), OtpEvent::OtpDelivered { attempts: 1, delivered_at: t(1) }])
            .when(OtpCommand::RecordDelivery { attempts: 1, at: t(2) })
            .then_expect_events(vec![]);
        OtpTest::with(())
            .given(vec![issued()])
            .when(OtpCommand::RecordDeliveryFailure { attempts: 5, reason: "smtp: 550".into(), at: t(9) })
            .then_expect_events(vec![OtpEvent::OtpDeliveryFailed {
                attempts: 5,
                reason: "smtp: 550".into(),
                failed_at: t(9),
            }]);
        OtpTest::with(())
            .given_no_previous_events()
            .when(OtpCommand::RecordDelivery { attempts: 1, at: t(1) })
            .then_expect_error(OtpError::NotFound);
    }

    #[test]
    fn resend_replaces_the_code_but_not_the_attempts() {
        let reissued = OtpEvent::OtpReissued {
            delivery_id: Uuid::from_u128(6),
            code_mac: Digest("new".into()),
            issued_at: t(60),
            expires_at: t(660),
        };
        OtpTest::with(())
            .given(vec![issued()])
            .when(OtpCommand::Reissue {
                delivery_id: Uuid::from_u128(6),
                code_mac: Digest("new".into()),
                issued_at: t(60),
                expires_at: t(660),
            })
            .then_expect_events(vec![reissued.clone()]);
        OtpTest::with(())
            .given(vec![
                issued(),
                OtpEvent::OtpVerificationFailed { failed_attempts: 2, failed_at: t(10) },
                reissued.clone(),
            ])
            .when(verify("good", 70))
            .then_expect_events(vec![
                OtpEvent::OtpVerificationFailed { failed_attempts: 3, failed_at: t(70) },
                OtpEvent::OtpChallengeLocked { locked_at: t(70) },
            ]);
        OtpTest::with(())
            .given(vec![issued(), reissued])
            .when(verify("new", 70))
            .then_expect_events(vec![OtpEvent::OtpVerified { verified_at: t(70) }]);
    }

    #[test]
    fn unknown_challenge() {
        OtpTest::with(())
            .given_no_previous_events()
            .when(verify("good", 1))
            .then_expect_error(OtpError::NotFound);
    }
}

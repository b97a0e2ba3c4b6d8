//! One-time codes: issuing a code on a new challenge with its sealed
//! delivery record (one statement), notices, answering a challenge under
//! the recipient's failure throttle (by id or by address), and resends.

use chrono::{DateTime, Duration, Utc};
use domain::otp::{OtpChallenge, OtpChannel, OtpCommand, OtpError, OtpEvent, OtpPurpose};
use domain::throttle::Policy;
use domain::values::{OtpCode, PhoneNumber};
use uuid::Uuid;

use super::{internal, IdentityError, IdentityService, OtpRequest, RequestMeta};
use crate::deliveries::{Delivery, SealedDelivery};
use crate::executor::{Decided, ExecError};
use crate::otp_codes::{candidate_mac, code_mac, generate_code};

/// A code on a new challenge, decided and sealed, not yet written
/// ([`IdentityService::prepare_otp`]).
pub(crate) struct PreparedOtp {
    pub decided: Decided<OtpChallenge>,
    pub delivery: SealedDelivery,
    pub expires_at: DateTime<Utc>,
}

impl IdentityService {
    /// Issues a code on a new challenge: the `OtpIssued` event the notifier
    /// reacts to and the sealed delivery record it reads, written by one
    /// statement (neither exists without the other). Returns the expiry.
    pub(crate) async fn issue_otp(
        &self,
        req: OtpRequest<'_>,
        meta: &RequestMeta,
    ) -> Result<DateTime<Utc>, IdentityError> {
        let challenge_id = req.challenge_id;
        let (cmd, delivery, expires_at) = self.otp_request(req).await?;
        self.otps
            .execute_new_with(&challenge_id.to_string(), cmd, meta.to_map("RequestOtp"), &delivery)
            .await?;
        Ok(expires_at)
    }

    /// [`IdentityService::issue_otp`] decided but not appended: the
    /// caller appends the challenge's `OtpIssued` and the delivery record
    /// together with its own events ([`append_together`](crate::executor::append_together)).
    pub(crate) async fn prepare_otp(
        &self,
        req: OtpRequest<'_>,
        meta: &RequestMeta,
    ) -> Result<PreparedOtp, IdentityError> {
        let challenge_id = req.challenge_id;
        let (cmd, delivery, expires_at) = self.otp_request(req).await?;
        let decided = self.otps.decide_new(&challenge_id.to_string(), cmd, meta.to_map("RequestOtp")).await?;
        Ok(PreparedOtp { decided, delivery, expires_at })
    }

    /// A new code's `Request` command, its sealed delivery record and expiry.
    async fn otp_request(
        &self,
        req: OtpRequest<'_>,
    ) -> Result<(OtpCommand, SealedDelivery, DateTime<Utc>), IdentityError> {
        let now = Utc::now();
        let code = generate_code();
        let expires_at = now + Duration::seconds(self.otp_ttl(req.channel));
        let delivery =
            self.code_delivery(req.challenge_id, req.purpose, req.channel, req.to, &code, expires_at)?;
        self.vault.ensure_key(req.subject).await.map_err(internal)?;
        let recipient = self.vault.seal(req.subject, req.to).await.map_err(internal)?;
        let cmd = OtpCommand::Request {
            challenge_id: req.challenge_id,
            delivery_id: req.challenge_id,
            subject_id: req.subject,
            attempts_key: req.recipient_key,
            recipient,
            purpose: req.purpose,
            channel: req.channel,
            code_mac: code_mac(&self.keys.otp, req.challenge_id, &code),
            issued_at: now,
            expires_at,
        };
        Ok((cmd, delivery, expires_at))
    }

    /// The sealed delivery record of a code (template by purpose).
    fn code_delivery(
        &self,
        delivery_id: Uuid,
        purpose: OtpPurpose,
        channel: OtpChannel,
        to: &str,
        code: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<SealedDelivery, IdentityError> {
        let template = match purpose {
            OtpPurpose::EmailVerification => "otp_email_verification",
            OtpPurpose::PhoneVerification => "otp_phone_verification",
            OtpPurpose::TwoFactor => "otp_two_factor",
            OtpPurpose::Login => "otp_login",
            OtpPurpose::PasswordReset => "otp_password_reset",
        };
        let delivery = Delivery {
            channel: channel.as_str().to_owned(),
            to: to.to_owned(),
            template: template.to_owned(),
            code: Some(code.to_owned()),
            expires_at: Some(expires_at),
        };
        self.deliveries.seal(delivery_id, &delivery, expires_at).map_err(internal)
    }

    /// A notice (no code) for the notifier, sealed under a new delivery id,
    /// to be written by the append of the event that names it
    /// ([`Executor::execute_with`](crate::executor::Executor::execute_with)).
    pub(crate) fn notice(&self, to: &str, template: &str) -> Result<SealedDelivery, IdentityError> {
        self.notice_on(OtpChannel::Email, to, template)
    }

    /// [`IdentityService::notice`] on `channel` (`to` is then an address or
    /// an E.164 number).
    pub(crate) fn notice_on(
        &self,
        channel: OtpChannel,
        to: &str,
        template: &str,
    ) -> Result<SealedDelivery, IdentityError> {
        let delivery = Delivery {
            channel: channel.as_str().into(),
            to: to.to_owned(),
            template: template.into(),
            code: None,
            expires_at: None,
        };
        self.deliveries.seal(Uuid::new_v4(), &delivery, Utc::now() + Duration::days(1)).map_err(internal)
    }

    /// Answers challenge `challenge_id` with `code`, under the recipient's
    /// failure throttle. `Ok(state)` only when the code was right; wrong
    /// codes are recorded on the challenge and on the throttle.
    pub(crate) async fn answer(
        &self,
        challenge_id: Uuid,
        code: &OtpCode,
        expected: &[OtpPurpose],
        meta: &RequestMeta,
    ) -> Result<OtpChallenge, IdentityError> {
        let id = challenge_id.to_string();
        let current = self.otps.load(&id).await?;
        // A challenge of another purpose (or none) is answered like a wrong code.
        if !current.purpose.is_some_and(|p| expected.contains(&p)) {
            return Err(IdentityError::InvalidCode);
        }
        let key = current.attempts_key.clone().unwrap_or_else(|| format!("challenge:{challenge_id}"));
        // Counted before the code is evaluated (atomic throttle): a wrong
        // or refused answer stays counted, a right one takes it back.
        self.begin_attempt(Policy::OtpFailures, &key, meta).await?;
        let cmd = OtpCommand::Verify {
            candidate_mac: candidate_mac(&self.keys.otp, challenge_id, code),
            at: Utc::now(),
        };
        let done = match self.otps.execute(&id, cmd, meta.to_map("VerifyOtp")).await {
            Ok(done) => done,
            Err(ExecError::Domain(OtpError::Expired)) => return Err(IdentityError::CodeExpired),
            Err(ExecError::Domain(OtpError::Locked)) => return Err(IdentityError::ChallengeLocked),
            Err(ExecError::Domain(_)) => return Err(IdentityError::InvalidCode),
            Err(other) => return Err(other.into()),
        };
        if done.events.iter().any(|e| matches!(e, OtpEvent::OtpVerified { .. })) {
            self.record_success(Policy::OtpFailures, &key, meta).await?;
            return Ok(done.state);
        }
        if done.events.iter().any(|e| matches!(e, OtpEvent::OtpChallengeLocked { .. })) {
            Err(IdentityError::ChallengeLocked)
        } else {
            Err(IdentityError::InvalidCode)
        }
    }

    /// [`IdentityService::answer`] for the endpoints that take an address
    /// instead of a challenge id (`verify-email`, `password-reset/verify`):
    /// `challenge_id` is `None` for unknown addresses and accounts with
    /// nothing pending, which are answered as a wrong code after the same
    /// throttle steps; a locked or expired challenge answers `InvalidCode`
    /// too, so the status sequence is the same for known-unverified,
    /// known-verified and unknown addresses (no enumeration).
    pub(crate) async fn answer_by_address(
        &self,
        started: std::time::Instant,
        challenge_id: Option<Uuid>,
        key: &str,
        code: &OtpCode,
        expected: &[OtpPurpose],
        meta: &RequestMeta,
    ) -> Result<OtpChallenge, IdentityError> {
        // A refusal is answered no sooner than a typical refusal of a
        // pending challenge (25 % cushion), whichever path it took: the
        // same deadline for both, counted from the request's start
        // (`started`), so timing does not tell them apart.
        let answer_at = tokio::time::Instant::from_std(started + self.code_pad.typical().mul_f64(1.25));
        let result = match challenge_id {
            None => match self.begin_attempt(Policy::OtpFailures, key, meta).await {
                Ok(()) => Err(IdentityError::InvalidCode),
                Err(e) => Err(e),
            },
            Some(challenge_id) => {
                let result = self.answer(challenge_id, code, expected, meta).await;
                if result.is_err() {
                    self.code_pad.observe(started.elapsed());
                }
                result.map_err(|e| match e {
                    IdentityError::ChallengeLocked | IdentityError::CodeExpired => IdentityError::InvalidCode,
                    other => other,
                })
            }
        };
        if result.is_err() {
            tokio::time::sleep_until(answer_at).await;
        }
        result
    }

    /// Resends a pending challenge's code (a new code replaces the old),
    /// under the recipient's 3-per-hour limit and 30 s cooldown. Unknown or
    /// finished challenges answer the same as a resend (nothing is sent).
    ///
    /// # Errors
    /// `Throttled`, `Internal`.
    #[tracing::instrument(skip_all, fields(challenge_id = %challenge_id))]
    pub async fn resend(&self, challenge_id: Uuid, meta: &RequestMeta) -> Result<(), IdentityError> {
        let id = challenge_id.to_string();
        let ch = self.otps.load(&id).await?;
        let (Some(subject), Some(key), Some(sealed), Some(purpose), Some(channel)) =
            (ch.subject_id, ch.attempts_key.clone(), ch.recipient.clone(), ch.purpose, ch.channel)
        else {
            return Ok(());
        };
        // A TOTP challenge has no code to send (the app shows it).
        if ch.status != domain::otp::ChallengeStatus::Pending || channel == OtpChannel::Totp {
            return Ok(());
        }
        self.record_request(&key, meta).await?;
        let Some(to) = self.vault.open(subject, &sealed).await.map_err(internal)? else { return Ok(()) };
        if channel == OtpChannel::Sms {
            self.charge_sms(&PhoneNumber::parse(&to).map_err(internal)?).await?;
        }
        let now = Utc::now();
        let code = generate_code();
        let expires_at = now + Duration::seconds(self.otp_ttl(channel));
        let delivery_id = Uuid::new_v4();
        let delivery = self.code_delivery(delivery_id, purpose, channel, &to, &code, expires_at)?;
        let cmd = OtpCommand::Reissue {
            delivery_id,
            code_mac: code_mac(&self.keys.otp, challenge_id, &code),
            issued_at: now,
            expires_at,
        };
        // The record is written with the event: a refused reissue leaves none.
        match self.otps.execute_with(&id, cmd, meta.to_map("ResendOtp"), &delivery).await {
            Ok(_) | Err(ExecError::Domain(_)) => Ok(()),
            Err(other) => Err(other.into()),
        }
    }
}

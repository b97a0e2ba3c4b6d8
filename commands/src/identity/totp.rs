//! TOTP (RFC 6238) as a second factor: enrollment with a QR code,
//! confirmation, single-use recovery codes, disabling, and answering a
//! login challenge with an authenticator code or a recovery code.
//!
//! Parameters: SHA-1, 6 digits, 30-second steps, one step of clock skew
//! either way (what authenticator apps expect). The 160-bit secret comes
//! from the OS CSPRNG and is sealed with the user's data key before it
//! enters an event. Recovery codes: 10 × 40 bits, `XXXX-XXXX` in Crockford
//! base32, stored as `HMAC-SHA256(recovery key, user_id ‖ code)`.
//!
//! ## TOTP instead of a mailed code
//! When the user's TOTP is enabled, `start_login` issues an ordinary
//! `OtpChallenge` with channel [`OtpChannel::Totp`] and sends nothing (no
//! delivery record exists, so the notifier skips it). Its `code_mac` is a
//! server-side *proof* — `HMAC(otp key, challenge_id ‖ "totp-proof")` —
//! that no typed 6-digit code can produce. `verify_otp` (and
//! `verify_recovery_code`) check the code against the `Totp` aggregate
//! (which enforces one use per step, and single-use recovery codes), then
//! answer the challenge with the proof when the code was accepted, or with
//! a non-matching value when not. So the challenge keeps its usual rules —
//! expiry, single use, 3 wrong answers lock it — and every answer counts on
//! the same `OtpFailures` throttle as mailed codes (keyed by the account's
//! email lookup hash).

use chrono::{DateTime, Duration, Utc};
use domain::otp::{ChallengeStatus, OtpChallenge, OtpChannel, OtpCommand, OtpError, OtpEvent, OtpPurpose};
use domain::throttle::Policy;
use domain::totp::{RecoveryCode, Totp, TotpCommand, TotpEvent, RECOVERY_ALPHABET, RECOVERY_CODE_COUNT};
use domain::values::{Digest, OtpCode};
use rand::Rng;
use totp_rs::{Algorithm, Secret, TOTP};
use uuid::Uuid;

use super::pin::{factor_key, FactorError};
use super::{internal, IdentityError, IdentityService, LoginChallenge, RequestMeta, TokenPair};
use crate::executor::{ExecError, Executor};
use crate::keys::hmac_hex;
use crate::otp_codes::code_mac;

/// Issuer shown by authenticator apps.
pub const TOTP_ISSUER: &str = "streamforge";
/// Seconds per TOTP step (RFC 6238 default).
pub const TOTP_STEP_SECS: u64 = 30;
/// Digits per TOTP code.
pub const TOTP_DIGITS: usize = 6;
/// Steps of clock skew accepted either way.
pub const TOTP_SKEW_STEPS: u64 = 1;
/// Secret length in bytes (160 bits; RFC 4226 §4 recommends it).
const SECRET_BYTES: usize = 20;

/// What the user needs to add the account to an authenticator app. Shown
/// once; `Debug` hides the secret.
pub struct TotpEnrollment {
    /// Base32 (RFC 4648, no padding), for typing by hand.
    pub secret: String,
    /// `otpauth://totp/streamforge:<account>?secret=…&issuer=streamforge`.
    pub otpauth_uri: String,
    /// The URI as a QR code, an SVG document.
    pub qr_svg: String,
}

impl std::fmt::Debug for TotpEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpEnrollment(<redacted>)")
    }
}

/// What a TOTP login challenge is answered with.
enum Answer<'a> {
    Code(&'a OtpCode),
    Recovery(&'a RecoveryCode),
}

fn totp_of(secret: Vec<u8>, account: String) -> Result<TOTP, IdentityError> {
    TOTP::new(
        Algorithm::SHA1,
        TOTP_DIGITS,
        // The skew is applied by `matched_step`, which needs the step.
        0,
        TOTP_STEP_SECS,
        secret,
        Some(TOTP_ISSUER.to_owned()),
        account,
    )
    .map_err(internal)
}

/// The step within ±[`TOTP_SKEW_STEPS`] of `now` whose code is `code`, if
/// any. Every candidate is computed and compared in constant time.
fn matched_step(secret_base32: &str, code: &str, now: DateTime<Utc>) -> Option<u64> {
    let bytes = Secret::Encoded(secret_base32.to_owned()).to_bytes().ok()?;
    let totp = totp_of(bytes, String::new()).ok()?;
    let current = u64::try_from(now.timestamp()).ok()? / TOTP_STEP_SECS;
    let typed = Digest(code.to_owned());
    let mut found = None;
    for step in current.saturating_sub(TOTP_SKEW_STEPS)..=current + TOTP_SKEW_STEPS {
        if Digest(totp.generate(step * TOTP_STEP_SECS)).ct_eq(&typed) {
            found = Some(step);
        }
    }
    found
}

/// The code of `secret_base32` at `unix_secs` (SHA-1, 6 digits, 30 s), as an
/// authenticator app would show it. For clients' tests and tooling.
///
/// # Errors
/// `None` when the secret is not valid base32 of at least 128 bits.
pub fn totp_code_at(secret_base32: &str, unix_secs: u64) -> Option<String> {
    let bytes = Secret::Encoded(secret_base32.to_owned()).to_bytes().ok()?;
    totp_of(bytes, String::new()).ok().map(|t| t.generate(unix_secs))
}

fn svg_qr(data: &str) -> Result<String, IdentityError> {
    let code =
        qrcode::QrCode::with_error_correction_level(data.as_bytes(), qrcode::EcLevel::M).map_err(internal)?;
    Ok(code.render::<qrcode::render::svg::Color<'_>>().min_dimensions(240, 240).quiet_zone(true).build())
}

fn new_recovery_code() -> RecoveryCode {
    let mut rng = rand::rngs::OsRng;
    let raw: String =
        (0..8).map(|_| char::from(RECOVERY_ALPHABET[rng.gen_range(0..RECOVERY_ALPHABET.len())])).collect();
    // Built from the alphabet, so it always parses; a fresh draw otherwise.
    match RecoveryCode::parse(&raw) {
        Ok(code) => code,
        Err(_) => new_recovery_code(),
    }
}

impl IdentityService {
    pub(crate) fn totps(&self) -> Executor<Totp> {
        Executor::new(self.pool.clone(), ())
    }

    fn recovery_hash(&self, user_id: Uuid, code: &RecoveryCode) -> Digest {
        let key = factor_key(&self.keys, "totp-recovery");
        Digest(hmac_hex(&key, &[user_id.as_bytes(), code.expose().as_bytes()]))
    }

    /// The proof a TOTP challenge is answered with once the code is accepted.
    fn totp_proof(&self, challenge_id: Uuid) -> Digest {
        code_mac(&self.keys.otp, challenge_id, "totp-proof")
    }

    /// Starts (or restarts) TOTP enrollment: a new secret, sealed into the
    /// `Totp` stream, returned with its `otpauth://` URI and QR code. Not in
    /// force until [`IdentityService::confirm_totp`]. The api requires a
    /// recent authentication.
    ///
    /// # Errors
    /// `TotpAlreadyEnabled`, `Identity(NotFound | Internal | Conflict)`.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn start_totp_enrollment(
        &self,
        user_id: Uuid,
        meta: &RequestMeta,
    ) -> Result<TotpEnrollment, FactorError> {
        let user = self.users.load(&user_id.to_string()).await.map_err(IdentityError::from)?;
        if user.id.is_none() {
            return Err(IdentityError::NotFound.into());
        }
        // The label apps show: the email when there is one (never with ':').
        let account = match &user.email {
            Some(sealed) => self.open(user_id, sealed).await?,
            None => user_id.to_string(),
        };
        let account = if account.contains(':') { user_id.to_string() } else { account };
        let mut secret = vec![0u8; SECRET_BYTES];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
        let totp = totp_of(secret, account)?;
        let secret_base32 = totp.get_secret_base32();
        let otpauth_uri = totp.get_url();
        let qr_svg = svg_qr(&otpauth_uri)?;
        self.vault.ensure_key(user_id).await.map_err(internal)?;
        let sealed = self.vault.seal(user_id, &secret_base32).await.map_err(internal)?;
        let cmd = TotpCommand::StartEnrollment { user_id, secret: sealed, at: Utc::now() };
        self.totps()
            .execute(&user_id.to_string(), cmd, meta.to_map("StartTotpEnrollment"))
            .await
            .map_err(map_totp)?;
        Ok(TotpEnrollment { secret: secret_base32, otpauth_uri, qr_svg })
    }

    /// Confirms the pending enrollment with a current code and returns the
    /// 10 recovery codes (shown once; only their keyed hashes are kept).
    /// Wrong codes count on the user's `OtpFailures` throttle.
    ///
    /// # Errors
    /// `Identity(InvalidCode | Throttled)`, `TotpNotPending`,
    /// `TotpAlreadyEnabled`, `Identity(Internal | Conflict)`.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn confirm_totp(
        &self,
        user_id: Uuid,
        code: &OtpCode,
        meta: &RequestMeta,
    ) -> Result<Vec<String>, FactorError> {
        let key = format!("totp:{user_id}");
        let id = user_id.to_string();
        let state = self.totps().load(&id).await.map_err(IdentityError::from)?;
        let Some(sealed) = state.secret.clone().filter(|_| !state.is_enabled()) else {
            return Err(if state.is_enabled() {
                FactorError::TotpAlreadyEnabled
            } else {
                FactorError::TotpNotPending
            });
        };
        self.begin_attempt(Policy::OtpFailures, &key, meta).await?;
        let secret = self.open(user_id, &sealed).await?;
        let now = Utc::now();
        let codes: Vec<RecoveryCode> = (0..RECOVERY_CODE_COUNT).map(|_| new_recovery_code()).collect();
        let cmd = TotpCommand::Confirm {
            matched_step: matched_step(&secret, code.expose(), now),
            recovery_codes: codes.iter().map(|c| self.recovery_hash(user_id, c)).collect(),
            at: now,
        };
        match self.totps().execute(&id, cmd, meta.to_map("ConfirmTotp")).await {
            Ok(_) => {
                self.record_success(Policy::OtpFailures, &key, meta).await?;
                Ok(codes.iter().map(RecoveryCode::formatted).collect())
            }
            // Already counted by `begin_attempt`.
            Err(ExecError::Domain(domain::totp::TotpError::InvalidCode)) => {
                Err(IdentityError::InvalidCode.into())
            }
            Err(e) => Err(map_totp(e)),
        }
    }

    /// Turns TOTP off (pending or enabled); logins go back to mailed codes.
    /// The api requires a recent authentication.
    ///
    /// # Errors
    /// `TotpNotEnabled`, `Identity(Internal | Conflict)`.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn disable_totp(&self, user_id: Uuid, meta: &RequestMeta) -> Result<(), FactorError> {
        let cmd = TotpCommand::Disable { at: Utc::now() };
        self.totps()
            .execute(&user_id.to_string(), cmd, meta.to_map("DisableTotp"))
            .await
            .map_err(map_totp)?;
        Ok(())
    }

    /// Issues the login challenge of a TOTP user: nothing is sent.
    pub(crate) async fn issue_totp_challenge(
        &self,
        user_id: Uuid,
        challenge_id: Uuid,
        attempts_key: String,
        meta: &RequestMeta,
    ) -> Result<LoginChallenge, IdentityError> {
        let now = Utc::now();
        let expires_at = now + Duration::seconds(self.otp_ttl(OtpChannel::Totp));
        self.vault.ensure_key(user_id).await.map_err(internal)?;
        let recipient = self.vault.seal(user_id, "totp").await.map_err(internal)?;
        let cmd = OtpCommand::Request {
            challenge_id,
            // No delivery record carries this id: the notifier sends nothing.
            delivery_id: challenge_id,
            subject_id: user_id,
            attempts_key,
            recipient,
            purpose: OtpPurpose::TwoFactor,
            channel: OtpChannel::Totp,
            code_mac: self.totp_proof(challenge_id),
            issued_at: now,
            expires_at,
        };
        self.otps.execute_new(&challenge_id.to_string(), cmd, meta.to_map("RequestOtp")).await?;
        Ok(LoginChallenge { challenge_id, channel: OtpChannel::Totp, expires_at })
    }

    /// Answers TOTP challenge `current` with an authenticator code; returns
    /// the user on success. Used by `verify_otp`.
    pub(crate) async fn answer_totp_code(
        &self,
        challenge_id: Uuid,
        current: &OtpChallenge,
        code: &OtpCode,
        meta: &RequestMeta,
    ) -> Result<Uuid, IdentityError> {
        self.answer_totp(challenge_id, current, Answer::Code(code), meta).await
    }

    /// Answers a TOTP login challenge with a recovery code (`XXXX-XXXX`),
    /// using it up, and starts a session.
    ///
    /// # Errors
    /// `InvalidCode`, `CodeExpired`, `ChallengeLocked`, `Throttled`, `Internal`.
    #[tracing::instrument(skip_all, fields(challenge_id = %challenge_id))]
    pub async fn verify_recovery_code(
        &self,
        challenge_id: Uuid,
        code: &RecoveryCode,
        meta: &RequestMeta,
    ) -> Result<TokenPair, IdentityError> {
        let current = self.otps.load(&challenge_id.to_string()).await?;
        let user_id = self.answer_totp(challenge_id, &current, Answer::Recovery(code), meta).await?;
        self.start_session(user_id, meta).await
    }

    async fn answer_totp(
        &self,
        challenge_id: Uuid,
        current: &OtpChallenge,
        answer: Answer<'_>,
        meta: &RequestMeta,
    ) -> Result<Uuid, IdentityError> {
        if current.channel != Some(OtpChannel::Totp) || current.purpose != Some(OtpPurpose::TwoFactor) {
            return Err(IdentityError::InvalidCode);
        }
        let user_id = current.subject_id.ok_or(IdentityError::InvalidCode)?;
        let now = Utc::now();
        match current.status {
            ChallengeStatus::Pending => {}
            ChallengeStatus::Locked => return Err(IdentityError::ChallengeLocked),
            ChallengeStatus::Absent | ChallengeStatus::Verified => return Err(IdentityError::InvalidCode),
        }
        if current.expires_at.is_none_or(|e| now >= e) {
            return Err(IdentityError::CodeExpired);
        }
        let key = current.attempts_key.clone().unwrap_or_else(|| format!("challenge:{challenge_id}"));
        // Counted before it is evaluated; a success takes it back.
        self.begin_attempt(Policy::OtpFailures, &key, meta).await?;

        let id = user_id.to_string();
        let totp = self.totps().load(&id).await?;
        let accepted = match (&totp.secret, totp.is_enabled(), answer) {
            (Some(sealed), true, Answer::Code(code)) => {
                let secret = self.open(user_id, sealed).await?;
                let cmd =
                    TotpCommand::UseCode { matched_step: matched_step(&secret, code.expose(), now), at: now };
                let done = self.totps().execute(&id, cmd, meta.to_map("UseTotpCode")).await?;
                done.events.iter().any(|e| matches!(e, TotpEvent::TotpCodeAccepted { .. }))
            }
            (_, true, Answer::Recovery(code)) => {
                let cmd = TotpCommand::UseRecoveryCode { code: self.recovery_hash(user_id, code), at: now };
                let done = self.totps().execute(&id, cmd, meta.to_map("UseRecoveryCode")).await?;
                let used = done.events.iter().find_map(|e| match e {
                    TotpEvent::RecoveryCodeUsed { remaining, .. } => Some(*remaining),
                    _ => None,
                });
                if let Some(remaining) = used {
                    tracing::info!(user_id = %user_id, remaining, "recovery code used");
                }
                used.is_some()
            }
            // TOTP was turned off after the challenge was issued.
            _ => false,
        };
        let candidate_mac = if accepted {
            self.totp_proof(challenge_id)
        } else {
            code_mac(&self.keys.otp, challenge_id, "totp-refused")
        };
        let cmd = OtpCommand::Verify { candidate_mac, at: now };
        let done =
            self.otps.execute(&challenge_id.to_string(), cmd, meta.to_map("VerifyOtp")).await.map_err(
                |e| match e {
                    ExecError::Domain(OtpError::Expired) => IdentityError::CodeExpired,
                    ExecError::Domain(OtpError::Locked) => IdentityError::ChallengeLocked,
                    ExecError::Domain(_) => IdentityError::InvalidCode,
                    other => other.into(),
                },
            )?;
        if done.events.iter().any(|e| matches!(e, OtpEvent::OtpVerified { .. })) {
            self.record_success(Policy::OtpFailures, &key, meta).await?;
            return Ok(user_id);
        }
        if done.events.iter().any(|e| matches!(e, OtpEvent::OtpChallengeLocked { .. })) {
            Err(IdentityError::ChallengeLocked)
        } else {
            Err(IdentityError::InvalidCode)
        }
    }
}

fn map_totp(e: ExecError<domain::totp::TotpError>) -> FactorError {
    match e {
        ExecError::Domain(d) => d.into(),
        other => FactorError::Identity(other.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA-1 (secret "12345678901234567890"), last 6 digits.
    #[test]
    fn rfc6238_vectors() {
        let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
        for (t, code) in
            [(59, "287082"), (1_111_111_109, "081804"), (1_234_567_890, "005924"), (2_000_000_000, "279037")]
        {
            assert_eq!(totp_code_at(secret, t).as_deref(), Some(code), "T={t}");
        }
    }

    #[test]
    fn steps_within_the_skew_match_and_others_do_not() {
        let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
        let now = DateTime::from_timestamp(1_800_000_015, 0).unwrap();
        let step = 1_800_000_015 / 30;
        for s in [step - 1, step, step + 1] {
            let code = totp_code_at(secret, s * 30).unwrap();
            assert_eq!(matched_step(secret, &code, now), Some(s));
        }
        let far = totp_code_at(secret, (step + 2) * 30).unwrap();
        assert_eq!(matched_step(secret, &far, now), None);
        assert_eq!(matched_step("not base32!", "123456", now), None);
    }

    #[test]
    fn recovery_codes_look_right_and_vary() {
        let codes: std::collections::HashSet<String> =
            (0..50).map(|_| new_recovery_code().formatted()).collect();
        assert_eq!(codes.len(), 50);
        assert!(codes.iter().all(|c| c.len() == 9 && c.as_bytes()[4] == b'-'));
    }

    #[test]
    fn qr_is_an_svg() {
        let svg = svg_qr("otpauth://totp/streamforge:a%40b.c?secret=AAAA&issuer=streamforge").unwrap();
        assert!(svg.starts_with("<?xml") && svg.contains("<svg"), "{}", &svg[..80]);
    }
}

//! The identity application service: each flow — registration, email and
//! phone verification, password + second-factor login, phone passwordless
//! login, password reset, resend, refresh, logout, profile — is a short
//! sequence of commands on the `User`, `OtpChallenge`, `Session` and
//! `Throttle` aggregates. The api's handlers call one method each.
//!
//! Abuse control (SECURITY.md): every code check and password check first
//! asks the subject's `Throttle` (one lockout model: growing delays, then a
//! lock), and records the outcome; codes sent per recipient are limited per
//! hour with a cooldown. Throttles are keyed by the recipient's lookup hash
//! (`email:<hash>`, `phone:<hash>`), so unknown and known subjects behave
//! alike (no enumeration).

mod device_cookie;
mod email;
mod login;
mod phone;
mod pin;
mod reset;
mod revocation;
mod sessions;
mod sms_guard;
mod totp;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use domain::otp::{OtpChallenge, OtpChannel, OtpCommand, OtpError, OtpEvent, OtpPurpose};
use domain::services::UserServices;
use domain::session::{Session, SessionCommand};
use domain::throttle::{Policy, RequestPolicy, Throttle, ThrottleCommand, ThrottleEvent};
use domain::user::{User, UserError};
use domain::values::{Digest, EmailAddress, OtpCode, PhoneNumber, Sealed};
use sqlx::PgPool;
use uuid::Uuid;

use crate::deliveries::{Delivery, DeliveryStore, SealedDelivery};
use crate::executor::{ExecError, Executor, Tail};
use crate::keys::{hmac_hex, Keyring};
use crate::otp_codes::{candidate_mac, code_mac, generate_code};
use crate::passwords::{PasswordHasher, SealedHashVerifier};
use crate::tokens::{new_refresh_token, TokenIssuer};
use crate::vault::Vault;

pub use device_cookie::{DEVICE_COOKIE, DEVICE_COOKIE_TTL_SECS};
pub use login::{LoginChallenge, LoginStep};
pub use phone::PhoneChallenge;
pub use pin::FactorError;
pub use revocation::{is_cut_off, session_started_at};
pub use sessions::Reauthenticated;
pub use sms_guard::{LookupConfig, SmsPolicy};
pub use totp::{totp_code_at, TotpEnrollment};

/// Attempts to record a failure under write conflicts (each retry waits a
/// jittered, growing delay; see the executor).
const FAILURE_ATTEMPTS: u32 = 64;

/// Throttle streams fold only what decides (a check never replays a
/// stream's whole history): a request stream the events of the last 65
/// minutes (its state keeps the last hour's requests, the longest window),
/// a failure stream from its last `FailuresReset` (which clears every
/// failure field).
pub fn throttle_tail(id: &str) -> Tail {
    if id.starts_with(Policy::OtpRequests.as_str()) {
        Tail::RecordedWithin { secs: 65 * 60 }
    } else {
        Tail::FromLast(&["FailuresReset"])
    }
}

/// Lifetimes, in seconds.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Email OTP lifetime (10 min; ASVS 6.5.5, seed 001).
    pub email_otp_ttl_secs: i64,
    /// SMS OTP lifetime (5 min; seed 003).
    pub sms_otp_ttl_secs: i64,
    /// Refresh idle lifetime (30 days; SECURITY.md).
    pub refresh_idle_ttl_secs: i64,
    /// Refresh absolute lifetime (90 days; SECURITY.md).
    pub refresh_absolute_ttl_secs: i64,
    /// Codes sent per recipient (email or phone) per rolling hour, every
    /// purpose counted: login, step-up, verification, reset, resend
    /// (`OTP_CODES_PER_HOUR`; 3, seed 003 / SECURITY.md). At least 1.
    pub otp_codes_per_hour: u32,
    /// Seconds between two codes to one recipient (`OTP_RESEND_INTERVAL_SECS`;
    /// 30, SECURITY.md's 30–60 s); `0` turns the interval off.
    pub otp_resend_interval_secs: i64,
    /// SMS toll-fraud guards (countries, VOIP, hourly budgets).
    pub sms: SmsPolicy,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            email_otp_ttl_secs: 600,
            sms_otp_ttl_secs: 300,
            refresh_idle_ttl_secs: 30 * 86_400,
            refresh_absolute_ttl_secs: 90 * 86_400,
            otp_codes_per_hour: 3,
            otp_resend_interval_secs: 30,
            sms: SmsPolicy::default(),
        }
    }
}

/// Flow failures; the api maps each to one status and code.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// 401 `invalid_credentials` — wrong password or unknown account, indistinguishable.
    #[error("invalid email or password")]
    InvalidCredentials,
    /// 403 `email_not_verified`.
    #[error("the email address is not verified")]
    EmailNotVerified,
    /// 400 `invalid_code` — wrong, used or unknown code/challenge.
    #[error("the code is not valid")]
    InvalidCode,
    /// 400 `code_expired`.
    #[error("the code has expired")]
    CodeExpired,
    /// 403 `challenge_locked` — too many wrong codes; request a new one.
    #[error("too many wrong codes; request a new code")]
    ChallengeLocked,
    /// 429 `too_many_attempts` with `Retry-After` (seconds).
    #[error("too many attempts; retry later")]
    Throttled { retry_after_secs: i64 },
    /// 401 `invalid_refresh_token`.
    #[error("the refresh token is not valid")]
    InvalidRefreshToken,
    /// 401 `refresh_token_reused` — the whole session was revoked.
    #[error("the refresh token was already used; the session has been revoked")]
    RefreshTokenReused,
    /// 401 `session_expired`.
    #[error("the session has expired")]
    SessionExpired,
    /// 401 `session_revoked`.
    #[error("the session has been revoked")]
    SessionRevoked,
    /// 401 `invalid_reset_token` — wrong, expired or already used.
    #[error("the reset token is not valid")]
    InvalidResetToken,
    /// 409 `phone_unavailable` — another account verified the number while
    /// this one was verifying it (only someone holding the number sees it).
    #[error("this phone number cannot be used")]
    PhoneUnavailable,
    /// 409 `phone_not_verified` — SMS two-factor needs a verified phone.
    #[error("verify a phone number first")]
    PhoneNotVerified,
    /// 422 `phone_not_supported` — the number's country is not served or
    /// it is a VOIP line (SMS pumping guard).
    #[error("this phone number cannot receive codes")]
    PhoneNotSupported,
    /// 409 `last_sign_in_method` — removing it would leave no way in.
    #[error("this is the only way to sign in to the account")]
    LastSignInMethod,
    /// 404 `not_found`.
    #[error("not found")]
    NotFound,
    /// 409 `conflict` — concurrent change; retry.
    #[error("the resource was changed concurrently; retry")]
    Conflict,
    /// 500 — logged, never shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl<E: std::error::Error> From<ExecError<E>> for IdentityError {
    fn from(e: ExecError<E>) -> Self {
        match e {
            ExecError::Conflict => Self::Conflict,
            other => Self::Internal(other.to_string()),
        }
    }
}

pub(crate) fn internal(e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Internal(e.to_string())
}

pub(crate) fn map_user(e: ExecError<UserError>) -> IdentityError {
    match e {
        ExecError::Domain(UserError::EmailNotVerified) => IdentityError::EmailNotVerified,
        ExecError::Domain(UserError::NotFound) => IdentityError::NotFound,
        ExecError::Domain(UserError::PhoneNotVerified) => IdentityError::PhoneNotVerified,
        ExecError::Domain(UserError::ResetAlreadyUsed) => IdentityError::InvalidResetToken,
        ExecError::Domain(UserError::LastSignInMethod) => IdentityError::LastSignInMethod,
        ExecError::Domain(other) => IdentityError::Internal(other.to_string()),
        other => other.into(),
    }
}

/// Who asked. `request_id` and `actor` go into event metadata; `client`
/// (personal data) only ever sealed into a new session.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub request_id: Option<String>,
    pub actor: Option<Uuid>,
    pub client: ClientInfo,
}

/// The client as it describes itself; stored sealed with the user's key.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClientInfo {
    /// Client-generated device id (`X-Device-Id`), at most 64 characters.
    pub device_id: Option<String>,
    /// Human label (`X-Device-Label`), at most 100 characters.
    pub device_label: Option<String>,
    /// `User-Agent`, at most 256 characters.
    pub user_agent: Option<String>,
    /// The caller's IP truncated to /24 (IPv4) or /48 (IPv6).
    pub ip_prefix: Option<String>,
}

impl RequestMeta {
    pub(crate) fn to_map(&self, command: &str) -> HashMap<String, String> {
        let mut m = HashMap::new();
        m.insert("command".to_owned(), command.to_owned());
        if let Some(r) = &self.request_id {
            m.insert("request_id".to_owned(), r.clone());
        }
        if let Some(a) = self.actor {
            m.insert("actor".to_owned(), a.to_string());
        }
        m
    }
}

/// Tokens handed to a client after login or refresh. `Debug` hides secrets.
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    /// Access-token lifetime in seconds.
    pub expires_in: i64,
    pub session_id: Uuid,
    pub user_id: Uuid,
    /// When the refresh token stops working unless used (idle expiry).
    pub refresh_expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPair").field("session_id", &self.session_id).finish_non_exhaustive()
    }
}

/// A code on its way: what [`IdentityService::issue_otp`] needs.
pub(crate) struct OtpRequest<'a> {
    pub challenge_id: Uuid,
    pub subject: Uuid,
    pub purpose: OtpPurpose,
    pub channel: OtpChannel,
    /// Email address or E.164 number (plaintext, sealed on the way).
    pub to: &'a str,
    /// `email:<hash>` / `phone:<hash>`: the recipient's throttle key.
    pub recipient_key: String,
}

/// The identity write side.
pub struct IdentityService {
    pub(crate) pool: PgPool,
    pub(crate) keys: Keyring,
    pub(crate) config: IdentityConfig,
    pub vault: Arc<Vault>,
    pub hasher: PasswordHasher,
    pub deliveries: DeliveryStore,
    pub tokens: Arc<TokenIssuer>,
    pub(crate) users: Executor<User>,
    pub(crate) otps: Executor<OtpChallenge>,
    pub(crate) sessions: Executor<Session>,
    pub(crate) throttles: Executor<Throttle>,
    /// The throttles again, retrying conflicts far longer: a failure
    /// recorded after its attempt is never dropped.
    pub(crate) failures: Executor<Throttle>,
    /// Outbound HTTP (Twilio Lookup), 10 s timeout.
    pub(crate) http: reqwest::Client,
    /// Typical duration of the work a new registration does after hashing.
    pub(crate) register_pad: DurationAverage,
    /// Typical duration of a wrong-password login for a known account.
    pub(crate) login_pad: DurationAverage,
    /// Typical duration of a refused code for a pending challenge, answered
    /// by address (verify-email, password-reset/verify).
    pub(crate) code_pad: DurationAverage,
}

/// A moving average of durations (exponentially weighted, α = 1/8), used to
/// make a cheap path last as long as the expensive one it must not be told
/// apart from (SECURITY.md "Enumeration").
#[derive(Default)]
pub(crate) struct DurationAverage(std::sync::Mutex<Option<f64>>);

impl DurationAverage {
    pub(crate) fn observe(&self, d: std::time::Duration) {
        if let Ok(mut avg) = self.0.lock() {
            let x = d.as_secs_f64();
            *avg = Some(avg.map_or(x, |a| a + (x - a) / 8.0));
        }
    }

    pub(crate) fn typical(&self) -> std::time::Duration {
        let secs = self.0.lock().ok().and_then(|a| *a).unwrap_or(0.0);
        std::time::Duration::from_secs_f64(secs.clamp(0.0, 1.0))
    }
}

impl IdentityService {
    pub fn new(
        pool: PgPool,
        keys: Keyring,
        hasher: PasswordHasher,
        tokens: Arc<TokenIssuer>,
        config: IdentityConfig,
    ) -> Self {
        let vault = Arc::new(Vault::new(pool.clone(), keys.wrap.clone()));
        let verifier = SealedHashVerifier { hasher: hasher.clone(), vault: vault.clone() };
        Self {
            vault,
            deliveries: DeliveryStore::new(pool.clone(), keys.delivery.clone()),
            users: Executor::new(pool.clone(), UserServices::new(verifier)),
            otps: Executor::new(pool.clone(), ()),
            sessions: Executor::new(pool.clone(), ()),
            throttles: Executor::new(pool.clone(), ()).with_tail(throttle_tail),
            failures: Executor::new(pool.clone(), ())
                .with_tail(throttle_tail)
                .with_max_attempts(FAILURE_ATTEMPTS),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            register_pad: DurationAverage::default(),
            login_pad: DurationAverage::default(),
            code_pad: DurationAverage::default(),
            pool,
            keys,
            config,
            hasher,
            tokens,
        }
    }

    /// Keyed lookup hash of a normalised email (ARCHITECTURE decided 7).
    pub fn email_hash(&self, email: &EmailAddress) -> Digest {
        Digest(hmac_hex(&self.keys.lookup, &[b"email:", email.as_str().as_bytes()]))
    }

    /// Keyed lookup hash of an E.164 phone number.
    pub fn phone_hash(&self, phone: &PhoneNumber) -> Digest {
        Digest(hmac_hex(&self.keys.lookup, &[b"phone:", phone.as_str().as_bytes()]))
    }

    pub(crate) fn email_key(&self, email: &EmailAddress) -> String {
        format!("email:{}", self.email_hash(email).0)
    }

    pub(crate) fn phone_key(&self, phone: &PhoneNumber) -> String {
        format!("phone:{}", self.phone_hash(phone).0)
    }

    fn otp_ttl(&self, channel: OtpChannel) -> i64 {
        match channel {
            OtpChannel::Email | OtpChannel::Totp => self.config.email_otp_ttl_secs,
            OtpChannel::Sms => self.config.sms_otp_ttl_secs,
        }
    }

    // ---- throttles -------------------------------------------------------

    fn throttled_until(retry_after: DateTime<Utc>, now: DateTime<Utc>) -> IdentityError {
        IdentityError::Throttled { retry_after_secs: (retry_after - now).num_seconds().max(1) }
    }

    /// Checks and counts an attempt under failure `policy` in one step
    /// ([`ThrottleCommand::BeginAttempt`]): 429 while delayed or locked;
    /// otherwise the attempt already counts as a failure, and the caller
    /// calls [`IdentityService::record_success`] if it succeeds. A conflict
    /// of parallel attempts past the retries answers `Conflict` and the
    /// attempt is not evaluated.
    pub(crate) async fn begin_attempt(
        &self,
        policy: Policy,
        key: &str,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        let now = Utc::now();
        let cmd = ThrottleCommand::BeginAttempt { policy, at: now };
        let done = self.throttles.execute(&policy.key(key), cmd, meta.to_map("BeginAttempt")).await?;
        if done.events.iter().any(|e| matches!(e, ThrottleEvent::FailureRecorded { .. })) {
            return Ok(());
        }
        let until = done.state.retry_after(policy, now).unwrap_or(now);
        Err(Self::throttled_until(until, now))
    }

    /// Refuses (429) while `key` is delayed or locked under `policy`.
    pub(crate) async fn check_attempt(
        &self,
        policy: Policy,
        key: &str,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        self.check_attempt_state(policy, key, meta).await.map(|_| ())
    }

    /// [`IdentityService::check_attempt`], answering the throttle's state as
    /// loaded for the check (so a caller can tell whether a later
    /// `RecordSuccess` has anything to reset).
    pub(crate) async fn check_attempt_state(
        &self,
        policy: Policy,
        key: &str,
        meta: &RequestMeta,
    ) -> Result<Throttle, IdentityError> {
        let now = Utc::now();
        let cmd = ThrottleCommand::CheckAttempt { policy, at: now };
        let done = self.throttles.execute(&policy.key(key), cmd, meta.to_map("CheckAttempt")).await?;
        // Refused whether or not this refusal was recorded (a repeat within
        // a recorded delay writes nothing).
        match done.state.retry_after(policy, now) {
            Some(until) => Err(Self::throttled_until(until, now)),
            None => Ok(done.state),
        }
    }

    /// Records a failed attempt; retried on write conflicts until it is
    /// recorded (a failure is never dropped; SECURITY.md).
    pub(crate) async fn record_failure(
        &self,
        policy: Policy,
        key: &str,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        let cmd = ThrottleCommand::RecordFailure { policy, at: Utc::now() };
        self.failures.execute(&policy.key(key), cmd, meta.to_map("RecordFailure")).await?;
        Ok(())
    }

    pub(crate) async fn record_success(
        &self,
        policy: Policy,
        key: &str,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        let cmd = ThrottleCommand::RecordSuccess { at: Utc::now() };
        self.throttles.execute(&policy.key(key), cmd, meta.to_map("RecordSuccess")).await?;
        Ok(())
    }

    /// Counts a code sent to `key`; 429 past `otp_codes_per_hour` per
    /// rolling hour or within `otp_resend_interval_secs` of the last one.
    /// Every flow that sends a code calls it before writing anything else.
    pub(crate) async fn record_request(&self, key: &str, meta: &RequestMeta) -> Result<(), IdentityError> {
        let limits = RequestPolicy {
            window_secs: 3600,
            max: self.config.otp_codes_per_hour.max(1),
            cooldown_secs: self.config.otp_resend_interval_secs.max(0),
        };
        self.record_request_under(key, limits, meta).await
    }

    /// Counts a request on `key` under `limits` (an `otp_requests` throttle
    /// stream); `Throttled` when refused (the refusal is an event).
    pub(crate) async fn record_request_under(
        &self,
        key: &str,
        limits: RequestPolicy,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        let now = Utc::now();
        let cmd =
            ThrottleCommand::RecordRequest { policy: Policy::OtpRequests, limits: Some(limits), at: now };
        let done =
            self.throttles.execute(&Policy::OtpRequests.key(key), cmd, meta.to_map("RecordRequest")).await?;
        if done.events.iter().any(|e| matches!(e, ThrottleEvent::RequestRecorded { .. })) {
            return Ok(());
        }
        let until = limits.next_allowed(&done.state.recent_requests, now).unwrap_or(now);
        Err(Self::throttled_until(until, now))
    }

    // ---- codes -----------------------------------------------------------

    /// Issues a code on a new challenge: the `OtpIssued` event the notifier
    /// reacts to and the sealed delivery record it reads, written by one
    /// statement (neither exists without the other). Returns the expiry.
    pub(crate) async fn issue_otp(
        &self,
        req: OtpRequest<'_>,
        meta: &RequestMeta,
    ) -> Result<DateTime<Utc>, IdentityError> {
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
        self.otps
            .execute_new_with(&req.challenge_id.to_string(), cmd, meta.to_map("RequestOtp"), &delivery)
            .await?;
        Ok(expires_at)
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

    // ---- sessions ----------------------------------------------------------

    /// Opens a session for `user_id` after a full authentication (password +
    /// second factor, phone code, TOTP, passkey) and issues its tokens; the
    /// access token's `auth_time` is now.
    ///
    /// # Errors
    /// `Internal`, `Conflict`.
    pub async fn start_session(&self, user_id: Uuid, meta: &RequestMeta) -> Result<TokenPair, IdentityError> {
        self.open_session(user_id, meta, false).await
    }

    /// Opens a session with a quick factor (device PIN): usable at once, but
    /// it carries no fresh authentication, so sensitive changes still need a
    /// step-up (ASVS 7.5.1).
    ///
    /// # Errors
    /// `Internal`, `Conflict`.
    pub async fn start_quick_session(
        &self,
        user_id: Uuid,
        meta: &RequestMeta,
    ) -> Result<TokenPair, IdentityError> {
        self.open_session(user_id, meta, true).await
    }

    async fn open_session(
        &self,
        user_id: Uuid,
        meta: &RequestMeta,
        quick_factor: bool,
    ) -> Result<TokenPair, IdentityError> {
        let session_id = Uuid::now_v7();
        let refresh = new_refresh_token(session_id);
        let now = Utc::now();
        let client = if meta.client == ClientInfo::default() {
            None
        } else {
            let json = serde_json::to_string(&meta.client).map_err(internal)?;
            self.vault.ensure_key(user_id).await.map_err(internal)?;
            Some(self.vault.seal(user_id, &json).await.map_err(internal)?)
        };
        let cmd = SessionCommand::Start {
            session_id,
            user_id,
            refresh_hash: refresh.hash.clone(),
            at: now,
            idle_ttl_secs: self.config.refresh_idle_ttl_secs,
            absolute_ttl_secs: self.config.refresh_absolute_ttl_secs,
            client,
            quick_factor,
        };
        let mut meta = meta.clone();
        meta.actor = Some(user_id);
        let done =
            self.sessions.execute_new(&session_id.to_string(), cmd, meta.to_map("StartSession")).await?;
        let auth_time = done.state.authenticated_at.unwrap_or(DateTime::UNIX_EPOCH);
        let (access_token, expires_in) =
            self.tokens.issue_access_at(user_id, session_id, now, auth_time).map_err(internal)?;
        Ok(TokenPair {
            access_token,
            refresh_token: refresh.token,
            expires_in,
            session_id,
            user_id,
            refresh_expires_at: done.state.idle_expires_at.unwrap_or(now),
        })
    }

    /// The subject's sealed field opened, or `Internal` if it cannot be.
    pub(crate) async fn open(&self, subject: Uuid, sealed: &Sealed) -> Result<String, IdentityError> {
        self.vault
            .open(subject, sealed)
            .await
            .map_err(internal)?
            .ok_or_else(|| internal("subject key erased"))
    }
}

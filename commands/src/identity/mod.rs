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

mod codes;
mod device_cookie;
mod email;
mod login;
mod phone;
mod pin;
mod reset;
mod revocation;
mod session_start;
mod sessions;
mod sms_guard;
mod throttles;
mod totp;
mod username;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::otp::{OtpChallenge, OtpChannel, OtpPurpose};
use domain::services::UserServices;
use domain::session::Session;
use domain::throttle::Throttle;
use domain::user::{User, UserError};
use domain::values::{Digest, EmailAddress, PhoneNumber, Sealed};
use sqlx::PgPool;
use uuid::Uuid;

use crate::deliveries::DeliveryStore;
use crate::executor::{ExecError, Executor};
use crate::keys::{hmac_hex, Keyring};
use crate::passwords::{PasswordHasher, SealedHashVerifier};
use crate::tokens::TokenIssuer;
use crate::vault::Vault;

pub use device_cookie::{DEVICE_COOKIE, DEVICE_COOKIE_TTL_SECS};
pub use email::RegistrationExtras;
pub use login::{LoginChallenge, LoginStep};
pub use phone::PhoneChallenge;
pub use pin::FactorError;
pub use revocation::{is_cut_off, session_started_at};
pub use sessions::Reauthenticated;
pub use sms_guard::{LookupConfig, SmsPolicy};
pub use throttles::throttle_tail;
use throttles::FAILURE_ATTEMPTS;
pub use totp::{totp_code_at, TotpEnrollment};
pub use username::USERNAME_HOLD_DAYS;

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

/// The statement of [`account_exists`] (the plain-SQL side of
/// `bench commands` runs it too).
pub const ACCOUNT_EXISTS_SQL: &str =
    "SELECT EXISTS (SELECT 1 FROM events WHERE aggregate_type = 'user' AND aggregate_id = $1 AND sequence = 1)
        AND NOT EXISTS (SELECT 1 FROM events WHERE aggregate_type = 'user' AND aggregate_id = $1
                        AND event_type = 'RegistrationExpired')";

/// Whether account `user` exists (registered, not expired): the user
/// stream's first event and the absence of its expiry, read from the store
/// (the write side), not a read model.
///
/// # Errors
/// Database errors.
pub async fn account_exists(pool: &PgPool, user: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(ACCOUNT_EXISTS_SQL).bind(user.to_string()).fetch_one(pool).await
}

/// Flow failures; the api maps each to one status and code.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// 403 `account_suspended` — a moderator suspended the account until
    /// `until` (issue 17); no session opens before then.
    #[error("the account is suspended until {until}")]
    AccountSuspended { until: chrono::DateTime<chrono::Utc> },
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
    /// 409 `username_taken` — usernames are public, so this tells nothing new.
    #[error("this username is taken")]
    UsernameTaken,
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

impl From<crate::executor::Together> for IdentityError {
    fn from(e: crate::executor::Together) -> Self {
        match e {
            crate::executor::Together::Conflict => Self::Conflict,
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
    /// The event that caused this command (a moderation action's id for
    /// its side effects): `causation_id` in the metadata.
    pub causation_id: Option<String>,
    /// The client's own request id (`X-Request-Id` as sent, ≤ 64
    /// characters), kept beside the server's: `client_request_id`.
    pub client_request_id: Option<String>,
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
    /// Event metadata: `command`, and `request_id` / `actor` when known.
    pub fn to_map(&self, command: &str) -> HashMap<String, String> {
        let mut m = HashMap::new();
        m.insert("command".to_owned(), command.to_owned());
        if let Some(r) = &self.request_id {
            m.insert("request_id".to_owned(), r.clone());
        }
        if let Some(a) = self.actor {
            m.insert("actor".to_owned(), a.to_string());
        }
        if let Some(c) = &self.causation_id {
            m.insert("causation_id".to_owned(), c.clone());
        }
        if let Some(c) = &self.client_request_id {
            m.insert("client_request_id".to_owned(), c.clone());
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
    /// The stored-hash check (sealed or plain) of passwords and PINs.
    pub(crate) hashes: SealedHashVerifier,
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
        let hashes = SealedHashVerifier { hasher: hasher.clone(), vault: vault.clone() };
        Self {
            vault,
            deliveries: DeliveryStore::new(pool.clone(), keys.delivery.clone()),
            users: Executor::new(pool.clone(), UserServices::new(hashes.clone())),
            hashes,
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

    /// The subject's sealed field opened, or `Internal` if it cannot be.
    pub(crate) async fn open(&self, subject: Uuid, sealed: &Sealed) -> Result<String, IdentityError> {
        self.vault
            .open(subject, sealed)
            .await
            .map_err(internal)?
            .ok_or_else(|| internal("subject key erased"))
    }
}

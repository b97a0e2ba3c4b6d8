//! The identity application service: the flows of registration, email
//! verification, password + email-OTP login, token refresh, logout and
//! profile updates, each a short sequence of commands on the `User`,
//! `OtpChallenge` and `Session` aggregates. The api's handlers call one
//! method each.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use domain::otp::{OtpChallenge, OtpChannel, OtpCommand, OtpError, OtpEvent, OtpPurpose};
use domain::services::UserServices;
use domain::session::{RevocationReason, Session, SessionCommand, SessionError, SessionEvent};
use domain::user::{User, UserCommand, UserError, UserEvent};
use domain::values::{Bio, Digest, DisplayName, EmailAddress, OtpCode, Password};
use sqlx::PgPool;
use uuid::Uuid;

use crate::deliveries::{Delivery, DeliveryStore};
use crate::executor::{ExecError, Executor};
use crate::keys::{hmac_hex, Keyring};
use crate::otp_codes::{candidate_mac, code_mac, generate_code};
use crate::passwords::PasswordHasher;
use crate::reservations::{self, Claim, ReservationKind};
use crate::tokens::{new_refresh_token, parse_refresh_token, refresh_hash, TokenIssuer};
use crate::vault::Vault;

/// Lifetimes, in seconds.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Email OTP lifetime (10 min; ASVS 6.5.5, seed 001).
    pub email_otp_ttl_secs: i64,
    /// Refresh idle lifetime (30 days; SECURITY.md).
    pub refresh_idle_ttl_secs: i64,
    /// Refresh absolute lifetime (90 days; SECURITY.md).
    pub refresh_absolute_ttl_secs: i64,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            email_otp_ttl_secs: 600,
            refresh_idle_ttl_secs: 30 * 86_400,
            refresh_absolute_ttl_secs: 90 * 86_400,
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

fn internal(e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Internal(e.to_string())
}

/// Who asked, for event metadata (never personal data).
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub request_id: Option<String>,
    pub actor: Option<Uuid>,
}

impl RequestMeta {
    fn to_map(&self, command: &str) -> HashMap<String, String> {
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

/// A pending second factor, answered with `verify_otp`.
#[derive(Debug, Clone)]
pub struct LoginChallenge {
    pub challenge_id: Uuid,
    pub channel: OtpChannel,
    pub expires_at: DateTime<Utc>,
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

/// The identity write side.
pub struct IdentityService {
    pool: PgPool,
    keys: Keyring,
    config: IdentityConfig,
    pub vault: Arc<Vault>,
    pub hasher: PasswordHasher,
    pub deliveries: DeliveryStore,
    pub tokens: Arc<TokenIssuer>,
    users: Executor<User>,
    otps: Executor<OtpChallenge>,
    sessions: Executor<Session>,
}

impl IdentityService {
    pub fn new(
        pool: PgPool,
        keys: Keyring,
        hasher: PasswordHasher,
        tokens: Arc<TokenIssuer>,
        config: IdentityConfig,
    ) -> Self {
        Self {
            vault: Arc::new(Vault::new(pool.clone(), keys.wrap.clone())),
            deliveries: DeliveryStore::new(pool.clone(), keys.delivery.clone()),
            users: Executor::new(pool.clone(), UserServices::new(hasher.clone())),
            otps: Executor::new(pool.clone(), ()),
            sessions: Executor::new(pool.clone(), ()),
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

    /// Registers an account and mails a verification code. For an email that
    /// is already registered, answers the same way (a fresh, meaningless
    /// id) and mails the owner a notice instead — no enumeration. The
    /// password is hashed on both paths so timing does not tell either.
    ///
    /// # Errors
    /// [`IdentityError::Internal`] / [`IdentityError::Conflict`].
    #[tracing::instrument(skip_all)]
    pub async fn register(
        &self,
        email: &EmailAddress,
        password: &Password,
        name: &DisplayName,
        meta: &RequestMeta,
    ) -> Result<Uuid, IdentityError> {
        let password_hash = self.hasher.hash(password.expose()).await.map_err(internal)?;
        let email_hash = self.email_hash(email);
        let user_id = Uuid::now_v7();
        let now = Utc::now();
        match reservations::claim(&self.pool, ReservationKind::Email, &email_hash, user_id)
            .await
            .map_err(internal)?
        {
            Claim::Taken { owner } => {
                self.notify_duplicate_registration(owner, email, now, meta).await?;
                return Ok(Uuid::now_v7());
            }
            Claim::Claimed => {}
        }
        let result =
            self.register_claimed(user_id, email, email_hash.clone(), password_hash, name, now, meta).await;
        if result.is_err() {
            // Release the reservation so the address can be registered again.
            let _ = reservations::release(&self.pool, ReservationKind::Email, &email_hash, user_id).await;
        }
        result.map(|()| user_id)
    }

    #[allow(clippy::too_many_arguments)]
    async fn register_claimed(
        &self,
        user_id: Uuid,
        email: &EmailAddress,
        email_hash: Digest,
        password_hash: String,
        name: &DisplayName,
        now: DateTime<Utc>,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        self.vault.ensure_key(user_id).await.map_err(internal)?;
        let sealed_email = self.vault.seal(user_id, email.as_str()).await.map_err(internal)?;
        let sealed_name = self.vault.seal(user_id, name.as_str()).await.map_err(internal)?;
        let challenge_id = Uuid::new_v4();
        let cmd = UserCommand::Register {
            user_id,
            email: sealed_email,
            email_hash,
            name: sealed_name,
            password_hash,
            email_challenge_id: challenge_id,
            at: now,
        };
        self.users.execute(&user_id.to_string(), cmd, meta.to_map("RegisterUser")).await.map_err(map_user)?;
        self.issue_otp(challenge_id, user_id, OtpPurpose::EmailVerification, email.as_str(), now, meta)
            .await?;
        Ok(())
    }

    async fn notify_duplicate_registration(
        &self,
        owner: Uuid,
        email: &EmailAddress,
        now: DateTime<Utc>,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        let delivery_id = Uuid::new_v4();
        let delivery = Delivery {
            channel: "email".into(),
            to: email.as_str().to_owned(),
            template: "duplicate_registration".into(),
            code: None,
            expires_at: None,
        };
        self.deliveries.put(delivery_id, &delivery, now + Duration::days(1)).await.map_err(internal)?;
        let cmd = UserCommand::NoteDuplicateRegistration { delivery_id, at: now };
        if let Err(e) =
            self.users.execute(&owner.to_string(), cmd, meta.to_map("NoteDuplicateRegistration")).await
        {
            let _ = self.deliveries.delete(delivery_id).await;
            return Err(map_user(e));
        }
        Ok(())
    }

    /// Issues an email OTP on a new challenge: the sealed delivery record
    /// first, then the `OtpIssued` event the notifier reacts to.
    async fn issue_otp(
        &self,
        challenge_id: Uuid,
        subject: Uuid,
        purpose: OtpPurpose,
        to: &str,
        now: DateTime<Utc>,
        meta: &RequestMeta,
    ) -> Result<DateTime<Utc>, IdentityError> {
        let code = generate_code();
        let expires_at = now + Duration::seconds(self.config.email_otp_ttl_secs);
        let template = match purpose {
            OtpPurpose::EmailVerification => "otp_email_verification",
            OtpPurpose::TwoFactor => "otp_two_factor",
            OtpPurpose::Login => "otp_login",
            OtpPurpose::PasswordReset => "otp_password_reset",
        };
        let delivery = Delivery {
            channel: OtpChannel::Email.as_str().to_owned(),
            to: to.to_owned(),
            template: template.to_owned(),
            code: Some(code.clone()),
            expires_at: Some(expires_at),
        };
        self.deliveries.put(challenge_id, &delivery, expires_at).await.map_err(internal)?;
        let cmd = OtpCommand::Request {
            challenge_id,
            delivery_id: challenge_id,
            subject_id: subject,
            purpose,
            channel: OtpChannel::Email,
            code_mac: code_mac(&self.keys.otp, challenge_id, &code),
            issued_at: now,
            expires_at,
        };
        if let Err(e) = self.otps.execute(&challenge_id.to_string(), cmd, meta.to_map("RequestOtp")).await {
            let _ = self.deliveries.delete(challenge_id).await;
            return Err(e.into());
        }
        Ok(expires_at)
    }

    /// Answers challenge `challenge_id` with `code`; `Ok(state)` only when
    /// the code was right. Wrong codes are recorded as events.
    async fn answer(
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
        let cmd = OtpCommand::Verify {
            candidate_mac: candidate_mac(&self.keys.otp, challenge_id, code),
            at: Utc::now(),
        };
        let done = self.otps.execute(&id, cmd, meta.to_map("VerifyOtp")).await.map_err(|e| match e {
            ExecError::Domain(OtpError::Expired) => IdentityError::CodeExpired,
            ExecError::Domain(OtpError::Locked) => IdentityError::ChallengeLocked,
            ExecError::Domain(_) => IdentityError::InvalidCode,
            other => other.into(),
        })?;
        if done.events.iter().any(|e| matches!(e, OtpEvent::OtpVerified { .. })) {
            Ok(done.state)
        } else if done.events.iter().any(|e| matches!(e, OtpEvent::OtpChallengeLocked { .. })) {
            Err(IdentityError::ChallengeLocked)
        } else {
            Err(IdentityError::InvalidCode)
        }
    }

    /// Verifies the email of the account registered under `email` with the
    /// mailed `code`. Unknown emails answer [`IdentityError::InvalidCode`].
    ///
    /// # Errors
    /// `InvalidCode`, `CodeExpired`, `ChallengeLocked`, `Internal`.
    #[tracing::instrument(skip_all)]
    pub async fn verify_email(
        &self,
        email: &EmailAddress,
        code: &OtpCode,
        meta: &RequestMeta,
    ) -> Result<Uuid, IdentityError> {
        let owner = reservations::owner(&self.pool, ReservationKind::Email, &self.email_hash(email))
            .await
            .map_err(internal)?
            .ok_or(IdentityError::InvalidCode)?;
        let user = self.users.load(&owner.to_string()).await?;
        let challenge_id = user.email_challenge_id.ok_or(IdentityError::InvalidCode)?;
        self.answer(challenge_id, code, &[OtpPurpose::EmailVerification], meta).await?;
        let cmd = UserCommand::VerifyEmail { challenge_id, at: Utc::now() };
        match self.users.execute(&owner.to_string(), cmd, meta.to_map("VerifyEmail")).await {
            Ok(_) | Err(ExecError::Domain(UserError::EmailAlreadyVerified)) => Ok(owner),
            Err(e) => Err(map_user(e)),
        }
    }

    /// Password step of login; on success a code is mailed and the
    /// challenge returned. Unknown email and wrong password are the same
    /// error after the same work (a dummy argon2 verification).
    ///
    /// # Errors
    /// `InvalidCredentials`, `EmailNotVerified`, `Internal`.
    #[tracing::instrument(skip_all)]
    pub async fn start_login(
        &self,
        email: &EmailAddress,
        password: &Password,
        meta: &RequestMeta,
    ) -> Result<LoginChallenge, IdentityError> {
        let owner = reservations::owner(&self.pool, ReservationKind::Email, &self.email_hash(email))
            .await
            .map_err(internal)?;
        let Some(user_id) = owner else {
            self.hasher.verify_dummy(password.expose()).await;
            return Err(IdentityError::InvalidCredentials);
        };
        let challenge_id = Uuid::new_v4();
        let now = Utc::now();
        let cmd = UserCommand::StartLogin { challenge_id, password: password.clone(), at: now };
        let done = self
            .users
            .execute(&user_id.to_string(), cmd, meta.to_map("StartLogin"))
            .await
            .map_err(map_user)?;
        let accepted = done.events.iter().any(|e| matches!(e, UserEvent::LoginPasswordAccepted { .. }));
        if !accepted {
            return Err(IdentityError::InvalidCredentials);
        }
        let sealed = done.state.email.ok_or_else(|| internal("account without email"))?;
        let to = self
            .vault
            .open(user_id, &sealed)
            .await
            .map_err(internal)?
            .ok_or(IdentityError::InvalidCredentials)?;
        let expires_at = self.issue_otp(challenge_id, user_id, OtpPurpose::TwoFactor, &to, now, meta).await?;
        Ok(LoginChallenge { challenge_id, channel: OtpChannel::Email, expires_at })
    }

    /// Second factor: answers a two-factor challenge and starts a session.
    ///
    /// # Errors
    /// `InvalidCode`, `CodeExpired`, `ChallengeLocked`, `Internal`.
    #[tracing::instrument(skip_all, fields(challenge_id = %challenge_id))]
    pub async fn verify_otp(
        &self,
        challenge_id: Uuid,
        code: &OtpCode,
        meta: &RequestMeta,
    ) -> Result<TokenPair, IdentityError> {
        let challenge = self.answer(challenge_id, code, &[OtpPurpose::TwoFactor], meta).await?;
        let user_id = challenge.subject_id.ok_or_else(|| internal("challenge without subject"))?;
        self.start_session(user_id, meta).await
    }

    async fn start_session(&self, user_id: Uuid, meta: &RequestMeta) -> Result<TokenPair, IdentityError> {
        let session_id = Uuid::now_v7();
        let refresh = new_refresh_token(session_id);
        let now = Utc::now();
        let cmd = SessionCommand::Start {
            session_id,
            user_id,
            refresh_hash: refresh.hash.clone(),
            at: now,
            idle_ttl_secs: self.config.refresh_idle_ttl_secs,
            absolute_ttl_secs: self.config.refresh_absolute_ttl_secs,
        };
        let mut meta = meta.clone();
        meta.actor = Some(user_id);
        let done = self.sessions.execute(&session_id.to_string(), cmd, meta.to_map("StartSession")).await?;
        let (access_token, expires_in) =
            self.tokens.issue_access(user_id, session_id, now).map_err(internal)?;
        Ok(TokenPair {
            access_token,
            refresh_token: refresh.token,
            expires_in,
            session_id,
            user_id,
            refresh_expires_at: done.state.idle_expires_at.unwrap_or(now),
        })
    }

    /// Rotates a refresh token (RFC 9700 §4.14.2). A spent token revokes the
    /// whole session and answers [`IdentityError::RefreshTokenReused`].
    ///
    /// # Errors
    /// `InvalidRefreshToken`, `RefreshTokenReused`, `SessionRevoked`,
    /// `SessionExpired`, `Conflict`, `Internal`.
    #[tracing::instrument(skip_all)]
    pub async fn refresh(&self, token: &str, meta: &RequestMeta) -> Result<TokenPair, IdentityError> {
        let session_id = parse_refresh_token(token).ok_or(IdentityError::InvalidRefreshToken)?;
        let next = new_refresh_token(session_id);
        let now = Utc::now();
        let cmd = SessionCommand::Refresh {
            presented_hash: refresh_hash(token),
            new_hash: next.hash.clone(),
            at: now,
        };
        let done = self
            .sessions
            .execute(&session_id.to_string(), cmd, meta.to_map("RefreshSession"))
            .await
            .map_err(|e| match e {
            ExecError::Domain(SessionError::Revoked) => IdentityError::SessionRevoked,
            ExecError::Domain(SessionError::Expired) => IdentityError::SessionExpired,
            ExecError::Domain(_) => IdentityError::InvalidRefreshToken,
            other => other.into(),
        })?;
        if done.events.iter().any(|e| matches!(e, SessionEvent::RefreshTokenReuseDetected { .. })) {
            tracing::warn!(session_id = %session_id, "refresh token reuse detected; session revoked");
            return Err(IdentityError::RefreshTokenReused);
        }
        let user_id = done.state.user_id.ok_or_else(|| internal("session without user"))?;
        let (access_token, expires_in) =
            self.tokens.issue_access(user_id, session_id, now).map_err(internal)?;
        Ok(TokenPair {
            access_token,
            refresh_token: next.token,
            expires_in,
            session_id,
            user_id,
            refresh_expires_at: done.state.idle_expires_at.unwrap_or(now),
        })
    }

    /// Revokes session `session_id` of `user_id` (logout). Idempotent.
    ///
    /// # Errors
    /// `NotFound` when the session is not the user's; `Internal`.
    #[tracing::instrument(skip_all, fields(session_id = %session_id))]
    pub async fn revoke_session(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        reason: RevocationReason,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        let id = session_id.to_string();
        let session = self.sessions.load(&id).await?;
        if session.user_id != Some(user_id) {
            return Err(IdentityError::NotFound);
        }
        let cmd = SessionCommand::Revoke { reason, at: Utc::now() };
        self.sessions.execute(&id, cmd, meta.to_map("RevokeSession")).await?;
        Ok(())
    }

    /// Updates profile fields of `user_id`; `None` leaves a field unchanged.
    ///
    /// # Errors
    /// `NotFound`, `Internal`, `Conflict`.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn update_profile(
        &self,
        user_id: Uuid,
        name: Option<&DisplayName>,
        bio: Option<&Bio>,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        let name = match name {
            Some(n) => Some(self.vault.seal(user_id, n.as_str()).await.map_err(internal)?),
            None => None,
        };
        let bio = match bio {
            Some(b) => Some(self.vault.seal(user_id, b.as_str()).await.map_err(internal)?),
            None => None,
        };
        let cmd = UserCommand::UpdateProfile { name, bio, at: Utc::now() };
        self.users
            .execute(&user_id.to_string(), cmd, meta.to_map("UpdateProfile"))
            .await
            .map_err(map_user)?;
        Ok(())
    }
}

fn map_user(e: ExecError<UserError>) -> IdentityError {
    match e {
        ExecError::Domain(UserError::EmailNotVerified) => IdentityError::EmailNotVerified,
        ExecError::Domain(UserError::NotFound) => IdentityError::NotFound,
        ExecError::Domain(other) => IdentityError::Internal(other.to_string()),
        other => other.into(),
    }
}

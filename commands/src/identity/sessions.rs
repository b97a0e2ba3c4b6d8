//! Step-up re-authentication (ASVS 7.5.1) inside a session.

use chrono::Utc;
use domain::otp::{OtpChannel, OtpPurpose};
use domain::session::{SessionCommand, SessionError};
use domain::throttle::Policy;
use domain::values::{EmailAddress, OtpCode, Password, PhoneNumber};
use uuid::Uuid;

use super::{internal, IdentityError, IdentityService, LoginChallenge, OtpRequest, RequestMeta};
use crate::executor::ExecError;

/// A fresh access token after step-up.
pub struct Reauthenticated {
    pub access_token: String,
    /// Seconds.
    pub expires_in: i64,
}

impl IdentityService {
    /// Re-authenticates session `session_id` with the account's password
    /// (throttled like login) and returns an access token with a fresh
    /// `auth_time`.
    ///
    /// # Errors
    /// `InvalidCredentials`, `Throttled`, `SessionRevoked`, `Internal`.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn reauthenticate_with_password(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        password: &Password,
        meta: &RequestMeta,
    ) -> Result<Reauthenticated, IdentityError> {
        let user = self.users.load(&user_id.to_string()).await?;
        let key = match &user.email {
            Some(sealed) => {
                self.email_key(&EmailAddress::parse(&self.open(user_id, sealed).await?).map_err(internal)?)
            }
            None => format!("user:{user_id}"),
        };
        self.check_attempt(Policy::PasswordFailures, &key, meta).await?;
        let stored = user.password_hash.clone().unwrap_or_default();
        if !self.hashes.check(user_id, &stored, password.expose()).await {
            self.record_failure(Policy::PasswordFailures, &key, meta).await?;
            return Err(IdentityError::InvalidCredentials);
        }
        self.record_success(Policy::PasswordFailures, &key, meta).await?;
        self.mark_reauthenticated(user_id, session_id, meta).await
    }

    /// Sends a step-up code on the account's two-factor channel.
    ///
    /// # Errors
    /// `Throttled`, `Internal`.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn start_reauthentication_code(
        &self,
        user_id: Uuid,
        meta: &RequestMeta,
    ) -> Result<LoginChallenge, IdentityError> {
        let user = self.users.load(&user_id.to_string()).await?;
        let (channel, to, key) = match (user.two_factor_channel, &user.phone, &user.email) {
            (OtpChannel::Sms, Some(sealed), _) | (_, Some(sealed), None) if user.phone_verified => {
                let phone = self.open(user_id, sealed).await?;
                let parsed = PhoneNumber::parse(&phone).map_err(internal)?;
                self.charge_sms(&parsed).await?;
                (OtpChannel::Sms, phone, self.phone_key(&parsed))
            }
            (_, _, Some(sealed)) => {
                let email = self.open(user_id, sealed).await?;
                let parsed = EmailAddress::parse(&email).map_err(internal)?;
                (OtpChannel::Email, email, self.email_key(&parsed))
            }
            _ => return Err(IdentityError::NotFound),
        };
        self.record_request(&key, meta).await?;
        let challenge_id = Uuid::new_v4();
        let req = OtpRequest {
            challenge_id,
            subject: user_id,
            purpose: OtpPurpose::TwoFactor,
            channel,
            to: &to,
            recipient_key: key,
        };
        let expires_at = self.issue_otp(req, meta).await?;
        Ok(LoginChallenge { challenge_id, channel, expires_at })
    }

    /// Re-authenticates with a step-up (or two-factor) code of this user.
    ///
    /// # Errors
    /// `InvalidCode`, `CodeExpired`, `ChallengeLocked`, `Throttled`, `Internal`.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn reauthenticate_with_code(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        challenge_id: Uuid,
        code: &OtpCode,
        meta: &RequestMeta,
    ) -> Result<Reauthenticated, IdentityError> {
        let current = self.otps.load(&challenge_id.to_string()).await?;
        if current.subject_id != Some(user_id) {
            return Err(IdentityError::InvalidCode);
        }
        self.answer(challenge_id, code, &[OtpPurpose::TwoFactor], meta).await?;
        self.mark_reauthenticated(user_id, session_id, meta).await
    }

    /// Records a fresh authentication on the session (any factor) and
    /// issues an access token carrying it. Used by every step-up proof.
    ///
    /// # Errors
    /// `SessionRevoked`, `NotFound`, `Internal`.
    pub async fn mark_reauthenticated(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        meta: &RequestMeta,
    ) -> Result<Reauthenticated, IdentityError> {
        let now = Utc::now();
        let id = session_id.to_string();
        let session = self.sessions.load(&id).await?;
        if session.user_id != Some(user_id) {
            return Err(IdentityError::NotFound);
        }
        self.refuse_if_cut_off(user_id, session_id, meta).await?;
        self.sessions
            .execute(&id, SessionCommand::Reauthenticate { at: now }, meta.to_map("Reauthenticate"))
            .await
            .map_err(|e| match e {
                ExecError::Domain(SessionError::Revoked) => IdentityError::SessionRevoked,
                ExecError::Domain(_) => IdentityError::NotFound,
                other => other.into(),
            })?;
        let (access_token, expires_in) = self.access_token(user_id, session_id, now, now).await?;
        Ok(Reauthenticated { access_token, expires_in })
    }

    /// An access token for `session_id` of `user_id` carrying the user's
    /// role names (`roles` claim, read now; checks never rely on it), with
    /// its lifetime in seconds: login, refresh and step-up all issue
    /// through here.
    ///
    /// # Errors
    /// [`IdentityError::Internal`] when the roles cannot be read or the
    /// token cannot be signed.
    pub(crate) async fn access_token(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        now: chrono::DateTime<Utc>,
        auth_time: chrono::DateTime<Utc>,
    ) -> Result<(String, i64), IdentityError> {
        let roles = crate::access::roles_of(&self.pool, user_id).await.map_err(internal)?;
        self.tokens.issue_access_with_roles(user_id, session_id, now, auth_time, roles).map_err(internal)
    }
}

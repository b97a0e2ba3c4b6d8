//! Password reset by emailed code and short-lived, single-use reset token
//! (seed 001): request → verify → complete. Completing revokes every
//! session (ASVS 7.4.2), removes the device PINs and mails a notice.

use chrono::Utc;
use domain::otp::{OtpChannel, OtpPurpose};
use domain::session::RevocationReason;
use domain::throttle::Policy;
use domain::user::UserCommand;
use domain::values::{EmailAddress, OtpCode, Password};
use uuid::Uuid;

use super::{internal, map_user, IdentityError, IdentityService, OtpRequest, RequestMeta};
use crate::deliveries::SealedDelivery;
use crate::reservations::{self, ReservationKind};

impl IdentityService {
    /// Mails a reset code if `email` belongs to a verified account. The
    /// caller answers 202 whatever happens (no enumeration); a throttled
    /// address gets nothing (recorded as a throttle event).
    ///
    /// # Errors
    /// Only infrastructure errors (`Internal`), for logging.
    #[tracing::instrument(skip_all)]
    pub async fn request_password_reset(
        &self,
        email: &EmailAddress,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        let key = self.email_key(email);
        match self.record_request(&key, meta).await {
            Err(IdentityError::Throttled { .. }) => return Ok(()),
            other => other?,
        }
        let owner = reservations::owner(&self.pool, ReservationKind::Email, &self.email_hash(email))
            .await
            .map_err(internal)?;
        let Some(user_id) = owner else { return Ok(()) };
        let user = self.users.load(&user_id.to_string()).await?;
        if !user.email_verified {
            return Ok(());
        }
        let challenge_id = Uuid::new_v4();
        let cmd = UserCommand::RequestPasswordReset { challenge_id, at: Utc::now() };
        self.users
            .execute(&user_id.to_string(), cmd, meta.to_map("RequestPasswordReset"))
            .await
            .map_err(map_user)?;
        let req = OtpRequest {
            challenge_id,
            subject: user_id,
            purpose: OtpPurpose::PasswordReset,
            channel: OtpChannel::Email,
            to: email.as_str(),
            recipient_key: key,
        };
        self.issue_otp(req, meta).await?;
        Ok(())
    }

    /// Exchanges the mailed code for a reset token (JWT, `typ` `reset+jwt`,
    /// 10 minutes, single use). Returns the token and its lifetime in seconds.
    ///
    /// # Errors
    /// `InvalidCode` (also for an expired or locked challenge and an unknown
    /// address: one answer), `Throttled`, `Internal`.
    #[tracing::instrument(skip_all)]
    pub async fn verify_password_reset(
        &self,
        email: &EmailAddress,
        code: &OtpCode,
        meta: &RequestMeta,
    ) -> Result<(String, i64), IdentityError> {
        let started = std::time::Instant::now();
        let key = self.email_key(email);
        let owner = reservations::owner(&self.pool, ReservationKind::Email, &self.email_hash(email))
            .await
            .map_err(internal)?;
        let challenge_id = match owner {
            Some(user_id) => self.users.load(&user_id.to_string()).await?.reset_challenge_id,
            None => None,
        };
        let challenge = self
            .answer_by_address(started, challenge_id, &key, code, &[OtpPurpose::PasswordReset], meta)
            .await?;
        let user_id = challenge.subject_id.ok_or_else(|| internal("challenge without subject"))?;
        let challenge_id = challenge.id.ok_or_else(|| internal("challenge without id"))?;
        self.tokens.issue_reset(user_id, challenge_id, Utc::now()).map_err(internal)
    }

    /// Sets `new_password` with a reset token, revokes every session of the
    /// account and mails a notice.
    ///
    /// # Errors
    /// `InvalidResetToken` (bad, expired or used token), `Internal`.
    #[tracing::instrument(skip_all)]
    pub async fn complete_password_reset(
        &self,
        reset_token: &str,
        new_password: &Password,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        let claims = self.tokens.verify_reset(reset_token).map_err(|_| IdentityError::InvalidResetToken)?;
        let user_id = claims.sub;
        let user = self.users.load(&user_id.to_string()).await?;
        if user.used_reset_ids.contains(&claims.jti) {
            return Err(IdentityError::InvalidResetToken);
        }
        let phc = self.hasher.hash(new_password.expose()).await.map_err(internal)?;
        let password_hash = self.vault.seal_hash(user_id, &phc).await.map_err(internal)?;
        let notice = match &user.email {
            Some(sealed) => Some(self.notice(&self.open(user_id, sealed).await?, "password_changed")?),
            None => None,
        };
        let delivery_id = notice.as_ref().map(SealedDelivery::id);
        let cmd =
            UserCommand::ResetPassword { reset_id: claims.jti, password_hash, delivery_id, at: Utc::now() };
        let mut meta = meta.clone();
        meta.actor = Some(user_id);
        let id = user_id.to_string();
        let done = match &notice {
            Some(notice) => self.users.execute_with(&id, cmd, meta.to_map("ResetPassword"), notice).await,
            None => self.users.execute(&id, cmd, meta.to_map("ResetPassword")).await,
        };
        done.map_err(map_user)?;
        self.revoke_all_sessions(user_id, RevocationReason::PasswordReset, &meta).await?;
        // Device PINs are quick factors of the old credentials: they go too.
        let devices: Vec<String> = sqlx::query_scalar("SELECT device_id FROM device_pins WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await
            .map_err(internal)?;
        for device in devices {
            if let Ok(device) = domain::pin::DeviceId::parse(&device) {
                if let Err(e) = self.remove_pin(user_id, &device, &meta).await {
                    tracing::warn!(error = ?e, "removing a device PIN after password reset failed");
                }
            }
        }
        if let Some(sealed) = &user.email {
            let email = EmailAddress::parse(&self.open(user_id, sealed).await?).map_err(internal)?;
            self.record_success(Policy::PasswordFailures, &self.email_key(&email), &meta).await?;
        }
        Ok(())
    }
}

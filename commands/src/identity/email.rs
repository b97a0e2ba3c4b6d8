//! Registration by email and email verification.

use chrono::{DateTime, Utc};
use domain::otp::{OtpChannel, OtpPurpose};
use domain::throttle::Policy;
use domain::user::{UserCommand, UserError};
use domain::values::{Digest, DisplayName, EmailAddress, OtpCode, Password};
use uuid::Uuid;

use super::{internal, map_user, IdentityError, IdentityService, OtpRequest, RequestMeta};
use crate::executor::ExecError;
use crate::reservations::{self, Claim, ReservationKind};

impl IdentityService {
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
        let started = std::time::Instant::now();
        // Both paths answer at the same moment: no sooner than a typical new
        // registration's work after hashing, with a 25 % cushion (no timing
        // oracle; SECURITY.md "Enumeration").
        let answer_at = started + self.register_pad.typical().mul_f64(1.25);
        let result = match reservations::claim(&self.pool, ReservationKind::Email, &email_hash, user_id)
            .await
            .map_err(internal)?
        {
            Claim::Taken { owner } => {
                self.notify_duplicate_registration(owner, email, now, meta).await.map(|()| Uuid::now_v7())
            }
            Claim::Claimed => {
                let result = self
                    .register_claimed(user_id, email, email_hash.clone(), password_hash, name, now, meta)
                    .await;
                match &result {
                    Ok(()) => self.register_pad.observe(started.elapsed()),
                    // Release the reservation so the address can be registered again.
                    Err(_) => {
                        let _ =
                            reservations::release(&self.pool, ReservationKind::Email, &email_hash, user_id)
                                .await;
                    }
                }
                result.map(|()| user_id)
            }
        };
        tokio::time::sleep_until(answer_at.into()).await;
        result
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
        self.users
            .execute_new(&user_id.to_string(), cmd, meta.to_map("RegisterUser"))
            .await
            .map_err(map_user)?;
        let req = OtpRequest {
            challenge_id,
            subject: user_id,
            purpose: OtpPurpose::EmailVerification,
            channel: OtpChannel::Email,
            to: email.as_str(),
            recipient_key: self.email_key(email),
        };
        self.issue_otp(req, meta).await?;
        Ok(())
    }

    async fn notify_duplicate_registration(
        &self,
        owner: Uuid,
        email: &EmailAddress,
        now: DateTime<Utc>,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        let notice = self.notice(email.as_str(), "duplicate_registration")?;
        let cmd = UserCommand::NoteDuplicateRegistration { delivery_id: notice.id(), at: now };
        self.users
            .execute_with(&owner.to_string(), cmd, meta.to_map("NoteDuplicateRegistration"), &notice)
            .await
            .map_err(map_user)?;
        Ok(())
    }

    /// Verifies the email of the account registered under `email` with the
    /// mailed `code`, then mails a welcome. Unknown emails answer
    /// [`IdentityError::InvalidCode`], like a wrong code.
    ///
    /// # Errors
    /// `InvalidCode`, `CodeExpired`, `ChallengeLocked`, `Throttled`, `Internal`.
    #[tracing::instrument(skip_all)]
    pub async fn verify_email(
        &self,
        email: &EmailAddress,
        code: &OtpCode,
        meta: &RequestMeta,
    ) -> Result<Uuid, IdentityError> {
        let owner = reservations::owner(&self.pool, ReservationKind::Email, &self.email_hash(email))
            .await
            .map_err(internal)?;
        let Some(owner) = owner else {
            // Same throttle as a real account, so the answers match.
            self.check_attempt(Policy::OtpFailures, &self.email_key(email), meta).await?;
            self.record_failure(Policy::OtpFailures, &self.email_key(email), meta).await?;
            return Err(IdentityError::InvalidCode);
        };
        let user = self.users.load(&owner.to_string()).await?;
        let challenge_id = user.email_challenge_id.ok_or(IdentityError::InvalidCode)?;
        self.answer(challenge_id, code, &[OtpPurpose::EmailVerification], meta).await?;
        let notice = self.notice(email.as_str(), "welcome")?;
        let cmd = UserCommand::VerifyEmail { challenge_id, delivery_id: Some(notice.id()), at: Utc::now() };
        // The welcome is written with the event: a refused command leaves none.
        match self.users.execute_with(&owner.to_string(), cmd, meta.to_map("VerifyEmail"), &notice).await {
            Ok(_) | Err(ExecError::Domain(UserError::EmailAlreadyVerified)) => Ok(owner),
            Err(e) => Err(map_user(e)),
        }
    }
}

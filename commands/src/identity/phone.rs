//! Phone passwordless sign-up/login (seed 003), adding a phone to an
//! account, and the two-factor channel setting.

use chrono::{DateTime, Utc};
use domain::otp::{OtpChallenge, OtpChannel, OtpPurpose};
use domain::user::UserCommand;
use domain::values::{OtpCode, PhoneNumber};
use uuid::Uuid;

use super::{internal, map_user, IdentityError, IdentityService, OtpRequest, RequestMeta};
use crate::reservations::{self, Claim, ReservationKind};

/// A code sent by SMS.
#[derive(Debug, Clone)]
pub struct PhoneChallenge {
    pub challenge_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

impl IdentityService {
    /// Sends a login code to `phone` (5-minute lifetime), whether or not an
    /// account uses it — the same answer either way. At most 3 codes per
    /// number per hour, 30 s apart.
    ///
    /// # Errors
    /// `Throttled`, `Internal`.
    #[tracing::instrument(skip_all)]
    pub async fn request_phone_otp(
        &self,
        phone: &PhoneNumber,
        meta: &RequestMeta,
    ) -> Result<PhoneChallenge, IdentityError> {
        let key = self.phone_key(phone);
        self.record_request(&key, meta).await?;
        let owner = reservations::owner(&self.pool, ReservationKind::Phone, &self.phone_hash(phone))
            .await
            .map_err(internal)?;
        // A number without an account gets a fresh subject, created on success.
        let subject = owner.unwrap_or_else(Uuid::now_v7);
        let challenge_id = Uuid::new_v4();
        let req = OtpRequest {
            challenge_id,
            subject,
            purpose: OtpPurpose::Login,
            channel: OtpChannel::Sms,
            to: phone.as_str(),
            recipient_key: key,
        };
        let expires_at = self.issue_otp(req, meta).await?;
        Ok(PhoneChallenge { challenge_id, expires_at })
    }

    /// After a correct phone-login code: the account of that number,
    /// created now if it has none. Returns the user id.
    pub(crate) async fn complete_phone_login(
        &self,
        challenge_id: Uuid,
        subject: Uuid,
        challenge: &OtpChallenge,
        meta: &RequestMeta,
    ) -> Result<Uuid, IdentityError> {
        let user = self.users.load(&subject.to_string()).await?;
        if user.id.is_some() {
            return Ok(subject);
        }
        let sealed = challenge.recipient.clone().ok_or_else(|| internal("challenge without recipient"))?;
        let phone = PhoneNumber::parse(&self.open(subject, &sealed).await?).map_err(internal)?;
        let phone_hash = self.phone_hash(&phone);
        match reservations::claim(&self.pool, ReservationKind::Phone, &phone_hash, subject)
            .await
            .map_err(internal)?
        {
            // Registered concurrently by another sign-up: that account logs in.
            Claim::Taken { owner } if owner != subject => return Ok(owner),
            _ => {}
        }
        let cmd = UserCommand::RegisterWithPhone {
            user_id: subject,
            phone: sealed,
            phone_hash,
            challenge_id,
            at: Utc::now(),
        };
        self.users
            .execute(&subject.to_string(), cmd, meta.to_map("RegisterUserWithPhone"))
            .await
            .map_err(map_user)?;
        Ok(subject)
    }

    /// Attaches `phone` to the account and sends a verification code.
    ///
    /// # Errors
    /// `PhoneUnavailable` when another account holds it, `Throttled`, `Internal`.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn add_phone(
        &self,
        user_id: Uuid,
        phone: &PhoneNumber,
        meta: &RequestMeta,
    ) -> Result<PhoneChallenge, IdentityError> {
        let key = self.phone_key(phone);
        self.record_request(&key, meta).await?;
        let phone_hash = self.phone_hash(phone);
        if let Claim::Taken { owner } =
            reservations::claim(&self.pool, ReservationKind::Phone, &phone_hash, user_id)
                .await
                .map_err(internal)?
        {
            if owner != user_id {
                return Err(IdentityError::PhoneUnavailable);
            }
        }
        let challenge_id = Uuid::new_v4();
        let sealed = self.vault.seal(user_id, phone.as_str()).await.map_err(internal)?;
        let cmd = UserCommand::AddPhone { phone: sealed, phone_hash, challenge_id, at: Utc::now() };
        self.users.execute(&user_id.to_string(), cmd, meta.to_map("AddPhone")).await.map_err(map_user)?;
        let req = OtpRequest {
            challenge_id,
            subject: user_id,
            purpose: OtpPurpose::PhoneVerification,
            channel: OtpChannel::Sms,
            to: phone.as_str(),
            recipient_key: key,
        };
        let expires_at = self.issue_otp(req, meta).await?;
        Ok(PhoneChallenge { challenge_id, expires_at })
    }

    /// Verifies the pending phone with its code.
    ///
    /// # Errors
    /// `InvalidCode`, `CodeExpired`, `ChallengeLocked`, `Throttled`, `Internal`.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn verify_phone(
        &self,
        user_id: Uuid,
        code: &OtpCode,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        let user = self.users.load(&user_id.to_string()).await?;
        let challenge_id = user.phone_challenge_id.ok_or(IdentityError::InvalidCode)?;
        self.answer(challenge_id, code, &[OtpPurpose::PhoneVerification], meta).await?;
        let cmd = UserCommand::VerifyPhone { challenge_id, at: Utc::now() };
        self.users.execute(&user_id.to_string(), cmd, meta.to_map("VerifyPhone")).await.map_err(map_user)?;
        Ok(())
    }

    /// Chooses where two-factor codes go.
    ///
    /// # Errors
    /// `PhoneNotVerified` / `EmailNotVerified`, `Internal`.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn set_two_factor_channel(
        &self,
        user_id: Uuid,
        channel: OtpChannel,
        meta: &RequestMeta,
    ) -> Result<(), IdentityError> {
        let cmd = UserCommand::SetTwoFactorChannel { channel, at: Utc::now() };
        self.users
            .execute(&user_id.to_string(), cmd, meta.to_map("SetTwoFactorChannel"))
            .await
            .map_err(map_user)?;
        Ok(())
    }
}

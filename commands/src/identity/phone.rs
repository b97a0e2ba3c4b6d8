//! Phone passwordless sign-up/login (seed 003), adding a phone to an
//! account, and the two-factor channel setting.

use chrono::{DateTime, Utc};
use domain::otp::{OtpChallenge, OtpChannel, OtpPurpose};
use domain::user::UserCommand;
use domain::values::{OtpCode, PhoneNumber};
use uuid::Uuid;

use super::{internal, map_user, IdentityError, IdentityService, OtpRequest, RequestMeta};
use crate::reservations::{self, Claim, ReleaseHeld, ReservationKind};

/// A code sent by SMS.
#[derive(Debug, Clone)]
pub struct PhoneChallenge {
    pub challenge_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

impl IdentityService {
    /// Sends a login code to `phone` (5-minute lifetime), whether or not an
    /// account uses it — the same answer either way. At most 3 codes per
    /// number per hour, 30 s apart; the SMS guards apply (allowed countries,
    /// VOIP, hourly budgets).
    ///
    /// # Errors
    /// `PhoneNotSupported`, `Throttled`, `Internal`.
    #[tracing::instrument(skip_all)]
    pub async fn request_phone_otp(
        &self,
        phone: &PhoneNumber,
        meta: &RequestMeta,
    ) -> Result<PhoneChallenge, IdentityError> {
        let key = self.phone_key(phone);
        self.vet_number(phone).await?;
        self.record_request(&key, meta).await?;
        self.charge_sms(phone).await?;
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
    /// created now if it has none. Returns the user id and whether the
    /// account was created now.
    pub(crate) async fn complete_phone_login(
        &self,
        challenge_id: Uuid,
        subject: Uuid,
        challenge: &OtpChallenge,
        meta: &RequestMeta,
    ) -> Result<(Uuid, bool), IdentityError> {
        let user = self.users.load(&subject.to_string()).await?;
        if user.id.is_some() {
            return Ok((subject, false));
        }
        let sealed = challenge.recipient.clone().ok_or_else(|| internal("challenge without recipient"))?;
        let phone = PhoneNumber::parse(&self.open(subject, &sealed).await?).map_err(internal)?;
        let phone_hash = self.phone_hash(&phone);
        match reservations::claim(&self.pool, ReservationKind::Phone, &phone_hash, subject)
            .await
            .map_err(internal)?
        {
            // Verified meanwhile by another account (a sign-up, or a phone
            // added and verified): that account signs in.
            Claim::Taken { owner } if owner != subject => return Ok((owner, false)),
            _ => {}
        }
        // Phone sign-ups get a generated handle (`user-` + 8 digits, as
        // SoundCloud does); changed later with `PUT /api/users/me/username`.
        let username = match self.claim_generated_username(subject).await {
            Ok(username) => username,
            Err(e) => {
                let _ = reservations::release(&self.pool, ReservationKind::Phone, &phone_hash, subject).await;
                return Err(e);
            }
        };
        let cmd = UserCommand::RegisterWithPhone {
            user_id: subject,
            phone: sealed,
            phone_hash: phone_hash.clone(),
            challenge_id,
            username: Some(username.clone()),
            at: Utc::now(),
        };
        if let Err(e) =
            self.users.execute(&subject.to_string(), cmd, meta.to_map("RegisterUserWithPhone")).await
        {
            // Not committed: neither the number nor the handle may stay
            // reserved for no account.
            let _ = reservations::release(&self.pool, ReservationKind::Phone, &phone_hash, subject).await;
            self.release_username(subject, &username).await;
            return Err(map_user(e));
        }
        Ok((subject, true))
    }

    /// Sends `phone` a code that verifies it for the account. The number
    /// stays pending — it reserves nothing, is no login route and no SMS
    /// channel — until verified; a verified phone the account already has
    /// keeps working until then. A number verified by another account is
    /// answered exactly like an accepted one (a challenge that no code
    /// answers; no `phone_unavailable` oracle) and its owner gets an SMS
    /// notice instead of a code. Counts toward the number's code budget.
    ///
    /// # Errors
    /// `PhoneNotSupported`, `Throttled`, `Internal`.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn add_phone(
        &self,
        user_id: Uuid,
        phone: &PhoneNumber,
        meta: &RequestMeta,
    ) -> Result<PhoneChallenge, IdentityError> {
        let key = self.phone_key(phone);
        self.vet_number(phone).await?;
        self.record_request(&key, meta).await?;
        // The notice to an owner is an SMS too: charged either way.
        self.charge_sms(phone).await?;
        let phone_hash = self.phone_hash(phone);
        let owner =
            reservations::owner(&self.pool, ReservationKind::Phone, &phone_hash).await.map_err(internal)?;
        if let Some(owner) = owner.filter(|o| *o != user_id) {
            let now = Utc::now();
            let notice = self.notice_on(OtpChannel::Sms, phone.as_str(), "phone_in_use")?;
            let cmd = UserCommand::NotePhoneClaimAttempt { delivery_id: notice.id(), at: now };
            self.users
                .execute_with(&owner.to_string(), cmd, meta.to_map("NotePhoneClaimAttempt"), &notice)
                .await
                .map_err(map_user)?;
            let expires_at = now + chrono::Duration::seconds(self.config.sms_otp_ttl_secs);
            return Ok(PhoneChallenge { challenge_id: Uuid::new_v4(), expires_at });
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

    /// Verifies the pending phone with its code: only now is the number
    /// reserved (ARCHITECTURE decided 8), and the number it replaces, if
    /// any, is released by the same statement as `PhoneVerified`.
    ///
    /// # Errors
    /// `InvalidCode`, `CodeExpired`, `ChallengeLocked`, `Throttled`,
    /// `PhoneUnavailable` (another account verified the number meanwhile —
    /// only someone holding the number can learn this), `Internal`.
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
        // Verified already (a repeated request): nothing pending to claim.
        let Some(pending_hash) = user.pending_phone_hash.clone() else { return Ok(()) };
        let claimed = match reservations::claim(&self.pool, ReservationKind::Phone, &pending_hash, user_id)
            .await
            .map_err(internal)?
        {
            Claim::Claimed => true,
            Claim::Taken { owner } if owner == user_id => false,
            Claim::Taken { .. } => return Err(IdentityError::PhoneUnavailable),
        };
        let release = ReleaseHeld::new(ReservationKind::Phone, user_id, Some(&pending_hash));
        let cmd = UserCommand::VerifyPhone { challenge_id, at: Utc::now() };
        match self.users.execute_with(&user_id.to_string(), cmd, meta.to_map("VerifyPhone"), &release).await {
            Ok(_) => Ok(()),
            Err(e) => {
                if claimed {
                    let _ = reservations::release(&self.pool, ReservationKind::Phone, &pending_hash, user_id)
                        .await;
                }
                Err(map_user(e))
            }
        }
    }

    /// Removes the account's phone (verified and pending); its reservation
    /// is released by the same statement as `PhoneRemoved`, so the number
    /// stops being a login route for this account at once.
    ///
    /// # Errors
    /// `LastSignInMethod` for an account with no email (the phone is its
    /// only way in), `Internal`.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn remove_phone(&self, user_id: Uuid, meta: &RequestMeta) -> Result<(), IdentityError> {
        let release = ReleaseHeld::new(ReservationKind::Phone, user_id, None);
        let cmd = UserCommand::RemovePhone { at: Utc::now() };
        self.users
            .execute_with(&user_id.to_string(), cmd, meta.to_map("RemovePhone"), &release)
            .await
            .map_err(map_user)?;
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

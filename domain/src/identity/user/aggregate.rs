use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{UserCommand, UserEvent};
use crate::otp::OtpChannel;
use crate::services::UserServices;
use crate::values::{Digest, Sealed, Username};

/// Refusals of the `User` aggregate. `code()` is the stable API error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("the account already exists")]
    AlreadyRegistered,
    #[error("no such account")]
    NotFound,
    #[error("the email address is not verified")]
    EmailNotVerified,
    #[error("the email address is already verified")]
    EmailAlreadyVerified,
    #[error("the verification challenge does not belong to this account")]
    WrongChallenge,
    #[error("SMS needs a verified phone number")]
    PhoneNotVerified,
    #[error("the password reset token was already used")]
    ResetAlreadyUsed,
    #[error("wrong password")]
    WrongPassword,
    #[error("the phone number is the only way to sign in to this account")]
    LastSignInMethod,
    #[error("the registration has not expired yet")]
    NotExpiredYet,
}

impl UserError {
    /// Stable snake_case code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlreadyRegistered => "already_registered",
            Self::NotFound => "not_found",
            Self::EmailNotVerified => "email_not_verified",
            Self::EmailAlreadyVerified => "email_already_verified",
            Self::WrongChallenge => "wrong_challenge",
            Self::PhoneNotVerified => "phone_not_verified",
            Self::ResetAlreadyUsed => "reset_token_used",
            Self::WrongPassword => "invalid_credentials",
            Self::LastSignInMethod => "last_sign_in_method",
            Self::NotExpiredYet => "not_expired_yet",
        }
    }
}

/// State of one account, rebuilt from its events.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: Option<Uuid>,
    /// Sealed email, to address mail to the account.
    pub email: Option<Sealed>,
    /// Sealed display name and bio, as last set (answers a profile change
    /// from the command's own result, without waiting for the read model).
    pub name: Option<Sealed>,
    pub bio: Option<Sealed>,
    pub password_hash: Option<String>,
    pub email_verified: bool,
    pub email_challenge_id: Option<Uuid>,
    pub registered_at: Option<DateTime<Utc>>,
    /// Sealed verified phone number: the account's SMS channel and login
    /// route (its lookup hash is reserved).
    pub phone: Option<Sealed>,
    /// Lookup hash of `phone` (absent for phones verified before it was
    /// recorded).
    #[serde(default)]
    pub phone_hash: Option<Digest>,
    /// `phone` is set and verified.
    pub phone_verified: bool,
    /// A number added but not verified yet: reserves nothing, routes nothing.
    #[serde(default)]
    pub pending_phone: Option<Sealed>,
    #[serde(default)]
    pub pending_phone_hash: Option<Digest>,
    /// The challenge that verifies `pending_phone`.
    pub phone_challenge_id: Option<Uuid>,
    /// Where two-factor codes go.
    pub two_factor_channel: OtpChannel,
    /// The latest password-reset challenge.
    pub reset_challenge_id: Option<Uuid>,
    /// `jti`s of reset tokens already used (single use).
    pub used_reset_ids: Vec<Uuid>,
    /// Sessions started before this instant are revoked (the latest
    /// `AllSessionsRevoked`).
    #[serde(default)]
    pub sessions_revoked_before: Option<DateTime<Utc>>,
    /// The unverified registration expired: the account no longer exists.
    #[serde(default)]
    pub expired: bool,
    /// The handle (public), once set.
    #[serde(default)]
    pub username: Option<Username>,
}

impl User {
    fn require_registered(&self) -> Result<Uuid, UserError> {
        self.id.filter(|_| !self.expired).ok_or(UserError::NotFound)
    }
}

impl Aggregate for User {
    const TYPE: &'static str = "user";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
    type Services = UserServices;

    async fn handle(
        &mut self,
        command: UserCommand,
        services: &UserServices,
        sink: &EventSink<Self>,
    ) -> Result<(), UserError> {
        match command {
            UserCommand::Register {
                user_id,
                email,
                email_hash,
                name,
                password_hash,
                email_challenge_id,
                username,
                first_name,
                last_name,
                at,
            } => {
                if self.id.is_some() {
                    return Err(UserError::AlreadyRegistered);
                }
                let event = UserEvent::UserRegistered {
                    user_id,
                    email,
                    email_hash,
                    name,
                    password_hash,
                    email_challenge_id,
                    registered_at: at,
                };
                sink.write(event, self).await;
                if let (Some(first_name), Some(last_name)) = (first_name, last_name) {
                    sink.write(UserEvent::LegalNameSet { first_name, last_name, set_at: at }, self).await;
                }
                if let Some(username) = username {
                    sink.write(UserEvent::UsernameChanged { username, previous: None, changed_at: at }, self)
                        .await;
                }
            }
            UserCommand::NoteDuplicateRegistration { delivery_id, at } => {
                self.require_registered()?;
                let event = UserEvent::DuplicateRegistrationAttempted { delivery_id, attempted_at: at };
                sink.write(event, self).await;
            }
            UserCommand::VerifyEmail { challenge_id, delivery_id, at } => {
                self.require_registered()?;
                if self.email_verified {
                    return Err(UserError::EmailAlreadyVerified);
                }
                if self.email_challenge_id != Some(challenge_id) {
                    return Err(UserError::WrongChallenge);
                }
                sink.write(UserEvent::EmailVerified { challenge_id, verified_at: at, delivery_id }, self)
                    .await;
            }
            UserCommand::RegisterWithPhone { user_id, phone, phone_hash, challenge_id, username, at } => {
                if self.id.is_some() {
                    return Err(UserError::AlreadyRegistered);
                }
                let event = UserEvent::UserRegisteredWithPhone {
                    user_id,
                    phone,
                    phone_hash,
                    challenge_id,
                    registered_at: at,
                };
                sink.write(event, self).await;
                if let Some(username) = username {
                    sink.write(UserEvent::UsernameChanged { username, previous: None, changed_at: at }, self)
                        .await;
                }
            }
            UserCommand::ChangeUsername { username, at } => {
                self.require_registered()?;
                if self.username.as_ref() == Some(&username) {
                    return Ok(());
                }
                let previous = self.username.clone();
                sink.write(UserEvent::UsernameChanged { username, previous, changed_at: at }, self).await;
            }
            UserCommand::NoteRefreshTokenReuse { delivery_id, at } => {
                self.require_registered()?;
                sink.write(UserEvent::RefreshTokenReuseNoticed { delivery_id, noticed_at: at }, self).await;
            }
            UserCommand::ReplaceEmailChallenge { challenge_id, at } => {
                self.require_registered()?;
                if self.email_verified {
                    return Err(UserError::EmailAlreadyVerified);
                }
                sink.write(UserEvent::EmailChallengeReplaced { challenge_id, replaced_at: at }, self).await;
            }
            UserCommand::AddPhone { phone, phone_hash, challenge_id, at } => {
                self.require_registered()?;
                sink.write(UserEvent::PhoneAdded { phone, phone_hash, challenge_id, added_at: at }, self)
                    .await;
            }
            UserCommand::VerifyPhone { challenge_id, at } => {
                self.require_registered()?;
                if self.phone_challenge_id != Some(challenge_id) {
                    return Err(UserError::WrongChallenge);
                }
                // Already verified (a retried request): nothing to do.
                let Some(phone) = self.pending_phone.clone() else { return Ok(()) };
                let phone_hash = self.pending_phone_hash.clone();
                let replaced_phone_hash = self.phone_hash.clone().filter(|h| Some(h) != phone_hash.as_ref());
                let event = UserEvent::PhoneVerified {
                    challenge_id,
                    verified_at: at,
                    phone: Some(phone),
                    phone_hash,
                    replaced_phone_hash,
                };
                sink.write(event, self).await;
            }
            UserCommand::RemovePhone { at } => {
                self.require_registered()?;
                if self.phone.is_none() && self.pending_phone.is_none() {
                    return Ok(());
                }
                // A phone-only account (no email) would be locked out.
                if self.phone_verified && self.email.is_none() {
                    return Err(UserError::LastSignInMethod);
                }
                let phone_hash = self.phone_hash.clone();
                sink.write(UserEvent::PhoneRemoved { phone_hash, removed_at: at }, self).await;
            }
            UserCommand::ExpireRegistration { at } => {
                self.require_registered()?;
                if self.email.is_none() || self.email_verified {
                    return Err(UserError::EmailAlreadyVerified);
                }
                let due =
                    self.registered_at.map(|r| r + chrono::Duration::hours(super::REGISTRATION_TTL_HOURS));
                if due.is_none_or(|d| at < d) {
                    return Err(UserError::NotExpiredYet);
                }
                sink.write(UserEvent::RegistrationExpired { expired_at: at }, self).await;
            }
            UserCommand::RevokeAllSessions { reason, at } => {
                self.require_registered()?;
                sink.write(UserEvent::AllSessionsRevoked { reason, revoked_before: at }, self).await;
            }
            UserCommand::NotePhoneClaimAttempt { delivery_id, at } => {
                self.require_registered()?;
                sink.write(UserEvent::PhoneClaimAttempted { delivery_id, attempted_at: at }, self).await;
            }
            UserCommand::SetTwoFactorChannel { channel, at } => {
                self.require_registered()?;
                if channel == OtpChannel::Sms && !self.phone_verified {
                    return Err(UserError::PhoneNotVerified);
                }
                if channel == OtpChannel::Email && !self.email_verified {
                    return Err(UserError::EmailNotVerified);
                }
                if channel != self.two_factor_channel {
                    sink.write(UserEvent::TwoFactorChannelChanged { channel, changed_at: at }, self).await;
                }
            }
            UserCommand::RequestPasswordReset { challenge_id, at } => {
                self.require_registered()?;
                sink.write(UserEvent::PasswordResetRequested { challenge_id, requested_at: at }, self).await;
            }
            UserCommand::ResetPassword { reset_id, password_hash, delivery_id, at } => {
                self.require_registered()?;
                if self.used_reset_ids.contains(&reset_id) {
                    return Err(UserError::ResetAlreadyUsed);
                }
                let event = UserEvent::PasswordReset { reset_id, password_hash, delivery_id, reset_at: at };
                sink.write(event, self).await;
            }
            UserCommand::StartLogin { challenge_id, password, at } => {
                let id = self.require_registered()?;
                let hash = self.password_hash.clone().unwrap_or_default();
                if !services.passwords.verify(id, &hash, password.expose()).await {
                    // Recorded by the caller on the account's `Throttle`
                    // stream, the same event an unknown email gets (no
                    // enumeration by timing or by the log).
                    return Err(UserError::WrongPassword);
                }
                // Checked only after the password, so the answer does not
                // reveal the account's state to someone without it.
                if !self.email_verified {
                    return Err(UserError::EmailNotVerified);
                }
                sink.write(UserEvent::LoginPasswordAccepted { challenge_id, accepted_at: at }, self).await;
            }
            UserCommand::UpdateProfile { name, bio, at } => {
                self.require_registered()?;
                if name.is_none() && bio.is_none() {
                    return Ok(());
                }
                sink.write(UserEvent::ProfileUpdated { name, bio, updated_at: at }, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: UserEvent) {
        match event {
            UserEvent::UserRegistered {
                user_id,
                email,
                password_hash,
                email_challenge_id,
                registered_at,
                name,
                ..
            } => {
                self.id = Some(user_id);
                self.email = Some(email);
                self.name = Some(name);
                self.password_hash = Some(password_hash);
                self.email_challenge_id = Some(email_challenge_id);
                self.registered_at = Some(registered_at);
            }
            UserEvent::UserRegisteredWithPhone { user_id, phone, phone_hash, registered_at, .. } => {
                self.id = Some(user_id);
                self.phone = Some(phone);
                self.phone_hash = Some(phone_hash);
                self.phone_verified = true;
                self.two_factor_channel = OtpChannel::Sms;
                self.registered_at = Some(registered_at);
            }
            UserEvent::UsernameChanged { username, .. } => self.username = Some(username),
            UserEvent::LegalNameSet { .. }
            | UserEvent::DuplicateRegistrationAttempted { .. }
            | UserEvent::RefreshTokenReuseNoticed { .. }
            | UserEvent::PhoneClaimAttempted { .. } => {}
            UserEvent::ProfileUpdated { name, bio, .. } => {
                if name.is_some() {
                    self.name = name;
                }
                if bio.is_some() {
                    self.bio = bio;
                }
            }
            UserEvent::EmailChallengeReplaced { challenge_id, .. } => {
                self.email_challenge_id = Some(challenge_id)
            }
            UserEvent::PhoneAdded { phone, phone_hash, challenge_id, .. } => {
                self.pending_phone = Some(phone);
                self.pending_phone_hash = Some(phone_hash);
                self.phone_challenge_id = Some(challenge_id);
            }
            UserEvent::PhoneVerified { phone, phone_hash, .. } => {
                let pending = self.pending_phone.take();
                let pending_hash = self.pending_phone_hash.take();
                self.phone = phone.or(pending);
                self.phone_hash = phone_hash.or(pending_hash);
                self.phone_verified = self.phone.is_some();
            }
            UserEvent::RegistrationExpired { .. } => self.expired = true,
            UserEvent::AllSessionsRevoked { revoked_before, .. } => {
                self.sessions_revoked_before = self.sessions_revoked_before.max(Some(revoked_before));
            }
            UserEvent::PhoneRemoved { .. } => {
                self.phone = None;
                self.phone_hash = None;
                self.phone_verified = false;
                self.pending_phone = None;
                self.pending_phone_hash = None;
                self.phone_challenge_id = None;
                if self.two_factor_channel == OtpChannel::Sms {
                    self.two_factor_channel = OtpChannel::Email;
                }
            }
            UserEvent::TwoFactorChannelChanged { channel, .. } => self.two_factor_channel = channel,
            UserEvent::PasswordResetRequested { challenge_id, .. } => {
                self.reset_challenge_id = Some(challenge_id);
            }
            UserEvent::PasswordReset { reset_id, password_hash, .. } => {
                self.password_hash = Some(password_hash);
                self.used_reset_ids.push(reset_id);
            }
            UserEvent::EmailVerified { .. } => self.email_verified = true,
            UserEvent::LoginPasswordAccepted { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests;

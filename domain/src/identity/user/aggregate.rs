use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{UserCommand, UserEvent};
use crate::otp::OtpChannel;
use crate::services::UserServices;
use crate::values::{Digest, Sealed};

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
            UserCommand::RegisterWithPhone { user_id, phone, phone_hash, challenge_id, at } => {
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
            UserEvent::DuplicateRegistrationAttempted { .. }
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
mod tests {
    use super::*;
    use crate::services::PasswordVerifier;
    use crate::values::{Digest, Password};
    use cqrs_es::test::TestFramework;

    struct PlainVerifier;
    #[async_trait::async_trait]
    impl PasswordVerifier for PlainVerifier {
        async fn verify(&self, _subject: Uuid, phc_hash: &str, candidate: &str) -> bool {
            phc_hash == format!("hash:{candidate}")
        }
    }

    type UserTest = TestFramework<User>;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }
    fn uid() -> Uuid {
        Uuid::from_u128(1)
    }
    fn challenge() -> Uuid {
        Uuid::from_u128(2)
    }
    fn registered() -> UserEvent {
        UserEvent::UserRegistered {
            user_id: uid(),
            email: Sealed("sealed-email".into()),
            email_hash: Digest("ab".into()),
            name: Sealed("sealed-name".into()),
            password_hash: "hash:correct horse battery".into(),
            email_challenge_id: challenge(),
            registered_at: t(0),
        }
    }
    fn verified() -> UserEvent {
        UserEvent::EmailVerified { challenge_id: challenge(), verified_at: t(1), delivery_id: None }
    }
    fn framework() -> UserTest {
        TestFramework::with(UserServices::new(PlainVerifier))
    }

    #[tokio::test]
    async fn register_emits_registered() {
        framework()
            .given_no_previous_events()
            .when_async(UserCommand::Register {
                user_id: uid(),
                email: Sealed("sealed-email".into()),
                email_hash: Digest("ab".into()),
                name: Sealed("sealed-name".into()),
                password_hash: "hash:correct horse battery".into(),
                email_challenge_id: challenge(),
                at: t(0),
            })
            .await
            .then_expect_events(vec![registered()]);
    }

    #[tokio::test]
    async fn register_twice_is_refused() {
        framework()
            .given(vec![registered()])
            .when_async(UserCommand::Register {
                user_id: uid(),
                email: Sealed("x".into()),
                email_hash: Digest("ab".into()),
                name: Sealed("y".into()),
                password_hash: "h".into(),
                email_challenge_id: challenge(),
                at: t(5),
            })
            .await
            .then_expect_error(UserError::AlreadyRegistered);
    }

    #[tokio::test]
    async fn verify_email_needs_the_issued_challenge() {
        framework()
            .given(vec![registered()])
            .when_async(UserCommand::VerifyEmail {
                challenge_id: Uuid::from_u128(9),
                delivery_id: None,
                at: t(1),
            })
            .await
            .then_expect_error(UserError::WrongChallenge);
        framework()
            .given(vec![registered()])
            .when_async(UserCommand::VerifyEmail { challenge_id: challenge(), delivery_id: None, at: t(1) })
            .await
            .then_expect_events(vec![verified()]);
        framework()
            .given(vec![registered(), verified()])
            .when_async(UserCommand::VerifyEmail { challenge_id: challenge(), delivery_id: None, at: t(2) })
            .await
            .then_expect_error(UserError::EmailAlreadyVerified);
    }

    #[tokio::test]
    async fn login_with_right_password_accepts() {
        let c = Uuid::from_u128(7);
        framework()
            .given(vec![registered(), verified()])
            .when_async(UserCommand::StartLogin {
                challenge_id: c,
                password: Password::parse("correct horse battery").unwrap(),
                at: t(3),
            })
            .await
            .then_expect_events(vec![UserEvent::LoginPasswordAccepted {
                challenge_id: c,
                accepted_at: t(3),
            }]);
    }

    #[tokio::test]
    async fn login_with_wrong_password_is_refused_without_an_event() {
        framework()
            .given(vec![registered(), verified()])
            .when_async(UserCommand::StartLogin {
                challenge_id: Uuid::from_u128(7),
                password: Password::parse("wrong password here").unwrap(),
                at: t(3),
            })
            .await
            .then_expect_error(UserError::WrongPassword);
    }

    #[tokio::test]
    async fn unverified_email_is_refused_only_after_the_password() {
        framework()
            .given(vec![registered()])
            .when_async(UserCommand::StartLogin {
                challenge_id: Uuid::from_u128(7),
                password: Password::parse("correct horse battery").unwrap(),
                at: t(3),
            })
            .await
            .then_expect_error(UserError::EmailNotVerified);
        framework()
            .given(vec![registered()])
            .when_async(UserCommand::StartLogin {
                challenge_id: Uuid::from_u128(7),
                password: Password::parse("wrong password here").unwrap(),
                at: t(3),
            })
            .await
            .then_expect_error(UserError::WrongPassword);
    }

    #[tokio::test]
    async fn unknown_user_cannot_log_in_or_update() {
        framework()
            .given_no_previous_events()
            .when_async(UserCommand::UpdateProfile { name: None, bio: Some(Sealed("b".into())), at: t(1) })
            .await
            .then_expect_error(UserError::NotFound);
    }

    #[tokio::test]
    async fn profile_update_emits_changed_fields_only() {
        framework()
            .given(vec![registered()])
            .when_async(UserCommand::UpdateProfile { name: None, bio: Some(Sealed("b".into())), at: t(4) })
            .await
            .then_expect_events(vec![UserEvent::ProfileUpdated {
                name: None,
                bio: Some(Sealed("b".into())),
                updated_at: t(4),
            }]);
        framework()
            .given(vec![registered()])
            .when_async(UserCommand::UpdateProfile { name: None, bio: None, at: t(4) })
            .await
            .then_expect_events(vec![]);
    }

    #[tokio::test]
    async fn sms_two_factor_needs_a_verified_phone() {
        let added = UserEvent::PhoneAdded {
            phone: Sealed("p".into()),
            phone_hash: Digest("ph".into()),
            challenge_id: Uuid::from_u128(8),
            added_at: t(2),
        };
        framework()
            .given(vec![registered(), verified(), added.clone()])
            .when_async(UserCommand::SetTwoFactorChannel { channel: OtpChannel::Sms, at: t(3) })
            .await
            .then_expect_error(UserError::PhoneNotVerified);
        framework()
            .given(vec![
                registered(),
                verified(),
                added,
                UserEvent::PhoneVerified {
                    challenge_id: Uuid::from_u128(8),
                    verified_at: t(3),
                    phone: None,
                    phone_hash: None,
                    replaced_phone_hash: None,
                },
            ])
            .when_async(UserCommand::SetTwoFactorChannel { channel: OtpChannel::Sms, at: t(4) })
            .await
            .then_expect_events(vec![UserEvent::TwoFactorChannelChanged {
                channel: OtpChannel::Sms,
                changed_at: t(4),
            }]);
    }

    fn phone_added(n: u128, hash: &str) -> UserEvent {
        UserEvent::PhoneAdded {
            phone: Sealed(format!("p{n}")),
            phone_hash: Digest(hash.into()),
            challenge_id: Uuid::from_u128(n),
            added_at: t(2),
        }
    }

    fn phone_verified(n: u128, hash: &str, replaced: Option<&str>) -> UserEvent {
        UserEvent::PhoneVerified {
            challenge_id: Uuid::from_u128(n),
            verified_at: t(3),
            phone: Some(Sealed(format!("p{n}"))),
            phone_hash: Some(Digest(hash.into())),
            replaced_phone_hash: replaced.map(|h| Digest(h.into())),
        }
    }

    #[tokio::test]
    async fn a_pending_phone_is_not_the_accounts_phone_until_verified() {
        let mut user = User::default();
        for e in [registered(), verified(), phone_added(8, "a")] {
            user.apply(e);
        }
        assert_eq!(user.phone, None, "a pending number is no channel and no login route");
        assert!(!user.phone_verified);
        user.apply(phone_verified(8, "a", None));
        assert_eq!(user.phone, Some(Sealed("p8".into())));
        assert_eq!(user.phone_hash, Some(Digest("a".into())));
        assert_eq!(user.pending_phone, None);
        // A second number stays pending while the first one keeps working.
        user.apply(phone_added(9, "b"));
        assert_eq!(user.phone, Some(Sealed("p8".into())));
        assert!(user.phone_verified);
    }

    #[tokio::test]
    async fn verifying_a_replacement_names_the_number_it_replaces() {
        framework()
            .given(vec![
                registered(),
                verified(),
                phone_added(8, "a"),
                phone_verified(8, "a", None),
                phone_added(9, "b"),
            ])
            .when_async(UserCommand::VerifyPhone { challenge_id: Uuid::from_u128(9), at: t(3) })
            .await
            .then_expect_events(vec![phone_verified(9, "b", Some("a"))]);
        // Verifying again is a no-op; another challenge is refused.
        framework()
            .given(vec![registered(), verified(), phone_added(8, "a"), phone_verified(8, "a", None)])
            .when_async(UserCommand::VerifyPhone { challenge_id: Uuid::from_u128(8), at: t(4) })
            .await
            .then_expect_events(vec![]);
        framework()
            .given(vec![registered(), verified(), phone_added(8, "a")])
            .when_async(UserCommand::VerifyPhone { challenge_id: Uuid::from_u128(7), at: t(4) })
            .await
            .then_expect_error(UserError::WrongChallenge);
    }

    #[tokio::test]
    async fn removing_the_phone_names_its_hash_but_never_locks_a_phone_only_account_out() {
        framework()
            .given(vec![registered(), verified(), phone_added(8, "a"), phone_verified(8, "a", None)])
            .when_async(UserCommand::RemovePhone { at: t(5) })
            .await
            .then_expect_events(vec![UserEvent::PhoneRemoved {
                phone_hash: Some(Digest("a".into())),
                removed_at: t(5),
            }]);
        let by_phone = UserEvent::UserRegisteredWithPhone {
            user_id: uid(),
            phone: Sealed("p".into()),
            phone_hash: Digest("ph".into()),
            challenge_id: challenge(),
            registered_at: t(1),
        };
        framework()
            .given(vec![by_phone])
            .when_async(UserCommand::RemovePhone { at: t(5) })
            .await
            .then_expect_error(UserError::LastSignInMethod);
    }

    #[tokio::test]
    async fn an_unverified_registration_expires_after_a_day_and_is_gone() {
        let day = 24 * 3600;
        framework()
            .given(vec![registered()])
            .when_async(UserCommand::ExpireRegistration { at: t(day - 10) })
            .await
            .then_expect_error(UserError::NotExpiredYet);
        framework()
            .given(vec![registered(), verified()])
            .when_async(UserCommand::ExpireRegistration { at: t(2 * day) })
            .await
            .then_expect_error(UserError::EmailAlreadyVerified);
        framework()
            .given(vec![registered()])
            .when_async(UserCommand::ExpireRegistration { at: t(day + 1) })
            .await
            .then_expect_events(vec![UserEvent::RegistrationExpired { expired_at: t(day + 1) }]);
        framework()
            .given(vec![registered(), UserEvent::RegistrationExpired { expired_at: t(day + 1) }])
            .when_async(UserCommand::UpdateProfile {
                name: None,
                bio: Some(Sealed("b".into())),
                at: t(day + 2),
            })
            .await
            .then_expect_error(UserError::NotFound);
    }

    #[tokio::test]
    async fn a_reset_token_works_once() {
        let reset = UserEvent::PasswordReset {
            reset_id: Uuid::from_u128(11),
            password_hash: "hash:new password!!".into(),
            delivery_id: None,
            reset_at: t(5),
        };
        framework()
            .given(vec![registered(), verified()])
            .when_async(UserCommand::ResetPassword {
                reset_id: Uuid::from_u128(11),
                password_hash: "hash:new password!!".into(),
                delivery_id: None,
                at: t(5),
            })
            .await
            .then_expect_events(vec![reset.clone()]);
        framework()
            .given(vec![registered(), verified(), reset.clone()])
            .when_async(UserCommand::ResetPassword {
                reset_id: Uuid::from_u128(11),
                password_hash: "hash:other".into(),
                delivery_id: None,
                at: t(6),
            })
            .await
            .then_expect_error(UserError::ResetAlreadyUsed);
        // The new password logs in.
        framework()
            .given(vec![registered(), verified(), reset])
            .when_async(UserCommand::StartLogin {
                challenge_id: Uuid::from_u128(7),
                password: Password::parse_for_login("new password!!").unwrap(),
                at: t(7),
            })
            .await
            .then_expect_events(vec![UserEvent::LoginPasswordAccepted {
                challenge_id: Uuid::from_u128(7),
                accepted_at: t(7),
            }]);
    }

    #[tokio::test]
    async fn phone_registration_has_no_password() {
        let by_phone = UserEvent::UserRegisteredWithPhone {
            user_id: uid(),
            phone: Sealed("p".into()),
            phone_hash: Digest("ph".into()),
            challenge_id: challenge(),
            registered_at: t(0),
        };
        framework()
            .given(vec![by_phone])
            .when_async(UserCommand::StartLogin {
                challenge_id: Uuid::from_u128(7),
                password: Password::parse_for_login("anything at all").unwrap(),
                at: t(1),
            })
            .await
            .then_expect_error(UserError::WrongPassword);
    }
}

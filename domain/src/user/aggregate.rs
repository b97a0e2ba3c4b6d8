use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{UserCommand, UserEvent};
use crate::services::UserServices;
use crate::values::Sealed;

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
        }
    }
}

/// State of one account, rebuilt from its events.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: Option<Uuid>,
    /// Sealed email, to address mail to the account.
    pub email: Option<Sealed>,
    pub password_hash: Option<String>,
    pub email_verified: bool,
    pub email_challenge_id: Option<Uuid>,
    pub registered_at: Option<DateTime<Utc>>,
    pub consecutive_login_failures: u32,
}

impl User {
    fn require_registered(&self) -> Result<Uuid, UserError> {
        self.id.ok_or(UserError::NotFound)
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
            UserCommand::VerifyEmail { challenge_id, at } => {
                self.require_registered()?;
                if self.email_verified {
                    return Err(UserError::EmailAlreadyVerified);
                }
                if self.email_challenge_id != Some(challenge_id) {
                    return Err(UserError::WrongChallenge);
                }
                sink.write(UserEvent::EmailVerified { challenge_id, verified_at: at }, self).await;
            }
            UserCommand::StartLogin { challenge_id, password, at } => {
                self.require_registered()?;
                let hash = self.password_hash.clone().unwrap_or_default();
                if !services.passwords.verify(&hash, password.expose()).await {
                    let event = UserEvent::LoginPasswordRejected {
                        consecutive_failures: self.consecutive_login_failures.saturating_add(1),
                        rejected_at: at,
                    };
                    sink.write(event, self).await;
                    return Ok(());
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
                ..
            } => {
                self.id = Some(user_id);
                self.email = Some(email);
                self.password_hash = Some(password_hash);
                self.email_challenge_id = Some(email_challenge_id);
                self.registered_at = Some(registered_at);
            }
            UserEvent::DuplicateRegistrationAttempted { .. } | UserEvent::ProfileUpdated { .. } => {}
            UserEvent::EmailVerified { .. } => self.email_verified = true,
            UserEvent::LoginPasswordAccepted { .. } => self.consecutive_login_failures = 0,
            UserEvent::LoginPasswordRejected { consecutive_failures, .. } => {
                self.consecutive_login_failures = consecutive_failures;
            }
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
        async fn verify(&self, phc_hash: &str, candidate: &str) -> bool {
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
        UserEvent::EmailVerified { challenge_id: challenge(), verified_at: t(1) }
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
            .when_async(UserCommand::VerifyEmail { challenge_id: Uuid::from_u128(9), at: t(1) })
            .await
            .then_expect_error(UserError::WrongChallenge);
        framework()
            .given(vec![registered()])
            .when_async(UserCommand::VerifyEmail { challenge_id: challenge(), at: t(1) })
            .await
            .then_expect_events(vec![verified()]);
        framework()
            .given(vec![registered(), verified()])
            .when_async(UserCommand::VerifyEmail { challenge_id: challenge(), at: t(2) })
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
    async fn login_with_wrong_password_counts_failures() {
        framework()
            .given(vec![
                registered(),
                verified(),
                UserEvent::LoginPasswordRejected { consecutive_failures: 1, rejected_at: t(2) },
            ])
            .when_async(UserCommand::StartLogin {
                challenge_id: Uuid::from_u128(7),
                password: Password::parse("wrong password here").unwrap(),
                at: t(3),
            })
            .await
            .then_expect_events(vec![UserEvent::LoginPasswordRejected {
                consecutive_failures: 2,
                rejected_at: t(3),
            }]);
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
            .then_expect_events(vec![UserEvent::LoginPasswordRejected {
                consecutive_failures: 1,
                rejected_at: t(3),
            }]);
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
}

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
            username: None,
            first_name: None,
            last_name: None,
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
            username: None,
            first_name: None,
            last_name: None,
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
        .then_expect_events(vec![UserEvent::LoginPasswordAccepted { challenge_id: c, accepted_at: t(3) }]);
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
        .when_async(UserCommand::UpdateProfile { name: None, bio: Some(Sealed("b".into())), at: t(day + 2) })
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

#[tokio::test]
async fn registration_sets_the_handle_and_names_in_the_same_append() {
    let name = crate::values::Username::parse("night_owl").unwrap();
    framework()
        .given_no_previous_events()
        .when_async(UserCommand::Register {
            user_id: uid(),
            email: Sealed("sealed-email".into()),
            email_hash: Digest("ab".into()),
            name: Sealed("sealed-name".into()),
            password_hash: "hash:correct horse battery".into(),
            email_challenge_id: challenge(),
            username: Some(name.clone()),
            first_name: Some(Sealed("f".into())),
            last_name: Some(Sealed("l".into())),
            at: t(0),
        })
        .await
        .then_expect_events(vec![
            registered(),
            UserEvent::LegalNameSet {
                first_name: Sealed("f".into()),
                last_name: Sealed("l".into()),
                set_at: t(0),
            },
            UserEvent::UsernameChanged { username: name, previous: None, changed_at: t(0) },
        ]);
}

#[tokio::test]
async fn a_handle_change_names_the_previous_one_and_the_same_name_is_no_change() {
    let old = crate::values::Username::parse("night_owl").unwrap();
    let new = crate::values::Username::parse("day_owl").unwrap();
    let set = UserEvent::UsernameChanged { username: old.clone(), previous: None, changed_at: t(0) };
    framework()
        .given(vec![registered(), set.clone()])
        .when_async(UserCommand::ChangeUsername { username: new.clone(), at: t(9) })
        .await
        .then_expect_events(vec![UserEvent::UsernameChanged {
            username: new,
            previous: Some(old.clone()),
            changed_at: t(9),
        }]);
    framework()
        .given(vec![registered(), set])
        .when_async(UserCommand::ChangeUsername { username: old, at: t(9) })
        .await
        .then_expect_events(vec![]);
}

#[test]
fn username_rules() {
    use crate::values::Username;
    assert_eq!(Username::parse(" Night_Owl ").unwrap().as_str(), "night_owl");
    for bad in ["ab", "12345", "admin", "Me", "has space", "dash-ed", &"a".repeat(31)] {
        assert!(Username::parse(bad).is_err(), "{bad}");
    }
    assert!(Username::parse("user-12345678").is_err(), "the generated form cannot be chosen");
    assert_eq!(Username::parse_lookup("USER-12345678").unwrap().as_str(), "user-12345678");
    assert_eq!(Username::generated(42).as_str(), "user-00000042");
}

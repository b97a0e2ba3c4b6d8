use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{PasskeyCommand, PasskeyEvent};
use crate::values::Sealed;

/// Passkeys one account may hold.
pub const MAX_PASSKEYS: usize = 20;

/// Refusals of `Passkeys`; `code()` is the stable API error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasskeyError {
    #[error("this passkey is already registered")]
    AlreadyRegistered,
    #[error("no such passkey")]
    NotFound,
    #[error("too many passkeys; remove one first")]
    TooMany,
    #[error("the passkeys belong to another account")]
    WrongAccount,
}

impl PasskeyError {
    /// Stable snake_case code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlreadyRegistered => "passkey_exists",
            Self::NotFound => "passkey_not_found",
            Self::TooMany => "too_many_passkeys",
            Self::WrongAccount => "passkey_not_found",
        }
    }
}

/// One registered credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPasskey {
    /// base64url (no padding) of the raw credential id.
    pub credential_id: String,
    /// The public credential as the relying-party library serialises it.
    pub credential: serde_json::Value,
    pub label: Option<Sealed>,
    /// Highest sign counter accepted so far.
    pub sign_count: u32,
    pub registered_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// The passkeys of one account.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Passkeys {
    pub user_id: Option<Uuid>,
    pub passkeys: Vec<StoredPasskey>,
}

impl Passkeys {
    /// The credential `credential_id`, if registered.
    pub fn find(&self, credential_id: &str) -> Option<&StoredPasskey> {
        self.passkeys.iter().find(|p| p.credential_id == credential_id)
    }

    fn find_mut(&mut self, credential_id: &str) -> Option<&mut StoredPasskey> {
        self.passkeys.iter_mut().find(|p| p.credential_id == credential_id)
    }
}

impl Aggregate for Passkeys {
    const TYPE: &'static str = "passkeys";
    type Command = PasskeyCommand;
    type Event = PasskeyEvent;
    type Error = PasskeyError;
    type Services = ();

    async fn handle(
        &mut self,
        command: PasskeyCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), PasskeyError> {
        match command {
            PasskeyCommand::Register { user_id, credential_id, credential, label, sign_count, at } => {
                if self.user_id.is_some_and(|u| u != user_id) {
                    return Err(PasskeyError::WrongAccount);
                }
                if self.find(&credential_id).is_some() {
                    return Err(PasskeyError::AlreadyRegistered);
                }
                if self.passkeys.len() >= MAX_PASSKEYS {
                    return Err(PasskeyError::TooMany);
                }
                let event = PasskeyEvent::PasskeyRegistered {
                    user_id,
                    credential_id,
                    credential,
                    label,
                    sign_count,
                    registered_at: at,
                };
                sink.write(event, self).await;
            }
            PasskeyCommand::Use { credential_id, counter, at } => {
                let stored = self.find(&credential_id).ok_or(PasskeyError::NotFound)?.sign_count;
                // WebAuthn §7.2 step 21: with either counter non-zero, the
                // new one must be greater; both zero = no counter support.
                let event = if (counter > 0 || stored > 0) && counter <= stored {
                    PasskeyEvent::PasskeyCounterRegressed {
                        credential_id,
                        presented_counter: counter,
                        stored_counter: stored,
                        detected_at: at,
                    }
                } else {
                    PasskeyEvent::PasskeyUsed { credential_id, counter, used_at: at }
                };
                sink.write(event, self).await;
            }
            PasskeyCommand::Remove { credential_id, at } => {
                if self.find(&credential_id).is_none() {
                    return Err(PasskeyError::NotFound);
                }
                sink.write(PasskeyEvent::PasskeyRemoved { credential_id, removed_at: at }, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: PasskeyEvent) {
        match event {
            PasskeyEvent::PasskeyRegistered {
                user_id,
                credential_id,
                credential,
                label,
                sign_count,
                registered_at,
            } => {
                self.user_id = Some(user_id);
                self.passkeys.push(StoredPasskey {
                    credential_id,
                    credential,
                    label,
                    sign_count,
                    registered_at,
                    last_used_at: None,
                });
            }
            PasskeyEvent::PasskeyUsed { credential_id, counter, used_at } => {
                if let Some(p) = self.find_mut(&credential_id) {
                    p.sign_count = p.sign_count.max(counter);
                    p.last_used_at = Some(used_at);
                }
            }
            PasskeyEvent::PasskeyCounterRegressed { .. } => {}
            PasskeyEvent::PasskeyRemoved { credential_id, .. } => {
                self.passkeys.retain(|p| p.credential_id != credential_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use serde_json::json;

    type PasskeysTest = TestFramework<Passkeys>;

    const USER: Uuid = Uuid::from_u128(1);

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }
    fn credential(id: &str) -> serde_json::Value {
        json!({"cred": {"cred_id": id, "counter": 0}})
    }
    fn registered(id: &str, sign_count: u32) -> PasskeyEvent {
        PasskeyEvent::PasskeyRegistered {
            user_id: USER,
            credential_id: id.into(),
            credential: credential(id),
            label: Some(Sealed("sealed-label".into())),
            sign_count,
            registered_at: t(0),
        }
    }
    fn register(id: &str) -> PasskeyCommand {
        PasskeyCommand::Register {
            user_id: USER,
            credential_id: id.into(),
            credential: credential(id),
            label: Some(Sealed("sealed-label".into())),
            sign_count: 0,
            at: t(0),
        }
    }
    fn used(id: &str, counter: u32, at: i64) -> PasskeyEvent {
        PasskeyEvent::PasskeyUsed { credential_id: id.into(), counter, used_at: t(at) }
    }

    #[test]
    fn register_records_the_public_credential() {
        PasskeysTest::with(())
            .given_no_previous_events()
            .when(register("a"))
            .then_expect_events(vec![registered("a", 0)]);
    }

    #[test]
    fn a_credential_id_is_registered_once() {
        PasskeysTest::with(())
            .given(vec![registered("a", 0)])
            .when(register("a"))
            .then_expect_error(PasskeyError::AlreadyRegistered);
    }

    #[test]
    fn another_account_cannot_register_into_these_passkeys() {
        PasskeysTest::with(())
            .given(vec![registered("a", 0)])
            .when(PasskeyCommand::Register {
                user_id: Uuid::from_u128(2),
                credential_id: "b".into(),
                credential: credential("b"),
                label: None,
                sign_count: 0,
                at: t(1),
            })
            .then_expect_error(PasskeyError::WrongAccount);
    }

    #[test]
    fn the_number_of_passkeys_is_capped() {
        let given: Vec<PasskeyEvent> = (0..MAX_PASSKEYS).map(|i| registered(&format!("k{i}"), 0)).collect();
        PasskeysTest::with(())
            .given(given)
            .when(register("one-more"))
            .then_expect_error(PasskeyError::TooMany);
    }

    #[test]
    fn an_increasing_counter_is_accepted() {
        PasskeysTest::with(())
            .given(vec![registered("a", 0), used("a", 1, 10)])
            .when(PasskeyCommand::Use { credential_id: "a".into(), counter: 2, at: t(20) })
            .then_expect_events(vec![used("a", 2, 20)]);
    }

    #[test]
    fn zero_counters_mean_no_counter_support() {
        PasskeysTest::with(())
            .given(vec![registered("a", 0), used("a", 0, 10)])
            .when(PasskeyCommand::Use { credential_id: "a".into(), counter: 0, at: t(20) })
            .then_expect_events(vec![used("a", 0, 20)]);
    }

    #[test]
    fn a_counter_that_does_not_increase_is_recorded_as_regressed() {
        for presented in [0, 4, 5] {
            PasskeysTest::with(())
                .given(vec![registered("a", 0), used("a", 5, 10)])
                .when(PasskeyCommand::Use { credential_id: "a".into(), counter: presented, at: t(20) })
                .then_expect_events(vec![PasskeyEvent::PasskeyCounterRegressed {
                    credential_id: "a".into(),
                    presented_counter: presented,
                    stored_counter: 5,
                    detected_at: t(20),
                }]);
        }
    }

    #[test]
    fn a_regression_does_not_move_the_stored_counter() {
        let mut p = Passkeys::default();
        p.apply(registered("a", 3));
        p.apply(PasskeyEvent::PasskeyCounterRegressed {
            credential_id: "a".into(),
            presented_counter: 1,
            stored_counter: 3,
            detected_at: t(5),
        });
        assert_eq!(p.find("a").unwrap().sign_count, 3);
        // The registration counter counts too.
        PasskeysTest::with(())
            .given(vec![registered("a", 3)])
            .when(PasskeyCommand::Use { credential_id: "a".into(), counter: 3, at: t(20) })
            .then_expect_events(vec![PasskeyEvent::PasskeyCounterRegressed {
                credential_id: "a".into(),
                presented_counter: 3,
                stored_counter: 3,
                detected_at: t(20),
            }]);
    }

    #[test]
    fn an_unknown_credential_cannot_be_used_or_removed() {
        PasskeysTest::with(())
            .given(vec![registered("a", 0)])
            .when(PasskeyCommand::Use { credential_id: "b".into(), counter: 1, at: t(1) })
            .then_expect_error(PasskeyError::NotFound);
        PasskeysTest::with(())
            .given(vec![registered("a", 0)])
            .when(PasskeyCommand::Remove { credential_id: "b".into(), at: t(1) })
            .then_expect_error(PasskeyError::NotFound);
    }

    #[test]
    fn remove_then_the_credential_is_gone() {
        let removed = PasskeyEvent::PasskeyRemoved { credential_id: "a".into(), removed_at: t(5) };
        PasskeysTest::with(())
            .given(vec![registered("a", 0)])
            .when(PasskeyCommand::Remove { credential_id: "a".into(), at: t(5) })
            .then_expect_events(vec![removed.clone()]);
        PasskeysTest::with(())
            .given(vec![registered("a", 0), removed])
            .when(PasskeyCommand::Use { credential_id: "a".into(), counter: 1, at: t(6) })
            .then_expect_error(PasskeyError::NotFound);
    }
}

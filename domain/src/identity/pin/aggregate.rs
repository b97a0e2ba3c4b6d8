use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{PinCommand, PinEvent};
use crate::services::PasswordVerifier;
use crate::values::Digest;

/// Consecutive wrong PINs that disable the PIN of a device (issue 4).
pub const MAX_PIN_FAILURES: u32 = 5;

/// Refusals of a `DevicePin`; `code()` is the stable API error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    #[error("no PIN is set for this device")]
    NotSet,
    #[error("the PIN was disabled after too many wrong attempts; sign in fully before setting it again")]
    ReauthenticationRequired,
    #[error("the PIN belongs to another account")]
    WrongOwner,
    #[error("the device secret does not match")]
    WrongSecret,
}

impl PinError {
    /// Stable snake_case code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotSet => "pin_not_set",
            Self::ReauthenticationRequired => "reauthentication_required",
            Self::WrongOwner => "pin_not_set",
            Self::WrongSecret => "invalid_pin",
        }
    }
}

/// Services of the `DevicePin` aggregate: the slow hash check, run off the
/// async workers by the implementation.
pub struct PinServices {
    /// Checks a candidate PIN against the stored PHC hash (the
    /// implementation applies the server pepper).
    pub verifier: Box<dyn PasswordVerifier>,
}

impl PinServices {
    pub fn new(verifier: impl PasswordVerifier + 'static) -> Self {
        Self { verifier: Box::new(verifier) }
    }
}

/// Lifecycle of a device PIN.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PinStatus {
    #[default]
    Absent,
    Enabled,
    Disabled,
    Removed,
}

/// State of the PIN of one device.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct DevicePin {
    pub user_id: Option<Uuid>,
    pub device_id: Option<String>,
    pub status: PinStatus,
    pub pin_hash: Option<String>,
    /// SHA-256 of the device secret the PIN was set with.
    #[serde(default)]
    pub secret_hash: Option<Digest>,
    pub consecutive_failures: u32,
    pub disabled_at: Option<DateTime<Utc>>,
}

impl Aggregate for DevicePin {
    const TYPE: &'static str = "device_pin";
    type Command = PinCommand;
    type Event = PinEvent;
    type Error = PinError;
    type Services = PinServices;

    async fn handle(
        &mut self,
        command: PinCommand,
        services: &PinServices,
        sink: &EventSink<Self>,
    ) -> Result<(), PinError> {
        match command {
            PinCommand::Set { user_id, device_id, pin_hash, secret_hash, authenticated_at, at } => {
                if self.user_id.is_some_and(|owner| owner != user_id) {
                    return Err(PinError::WrongOwner);
                }
                if self.status == PinStatus::Disabled
                    && self.disabled_at.is_none_or(|d| authenticated_at <= d)
                {
                    return Err(PinError::ReauthenticationRequired);
                }
                let event = PinEvent::PinSet {
                    user_id,
                    device_id: device_id.as_str().to_owned(),
                    pin_hash,
                    secret_hash: Some(secret_hash),
                    set_at: at,
                };
                sink.write(event, self).await;
            }
            PinCommand::Verify { candidate, secret_hash, at } => {
                let hash = match self.status {
                    PinStatus::Absent | PinStatus::Removed => return Err(PinError::NotSet),
                    PinStatus::Enabled | PinStatus::Disabled => self.pin_hash.clone().unwrap_or_default(),
                };
                // Possession first: without the device's secret the PIN is
                // not tried and nothing is counted.
                let held = self.secret_hash.as_ref().is_some_and(|h| {
                    bool::from(subtle::ConstantTimeEq::ct_eq(h.0.as_bytes(), secret_hash.0.as_bytes()))
                });
                if !held {
                    return Err(PinError::WrongSecret);
                }
                // Verified even when disabled, so both answers take as long.
                let subject = self.user_id.unwrap_or_default();
                let matches = services.verifier.verify(subject, &hash, candidate.expose()).await;
                if self.status == PinStatus::Disabled {
                    sink.write(PinEvent::PinVerificationRefused { refused_at: at }, self).await;
                } else if matches {
                    sink.write(PinEvent::PinVerified { verified_at: at }, self).await;
                } else {
                    let consecutive = self.consecutive_failures.saturating_add(1);
                    sink.write(PinEvent::PinVerificationFailed { consecutive, failed_at: at }, self).await;
                    if consecutive >= MAX_PIN_FAILURES {
                        sink.write(PinEvent::PinDisabled { disabled_at: at }, self).await;
                    }
                }
            }
            PinCommand::Remove { at } => match self.status {
                PinStatus::Absent | PinStatus::Removed => return Err(PinError::NotSet),
                PinStatus::Enabled | PinStatus::Disabled => {
                    sink.write(PinEvent::PinRemoved { removed_at: at }, self).await;
                }
            },
        }
        Ok(())
    }

    fn apply(&mut self, event: PinEvent) {
        match event {
            PinEvent::PinSet { user_id, device_id, pin_hash, secret_hash, .. } => {
                self.user_id = Some(user_id);
                self.device_id = Some(device_id);
                self.pin_hash = Some(pin_hash);
                self.secret_hash = secret_hash;
                self.status = PinStatus::Enabled;
                self.consecutive_failures = 0;
                self.disabled_at = None;
            }
            PinEvent::PinVerified { .. } => self.consecutive_failures = 0,
            PinEvent::PinVerificationFailed { consecutive, .. } => self.consecutive_failures = consecutive,
            PinEvent::PinDisabled { disabled_at } => {
                self.status = PinStatus::Disabled;
                self.disabled_at = Some(disabled_at);
            }
            PinEvent::PinVerificationRefused { .. } => {}
            PinEvent::PinRemoved { .. } => {
                self.status = PinStatus::Removed;
                self.pin_hash = None;
                self.secret_hash = None;
                self.consecutive_failures = 0;
                self.disabled_at = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pin::DeviceId;
    use crate::values::Pin;
    use cqrs_es::test::TestFramework;

    struct PlainVerifier;
    #[async_trait::async_trait]
    impl PasswordVerifier for PlainVerifier {
        async fn verify(&self, _subject: Uuid, phc_hash: &str, candidate: &str) -> bool {
            phc_hash == format!("hash:{candidate}")
        }
    }

    fn framework() -> TestFramework<DevicePin> {
        TestFramework::with(PinServices::new(PlainVerifier))
    }
    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }
    fn uid() -> Uuid {
        Uuid::from_u128(1)
    }
    fn set_at(at: i64) -> PinEvent {
        PinEvent::PinSet {
            user_id: uid(),
            device_id: "phone-1".into(),
            pin_hash: "hash:1234".into(),
            secret_hash: Some(secret()),
            set_at: t(at),
        }
    }
    fn set_cmd(authenticated_at: i64, at: i64) -> PinCommand {
        PinCommand::Set {
            user_id: uid(),
            device_id: DeviceId::parse("phone-1").unwrap(),
            pin_hash: "hash:1234".into(),
            secret_hash: secret(),
            authenticated_at: t(authenticated_at),
            at: t(at),
        }
    }
    fn secret() -> Digest {
        Digest("5ec12e7".into())
    }
    fn verify(pin: &str, at: i64) -> PinCommand {
        PinCommand::Verify { candidate: Pin::parse(pin).unwrap(), secret_hash: secret(), at: t(at) }
    }

    #[tokio::test]
    async fn without_the_device_secret_the_pin_is_not_tried_nor_counted() {
        let wrong = || PinCommand::Verify {
            candidate: Pin::parse("1234").unwrap(),
            secret_hash: Digest("other".into()),
            at: t(2),
        };
        framework().given(vec![set_at(0)]).when_async(wrong()).await.then_expect_error(PinError::WrongSecret);
        // A PIN set before secrets existed signs in no more.
        let legacy = PinEvent::PinSet {
            user_id: uid(),
            device_id: "phone-1".into(),
            pin_hash: "hash:1234".into(),
            secret_hash: None,
            set_at: t(0),
        };
        framework()
            .given(vec![legacy])
            .when_async(verify("1234", 2))
            .await
            .then_expect_error(PinError::WrongSecret);
    }
    fn failed(n: u32, at: i64) -> PinEvent {
        PinEvent::PinVerificationFailed { consecutive: n, failed_at: t(at) }
    }
    fn four_failures() -> Vec<PinEvent> {
        let mut given = vec![set_at(0)];
        given.extend((1..=4).map(|n| failed(n, i64::from(n))));
        given
    }

    #[tokio::test]
    async fn set_stores_the_hash_only() {
        framework()
            .given_no_previous_events()
            .when_async(set_cmd(0, 0))
            .await
            .then_expect_events(vec![set_at(0)]);
    }

    #[tokio::test]
    async fn the_right_pin_verifies_and_resets_the_count() {
        framework()
            .given(vec![set_at(0), failed(1, 1)])
            .when_async(verify("1234", 2))
            .await
            .then_expect_events(vec![PinEvent::PinVerified { verified_at: t(2) }]);
        framework()
            .given(vec![set_at(0), failed(1, 1), PinEvent::PinVerified { verified_at: t(2) }])
            .when_async(verify("0000", 3))
            .await
            .then_expect_events(vec![failed(1, 3)]);
    }

    #[tokio::test]
    async fn the_fifth_wrong_pin_disables() {
        framework()
            .given(four_failures())
            .when_async(verify("9999", 5))
            .await
            .then_expect_events(vec![failed(5, 5), PinEvent::PinDisabled { disabled_at: t(5) }]);
    }

    #[tokio::test]
    async fn a_disabled_pin_refuses_even_the_right_pin_and_records_it() {
        let mut given = four_failures();
        given.extend([failed(5, 5), PinEvent::PinDisabled { disabled_at: t(5) }]);
        framework()
            .given(given)
            .when_async(verify("1234", 6))
            .await
            .then_expect_events(vec![PinEvent::PinVerificationRefused { refused_at: t(6) }]);
    }

    #[tokio::test]
    async fn re_enabling_needs_an_authentication_after_the_lock() {
        let mut given = four_failures();
        given.extend([failed(5, 5), PinEvent::PinDisabled { disabled_at: t(5) }]);
        // A session authenticated before the lock cannot re-enable it…
        framework()
            .given(given.clone())
            .when_async(set_cmd(3, 10))
            .await
            .then_expect_error(PinError::ReauthenticationRequired);
        // …a full login after it can, and the count starts over.
        framework()
            .given(given.clone())
            .when_async(set_cmd(8, 10))
            .await
            .then_expect_events(vec![set_at(10)]);
        given.push(set_at(10));
        framework()
            .given(given)
            .when_async(verify("1234", 11))
            .await
            .then_expect_events(vec![PinEvent::PinVerified { verified_at: t(11) }]);
    }

    #[tokio::test]
    async fn remove_then_verify_is_not_set() {
        framework()
            .given(vec![set_at(0)])
            .when_async(PinCommand::Remove { at: t(1) })
            .await
            .then_expect_events(vec![PinEvent::PinRemoved { removed_at: t(1) }]);
        framework()
            .given(vec![set_at(0), PinEvent::PinRemoved { removed_at: t(1) }])
            .when_async(verify("1234", 2))
            .await
            .then_expect_error(PinError::NotSet);
        framework()
            .given_no_previous_events()
            .when_async(PinCommand::Remove { at: t(1) })
            .await
            .then_expect_error(PinError::NotSet);
    }

    #[tokio::test]
    async fn another_user_cannot_take_over_the_stream() {
        framework()
            .given(vec![set_at(0)])
            .when_async(PinCommand::Set {
                user_id: Uuid::from_u128(2),
                device_id: DeviceId::parse("phone-1").unwrap(),
                pin_hash: "hash:5555".into(),
                secret_hash: secret(),
                authenticated_at: t(1),
                at: t(1),
            })
            .await
            .then_expect_error(PinError::WrongOwner);
    }
}

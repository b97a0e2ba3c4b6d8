//! The `DevicePin` aggregate: a PIN bound to one device of one user, so a
//! returning user comes back by PIN without logging in again (seed 003,
//! issue 4). Aggregate id = `<user_id>:<device_id>` ([`pin_aggregate_id`]).
//!
//! Rules:
//! - Only an argon2id hash of the PIN is stored (the commands layer peppers
//!   the PIN with a server key first, so the hash of a 4-digit PIN cannot be
//!   brute-forced from the events alone); the PIN never appears in an event.
//! - [`MAX_PIN_FAILURES`] consecutive wrong PINs disable the PIN for that
//!   device (`PinDisabled`); while disabled every attempt — even with the
//!   right PIN — is refused and recorded (`PinVerificationRefused`).
//! - Re-enabling = setting a PIN again (`SetPin`), which for a disabled PIN
//!   requires an authentication *after* the PIN was disabled: the user
//!   "logs in fully" (password + second factor, or a step-up) and sets a
//!   PIN. A PIN login cannot provide that proof, since the PIN is disabled.

mod aggregate;
mod commands;
mod events;

pub use aggregate::{DevicePin, PinError, PinServices, PinStatus, MAX_PIN_FAILURES};
pub use commands::PinCommand;
pub use events::PinEvent;

use crate::values::InvalidValue;

/// A client-generated device id (`X-Device-Id`): trimmed, 1–64 characters,
/// no control characters — the same rule the api applies to the header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceId(String);

/// Longest device id, in characters.
pub const DEVICE_ID_MAX_CHARS: usize = 64;

impl DeviceId {
    /// # Errors
    /// [`InvalidValue`] when empty, longer than 64 characters or holding
    /// control characters.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim();
        if s.is_empty() || s.chars().count() > DEVICE_ID_MAX_CHARS {
            return Err(InvalidValue { field: "device_id", reason: "must be 1 to 64 characters".into() });
        }
        if s.chars().any(char::is_control) {
            return Err(InvalidValue {
                field: "device_id",
                reason: "must not contain control characters".into(),
            });
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as sent by the client.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Aggregate id of the PIN of `device` for `user_id`: `<user_id>:<device_id>`.
pub fn pin_aggregate_id(user_id: uuid::Uuid, device: &DeviceId) -> String {
    format!("{user_id}:{}", device.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_bounded() {
        assert_eq!(DeviceId::parse(" phone-1 ").unwrap().as_str(), "phone-1");
        assert!(DeviceId::parse("").is_err());
        assert!(DeviceId::parse(&"x".repeat(65)).is_err());
        assert!(DeviceId::parse("a\nb").is_err());
        let id = pin_aggregate_id(uuid::Uuid::from_u128(1), &DeviceId::parse("d:1").unwrap());
        assert_eq!(id, "00000000-0000-0000-0000-000000000001:d:1");
    }
}

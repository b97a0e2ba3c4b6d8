use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::Digest;

/// Events of a `DevicePin`. None carries the PIN (decided 6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum PinEvent {
    /// A PIN was set for the device (replacing any earlier one, re-enabling
    /// a disabled one, and clearing the failure count).
    PinSet {
        user_id: Uuid,
        device_id: String,
        /// argon2id PHC hash of the PIN peppered with a server key, sealed
        /// with the user's key (plain in events before issue 14).
        pin_hash: String,
        /// SHA-256 of the device secret (absent before issue 14: such a PIN
        /// signs in no more until set again).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_hash: Option<Digest>,
        set_at: DateTime<Utc>,
    },
    /// The right PIN was typed; the failure count restarts.
    PinVerified { verified_at: DateTime<Utc> },
    /// A wrong PIN; `consecutive` counts wrong PINs since the last success.
    PinVerificationFailed { consecutive: u32, failed_at: DateTime<Utc> },
    /// Too many wrong PINs: the PIN stays unusable until set again after a
    /// full login.
    PinDisabled { disabled_at: DateTime<Utc> },
    /// An attempt on a disabled PIN was refused (whatever was typed).
    PinVerificationRefused { refused_at: DateTime<Utc> },
    /// The user removed the device's PIN.
    PinRemoved { removed_at: DateTime<Utc> },
}

impl DomainEvent for PinEvent {
    fn event_type(&self) -> String {
        match self {
            Self::PinSet { .. } => "PinSet",
            Self::PinVerified { .. } => "PinVerified",
            Self::PinVerificationFailed { .. } => "PinVerificationFailed",
            Self::PinDisabled { .. } => "PinDisabled",
            Self::PinVerificationRefused { .. } => "PinVerificationRefused",
            Self::PinRemoved { .. } => "PinRemoved",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

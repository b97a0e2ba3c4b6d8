use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::{Digest, Sealed};

/// Events of a `Totp`. None carries the secret in clear or a code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum TotpEvent {
    /// A new secret was generated; it is not in force until confirmed.
    TotpEnrollmentStarted {
        user_id: Uuid,
        /// The base32 secret, sealed with the user's data key.
        secret: Sealed,
        started_at: DateTime<Utc>,
    },
    /// A correct code confirmed the enrollment: TOTP is now the second factor.
    TotpEnabled {
        /// Keyed hashes (HMAC-SHA256, server key) of the recovery codes.
        recovery_codes: Vec<Digest>,
        /// The confirming code's step, used up.
        step: u64,
        enabled_at: DateTime<Utc>,
    },
    /// A code was accepted; its step can never be used again.
    TotpCodeAccepted { step: u64, accepted_at: DateTime<Utc> },
    /// A code was refused: wrong, or (`replayed`) of a step already used.
    TotpCodeRejected { replayed: bool, rejected_at: DateTime<Utc> },
    /// A recovery code was used up.
    RecoveryCodeUsed { code: Digest, remaining: u32, used_at: DateTime<Utc> },
    /// A recovery code that is not (or no longer) valid was typed.
    RecoveryCodeRejected { rejected_at: DateTime<Utc> },
    /// TOTP was turned off; secret and recovery codes are void.
    TotpDisabled { disabled_at: DateTime<Utc> },
}

impl DomainEvent for TotpEvent {
    fn event_type(&self) -> String {
        match self {
            Self::TotpEnrollmentStarted { .. } => "TotpEnrollmentStarted",
            Self::TotpEnabled { .. } => "TotpEnabled",
            Self::TotpCodeAccepted { .. } => "TotpCodeAccepted",
            Self::TotpCodeRejected { .. } => "TotpCodeRejected",
            Self::RecoveryCodeUsed { .. } => "RecoveryCodeUsed",
            Self::RecoveryCodeRejected { .. } => "RecoveryCodeRejected",
            Self::TotpDisabled { .. } => "TotpDisabled",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

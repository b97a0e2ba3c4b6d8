use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::{Digest, Sealed};

/// What a challenge proves once answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OtpPurpose {
    EmailVerification,
    PhoneVerification,
    TwoFactor,
    Login,
    PasswordReset,
}

/// Where the code is delivered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OtpChannel {
    #[default]
    Email,
    Sms,
    /// Nothing is sent: the user answers with a code from an authenticator
    /// app (RFC 6238) or a recovery code. The challenge's `code_mac` is then
    /// a server-side proof the TOTP check answers with (see `commands`).
    Totp,
}

impl OtpChannel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
            Self::Totp => "totp",
        }
    }
}

/// Events of an `OtpChallenge`. None carries the code (decided 6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum OtpEvent {
    /// A code was issued; the notifier delivers it from the delivery record
    /// whose id is the challenge id.
    OtpIssued {
        challenge_id: Uuid,
        /// The sealed delivery record carrying the code.
        delivery_id: Uuid,
        subject_id: Uuid,
        /// Key of the subject's OTP failure counter (`Throttle` stream).
        attempts_key: String,
        /// Where the code goes, sealed with the subject's key.
        recipient: Sealed,
        purpose: OtpPurpose,
        channel: OtpChannel,
        code_mac: Digest,
        issued_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    },
    /// A new code replaced the old one (resend).
    OtpReissued {
        delivery_id: Uuid,
        code_mac: Digest,
        issued_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    },
    OtpVerified {
        verified_at: DateTime<Utc>,
    },
    /// A wrong code; `failed_attempts` counts for this challenge.
    OtpVerificationFailed {
        failed_attempts: u32,
        failed_at: DateTime<Utc>,
    },
    /// The challenge accepts no further attempt.
    OtpChallengeLocked {
        locked_at: DateTime<Utc>,
    },
    /// The code reached the provider after `attempts` tries.
    OtpDelivered {
        attempts: u32,
        delivered_at: DateTime<Utc>,
    },
    /// Delivery finally failed after `attempts` tries; the client sees it on
    /// the challenge and can ask for a new code.
    OtpDeliveryFailed {
        attempts: u32,
        reason: String,
        failed_at: DateTime<Utc>,
    },
}

impl DomainEvent for OtpEvent {
    fn event_type(&self) -> String {
        match self {
            Self::OtpIssued { .. } => "OtpIssued",
            Self::OtpReissued { .. } => "OtpReissued",
            Self::OtpVerified { .. } => "OtpVerified",
            Self::OtpVerificationFailed { .. } => "OtpVerificationFailed",
            Self::OtpChallengeLocked { .. } => "OtpChallengeLocked",
            Self::OtpDelivered { .. } => "OtpDelivered",
            Self::OtpDeliveryFailed { .. } => "OtpDeliveryFailed",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

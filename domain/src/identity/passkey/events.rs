use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::Sealed;

/// Events of a user's `Passkeys`. Public key material only, never a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum PasskeyEvent {
    /// A credential was registered after a verified registration ceremony.
    PasskeyRegistered {
        user_id: Uuid,
        /// base64url (no padding) of the raw credential id.
        credential_id: String,
        /// The public credential (credential id, COSE public key, flags,
        /// counter) as webauthn-rs serialises its `Passkey`.
        credential: serde_json::Value,
        /// The user's label, sealed with the user's key (personal data).
        label: Option<Sealed>,
        /// Sign counter reported at registration.
        sign_count: u32,
        registered_at: DateTime<Utc>,
    },
    /// A verified assertion with a valid sign counter (login).
    PasskeyUsed { credential_id: String, counter: u32, used_at: DateTime<Utc> },
    /// An otherwise valid assertion whose sign counter did not increase: a
    /// possible clone of the authenticator. The assertion was refused.
    PasskeyCounterRegressed {
        credential_id: String,
        presented_counter: u32,
        stored_counter: u32,
        detected_at: DateTime<Utc>,
    },
    /// The user removed the credential.
    PasskeyRemoved { credential_id: String, removed_at: DateTime<Utc> },
}

impl DomainEvent for PasskeyEvent {
    fn event_type(&self) -> String {
        match self {
            Self::PasskeyRegistered { .. } => "PasskeyRegistered",
            Self::PasskeyUsed { .. } => "PasskeyUsed",
            Self::PasskeyCounterRegressed { .. } => "PasskeyCounterRegressed",
            Self::PasskeyRemoved { .. } => "PasskeyRemoved",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

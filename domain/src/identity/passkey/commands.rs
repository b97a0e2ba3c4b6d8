use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::values::Sealed;

/// Commands on a user's `Passkeys`.
#[derive(Debug, Clone)]
pub enum PasskeyCommand {
    /// Add a credential verified by a registration ceremony.
    Register {
        /// The account (= aggregate id = WebAuthn user handle).
        user_id: Uuid,
        /// base64url (no padding) of the raw credential id.
        credential_id: String,
        /// The public credential as the relying-party library serialises it.
        credential: serde_json::Value,
        /// The user's name for it, sealed with the user's key.
        label: Option<Sealed>,
        /// The authenticator's sign counter at registration.
        sign_count: u32,
        at: DateTime<Utc>,
    },
    /// A verified assertion of `credential_id` carried `counter`: accepted
    /// when the counter increased (or both are zero), otherwise recorded as
    /// a regression.
    Use { credential_id: String, counter: u32, at: DateTime<Utc> },
    /// Remove a credential.
    Remove { credential_id: String, at: DateTime<Utc> },
}

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::{Digest, Sealed};

/// Events of the `User` aggregate. Personal fields are [`Sealed`]; the
/// password appears only as an argon2id PHC hash (ARCHITECTURE decided 6, 7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    UserRegistered {
        user_id: Uuid,
        email: Sealed,
        email_hash: Digest,
        name: Sealed,
        password_hash: String,
        email_challenge_id: Uuid,
        registered_at: DateTime<Utc>,
    },
    DuplicateRegistrationAttempted {
        delivery_id: Uuid,
        attempted_at: DateTime<Utc>,
    },
    EmailVerified {
        challenge_id: Uuid,
        verified_at: DateTime<Utc>,
    },
    /// Password accepted; a two-factor challenge `challenge_id` follows.
    LoginPasswordAccepted {
        challenge_id: Uuid,
        accepted_at: DateTime<Utc>,
    },
    /// Wrong password. `consecutive_failures` counts since the last success.
    LoginPasswordRejected {
        consecutive_failures: u32,
        rejected_at: DateTime<Utc>,
    },
    ProfileUpdated {
        name: Option<Sealed>,
        bio: Option<Sealed>,
        updated_at: DateTime<Utc>,
    },
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            Self::UserRegistered { .. } => "UserRegistered",
            Self::DuplicateRegistrationAttempted { .. } => "DuplicateRegistrationAttempted",
            Self::EmailVerified { .. } => "EmailVerified",
            Self::LoginPasswordAccepted { .. } => "LoginPasswordAccepted",
            Self::LoginPasswordRejected { .. } => "LoginPasswordRejected",
            Self::ProfileUpdated { .. } => "ProfileUpdated",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

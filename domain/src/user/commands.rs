use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::values::{Digest, Password, Sealed};

/// Commands on a `User`. Personal fields arrive already sealed with the
/// subject key and the password already hashed: the aggregate never sees
/// plaintext personal data or stores a password.
#[derive(Debug, Clone)]
pub enum UserCommand {
    /// Create the account. `email_hash` is the keyed lookup hash of the
    /// normalised email; `email_challenge_id` names the `OtpChallenge` that
    /// will carry the verification code.
    Register {
        user_id: Uuid,
        email: Sealed,
        email_hash: Digest,
        name: Sealed,
        password_hash: String,
        email_challenge_id: Uuid,
        at: DateTime<Utc>,
    },
    /// Someone tried to register this account's email again; the owner is
    /// told by mail (`delivery_id` names the delivery record). No enumeration.
    NoteDuplicateRegistration { delivery_id: Uuid, at: DateTime<Utc> },
    /// The email verification challenge was answered correctly.
    VerifyEmail { challenge_id: Uuid, at: DateTime<Utc> },
    /// First login step: check the password; on success the caller issues
    /// the two-factor challenge `challenge_id`.
    StartLogin { challenge_id: Uuid, password: Password, at: DateTime<Utc> },
    /// Change profile fields; `None` leaves a field unchanged.
    UpdateProfile { name: Option<Sealed>, bio: Option<Sealed>, at: DateTime<Utc> },
}

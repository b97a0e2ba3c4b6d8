use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::otp::OtpChannel;
use crate::values::{Digest, Password, Sealed};

/// Commands on a `User`. Personal fields arrive already sealed with the
/// subject key and passwords already hashed: the aggregate never sees
/// plaintext personal data or stores a password.
#[derive(Debug, Clone)]
pub enum UserCommand {
    /// Create the account by email. `email_hash` is the keyed lookup hash of
    /// the normalised email; `email_challenge_id` names the `OtpChallenge`
    /// that carries the verification code.
    Register {
        user_id: Uuid,
        email: Sealed,
        email_hash: Digest,
        name: Sealed,
        password_hash: String,
        email_challenge_id: Uuid,
        at: DateTime<Utc>,
    },
    /// Create the account by a verified phone number (passwordless; seed
    /// 003). The code was already answered on `challenge_id`.
    RegisterWithPhone {
        user_id: Uuid,
        phone: Sealed,
        phone_hash: Digest,
        challenge_id: Uuid,
        at: DateTime<Utc>,
    },
    /// Someone tried to register this account's email again; the owner is
    /// told by mail (`delivery_id` names the delivery record). No enumeration.
    NoteDuplicateRegistration { delivery_id: Uuid, at: DateTime<Utc> },
    /// A spent refresh token was replayed; the owner is told (`delivery_id`).
    NoteRefreshTokenReuse { delivery_id: Uuid, at: DateTime<Utc> },
    /// A new email verification code was issued on `challenge_id`.
    ReplaceEmailChallenge { challenge_id: Uuid, at: DateTime<Utc> },
    /// The email verification challenge was answered correctly;
    /// `delivery_id` names the welcome mail.
    VerifyEmail { challenge_id: Uuid, delivery_id: Option<Uuid>, at: DateTime<Utc> },
    /// First login step: check the password; on success the caller issues
    /// the two-factor challenge `challenge_id`.
    StartLogin { challenge_id: Uuid, password: Password, at: DateTime<Utc> },
    /// A password reset code was issued on `challenge_id`.
    RequestPasswordReset { challenge_id: Uuid, at: DateTime<Utc> },
    /// Change profile fields; `None` leaves a field unchanged.
    UpdateProfile { name: Option<Sealed>, bio: Option<Sealed>, at: DateTime<Utc> },
    /// Attach a phone number, pending verification by `challenge_id`.
    AddPhone { phone: Sealed, phone_hash: Digest, challenge_id: Uuid, at: DateTime<Utc> },
    /// The phone challenge was answered correctly.
    VerifyPhone { challenge_id: Uuid, at: DateTime<Utc> },
    /// Where two-factor codes go (SMS needs a verified phone).
    SetTwoFactorChannel { channel: OtpChannel, at: DateTime<Utc> },
    /// Set a new password through the reset flow. `reset_id` (the reset
    /// token's `jti`) is accepted once; `delivery_id` names the notice mail.
    ResetPassword { reset_id: Uuid, password_hash: String, delivery_id: Option<Uuid>, at: DateTime<Utc> },
}

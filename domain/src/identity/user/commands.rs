use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::otp::OtpChannel;
use crate::session::RevocationReason;
use crate::values::{Digest, Password, Sealed, Username};

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
        /// The handle, already reserved by the caller (issue 15).
        username: Option<Username>,
        /// Sealed first and last name (seed 001), when given.
        first_name: Option<Sealed>,
        last_name: Option<Sealed>,
        at: DateTime<Utc>,
    },
    /// Create the account by a verified phone number (passwordless; seed
    /// 003). The code was already answered on `challenge_id`.
    RegisterWithPhone {
        user_id: Uuid,
        phone: Sealed,
        phone_hash: Digest,
        challenge_id: Uuid,
        /// The generated handle (`user-` + 8 digits), already reserved.
        username: Option<Username>,
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
    /// Attach a phone number, pending verification by `challenge_id`. A
    /// pending number reserves nothing and is never a login route; a
    /// verified phone stays in place until the new one is verified.
    AddPhone { phone: Sealed, phone_hash: Digest, challenge_id: Uuid, at: DateTime<Utc> },
    /// The phone challenge was answered correctly: the pending number
    /// becomes the account's phone, replacing any earlier one (whose
    /// reservation the caller releases in the same statement).
    VerifyPhone { challenge_id: Uuid, at: DateTime<Utc> },
    /// Remove the account's phone (verified and pending); refused with
    /// `LastSignInMethod` for an account the phone is the only way into.
    RemovePhone { at: DateTime<Utc> },
    /// Someone tried to attach this account's verified phone to another
    /// account; the owner is told by SMS (`delivery_id`). No oracle.
    NotePhoneClaimAttempt { delivery_id: Uuid, at: DateTime<Utc> },
    /// Where two-factor codes go (SMS needs a verified phone).
    SetTwoFactorChannel { channel: OtpChannel, at: DateTime<Utc> },
    /// An email registration still unverified [`super::REGISTRATION_TTL_HOURS`]
    /// after it was made expires: the account is gone and its address free
    /// again (the caller releases the reservation in the same statement).
    /// Refused (`EmailAlreadyVerified`, `NotFound`, `NotExpiredYet`) otherwise.
    ExpireRegistration { at: DateTime<Utc> },
    /// End every session of the account started before `at` (password
    /// reset, logout everywhere; ASVS 7.4.2): decided here, on the write
    /// side, whatever the sessions read model lists (ARCHITECTURE decided 14).
    RevokeAllSessions { reason: RevocationReason, at: DateTime<Utc> },
    /// Change the handle to `username` (already reserved by the caller; the
    /// old one stays held for 30 days). The same name again appends nothing.
    ChangeUsername { username: Username, at: DateTime<Utc> },
    /// Set a new password through the reset flow. `reset_id` (the reset
    /// token's `jti`) is accepted once; `delivery_id` names the notice mail.
    ResetPassword { reset_id: Uuid, password_hash: String, delivery_id: Option<Uuid>, at: DateTime<Utc> },
}

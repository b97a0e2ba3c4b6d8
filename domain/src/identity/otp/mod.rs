//! The `OtpChallenge` aggregate: one issued one-time code, its expiry and
//! attempts. Aggregate id = the challenge id (UUID).
//!
//! Rules (SECURITY.md "One-time codes"): 6 digits from a CSPRNG, chosen by
//! the caller; the aggregate sees only the keyed hash
//! `HMAC-SHA256(otp key, challenge_id ‖ code)`; single use (ASVS 6.5.1);
//! bound to its challenge (6.6.2); [`MAX_FAILED_ATTEMPTS`] wrong codes lock it
//! (seed 003); expired codes are refused (ASVS 6.5.5).

mod aggregate;
mod commands;
mod events;

pub use aggregate::{ChallengeStatus, DeliveryStatus, OtpChallenge, OtpError, MAX_FAILED_ATTEMPTS};
pub use commands::OtpCommand;
pub use events::{OtpChannel, OtpEvent, OtpPurpose};

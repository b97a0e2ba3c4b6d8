use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{OtpChannel, OtpPurpose};
use crate::values::{Digest, Sealed};

/// Commands on an `OtpChallenge`.
#[derive(Debug, Clone)]
pub enum OtpCommand {
    /// Issue a code. `code_mac` = HMAC-SHA256(otp key, challenge_id ‖ code);
    /// the code itself travels only in the sealed delivery record.
    Request {
        challenge_id: Uuid,
        delivery_id: Uuid,
        subject_id: Uuid,
        /// Key of the subject's failure counter (`Throttle`), e.g.
        /// `user:<id>` or `phone:<lookup hash>`; NIST: not reset by new codes.
        attempts_key: String,
        /// Where the code goes (email or E.164 phone), sealed with the
        /// subject's key: used for resends and for phone sign-up.
        recipient: Sealed,
        purpose: OtpPurpose,
        channel: OtpChannel,
        code_mac: Digest,
        issued_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    },
    /// Resend: a new code replaces the old one on the same challenge (the
    /// attempt count carries on, a locked challenge stays locked).
    Reissue { delivery_id: Uuid, code_mac: Digest, issued_at: DateTime<Utc>, expires_at: DateTime<Utc> },
    /// Check a submitted code, given as its keyed hash computed the same way.
    Verify { candidate_mac: Digest, at: DateTime<Utc> },
    /// The notifier handed the code to the provider (SMTP server / Twilio).
    RecordDelivery { attempts: u32, at: DateTime<Utc> },
    /// The notifier gave up after `attempts`; `reason` is a short,
    /// secret-free description (e.g. `smtp: 550 mailbox unavailable`).
    RecordDeliveryFailure { attempts: u32, reason: String, at: DateTime<Utc> },
}

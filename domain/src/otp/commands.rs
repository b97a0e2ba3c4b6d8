use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{OtpChannel, OtpPurpose};
use crate::values::Digest;

/// Commands on an `OtpChallenge`.
#[derive(Debug, Clone)]
pub enum OtpCommand {
    /// Issue a code. `code_mac` = HMAC-SHA256(otp key, challenge_id ‖ code);
    /// the code itself travels only in the sealed delivery record.
    Request {
        challenge_id: Uuid,
        delivery_id: Uuid,
        subject_id: Uuid,
        purpose: OtpPurpose,
        channel: OtpChannel,
        code_mac: Digest,
        issued_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    },
    /// Check a submitted code, given as its keyed hash computed the same way.
    Verify { candidate_mac: Digest, at: DateTime<Utc> },
    /// The notifier handed the code to the provider (SMTP server / Twilio).
    RecordDelivery { attempts: u32, at: DateTime<Utc> },
    /// The notifier gave up after `attempts`; `reason` is a short,
    /// secret-free description (e.g. `smtp: 550 mailbox unavailable`).
    RecordDeliveryFailure { attempts: u32, reason: String, at: DateTime<Utc> },
}

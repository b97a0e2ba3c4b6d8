use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::values::{Digest, Sealed};

/// Commands on a `Totp`.
#[derive(Debug, Clone)]
pub enum TotpCommand {
    /// Start (or restart) enrollment with a new secret, sealed with the
    /// user's data key.
    StartEnrollment { user_id: Uuid, secret: Sealed, at: DateTime<Utc> },
    /// Confirm the pending enrollment. `matched_step` is the RFC 6238 time
    /// step the typed code matched (`None` = wrong code); `recovery_codes`
    /// are the keyed hashes of the new recovery codes.
    Confirm { matched_step: Option<u64>, recovery_codes: Vec<Digest>, at: DateTime<Utc> },
    /// A code typed as a second factor; `matched_step` as in `Confirm`.
    UseCode { matched_step: Option<u64>, at: DateTime<Utc> },
    /// A recovery code typed as a second factor, as its keyed hash.
    UseRecoveryCode { code: Digest, at: DateTime<Utc> },
    /// Turn TOTP off (the api requires a recent authentication).
    Disable { at: DateTime<Utc> },
}

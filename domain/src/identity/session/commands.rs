use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::RevocationReason;
use crate::values::{Digest, Sealed};

/// Commands on a `Session`.
#[derive(Debug, Clone)]
pub enum SessionCommand {
    /// Open a session after full authentication. `refresh_hash` is the
    /// SHA-256 of the first refresh token; `idle_ttl_secs` and
    /// `absolute_ttl_secs` are the idle and absolute lifetimes in seconds.
    Start {
        session_id: Uuid,
        user_id: Uuid,
        refresh_hash: Digest,
        at: DateTime<Utc>,
        idle_ttl_secs: i64,
        absolute_ttl_secs: i64,
        /// Sealed client description (see `SessionStarted`).
        client: Option<Sealed>,
        /// Opened with a quick factor (device PIN): not a fresh
        /// authentication, so step-up still needs one.
        quick_factor: bool,
    },
    /// A fresh proof of a factor inside the session (step-up).
    Reauthenticate { at: DateTime<Utc> },
    /// Rotate: `presented_hash` must be the current token's hash;
    /// `new_hash` becomes current.
    Refresh { presented_hash: Digest, new_hash: Digest, at: DateTime<Utc> },
    /// End the session.
    Revoke { reason: RevocationReason, at: DateTime<Utc> },
}

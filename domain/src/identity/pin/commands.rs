use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::DeviceId;
use crate::values::{Digest, Pin};

/// Commands on a `DevicePin`.
#[derive(Debug, Clone)]
pub enum PinCommand {
    /// Set (or replace, or re-enable) the PIN of `device_id`. `pin_hash` is
    /// the argon2id PHC hash of the peppered PIN. `authenticated_at` is when
    /// the user last proved a full factor in the session asking (the access
    /// token's `auth_time`): a disabled PIN is only re-enabled by an
    /// authentication after it was disabled.
    Set {
        user_id: Uuid,
        device_id: DeviceId,
        pin_hash: String,
        /// SHA-256 of the device secret issued with this PIN (≥ 128 random
        /// bits the client keeps): PIN sign-in needs it, so a PIN proves
        /// possession of the device, not only knowledge of 4–6 digits.
        secret_hash: Digest,
        authenticated_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// Check a PIN typed on the device (verified against the stored hash by
    /// [`super::PinServices`]), presented with the SHA-256 of the device
    /// secret: a wrong secret is refused before the PIN is looked at and
    /// counts nothing (so nobody without the device can disable its PIN).
    Verify { candidate: Pin, secret_hash: Digest, at: DateTime<Utc> },
    /// Remove the PIN of this device.
    Remove { at: DateTime<Utc> },
}

//! The `Totp` aggregate: a user's authenticator-app factor (RFC 6238).
//! Aggregate id = the user id (UUID).
//!
//! Rules (issue 4, SECURITY.md):
//! - The shared secret is sealed with the user's data key before it enters
//!   an event (`TotpEnrollmentStarted`), so erasure shreds it with the rest.
//! - Enrollment is confirmed with a correct code (`TotpEnabled`), which also
//!   stores [`RECOVERY_CODE_COUNT`] single-use recovery codes as keyed
//!   hashes; the codes themselves are shown once and never stored.
//! - A time step is accepted once only: the aggregate keeps the last step
//!   used and refuses a code of the same or an earlier step (replay).
//! - Which step (if any) a typed code matches is decided by the commands
//!   layer, which alone can open the secret; the aggregate decides whether
//!   that step may still be used. Every accepted and refused code is an event.

mod aggregate;
mod commands;
mod events;

pub use aggregate::{Totp, TotpError, TotpStatus};
pub use commands::TotpCommand;
pub use events::TotpEvent;

use std::fmt;

use crate::values::InvalidValue;

/// Recovery codes issued when TOTP is enabled.
pub const RECOVERY_CODE_COUNT: usize = 10;

/// The alphabet of recovery codes: Crockford's base32 (no I, L, O, U).
pub const RECOVERY_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A recovery code as typed, `XXXX-XXXX` (8 Crockford base32 characters,
/// 40 bits). Normalised: upper case, dash and spaces removed, `O`→`0`,
/// `I`/`L`→`1`. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryCode(String);

impl RecoveryCode {
    /// # Errors
    /// [`InvalidValue`] unless 8 characters of the alphabet (a dash and
    /// spaces allowed anywhere).
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let mut out = String::with_capacity(8);
        for c in raw.chars() {
            if c == '-' || c == ' ' {
                continue;
            }
            let c = match c.to_ascii_uppercase() {
                'O' => '0',
                'I' | 'L' => '1',
                other => other,
            };
            if !c.is_ascii() || !RECOVERY_ALPHABET.contains(&(c as u8)) || out.len() >= 8 {
                return Err(InvalidValue {
                    field: "code",
                    reason: "must be a recovery code like ABCD-EFGH".into(),
                });
            }
            out.push(c);
        }
        if out.len() != 8 {
            return Err(InvalidValue {
                field: "code",
                reason: "must be a recovery code like ABCD-EFGH".into(),
            });
        }
        Ok(Self(out))
    }

    /// The normalised 8 characters (no dash), for hashing only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Display form `XXXX-XXXX`.
    pub fn formatted(&self) -> String {
        let (a, b) = self.0.split_at(4);
        format!("{a}-{b}")
    }
}

impl fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryCode(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_normalised() {
        let c = RecoveryCode::parse("abcd-efgh").unwrap();
        assert_eq!(c.expose(), "ABCDEFGH");
        assert_eq!(c.formatted(), "ABCD-EFGH");
        assert_eq!(RecoveryCode::parse("0oIl 1234").unwrap().expose(), "00111234");
        assert!(RecoveryCode::parse("ABCD-EFG").is_err());
        assert!(RecoveryCode::parse("ABCD-EFGHJ").is_err());
        assert!(RecoveryCode::parse("ABCD-EFGU").is_err(), "U is not in the alphabet");
        assert!(RecoveryCode::parse("123456").is_err());
        assert_eq!(format!("{c:?}"), "RecoveryCode(<redacted>)");
    }
}

//! One-time code generation and keyed hashing (SECURITY.md "One-time codes").

use domain::values::{Digest, OtpCode};
use rand::Rng;
use uuid::Uuid;

use crate::keys::{hmac_hex, Secret32};

/// A fresh 6-digit code from the OS CSPRNG, uniform over 000000–999999
/// (ASVS 6.5.3/6.5.4).
pub fn generate_code() -> String {
    let n: u32 = rand::rngs::OsRng.gen_range(0..1_000_000);
    format!("{n:06}")
}

/// `HMAC-SHA256(otp key, challenge_id ‖ code)` as hex: binds the code to its
/// challenge (ASVS 6.6.2), so a code cannot be replayed against another.
pub fn code_mac(key: &Secret32, challenge_id: Uuid, code: &str) -> Digest {
    Digest(hmac_hex(key, &[challenge_id.as_bytes(), code.as_bytes()]))
}

/// [`code_mac`] of a parsed code.
pub fn candidate_mac(key: &Secret32, challenge_id: Uuid, code: &OtpCode) -> Digest {
    code_mac(key, challenge_id, code.expose())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits_and_vary() {
        let codes: std::collections::HashSet<String> = (0..200).map(|_| generate_code()).collect();
        assert!(codes.iter().all(|c| c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit())));
        assert!(codes.len() > 190);
    }

    #[test]
    fn mac_is_bound_to_the_challenge() {
        let k = Secret32([1; 32]);
        let a = code_mac(&k, Uuid::from_u128(1), "123456");
        assert_eq!(a, code_mac(&k, Uuid::from_u128(1), "123456"));
        assert_ne!(a, code_mac(&k, Uuid::from_u128(2), "123456"));
        assert_ne!(a, code_mac(&k, Uuid::from_u128(1), "123457"));
        assert!(!a.0.contains("123456"));
    }
}

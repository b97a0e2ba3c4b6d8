//! Server keys. One 32-byte master key (config `STREAMFORGE_MASTER_KEY`,
//! base64) is expanded with HKDF-SHA256 (RFC 5869) into independent subkeys,
//! one per use, so no key ever serves two purposes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hkdf::Hkdf;
use sha2::Sha256;

/// Errors loading key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key is not valid base64")]
    Base64,
    #[error("key must be exactly 32 bytes, got {0}")]
    Length(usize),
}

/// A 32-byte secret that never prints.
#[derive(Clone)]
pub struct Secret32(pub [u8; 32]);

impl std::fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret32(<redacted>)")
    }
}

impl Secret32 {
    /// Parses standard base64 of exactly 32 bytes.
    ///
    /// # Errors
    /// [`KeyError`] on bad base64 or wrong length.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD.decode(s.trim()).map_err(|_| KeyError::Base64)?;
        let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::Length(bytes.len()))?;
        Ok(Self(arr))
    }

    /// 32 bytes from the OS CSPRNG.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        Self(k)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

/// The subkeys derived from the master key.
#[derive(Clone, Debug)]
pub struct Keyring {
    /// Wraps per-subject data keys (XChaCha20-Poly1305).
    pub wrap: Secret32,
    /// HMAC-SHA256 key of lookup hashes (normalised email/phone).
    pub lookup: Secret32,
    /// HMAC-SHA256 key of OTP code hashes.
    pub otp: Secret32,
    /// Seals delivery records (XChaCha20-Poly1305).
    pub delivery: Secret32,
}

impl Keyring {
    /// Expands `master` with HKDF-SHA256 and fixed per-use labels.
    pub fn derive(master: &Secret32) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"streamforge/v1"), &master.0);
        let expand = |label: &[u8]| {
            let mut out = [0u8; 32];
            // 32 bytes is far below HKDF-SHA256's 8160-byte limit: cannot fail.
            let _ = hk.expand(label, &mut out);
            Secret32(out)
        };
        Self {
            wrap: expand(b"subject-key-wrap"),
            lookup: expand(b"lookup-hmac"),
            otp: expand(b"otp-hmac"),
            delivery: expand(b"delivery-seal"),
        }
    }
}

/// Pseudonymous subject ids for the analysts' topics (issue 18; docs/
/// envelope.md "Subject"): `subject = hex(HMAC-SHA256(K, user id))`, 64
/// lower-case hex characters, stable for one key and unlinkable to the
/// user id without it. `K` is derived from the server's keyring and a key
/// id (`ANALYTICS_SUBJECT_KEY_ID`): a new key id rotates every subject at
/// once (published beside it as `subject_key`), and a relay per analyst
/// audience (its own `KAFKA_TOPIC_PREFIX` and key id) gives each audience
/// ids that do not join with another's.
#[derive(Clone)]
pub struct SubjectPseudonyms {
    key_id: String,
    key: Secret32,
}

impl std::fmt::Debug for SubjectPseudonyms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectPseudonyms").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl SubjectPseudonyms {
    /// The pseudonyms of key id `key_id` (any short string, e.g. `2026-12`).
    pub fn derive(keys: &Keyring, key_id: &str) -> Self {
        let hex = hmac_hex(&keys.lookup, &[b"streamforge/v1 analytics-subject:", key_id.as_bytes()]);
        let mut key = [0u8; 32];
        // 64 hex characters always decode into 32 bytes.
        let _ = hex::decode_to_slice(hex, &mut key);
        Self { key_id: key_id.to_owned(), key: Secret32(key) }
    }

    /// The key id published as `subject_key`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The pseudonymous id of `user_id` (64 lower-case hex characters).
    pub fn subject(&self, user_id: &uuid::Uuid) -> String {
        hmac_hex(&self.key, &[user_id.as_bytes()])
    }
}

/// HMAC-SHA256 of `parts` concatenated, as lower-case hex.
pub fn hmac_hex(key: &Secret32, parts: &[&[u8]]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.0).unwrap_or_else(|_| unreachable_hmac());
    for p in parts {
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

// HMAC accepts keys of any length; this path cannot be taken.
#[allow(clippy::panic)]
fn unreachable_hmac() -> ! {
    panic!("HMAC-SHA256 accepts any key length")
}

/// SHA-256 as lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subkeys_differ_and_are_stable() {
        let m = Secret32([7u8; 32]);
        let a = Keyring::derive(&m);
        let b = Keyring::derive(&m);
        assert_eq!(a.otp.0, b.otp.0);
        assert_ne!(a.otp.0, a.lookup.0);
        assert_ne!(a.wrap.0, a.delivery.0);
    }

    #[test]
    fn base64_roundtrip_and_length_check() {
        let k = Secret32::generate();
        assert_eq!(Secret32::from_base64(&k.to_base64()).unwrap().0, k.0);
        assert!(matches!(Secret32::from_base64("AAAA"), Err(KeyError::Length(3))));
        assert!(Secret32::from_base64("%%%").is_err());
    }
}

//! The PII vault (ARCHITECTURE decided 7): every subject has its own random
//! 256-bit data key, stored in `subject_keys` wrapped by the master wrap key.
//! Personal fields are sealed with XChaCha20-Poly1305 under that key, with
//! the subject id as associated data. Erasure deletes the key, after which
//! every copy of the ciphertext (events, topics, read models, backups) is
//! unreadable.
//!
//! Sealed format (a string, inside events): `v1.<base64url(nonce ‖ ciphertext)>`.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use domain::values::Sealed;
use rand::RngCore;
use sqlx::PgPool;
use uuid::Uuid;

use crate::keys::Secret32;

/// Vault failures.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("the subject has no data key")]
    NoKey,
    #[error("ciphertext could not be opened")]
    Corrupt,
    /// The AEAD refused to encrypt (only for inputs over 256 GiB): never
    /// turned into an empty ciphertext.
    #[error("plaintext could not be sealed")]
    Seal,
}

const NONCE_LEN: usize = 24;

/// Seals `plaintext` under `key` with associated data `aad`: a random
/// 24-byte nonce followed by the XChaCha20-Poly1305 ciphertext and tag.
///
/// # Errors
/// [`VaultError::Seal`] when the AEAD refuses (inputs over 256 GiB); an
/// error is never an empty or partial ciphertext.
pub fn seal_bytes(key: &Secret32, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad })
        .map_err(|_| VaultError::Seal)?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens what [`seal_bytes`] produced; `None` when the key, aad or bytes are wrong.
pub fn open_bytes(key: &Secret32, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    XChaCha20Poly1305::new((&key.0).into()).decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad }).ok()
}

/// Per-subject key store with an in-process cache of unwrapped keys.
pub struct Vault {
    pool: PgPool,
    wrap: Secret32,
    cache: Mutex<HashMap<Uuid, Secret32>>,
}

/// Upper bound on cached data keys (32 bytes each plus map overhead).
const CACHE_CAP: usize = 100_000;

impl Vault {
    pub fn new(pool: PgPool, wrap: Secret32) -> Self {
        Self { pool, wrap, cache: Mutex::new(HashMap::new()) }
    }

    /// Creates the subject's data key if it has none; idempotent.
    ///
    /// # Errors
    /// [`VaultError::Db`].
    pub async fn ensure_key(&self, subject: Uuid) -> Result<(), VaultError> {
        // A cached key exists in the table: no write on the hot path (every
        // code issued and every session started asks).
        if self.cache.lock().is_ok_and(|c| c.contains_key(&subject)) {
            return Ok(());
        }
        let key = Secret32::generate();
        let wrapped = seal_bytes(&self.wrap, subject.as_bytes(), &key.0)?;
        sqlx::query(
            "INSERT INTO subject_keys (subject_id, wrapped_key) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(subject)
        .bind(wrapped)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn key(&self, subject: Uuid) -> Result<Secret32, VaultError> {
        if let Some(k) = self.cache.lock().ok().and_then(|c| c.get(&subject).cloned()) {
            return Ok(k);
        }
        let wrapped: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT wrapped_key FROM subject_keys WHERE subject_id = $1")
                .bind(subject)
                .fetch_optional(&self.pool)
                .await?;
        let wrapped = wrapped.ok_or(VaultError::NoKey)?;
        let raw = open_bytes(&self.wrap, subject.as_bytes(), &wrapped).ok_or(VaultError::Corrupt)?;
        let arr: [u8; 32] = raw.as_slice().try_into().map_err(|_| VaultError::Corrupt)?;
        let key = Secret32(arr);
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= CACHE_CAP {
                c.clear();
            }
            c.insert(subject, key.clone());
        }
        Ok(key)
    }

    /// Seals a personal field of `subject`.
    ///
    /// # Errors
    /// [`VaultError::NoKey`] after erasure (or before [`Vault::ensure_key`]).
    pub async fn seal(&self, subject: Uuid, plaintext: &str) -> Result<Sealed, VaultError> {
        let key = self.key(subject).await?;
        let bytes = seal_bytes(&key, subject.as_bytes(), plaintext.as_bytes())?;
        Ok(Sealed(format!("v1.{}", URL_SAFE_NO_PAD.encode(bytes))))
    }

    /// Seals a secret hash (argon2id PHC of a password or PIN) for an event:
    /// hashes are secrets too, never readable on the topics (ARCHITECTURE
    /// decided 9), and erasure destroys them with the key.
    ///
    /// # Errors
    /// As [`Vault::seal`].
    pub async fn seal_hash(&self, subject: Uuid, phc: &str) -> Result<String, VaultError> {
        Ok(self.seal(subject, phc).await?.0)
    }

    /// The PHC hash a stored value holds: opened when sealed (`v1.…`), as is
    /// when plain (events written before hashes were sealed). `None` when
    /// the subject was erased or the value does not open.
    pub async fn open_hash(&self, subject: Uuid, stored: &str) -> Option<String> {
        if stored.starts_with("v1.") {
            self.open(subject, &Sealed(stored.to_owned())).await.ok().flatten()
        } else {
            Some(stored.to_owned())
        }
    }

    /// Opens a sealed field; `Ok(None)` when the subject's key was erased.
    ///
    /// # Errors
    /// [`VaultError::Corrupt`] when the ciphertext does not open with the key.
    pub async fn open(&self, subject: Uuid, sealed: &Sealed) -> Result<Option<String>, VaultError> {
        let key = match self.key(subject).await {
            Ok(k) => k,
            Err(VaultError::NoKey) => return Ok(None),
            Err(e) => return Err(e),
        };
        let body = sealed.0.strip_prefix("v1.").ok_or(VaultError::Corrupt)?;
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| VaultError::Corrupt)?;
        let plain = open_bytes(&key, subject.as_bytes(), &bytes).ok_or(VaultError::Corrupt)?;
        String::from_utf8(plain).map(Some).map_err(|_| VaultError::Corrupt)
    }

    /// Crypto-shreds the subject: deletes the data key everywhere it is held.
    ///
    /// # Errors
    /// [`VaultError::Db`].
    pub async fn erase(&self, subject: Uuid) -> Result<(), VaultError> {
        sqlx::query("DELETE FROM subject_keys WHERE subject_id = $1")
            .bind(subject)
            .execute(&self.pool)
            .await?;
        if let Ok(mut c) = self.cache.lock() {
            c.remove(&subject);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_binding() {
        let k = Secret32::generate();
        let s = seal_bytes(&k, b"a", b"hello").unwrap();
        assert_eq!(s.len(), 24 + 5 + 16, "nonce, ciphertext and tag");
        assert_eq!(open_bytes(&k, b"a", &s).unwrap(), b"hello");
        assert!(open_bytes(&k, b"b", &s).is_none(), "bound to its aad");
        assert!(open_bytes(&Secret32::generate(), b"a", &s).is_none());
        assert_ne!(seal_bytes(&k, b"a", b"hello").unwrap(), s, "fresh nonce each time");
    }
}

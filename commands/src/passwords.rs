//! Password hashing: argon2id m=19 MiB, t=2, p=1 (OWASP Password Storage
//! cheat sheet; ASVS Appendix C), run with `spawn_blocking` behind a
//! semaphore sized to the cores so hashing never blocks the async workers
//! and never queues more work than the CPUs can do (ARCHITECTURE decided 9).

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use async_trait::async_trait;
use tokio::sync::Semaphore;

/// argon2id memory cost in KiB (19 MiB).
pub const ARGON2_M_COST_KIB: u32 = 19 * 1024;
/// argon2id iterations.
pub const ARGON2_T_COST: u32 = 2;
/// argon2id lanes.
pub const ARGON2_P_COST: u32 = 1;

/// Errors from hashing.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("the hashing pool is gone")]
    Pool,
}

/// Argon2id hasher/verifier on the bounded blocking pool. Cheap to clone.
#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    params: Params,
    /// A real hash of a random password, verified when the account does not
    /// exist so both paths cost the same (SECURITY.md "Enumeration").
    dummy_hash: Arc<String>,
}

fn argon2(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

impl PasswordHasher {
    /// `concurrency` = parallel hashes allowed (use the core count).
    ///
    /// # Errors
    /// [`HashError`] if the parameters are rejected (they are constants).
    pub fn new(concurrency: usize) -> Result<Self, HashError> {
        Self::with_params(concurrency, ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST)
    }

    /// Custom parameters (tests and benchmarks only).
    ///
    /// # Errors
    /// [`HashError`] if argon2 rejects the parameters.
    pub fn with_params(concurrency: usize, m_kib: u32, t: u32, p: u32) -> Result<Self, HashError> {
        let params = Params::new(m_kib, t, p, None).map_err(|e| HashError::Hash(e.to_string()))?;
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let random = Secret::random();
        let dummy = argon2(&params)
            .hash_password(random.0.as_bytes(), &salt)
            .map_err(|e| HashError::Hash(e.to_string()))?
            .to_string();
        Ok(Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            params,
            dummy_hash: Arc::new(dummy),
        })
    }

    /// Hashes a password into PHC string form (`$argon2id$v=19$m=19456,t=2,p=1$…`).
    ///
    /// # Errors
    /// [`HashError`] when the pool is closed or hashing fails.
    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let _permit = self.permits.acquire().await.map_err(|_| HashError::Pool)?;
        let params = self.params.clone();
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            argon2(&params)
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| HashError::Hash(e.to_string()))
        })
        .await
        .map_err(|_| HashError::Pool)?
    }

    /// Verifies `candidate` against a PHC hash (its own parameters apply).
    /// `false` on mismatch, malformed hash or pool failure.
    pub async fn verify_phc(&self, phc: &str, candidate: &str) -> bool {
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let phc = if phc.is_empty() { self.dummy_hash.as_str().to_owned() } else { phc.to_owned() };
        let candidate = candidate.to_owned();
        tokio::task::spawn_blocking(move || {
            PasswordHash::new(&phc)
                .map(|h| Argon2::default().verify_password(candidate.as_bytes(), &h).is_ok())
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false)
    }

    /// Spends the same work as a real verification and returns `false`;
    /// for unknown accounts.
    pub async fn verify_dummy(&self, candidate: &str) -> bool {
        let dummy = self.dummy_hash.as_str().to_owned();
        let _ = self.verify_phc(&dummy, candidate).await;
        false
    }
}

struct Secret(String);
impl Secret {
    fn random() -> Self {
        use rand::RngCore;
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Self(hex::encode(b))
    }
}

#[async_trait]
impl domain::services::PasswordVerifier for PasswordHasher {
    async fn verify(&self, phc_hash: &str, candidate: &str) -> bool {
        self.verify_phc(phc_hash, candidate).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let h = PasswordHasher::new(2).unwrap();
        let phc = h.hash("correct horse battery").await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(h.verify_phc(&phc, "correct horse battery").await);
        assert!(!h.verify_phc(&phc, "correct horse batterY").await);
        assert!(!h.verify_phc("garbage", "x").await);
        assert!(!h.verify_dummy("correct horse battery").await);
    }
}

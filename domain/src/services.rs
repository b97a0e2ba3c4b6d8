//! Service traits the aggregates call during `handle`. Implemented in the
//! `commands` crate (argon2 on a bounded blocking pool) and by fakes in tests.

use async_trait::async_trait;

/// Checks a candidate password against a stored PHC-format hash.
///
/// Implementations must run the (slow, memory-hard) verification off the async
/// workers and return `false` for any malformed hash rather than erroring.
#[async_trait]
pub trait PasswordVerifier: Send + Sync {
    /// `true` when `candidate` matches `phc_hash` (argon2id, OWASP parameters).
    async fn verify(&self, phc_hash: &str, candidate: &str) -> bool;
}

/// Services available to the `User` aggregate.
pub struct UserServices {
    pub passwords: Box<dyn PasswordVerifier>,
}

impl UserServices {
    pub fn new(passwords: impl PasswordVerifier + 'static) -> Self {
        Self { passwords: Box::new(passwords) }
    }
}

//! Service traits the aggregates call during `handle`. Implemented in the
//! `commands` crate (argon2 on a bounded blocking pool) and by fakes in tests.

use async_trait::async_trait;
use uuid::Uuid;

/// Checks a candidate password against a stored hash: an argon2id PHC
/// string, sealed with the subject's key in events written since issue 14
/// (hashes are secrets: never readable on the topics; ARCHITECTURE decided 9),
/// plain in earlier ones.
///
/// Implementations must run the (slow, memory-hard) verification off the async
/// workers and return `false` for any malformed or unopenable hash (an
/// erased subject) rather than erroring.
#[async_trait]
pub trait PasswordVerifier: Send + Sync {
    /// `true` when `candidate` matches `stored`, the hash of `subject`'s
    /// secret (argon2id, OWASP parameters).
    async fn verify(&self, subject: Uuid, stored: &str, candidate: &str) -> bool;
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

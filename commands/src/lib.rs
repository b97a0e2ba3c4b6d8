//! Application services of streamforge's write side: command execution over
//! the postgres-es event store (with conflict retry), and the services the
//! aggregates need — password hashing on a bounded blocking pool, OTP keyed
//! hashes, the PII vault (crypto-shredding), token issuing, set-validation
//! reservations and sealed delivery records.
//!
//! Depends on `domain` only among our crates; never on the api, projections
//! or workers.

pub mod access;
pub mod catalog;
pub mod deliveries;
pub mod executor;
pub mod history;
pub mod identity;
pub mod keys;
pub mod moderation;
pub mod otp_codes;
pub mod passkeys;
pub mod passwords;
pub mod reservations;
pub mod social;
pub mod tokens;
pub mod vault;

pub use executor::{ExecError, Executor};
pub use identity::{IdentityConfig, IdentityError, IdentityService};
pub use keys::Keyring;

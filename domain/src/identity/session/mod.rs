//! The `Session` aggregate: one login = one refresh-token family. Aggregate
//! id = the session id (UUID), which is also the access token's `sid`.
//!
//! Rules (ARCHITECTURE decided 10, SECURITY.md "Sessions and tokens"): the
//! refresh token is opaque 256-bit random, only its SHA-256 is stored; every
//! refresh rotates it; presenting a spent token revokes the whole family
//! (RFC 9700 §4.14.2, ASVS 10.4.5); idle and absolute expiry (ASVS 10.4.8).

mod aggregate;
mod commands;
mod events;

pub use aggregate::{Session, SessionError, SessionStatus};
pub use commands::SessionCommand;
pub use events::{RevocationReason, SessionEvent};

//! streamforge's domain: aggregates, commands, events, value objects and the
//! pure policies (OTP rules, session rotation). No I/O lives here — no tokio,
//! sqlx, axum or rdkafka. Time, ids, randomness and hashing come in as
//! command fields or through the small service traits in [`services`].

pub mod access;
pub mod catalog;
pub mod consistency;
pub mod envelope;
pub mod identity;
pub mod moderation;
pub mod schema;
pub mod services;
pub mod social;
pub mod upcast;
pub mod values;

pub use identity::{otp, passkey, pin, session, throttle, totp, user};

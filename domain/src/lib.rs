//! streamforge's domain: aggregates, commands, events, value objects and the
//! pure policies (OTP rules, session rotation). No I/O lives here — no tokio,
//! sqlx, axum or rdkafka. Time, ids, randomness and hashing come in as
//! command fields or through the small service traits in [`services`].

pub mod envelope;
pub mod otp;
pub mod passkey;
pub mod pin;
pub mod services;
pub mod session;
pub mod throttle;
pub mod totp;
pub mod user;
pub mod values;

//! The identity context (ARCHITECTURE decided 15): accounts, one-time-code
//! challenges, sessions, throttles and the strong factors. Re-exported at
//! the crate root under their earlier paths (`domain::user`, …).

pub mod otp;
pub mod passkey;
pub mod pin;
pub mod session;
pub mod throttle;
pub mod totp;
pub mod user;

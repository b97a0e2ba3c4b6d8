//! The `User` aggregate: registration, email verification, the password step
//! of login, and profile fields. Aggregate id = the user id (UUID).

mod aggregate;
mod commands;
mod events;

pub use aggregate::{User, UserError};
pub use commands::UserCommand;
pub use events::UserEvent;

/// Hours an email registration may stay unverified before it expires and
/// its address is free again (issue 14; seed 001's 24 h).
pub const REGISTRATION_TTL_HOURS: i64 = 24;

//! The `User` aggregate: registration, email verification, the password step
//! of login, and profile fields. Aggregate id = the user id (UUID).

mod aggregate;
mod commands;
mod events;

pub use aggregate::{User, UserError};
pub use commands::UserCommand;
pub use events::UserEvent;

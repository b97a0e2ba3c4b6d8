//! HTTP routes, one module per area; each exports `router()`.

pub mod auth;
pub mod challenges;
pub mod factors;
pub mod meta;
pub mod passkeys;
pub mod sessions;
pub mod users;

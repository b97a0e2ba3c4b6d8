//! The identity context's routes (ARCHITECTURE decided 15); each module
//! exports its `router()`. Re-exported under `routes::` by their earlier
//! paths (`routes::auth`, …).

pub mod auth;
pub mod challenges;
pub mod factors;
pub mod passkeys;
pub mod sessions;
pub mod users;

//! HTTP routes, one folder per bounded context (ARCHITECTURE decided 15),
//! one module per area; each exports `router()`.

pub mod admin;
pub mod catalog;
pub mod identity;
pub mod meta;
pub mod paging;
pub mod social;

pub use identity::{auth, challenges, factors, passkeys, sessions, users};

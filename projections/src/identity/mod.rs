//! The identity context's read models (ARCHITECTURE decided 15): profiles,
//! sessions, challenges, factors, passkeys, PINs. Re-exported at the crate
//! root under their earlier paths (`projections::profiles`, …).

pub mod challenges;
pub mod factors;
pub mod passkeys;
pub mod pins;
pub mod profiles;
pub mod sessions;

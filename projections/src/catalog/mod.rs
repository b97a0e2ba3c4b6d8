//! The catalog context's read models (ARCHITECTURE decided 15).

pub mod tracks;

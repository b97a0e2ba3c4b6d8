//! The catalog context's routes (ARCHITECTURE decided 15): tracks.

pub mod tracks;

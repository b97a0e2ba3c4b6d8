//! The social context's read models (ARCHITECTURE decided 15, 16).

pub mod graph;
